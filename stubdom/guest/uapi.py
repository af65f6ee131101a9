"""The Linux TEE subsystem's user interface: <linux/tee.h>.

Values and layouts are those of include/uapi/linux/tee.h as Debian's
linux-libc-dev installs it (/usr/include/linux/tee.h, Linux 6.1); the ioctl
numbers follow include/uapi/asm-generic/ioctl.h, the encoding arm64 and x86-64
share.  tests/test_guestdev_uapi.py compiles a C program against the header and
compares every value and every struct size and offset with this module.

Struct layouts are given as :mod:`struct` formats ("<" little-endian, no
implicit padding: each C struct here has none).
"""

from __future__ import annotations

import struct

__all__ = [
    "TEE_IOC_MAGIC",
    "TEE_IOC_BASE",
    "TEE_MAX_ARG_SIZE",
    "TEE_GEN_CAP_GP",
    "TEE_GEN_CAP_PRIVILEGED",
    "TEE_GEN_CAP_REG_MEM",
    "TEE_GEN_CAP_MEMREF_NULL",
    "TEE_MEMREF_NULL",
    "TEE_IMPL_ID_OPTEE",
    "TEE_IMPL_ID_AMDTEE",
    "TEE_OPTEE_CAP_TZ",
    "TEE_IOCTL_PARAM_ATTR_TYPE_NONE",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT",
    "TEE_IOCTL_PARAM_ATTR_TYPE_MASK",
    "TEE_IOCTL_PARAM_ATTR_META",
    "TEE_IOCTL_PARAM_ATTR_MASK",
    "TEE_IOCTL_LOGIN_PUBLIC",
    "TEE_IOCTL_LOGIN_USER",
    "TEE_IOCTL_LOGIN_GROUP",
    "TEE_IOCTL_LOGIN_APPLICATION",
    "TEE_IOCTL_LOGIN_USER_APPLICATION",
    "TEE_IOCTL_LOGIN_GROUP_APPLICATION",
    "TEE_IOCTL_LOGIN_REE_KERNEL_MIN",
    "TEE_IOCTL_LOGIN_REE_KERNEL_MAX",
    "TEE_IOCTL_LOGIN_REE_KERNEL",
    "TEE_IOCTL_UUID_LEN",
    "VERSION_DATA",
    "SHM_ALLOC_DATA",
    "BUF_DATA",
    "PARAM",
    "OPEN_SESSION_ARG",
    "INVOKE_ARG",
    "CANCEL_ARG",
    "CLOSE_SESSION_ARG",
    "SUPP_RECV_ARG",
    "SUPP_SEND_ARG",
    "SHM_REGISTER_DATA",
    "TEE_IOC_VERSION",
    "TEE_IOC_SHM_ALLOC",
    "TEE_IOC_OPEN_SESSION",
    "TEE_IOC_INVOKE",
    "TEE_IOC_CANCEL",
    "TEE_IOC_CLOSE_SESSION",
    "TEE_IOC_SUPPL_RECV",
    "TEE_IOC_SUPPL_SEND",
    "TEE_IOC_SHM_REGISTER",
    "TEE_IOCTLS",
    "BUF_IOCTLS",
    "ioc",
    "ioc_size",
    "ioc_type",
]

# -- include/uapi/asm-generic/ioctl.h ----------------------------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE, _IOC_READ = 1, 2


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size)."""
    return direction << _IOC_DIRSHIFT | size << _IOC_SIZESHIFT | type_ << _IOC_TYPESHIFT | nr << _IOC_NRSHIFT


def ioc_size(cmd: int) -> int:
    """_IOC_SIZE(cmd): bytes of the argument the command names."""
    return cmd >> _IOC_SIZESHIFT & ((1 << _IOC_SIZEBITS) - 1)


def ioc_type(cmd: int) -> int:
    """_IOC_TYPE(cmd): the driver's magic byte."""
    return cmd >> _IOC_TYPESHIFT & ((1 << _IOC_TYPEBITS) - 1)


# -- include/uapi/linux/tee.h --------------------------------------------------------
TEE_IOC_MAGIC = 0xA4
TEE_IOC_BASE = 0
TEE_MAX_ARG_SIZE = 1024

TEE_GEN_CAP_GP = 1 << 0  # GlobalPlatform compliant TEE
TEE_GEN_CAP_PRIVILEGED = 1 << 1  # privileged device (for supplicant)
TEE_GEN_CAP_REG_MEM = 1 << 2  # supports registering shared memory
TEE_GEN_CAP_MEMREF_NULL = 1 << 3  # NULL MemRef support

TEE_MEMREF_NULL = (1 << 64) - 1  # (__u64)(-1): a NULL memref's shm id

TEE_IMPL_ID_OPTEE = 1
TEE_IMPL_ID_AMDTEE = 2
TEE_OPTEE_CAP_TZ = 1 << 0

