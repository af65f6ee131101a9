"""A C frontend built only against Xen's io/ring.h and the documented teeif
protocol (tests/c/teeif_c_frontend.c) issues OP-TEE fast calls to a domain
of a running stubdom-teed process: the ring and event channel the daemon
created for the domain, nothing of ours in between (issue 6, "Done when").

The platform (machine, OP-TEE model, SMC gate) runs in this process; the
domain is created as the toolstack does (gate assignment, then the
daemon's domain_create) but the platform's own frontend never attaches:
the C program is the domain's only frontend.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from stubdom.config import load_config
from stubdom.optee.smc import (
    OPTEE_MSG_REVISION_MAJOR,
    OPTEE_MSG_REVISION_MINOR,
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
)
from stubdom.platform import Platform
from stubdom.platform.launch import DaemonProcess
from stubdom.public.gate import GATE_OP_SMC

XEN_RING_H = Path("/usr/include/xen/io/ring.h")
FRONTEND_SRC = Path(__file__).parent / "c" / "teeif_c_frontend.c"
DOMID = 1
# OPTEE_SMC_CALLS_COUNT is answered by the mediator itself: the function IDs
# it serves a guest (CALLS_COUNT, CALLS_UID, CALLS_REVISION, GET_OS_UUID,
# GET_OS_REVISION, EXCHANGE_CAPABILITIES, GET_SHM_CONFIG, GET_THREAD_COUNT,
# ENABLE/DISABLE_SHM_CACHE, CALL_WITH_ARG/RPC_ARG/REGD_ARG, RETURN_FROM_RPC).
MEDIATOR_CALLS_COUNT = 14
OS_REVISION = (3, 22, 0x5EC0DE11)  # major, minor, build id: not the defaults


def _build(tmp_path: Path) -> Path:
    if not XEN_RING_H.exists():
        pytest.skip(f"{XEN_RING_H} is missing: apt-get install libxen-dev (Xen's public headers)")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: apt-get install gcc")
    exe = tmp_path / "teeif_c_frontend"
    subprocess.run([gcc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    str(FRONTEND_SRC)], check=True, capture_output=True)
    return exe


def _config(tmp_path: Path) -> Path:
    major, minor, build = OS_REVISION
    path = tmp_path / "xen.yaml"
    path.write_text(textwrap.dedent(f"""\
        tee:
          threads: 4
          os_revision: {{major: {major}, minor: {minor}, build_id: {build:#x}}}
        mediator:
          placement: stubdom
          runtime_dir: {tmp_path / 'run'}
          poll_window_us: 50
        platform:
          nr_frames: 16384
          seed: 3
        domains:
          - domid: {DOMID}
            nr_pages: 256
            vcpus: 2
        """))
    return path


def _parse(stdout: str) -> dict[tuple[int, str], tuple[int, int, tuple[int, ...]]]:
    """{(round, call): (status, flags, a0..a7)} from the frontend's lines."""
    out = {}
    lines = stdout.splitlines()
    assert lines[0] == "ring_pages=1 nr_ents=32", stdout
    assert lines[-1] == "done", stdout
    for line in lines[1:-1]:
        rnd, name, *fields = line.split()
        kv = dict(f.split("=") for f in fields)
        key = (int(rnd), name)
        assert key not in out, stdout
        out[key] = (int(kv["status"]), int(kv["flags"]), tuple(int(kv[f"a{k}"], 16) for k in range(8)))
    return out


def test_c_frontend_issues_fast_calls_to_a_running_daemon(tmp_path):
    exe = _build(tmp_path)
    path = _config(tmp_path)
    config = load_config(path)
    run = config.mediator.runtime_dir
    platform = Platform.for_config(config)
    daemon = DaemonProcess(path, tmp_path / "daemon.log")
    try:
        toolstack = platform.placement.toolstack
        daemon.wait_ready(toolstack, 30)
        # The toolstack's part: build the domain, give it to the stub domain
        # in the gate, ask the daemon for its backend. No Python frontend.
        platform.machine.create_domain(DOMID, nr_pages=256)
        platform.placement.gate.assign(DOMID)
        made = toolstack.domain_create(DOMID)
        assert made == {"domid": DOMID, "dir": str(run / f"dom{DOMID}"),
                        "ring": str(run / f"dom{DOMID}" / "ring"),
                        "evtchn": str(run / f"dom{DOMID}" / "evtchn"), "ring_pages": 1}

        proc = subprocess.run([str(exe), made["dir"]], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr + daemon.log_path.read_text()
        got = _parse(proc.stdout)

        unknown = (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7
        expected = {
            "CALLS_UID": (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3, 0, 0, 0, 0),
            "CALLS_REVISION": (OPTEE_MSG_REVISION_MAJOR, OPTEE_MSG_REVISION_MINOR, 0, 0, 0, 0, 0, 0),
            "GET_OS_REVISION": OS_REVISION + (0,) * 5,
            "CALLS_COUNT": (MEDIATOR_CALLS_COUNT,) + (0,) * 7,
            "UNKNOWN": unknown,
        }
        assert expected["CALLS_REVISION"][:2] == (2, 0)  # OPTEE_MSG_REVISION_MAJOR.MINOR, optee_msg.h
        assert unknown[0] == 0xFFFFFFFF
        assert got == {(rnd, name): (0, 0, regs) for rnd in (1, 2) for name, regs in expected.items()}

        # The daemon served them (policy, mediator, the gate for the
        # forwarded ones), counted under this domain.
        stats = toolstack.stats(DOMID)["domains"][str(DOMID)]
        assert sum(stats["calls"].values()) == 10 and stats["calls"]["unknown"] == 2, stats
        assert stats["errors"] == 0 and stats["refusals"] == {} and stats["in_flight"] == 0, stats
        # UID, revision and OS revision are forwarded to OP-TEE, twice each,
        # as this domain through the gate; CALLS_COUNT and the unknown ID
        # never leave the mediator
        assert platform.placement.gate.statistics().calls[(DOMID, GATE_OP_SMC)] == 6
        (listed,) = toolstack.list()["domains"]
        assert listed["domid"] == DOMID and listed["connections"] == 1, listed

        assert toolstack.domain_destroy(DOMID) == {"domid": DOMID}
        platform.placement.gate.unassign(DOMID)
        platform.machine.destroy_domain(DOMID)
        assert not (run / f"dom{DOMID}").exists()
    finally:
        status = daemon.stop()
        platform.close()
    assert status == 0, daemon.log_path.read_text()
    assert not platform.oracle.violations, platform.oracle.violations
