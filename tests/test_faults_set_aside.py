"""Recovery of a call whose own effect removed pins the journal's snapshot
still holds (docs/faults.md, "Recovery, per domain": settle, set aside).

Each kill is exact: a wrapper around the platform's TEE (what the SMC gate
calls) or the guest's supplicant acts at a chosen SMC, and the daemon's
journal is capped with RLIMIT_FSIZE (prlimit(2) on the daemon process, EFBIG
on the same path as a full disk) so that a call's ``begin`` is on file and
its ``state`` is not.
"""

from __future__ import annotations

import resource
import threading
import time

import pytest

from stubdom.guest import Context, TeecError
from stubdom.guest.client import INOUT, Value
from stubdom.hostile import HostileGuest
from stubdom.optee import (
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_OK,
)
from stubdom.optee.msg import unpack_header
from stubdom.optee.teec import TEEC_ERROR_BAD_PARAMETERS, TEEC_ERROR_COMMUNICATION
from stubdom.platform.platform import domain_spec
from stubdom.tee.tas import INCREMENT_UUID
from stubdom.tee.tas.increment import TA_INCREMENT_CMD_INC_VALUE
from stubdom.xen import PAGE_SIZE
from test_faults_restart import SERVICE_SLACK_S, Stack, inc

M32 = 0xFFFFFFFF
CLIENT_D1 = 2  # OP-TEE client ID of domain 1 (domid + 1)
_STD_CALLS = (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


def journal_path(stack: Stack):
    return stack.config.mediator.runtime_dir / "stubdom-teed" / "journal"


def cap_journal(stack: Stack, room: int = 0) -> None:
    """From now on the daemon can write ``room`` more bytes to the journal."""
    pid = stack.daemon.proc.pid
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (journal_path(stack).stat().st_size + room, hard))


class AtStdCall:
    """Wraps the platform's TEE: once armed, runs ``action`` when domain 1's
    standard call of message command ``cmd`` reaches OP-TEE — ``before`` it
    runs there, or after. The mediator hands OP-TEE CALL_WITH_ARG or
    CALL_WITH_RPC_ARG with its shadow page (a REGD_ARG too)."""

    def __init__(self, stack: Stack, cmd: int, action, *, before: bool = True) -> None:
        self.armed = False
        self.fired = threading.Event()
        self.ret: int | None = None  # what OP-TEE wrote in the shadow's ret
        inner = stack.platform.tee.smc
        machine = stack.platform.machine

        def smc(regs):
            hit = False
            if self.armed and regs[7] == CLIENT_D1 and regs[0] & M32 in _STD_CALLS:
                maddr = ((regs[1] & M32) << 32) | (regs[2] & M32)
                hit = unpack_header(machine.read_machine(maddr, 32))[0] == cmd
            if hit:
                self.armed = False
                if before:
                    out = action(regs)
                    if out is not None:
                        self.fired.set()
                        return out  # OP-TEE never sees the call
            r = inner(regs)
            if hit:
                self.ret = unpack_header(machine.read_machine(maddr, 32))[5]
                if not before:
                    action(regs)
                self.fired.set()
            return r

        stack.platform.tee.smc = smc  # the instance attribute the gate calls


def _service(stack: Stack, d: int, value: int) -> None:
    """The domain's guest, unchanged (no re-probe), gets service again."""
    bound = stack.config.mediator.call_timeout_ms / 1000 + SERVICE_SLACK_S
    deadline = time.monotonic() + bound
    while True:
        try:
            with Context(stack.drivers[d]) as ctx:
                assert inc(ctx, value) == value + 1
            return
        except TeecError as e:
            assert e.ret == TEEC_ERROR_COMMUNICATION, e
            assert time.monotonic() < deadline, f"d{d}: no service {bound} s after the restart"
            time.sleep(0.05)


def _settled_line(log: str, domid: int) -> str:
    line = next((ln for ln in log.splitlines() if f"event=recovery_settled domid={domid}" in ln), None)
    assert line is not None, log
    return line


# -- 1. an UNREGISTER_SHM OP-TEE completed and the mediator unpinned, no ``state`` -----------

