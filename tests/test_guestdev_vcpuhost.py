"""The platform's vCPU host (stubdom/platform/vcpuhost.py) and the guest's
side of it (stubdom/guestdev/vcpus.py): a guest kernel in another process
gets its domain, traps through the platform's own trap path, and loses its
domain when it asks or goes away; what the host refuses; the guest-dev
command when there is no platform or it refuses."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest

from other_user import finish
from stubdom.guestdev import PlatformGone, PlatformRefused, PlatformUnavailable, VcpuPool, attach_domain
from stubdom.optee.smc import (
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_CALLS_UID,
)
from stubdom.platform import Platform
from stubdom.platform.el2 import El2Placement
from stubdom.platform.vcpuhost import REGS, VcpuHost, vcpu_host_path
from stubdom.tee import TeeConfig

WAIT = 30.0  # a bound a passing test never reaches
UID = (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3)


@pytest.fixture
def host(tmp_path: Path):
    platform = Platform(tmp_path / "machine", nr_frames=16384, tee_config=TeeConfig(), placement=El2Placement)
    h = VcpuHost(platform, tmp_path, reserved={1})
    try:
        yield h
    finally:
        h.close()
        assert platform.domids() == []
        assert platform.machine.pinned_frames() == {}
        platform.close()
        assert platform.oracle.violations == []


def _wait_gone(host: VcpuHost, domid: int) -> None:
    deadline = time.monotonic() + WAIT
    while domid in host.platform.domids():
        assert time.monotonic() < deadline, f"d{domid} still exists"
        time.sleep(0.01)


def test_a_remote_guest_traps_into_the_platform(host, tmp_path) -> None:
    lease = attach_domain(tmp_path, 7, nr_pages=128, vcpus=2, wait=WAIT)
    assert (lease.domid, lease.placement, lease.machine) == (7, "el2", host.platform.machine.path)
    assert host.platform.domids() == [7] and host.domids == [7]
    pool = VcpuPool(7, lease.vcpus)
    assert pool.trap(0, (OPTEE_SMC_CALLS_UID,) + (0,) * 7)[:4] == UID
    assert sum(pool.traps) == 1
    answer = lease.release()
    assert answer == {"ok": True, "destroyed": 7, "traps": 1}
    lease.close()
    assert host.platform.domids() == []


def test_a_guest_process_that_goes_away_loses_its_domain(host, tmp_path) -> None:
    lease = attach_domain(tmp_path, 8, nr_pages=128, vcpus=1, wait=WAIT)
    lease.close()  # no destroy request: the process died
    _wait_gone(host, 8)


@pytest.mark.parametrize(("domid", "pages", "vcpus", "why"), [
    (1, 128, 1, "d1 is a domain the configuration declares"),
    (0, 128, 1, "domid 0 outside 1 .. 0x7fef"),
    (9, 128, 0, "vcpus 0 outside 1 .. 8"),
    (9, 128, 9, "vcpus 9 outside 1 .. 8"),
    (9, 10, 1, "nr_pages 10 outside 64 .. "),
])
def test_what_the_host_refuses(host, tmp_path, domid, pages, vcpus, why) -> None:
    with pytest.raises(PlatformRefused, match=why):
        attach_domain(tmp_path, domid, nr_pages=pages, vcpus=vcpus, wait=WAIT)
    assert host.platform.domids() == []


def test_a_domid_in_use_is_refused(host, tmp_path) -> None:
    lease = attach_domain(tmp_path, 7, nr_pages=128, vcpus=1, wait=WAIT)
    with pytest.raises(PlatformRefused, match="d7 exists"):
        attach_domain(tmp_path, 7, nr_pages=128, vcpus=1, wait=WAIT)
    lease.release()
    lease.close()


def test_garbage_is_refused(host, tmp_path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(vcpu_host_path(tmp_path)))
    sock.send(b"\xc1 not msgpack")
    assert b"malformed msgpack" in sock.recv(4096)
    sock.close()


def test_a_malformed_trap_stops_that_vcpu(host, tmp_path) -> None:
    lease = attach_domain(tmp_path, 7, nr_pages=128, vcpus=2, wait=WAIT)
    lease.vcpus[0].send(b"short")
    assert lease.vcpus[0].recv(REGS.size) == b""  # the platform stopped listening on it
    pool = VcpuPool(7, lease.vcpus[1:])
    assert pool.trap(0, (OPTEE_SMC_CALLS_UID,) + (0,) * 7)[:4] == UID
    lease.release()
    with pytest.raises(PlatformGone):
        pool.trap(0, (OPTEE_SMC_CALLS_UID,) + (0,) * 7)
    lease.close()


def test_no_platform(tmp_path) -> None:
    with pytest.raises(PlatformUnavailable, match="no platform at"):
        attach_domain(tmp_path, 7, nr_pages=128, vcpus=1, wait=0)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "xen.yaml"
    path.write_text(textwrap.dedent(f"""\
        mediator:
          placement: el2
          runtime_dir: {tmp_path}
        platform:
          nr_frames: 16384
        domains: []
        """))
    return path


def test_guest_dev_command_without_or_refused_by_a_platform(tmp_path) -> None:
    cmd = [sys.executable, "-P", "-m", "stubdom", "guest-dev", "--config", str(_config(tmp_path)), "--wait", "0"]
    proc = subprocess.run([*cmd, "--domid", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"no platform at {vcpu_host_path(tmp_path)}" in proc.stdout, proc.stdout
    platform = Platform(tmp_path / "machine", nr_frames=16384, tee_config=TeeConfig(), placement=El2Placement)
    try:
        with VcpuHost(platform, tmp_path, reserved={1}):
            proc = subprocess.run([*cmd, "--domid", "1"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "the platform refused d1: d1 is a domain the configuration declares" \
            in proc.stdout, proc.stdout
    finally:
        platform.close()


# Another user's guest kernel: connects to ./vcpus, sends a create request,
# prints what came back before end-of-file.
OTHER_GUEST = """\
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("vcpus")
try:
    s.send(bytes.fromhex(sys.argv[1]))
except (BrokenPipeError, ConnectionResetError):
    pass  # closed before we wrote: what matters is that nothing comes back
try:
    got = s.recv(4096)
except ConnectionResetError:
    got = b""
print(repr(got), flush=True)
"""


def test_another_users_guest_kernel_is_refused(host, tmp_path, other_user) -> None:
    # the modes taken away: the peer's credentials still refuse it
    host.path.parent.chmod(0o755)
    host.path.chmod(0o666)
    create = msgpack.packb({"op": "create", "domid": 7, "nr_pages": 128, "vcpus": 1})
    out, err = finish(other_user.spawn(OTHER_GUEST, create.hex(), cwd=host.path.parent))
    assert out == "b''\n", err  # closed before a byte was read
    assert host.platform.domids() == []