TEE_IOCTL_PARAM_ATTR_TYPE_NONE = 0
TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT = 1
TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT = 2
TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT = 3
TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT = 5
TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT = 6
TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT = 7
TEE_IOCTL_PARAM_ATTR_TYPE_MASK = 0xFF
TEE_IOCTL_PARAM_ATTR_META = 0x100
TEE_IOCTL_PARAM_ATTR_MASK = TEE_IOCTL_PARAM_ATTR_TYPE_MASK | TEE_IOCTL_PARAM_ATTR_META

TEE_IOCTL_LOGIN_PUBLIC = 0
TEE_IOCTL_LOGIN_USER = 1
TEE_IOCTL_LOGIN_GROUP = 2
TEE_IOCTL_LOGIN_APPLICATION = 4
TEE_IOCTL_LOGIN_USER_APPLICATION = 5
TEE_IOCTL_LOGIN_GROUP_APPLICATION = 6
TEE_IOCTL_LOGIN_REE_KERNEL_MIN = 0x80000000
TEE_IOCTL_LOGIN_REE_KERNEL_MAX = 0xBFFFFFFF
TEE_IOCTL_LOGIN_REE_KERNEL = 0x80000000

TEE_IOCTL_UUID_LEN = 16

# Struct layouts.  The trailing "params[]" flexible arrays are not part of the
# sizes, as in C.
VERSION_DATA = struct.Struct("<III")  # impl_id, impl_caps, gen_caps
SHM_ALLOC_DATA = struct.Struct("<QIi")  # size, flags, id
BUF_DATA = struct.Struct("<QQ")  # buf_ptr, buf_len
PARAM = struct.Struct("<QQQQ")  # attr, a, b, c
# uuid, clnt_uuid, clnt_login, cancel_id, session, ret, ret_origin, num_params
OPEN_SESSION_ARG = struct.Struct("<16s16sIIIIII")
INVOKE_ARG = struct.Struct("<IIIIII")  # func, session, cancel_id, ret, ret_origin, num_params
CANCEL_ARG = struct.Struct("<II")  # cancel_id, session
CLOSE_SESSION_ARG = struct.Struct("<I")  # session
SUPP_RECV_ARG = struct.Struct("<II")  # func, num_params
SUPP_SEND_ARG = struct.Struct("<II")  # ret, num_params
SHM_REGISTER_DATA = struct.Struct("<QQIi")  # addr, length, flags, id

# Field offsets the kernel writes back one by one (put_user), by struct.
OPEN_SESSION_SESSION_OFFSET = 40
OPEN_SESSION_RET_OFFSET = 44
OPEN_SESSION_RET_ORIGIN_OFFSET = 48
OPEN_SESSION_NUM_PARAMS_OFFSET = 52
INVOKE_RET_OFFSET = 12
INVOKE_RET_ORIGIN_OFFSET = 16
INVOKE_NUM_PARAMS_OFFSET = 20
PARAM_B_OFFSET = 16

_R = _IOC_READ
_RW = _IOC_READ | _IOC_WRITE
TEE_IOC_VERSION = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 0, VERSION_DATA.size)
TEE_IOC_SHM_ALLOC = ioc(_RW, TEE_IOC_MAGIC, TEE_IOC_BASE + 1, SHM_ALLOC_DATA.size)
TEE_IOC_OPEN_SESSION = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 2, BUF_DATA.size)
TEE_IOC_INVOKE = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 3, BUF_DATA.size)
TEE_IOC_CANCEL = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 4, CANCEL_ARG.size)
TEE_IOC_CLOSE_SESSION = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 5, CLOSE_SESSION_ARG.size)
TEE_IOC_SUPPL_RECV = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 6, BUF_DATA.size)
TEE_IOC_SUPPL_SEND = ioc(_R, TEE_IOC_MAGIC, TEE_IOC_BASE + 7, BUF_DATA.size)
TEE_IOC_SHM_REGISTER = ioc(_RW, TEE_IOC_MAGIC, TEE_IOC_BASE + 9, SHM_REGISTER_DATA.size)

TEE_IOCTLS = {
    "TEE_IOC_VERSION": TEE_IOC_VERSION,
    "TEE_IOC_SHM_ALLOC": TEE_IOC_SHM_ALLOC,
    "TEE_IOC_OPEN_SESSION": TEE_IOC_OPEN_SESSION,
    "TEE_IOC_INVOKE": TEE_IOC_INVOKE,
    "TEE_IOC_CANCEL": TEE_IOC_CANCEL,
    "TEE_IOC_CLOSE_SESSION": TEE_IOC_CLOSE_SESSION,
    "TEE_IOC_SUPPL_RECV": TEE_IOC_SUPPL_RECV,
    "TEE_IOC_SUPPL_SEND": TEE_IOC_SUPPL_SEND,
    "TEE_IOC_SHM_REGISTER": TEE_IOC_SHM_REGISTER,
}
# The ioctls whose argument is a tee_ioctl_buf_data naming a second buffer.
BUF_IOCTLS = frozenset((TEE_IOC_OPEN_SESSION, TEE_IOC_INVOKE, TEE_IOC_SUPPL_RECV, TEE_IOC_SUPPL_SEND))