def test_unregister_completed_and_unpinned_before_its_state_settles_not_resets(stack):
    """The daemon answered a standard UNREGISTER_SHM (OP-TEE dropped the
    registration, the mediator its pins), its ``state`` never reached the
    journal, then SIGKILL. The snapshot holds that registration and the
    frame table lacks its pins: the open UNREGISTER_SHM explains them, so
    recovery sets the registration aside and settles. Before: reset, and a
    Linux-like guest lost its argument-cache registration (no service)."""
    d1 = stack.boot(1)
    stack.boot(2)
    ctx = Context(d1)
    session = ctx.open_session(INCREMENT_UUID)
    kept = ctx.register_memory(2 * PAGE_SIZE)
    gone = ctx.register_memory(3 * PAGE_SIZE)
    tee = stack.platform.tee
    machine = stack.platform.machine
    regs_before = tee.partition_stats(CLIENT_D1).registered_shm
    pins_before = machine.pinned_frames(1)
    # the ``begin`` is written before the SMC: from here no more journal
    hook = AtStdCall(stack, OPTEE_MSG_CMD_UNREGISTER_SHM, lambda regs: cap_journal(stack))
    hook.armed = True
    gone.release()
    assert hook.fired.is_set() and hook.ret == 0  # OP-TEE unregistered it
    pins_after = machine.pinned_frames(1)
    freed = {m for m, n in pins_before.items() if pins_after.get(m, 0) < n}
    assert len(freed) == 3  # the mediator unpinned the registration's pages
    assert "event=journal_write_failed" in stack.daemon.log(), stack.daemon.log()
    stack.restart()
    log = stack.daemon.log()
    line = _settled_line(log, 1)
    assert f"registration {gone.shm.cookie:#x} (unregistered)" in line, line
    assert "recovery_reset" not in log, log
    # the mediator no longer holds it, OP-TEE neither, its frames are free
    with stack.ctl() as c:
        dump = c.call("dump", domid=1)
    cookies = {b["cookie"] for b in dump["shm_buffers"]}
    assert gone.shm.cookie not in cookies and kept.shm.cookie in cookies, dump
    assert tee.partition_stats(CLIENT_D1).registered_shm == regs_before - 1
    assert machine.pinned_frames(1) == pins_after
    assert all(machine.frame_refcount(m) == 0 for m in freed)
    # every other registration and session of the domain, and its service
    out = session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(41, 0, INOUT)])
    assert out[0].a == 42
    _service(stack, 1, 50)
    _service(stack, 2, 60)
    kept.release()
    session.close()
    ctx.close()
    assert tee.partition_stats(CLIENT_D1).registered_shm == regs_before - 2
    assert stack.platform.oracle.violations == []
    stack.destroy_all()
    stack.assert_clean()


@pytest.mark.parametrize("ran", [False, True], ids=["before-optee", "optee-completed"])
def test_unregister_whose_pins_are_still_held_is_unregistered_again(stack, ran):
    """The mirror: the UNREGISTER_SHM began (its ``begin`` on file) and the
    daemon died with the registration's pins still held — before the call
    reached OP-TEE, or after OP-TEE completed it and before the gate
    answered. Nothing is set aside; recovery finishes the guest's intent
    (its guest got ENOTAVAIL and, like Linux, forgets the buffer anyway):
    UNREGISTER_SHM again ("not found" if the lost one ran), then the pins go.
    The registration is gone on both sides either way."""
    stack.platform.create_domain(domain_spec(stack.config.domain(1)))
    g = HostileGuest(stack.platform, 1)
    g.negotiate()
    cookie = g.cookie()
    pages = g.pages(2)
    mfns = [g.frame_of(p) for p in pages]
    r, out = g.register(cookie, 2, buf_ptr=g.page_list(pages))
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
    kept = g.session(INCREMENT_UUID)
    tee = stack.platform.tee

    def kill(regs):
        stack.daemon.proc.kill()
        stack.daemon.proc.wait(20)
        # not ``ran``: the gate answers the dead daemon without reaching
        # OP-TEE, as if it had died between its ``begin`` and its SMC
        return None if ran else (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7

    hook = AtStdCall(stack, OPTEE_MSG_CMD_UNREGISTER_SHM, kill, before=not ran)
    hook.armed = True
    result: list = []
    t = threading.Thread(target=lambda: result.append(g.unregister(cookie)[0]), daemon=True)
    t.start()
    assert hook.fired.wait(30)
    stack.daemon.stop()
    stack.start()
    t.join(30)
    assert result and result[0][0] == OPTEE_SMC_RETURN_ENOTAVAIL
    log = stack.daemon.log()
    line = _settled_line(log, 1)
    expected = TEEC_ERROR_BAD_PARAMETERS if ran else 0  # "not found": the lost one ran
    assert f"unregistered cookie {cookie:#x} again (ret {expected:#x}), pins released" in line, line
    assert "set_aside=nothing" in line, line
    assert tee.partition_stats(CLIENT_D1).registered_shm == 0
    assert all(stack.platform.machine.frame_refcount(m) == 0 for m in mfns)
    _, out = g.close_session(kept)  # the rest of the domain is as it was
    assert out.ret == 0
    assert stack.platform.oracle.violations == []
    stack.platform.destroy_domain(1)
    stack.assert_clean()
