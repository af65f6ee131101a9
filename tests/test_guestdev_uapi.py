"""The guest kernel's <linux/tee.h> values and layouts (stubdom.guest.uapi),
and the device protocol's (stubdom.guestdev.wire), against the C headers
themselves: a program compiled against /usr/include/linux/tee.h (Debian
linux-libc-dev) and preload/teedev_wire.h prints every value, size and
offset, and each must equal ours."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stubdom.guest import uapi
from stubdom.guestdev import wire

TEE_H = Path("/usr/include/linux/tee.h")
PRELOAD = Path(__file__).resolve().parent.parent / "preload"

CONSTANTS = [
    "TEE_IOC_MAGIC", "TEE_IOC_BASE", "TEE_MAX_ARG_SIZE", "TEE_GEN_CAP_GP", "TEE_GEN_CAP_PRIVILEGED",
    "TEE_GEN_CAP_REG_MEM", "TEE_GEN_CAP_MEMREF_NULL", "TEE_MEMREF_NULL", "TEE_IMPL_ID_OPTEE", "TEE_IMPL_ID_AMDTEE",
    "TEE_OPTEE_CAP_TZ", "TEE_IOCTL_PARAM_ATTR_TYPE_NONE", "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT", "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT", "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT", "TEE_IOCTL_PARAM_ATTR_TYPE_MASK", "TEE_IOCTL_PARAM_ATTR_META",
    "TEE_IOCTL_PARAM_ATTR_MASK", "TEE_IOCTL_LOGIN_PUBLIC", "TEE_IOCTL_LOGIN_USER", "TEE_IOCTL_LOGIN_GROUP",
    "TEE_IOCTL_LOGIN_APPLICATION", "TEE_IOCTL_LOGIN_USER_APPLICATION", "TEE_IOCTL_LOGIN_GROUP_APPLICATION",
    "TEE_IOCTL_LOGIN_REE_KERNEL_MIN", "TEE_IOCTL_LOGIN_REE_KERNEL_MAX", "TEE_IOCTL_LOGIN_REE_KERNEL",
    "TEE_IOCTL_UUID_LEN", *uapi.TEE_IOCTLS,
]
# (struct, our layout, fields in order) — the flexible params[] are not part of a size
STRUCTS = [
    ("tee_ioctl_version_data", uapi.VERSION_DATA, ["impl_id", "impl_caps", "gen_caps"]),
    ("tee_ioctl_shm_alloc_data", uapi.SHM_ALLOC_DATA, ["size", "flags", "id"]),
    ("tee_ioctl_buf_data", uapi.BUF_DATA, ["buf_ptr", "buf_len"]),
    ("tee_ioctl_param", uapi.PARAM, ["attr", "a", "b", "c"]),
    ("tee_ioctl_open_session_arg", uapi.OPEN_SESSION_ARG,
     ["uuid", "clnt_uuid", "clnt_login", "cancel_id", "session", "ret", "ret_origin", "num_params"]),
    ("tee_ioctl_invoke_arg", uapi.INVOKE_ARG, ["func", "session", "cancel_id", "ret", "ret_origin", "num_params"]),
    ("tee_ioctl_cancel_arg", uapi.CANCEL_ARG, ["cancel_id", "session"]),
    ("tee_ioctl_close_session_arg", uapi.CLOSE_SESSION_ARG, ["session"]),
    ("tee_iocl_supp_recv_arg", uapi.SUPP_RECV_ARG, ["func", "num_params"]),
    ("tee_iocl_supp_send_arg", uapi.SUPP_SEND_ARG, ["ret", "num_params"]),
    ("tee_ioctl_shm_register_data", uapi.SHM_REGISTER_DATA, ["addr", "length", "flags", "id"]),
    ("teedev_req", wire.REQ, ["magic", "version", "op", "cmd", "arg", "len", "token", "nregions", "npayload"]),
    ("teedev_region", wire.REGION, ["addr", "len", "flags"]),
    ("teedev_rsp", wire.RSP, ["magic", "ret", "npatches", "ndata", "handle", "token", "reserved"]),
    ("teedev_patch", wire.PATCH, ["addr", "len", "pad"]),
]
WIRE_CONSTANTS = ["TEEDEV_MAGIC", "TEEDEV_WIRE_VERSION", "TEEDEV_OP_OPEN", "TEEDEV_OP_IOCTL", "TEEDEV_OP_MMAP",
                  "TEEDEV_OP_MM_HELLO", "TEEDEV_OP_BACK", "TEEDEV_OP_UNBACK", "TEEDEV_OP_UNMAP", "TEEDEV_OP_ADOPT",
                  "TEEDEV_OP_STATS", "TEEDEV_REGION_WRITABLE", "TEEDEV_MAX_MSG", "TEEDEV_MAX_REGIONS",
                  "TEEDEV_MAX_PAGES"]


def _offsets(layout) -> list[int]:
    """The offset of each field of a struct.Struct format (no implicit padding)."""
    import struct

    out, at = [], 0
    fmt = layout.format.lstrip("<=")
    count = ""
    for ch in fmt:
        if ch.isdigit():
            count += ch
            continue
        out.append(at)
        at += struct.calcsize("=" + count + ch)
        count = ""
    return out


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> dict[str, int]:
    if not TEE_H.exists():
        pytest.skip(f"{TEE_H} is missing: apt-get install linux-libc-dev")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: apt-get install gcc")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/tee.h>", '#include "teedev_wire.h"',
             "int main(void) {"]
    for name in CONSTANTS + WIRE_CONSTANTS:
        lines.append(f'printf("{name} %llu\\n", (unsigned long long)({name}));')
    for struct_name, _layout, fields in STRUCTS:
        lines.append(f'printf("sizeof {struct_name} %zu\\n", sizeof(struct {struct_name}));')
        for f in fields:
            lines.append(f'printf("offsetof {struct_name}.{f} %zu\\n", offsetof(struct {struct_name}, {f}));')
    lines.append("return 0; }")
    out = tmp_path_factory.mktemp("uapi")
    (out / "values.c").write_text("\n".join(lines))
    subprocess.run([gcc, "-Wall", "-Werror", "-I", str(PRELOAD), "-o", str(out / "values"), str(out / "values.c")],
                   check=True, capture_output=True)
    text = subprocess.run([str(out / "values")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines())}


@pytest.mark.parametrize("name", CONSTANTS)
def test_linux_tee_h_values(printed, name) -> None:
    assert getattr(uapi, name) == printed[name]


@pytest.mark.parametrize("name", WIRE_CONSTANTS)
def test_wire_values(printed, name) -> None:
    assert getattr(wire, name) == printed[name]


@pytest.mark.parametrize(("struct_name", "layout", "fields"), STRUCTS, ids=[s[0] for s in STRUCTS])
def test_struct_layouts(printed, struct_name, layout, fields) -> None:
    assert layout.size == printed[f"sizeof {struct_name}"]
    assert _offsets(layout) == [printed[f"offsetof {struct_name}.{f}"] for f in fields]


def test_put_user_offsets(printed) -> None:
    """The fields the kernel writes back one by one."""
    assert uapi.OPEN_SESSION_SESSION_OFFSET == printed["offsetof tee_ioctl_open_session_arg.session"]
    assert uapi.OPEN_SESSION_RET_OFFSET == printed["offsetof tee_ioctl_open_session_arg.ret"]
    assert uapi.OPEN_SESSION_RET_ORIGIN_OFFSET == printed["offsetof tee_ioctl_open_session_arg.ret_origin"]
    assert uapi.INVOKE_RET_OFFSET == printed["offsetof tee_ioctl_invoke_arg.ret"]
    assert uapi.INVOKE_RET_ORIGIN_OFFSET == printed["offsetof tee_ioctl_invoke_arg.ret_origin"]
    assert uapi.PARAM_B_OFFSET == printed["offsetof tee_ioctl_param.b"]


def test_ioctl_number_helpers() -> None:
    assert uapi.ioc_type(uapi.TEE_IOC_INVOKE) == uapi.TEE_IOC_MAGIC
    assert uapi.ioc_size(uapi.TEE_IOC_SHM_REGISTER) == uapi.SHM_REGISTER_DATA.size
    assert uapi.BUF_IOCTLS == {uapi.TEE_IOC_OPEN_SESSION, uapi.TEE_IOC_INVOKE, uapi.TEE_IOC_SUPPL_RECV,
                               uapi.TEE_IOC_SUPPL_SEND}
