"""The daemon's peers failing (docs/faults.md, "Faults and outcomes"): the
toolstack's control connection dying mid-request, a domain's frontend dying
while its call is in the TEE, and the TEE answering garbage. In each the
daemon keeps serving the other domains, and nothing leaks once the affected
domain is destroyed.

A real stubdom-teed process beside an in-process platform (tests/faults_support.py's
Stack). The TEE is wrapped where the SMC gate calls it (``platform.tee.smc``).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from faults_support import Stack, inc
from ring import EventChannel, FrontRing, Request
from stubdom.daemon import control_socket_path
from stubdom.guest import Context
from stubdom.hostile import HostileGuest
from stubdom.optee import (
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_OK,
)
from stubdom.optee.msg import unpack_header
from stubdom.platform.platform import domain_spec
from stubdom.public.control import encode
from stubdom.tee.tas import INCREMENT_UUID

TWO_DOMAINS = """\
domains:
  - domid: 1
    nr_pages: 1024
    vcpus: 2
  - domid: 2
    nr_pages: 1024
    vcpus: 1
"""
M32 = 0xFFFFFFFF
ENOTAVAIL_REGS = (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path, domains=TWO_DOMAINS) as s:
        yield s


def _control(stack) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(control_socket_path(stack.config.mediator.runtime_dir)))
    return s


# -- the toolstack disappearing -------------------------------------------------------------

def test_toolstack_connection_dying_mid_request_leaves_the_daemon_serving(stack):
    d1 = stack.boot(1)
    with Context(d1) as ctx:
        assert inc(ctx, 1) == 2
    # half a request, then the connection dies
    frame = encode({"op": "stats", "seq": 1})
    s = _control(stack)
    s.sendall(frame[: len(frame) // 2])
    s.close()
    # a whole domain_create, and the toolstack gone before the answer
    machine = stack.platform.machine
    machine.create_domain(2, nr_pages=1024)
    stack.platform.placement.gate.assign(2)
    s = _control(stack)
    s.sendall(encode({"op": "domain_create", "seq": 2, "domid": 2}))
    s.close()
    # the platform's own control connection goes too
    stack.platform.placement.toolstack.close()
    # the daemon still serves d1, and did what it was asked for d2
    with Context(d1) as ctx:
        assert inc(ctx, 10) == 11
    with stack.ctl() as c:
        deadline = time.monotonic() + 10
        while [d["domid"] for d in c.call("list")["domains"]] != [1, 2]:
            assert time.monotonic() < deadline, c.call("list")
            time.sleep(0.01)
        c.call("domain_destroy", domid=2)
    stack.platform.placement.gate.unassign(2)
    machine.destroy_domain(2)
    assert stack.daemon.proc.poll() is None
    stack.destroy_all()  # a fresh control connection from the platform
    stack.assert_clean()


# -- a frontend dying mid-call ----------------------------------------------------------------

class RawFrontend:
    """A frontend written against docs/protocol.md: the domain's ring and
    event channel, one call at a time; ``die`` closes both."""

    def __init__(self, directory, ring_pages: int) -> None:
        self.ring = FrontRing.attach(directory / "ring", ring_pages)
        self.chan = EventChannel.connect(directory / "evtchn")
        self.dead = threading.Event()
        self._id = 0

    def call(self, vcpu: int, regs) -> tuple:
        if self.dead.is_set():
            return ENOTAVAIL_REGS
        self._id += 1
        if self.ring.push(Request(self._id, vcpu, 0, tuple(regs))):
            self.chan.notify()
        deadline = time.monotonic() + 10
        while not self.dead.is_set() and time.monotonic() < deadline:
            rsp = self.ring.pop()
            if rsp is not None:
                return tuple(rsp.a)
            time.sleep(0.0005)
        return ENOTAVAIL_REGS  # the frontend is gone: its guest sees ENOTAVAIL

    def die(self) -> None:
        self.dead.set()
        self.chan.close()
        self.ring.close()


class _Shim:
    """What HostileGuest needs of a platform, for a domain reached through
    RawFrontend."""

    def __init__(self, machine, front: RawFrontend) -> None:
        self._machine, self._front = machine, front

    def domain(self, domid):
        return self._machine.domain(domid)

    def trap_entry(self, domid):
        return self._front.call


def test_frontend_dying_while_its_call_is_in_the_tee(stack):
    d1 = stack.boot(1)
    machine = stack.platform.machine
    machine.create_domain(2, nr_pages=1024)
    stack.platform.placement.gate.assign(2)
    with stack.ctl() as c:
        created = c.call("domain_create", domid=2)
    front = RawFrontend(Path(created["dir"]), created["ring_pages"])
    g = HostileGuest(_Shim(machine, front), 2)
    g.negotiate()
    inner = stack.platform.tee.smc
    seen = []
    completed = threading.Event()

    def smc(regs):  # the frontend dies while OP-TEE runs d2's REGISTER_SHM
        if regs[7] == 3 and regs[0] & M32 == OPTEE_SMC_CALL_WITH_ARG:
            maddr = ((regs[1] & M32) << 32) | (regs[2] & M32)
            if unpack_header(machine.read_machine(maddr, 32))[0] == OPTEE_MSG_CMD_REGISTER_SHM:
                front.die()
                r = inner(regs)
                seen.append(r[0])
                completed.set()
                return r
        return inner(regs)

    stack.platform.tee.smc = smc
    pages = g.pages(3)
    r, _ = g.register(g.cookie(), 3, buf_ptr=g.page_list(pages))
    assert r == ENOTAVAIL_REGS  # the guest's frontend went away first
    assert completed.wait(10) and seen == [OPTEE_SMC_RETURN_OK]  # OP-TEE completed it
    # the daemon completed the call: the registration's pages stay pinned for d2...
    mfns = [g.frame_of(p) for p in pages]
    deadline = time.monotonic() + 10
    while not all(machine.frame_refcount(m) for m in mfns):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # ...while d1 is served as before
    with Context(d1) as ctx:
        assert inc(ctx, 41) == 42
    assert stack.daemon.proc.poll() is None
    # destroying d2 releases them and its partition
    with stack.ctl() as c:
        c.call("domain_destroy", domid=2)
    stack.platform.placement.gate.unassign(2)
    assert machine.pinned_frames(2) == {}
    assert stack.platform.tee.partition_stats(3) is None
    machine.destroy_domain(2)
    stack.destroy_all()
    stack.assert_clean()


# -- the TEE answering garbage ------------------------------------------------------------------

GARBAGE = [
    # an RPC function OP-TEE never defines, naming a thread
    pytest.param(lambda r: (0xFFFF0042, 0, 0, r[3], 0, 0, 0, 0), id="unknown-rpc-func"),
    # RPC CMD naming an RPC buffer cookie nobody allocated
    pytest.param(lambda r: (0xFFFF0005, 0xDEAD, 0xBEEF, 0, 0, 0, 0, 0), id="rpc-cmd-unknown-cookie"),
    # RPC FREE of a cookie nobody allocated
    pytest.param(lambda r: (0xFFFF0002, 0x1234, 0x5678, 0, 0, 0, 0, 0), id="rpc-free-unknown-cookie"),
    # 64-bit junk in every register
    pytest.param(lambda r: tuple((0xA5A5_0000_0000_0000 | i * 0x1111_1111) for i in range(8)),
                 id="junk-registers"),
    # a return code OP-TEE never uses
    pytest.param(lambda r: (0x7FFF_FFFF, 1, 2, 3, 4, 5, 6, 7), id="unknown-return-code"),
]


@pytest.mark.parametrize("garble", GARBAGE)
def test_tee_garbage_gets_a_defined_error_and_leaks_nothing(stack, garble):
    d1 = stack.boot(1)
    stack.platform.create_domain(domain_spec(stack.config.domain(2)))
    g = HostileGuest(stack.platform, 2)
    g.negotiate()
    inner = stack.platform.tee.smc
    state = {"left": 1}

    def smc(regs):  # d2's next standard call gets garbage once, after OP-TEE ran it
        r = inner(regs)
        if regs[7] == 3 and regs[0] & M32 == OPTEE_SMC_CALL_WITH_ARG and state["left"]:
            state["left"] -= 1
            return garble(r)
        return r

    stack.platform.tee.smc = smc
    r, _out = g.open_session(INCREMENT_UUID)
    # a defined answer: registers the mediator chose, nothing of the garbage
    assert all(x <= M32 for x in r) and r[4:] == (0, 0, 0, 0)
    assert stack.daemon.proc.poll() is None
    # the service goes on for both domains
    with Context(d1) as ctx:
        assert inc(ctx, 7) == 8
    g.close_session(g.session(INCREMENT_UUID))
    stack.platform.destroy_domain(2)
    assert stack.platform.machine.pinned_frames(2) == {}
    assert stack.platform.tee.partition_stats(3) is None
    stack.destroy_all()
    stack.assert_clean()
