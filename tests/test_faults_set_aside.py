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
import signal
import threading
import time

import pytest

from faults_support import SERVICE_SLACK_S, Stack, inc
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

M32 = 0xFFFFFFFF
CLIENT_D1 = 2  # OP-TEE client ID of domain 1 (domid + 1)
_STD_CALLS = (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG)


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path) as s:
        yield s


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


# -- 2. a set-aside call OP-TEE still holds, freeing an RPC SHM buffer on its way out --------

TWO_CACHES_CMD = 0x7E57  # not a storage TA command: the wrapper below runs it


def _two_cache_users(tee) -> None:
    """The storage TA also answers TWO_CACHES_CMD: it takes a buffer from
    two users of its thread's RPC SHM cache (two SHM_ALLOCs, through the
    model's thread_rpc_shm_cache_alloc), makes one tee-supplicant request
    (an FS CLOSE of a descriptor it never opened: answered with an error),
    and returns; OP-TEE's end of call (thread_rpc_shm_cache_clear) then frees
    both, one SHM_FREE each. The built-in TAs use one cache user; OP-TEE
    core holds up to three per thread (REE FS, sockets, I2C)."""
    from stubdom.optee.rpc import OPTEE_RPC_CMD_FS, OPTEE_RPC_FS_CLOSE, OPTEE_RPC_SHM_TYPE_APPL
    from stubdom.optee.teec import TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS
    from stubdom.tee.tas import STORAGE_UUID
    from stubdom.tee.thread import SHM_CACHE_USER_FS, SHM_CACHE_USER_I2C, RpcParam

    # a second user of the per-thread RPC SHM cache, cleared after the FS one
    assert SHM_CACHE_USER_FS < SHM_CACHE_USER_I2C
    ta = tee.tas[STORAGE_UUID]
    inner = ta.invoke

    def invoke(ctx, cmd, params):
        if cmd != TWO_CACHES_CMD:
            return (yield from inner(ctx, cmd, params))
        for user in (SHM_CACHE_USER_FS, SHM_CACHE_USER_I2C):
            mobj = yield from ctx.thread.shm_cache_alloc(user, OPTEE_RPC_SHM_TYPE_APPL, 64)
            if mobj is None:
                return TEE_ERROR_OUT_OF_MEMORY
        yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_FS, [RpcParam.value_in(OPTEE_RPC_FS_CLOSE, 0x7E57, 0)])
        return TEE_SUCCESS

    ta.invoke = invoke


class KillAtFirstShmFree:
    """The guest's supplicant hooks for one TWO_CACHES_CMD: at its FS CLOSE
    the daemon's journal is capped to fit the ``begin`` of the resume that
    answers it and not the ``state`` after; that resume makes OP-TEE free
    the first cache buffer (SHM_FREE, unpinned by the mediator on the way
    out). When that SHM_FREE reaches the supplicant the daemon is SIGKILLed:
    the snapshot holds both buffers, the frame table only the second, and
    OP-TEE holds the call suspended with the second still to free."""

    def __init__(self, stack: Stack, supplicant) -> None:
        from stubdom.optee.rpc import OPTEE_RPC_CMD_FS, OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE

        self.armed = False
        self.fired = threading.Event()
        self.pins_at_close: dict[int, int] = {}
        self.allocated = 0
        inner = supplicant.process

        def process(cmd, params):
            if self.armed and cmd == OPTEE_RPC_CMD_SHM_ALLOC:
                self.allocated += 1
            elif self.armed and cmd == OPTEE_RPC_CMD_FS:
                self.pins_at_close = stack.platform.machine.pinned_frames(1)
                room = 8 + 64  # a framed ``begin`` of a resume (intent null) is ~60 bytes
                cap_journal(stack, room)
            elif self.armed and self.pins_at_close and cmd == OPTEE_RPC_CMD_SHM_FREE:
                self.armed = False
                stack.daemon.proc.kill()
                stack.daemon.proc.wait(20)
                self.fired.set()
            return inner(cmd, params)

        supplicant.process = process


def test_set_aside_call_freeing_rpc_shm_in_settle_orphans_releases_it_once(stack):
    """Recovery sets aside the resumed call and the RPC SHM buffer OP-TEE
    gave back before the kill, keeps the other (its pins are there), and
    settle_orphans ends the call in OP-TEE, which frees that other buffer on
    its way out: its pins go then, once. Before: it stayed pinned in the
    context until the domain was destroyed."""
    from stubdom.guest import MemoryStore, Supplicant
    from stubdom.tee.tas import STORAGE_UUID

    _two_cache_users(stack.platform.tee)
    sup = Supplicant(MemoryStore())
    hook = KillAtFirstShmFree(stack, sup)
    d1 = stack.boot(1, supplicant=sup)
    stack.boot(2)
    machine = stack.platform.machine
    with Context(d1) as ctx:
        session = ctx.open_session(STORAGE_UUID)
        pins_before = machine.pinned_frames(1)
        hook.armed = True
        with pytest.raises(TeecError) as e:
            session.invoke(TWO_CACHES_CMD)
        assert e.value.ret == TEEC_ERROR_COMMUNICATION
    assert hook.fired.is_set() and hook.allocated == 2
    assert "event=journal_write_failed" in stack.daemon.log(), stack.daemon.log()
    # the two cache buffers' frames, pinned while the call was at FS CLOSE
    rpc_shm = {m for m, n in hook.pins_at_close.items() if n > pins_before.get(m, 0)}
    assert rpc_shm
    still = {m for m in rpc_shm if machine.frame_refcount(m)}  # the second buffer's
    assert still and still != rpc_shm
    stack.daemon.stop()
    stack.start()
    log = stack.daemon.log()
    line = _settled_line(log, 1)
    assert "call " in line and line.count("rpc shm") == 1, line  # the first buffer only
    assert "recovery_reset" not in log, log
    with stack.ctl() as c:
        dump = c.call("dump", domid=1)
    assert [b for b in dump["shm_buffers"] if b["kind"] == "rpc"] == [], dump
    # released when OP-TEE freed it, exactly once: no pin left, none dropped twice
    assert all(machine.frame_refcount(m) == 0 for m in rpc_shm)
    now = machine.pinned_frames(1)
    assert all(n <= pins_before.get(m, 0) for m, n in now.items()), (now, pins_before)
    part = stack.platform.tee.partition_stats(CLIENT_D1)
    assert part.threads_suspended == 0, part
    _service(stack, 1, 70)
    _service(stack, 2, 80)
    assert stack.platform.oracle.violations == []
    stack.destroy_all()
    stack.assert_clean()


# -- 3. a suspended REGISTER_SHM whose resume is found stale on the ring ---------------------

def test_stale_resume_of_a_suspended_register_shm_unregisters_before_unpinning(stack):
    """A REGISTER_SHM can be suspended before OP-TEE runs the command: with
    the prealloc RPC cache on, a call that brings its own RPC argument
    (CALL_WITH_RPC_ARG) first hands back the thread's cached RPC ALLOC buffer
    (RPC FREE; call_entry_std's clear_prealloc_rpc_cache). Its guest resumes
    it while the daemon is stopped, the daemon is SIGKILLed with that resume
    on the ring, and the successor finds it there (``_answer_stale``): the
    call is abandoned, OP-TEE completes the registration, and recovery
    undoes it. OP-TEE must be told UNREGISTER_SHM while the frames are still
    pinned (undo, then release), never after."""
    from stubdom.optee import (
        OPTEE_MSG_ATTR_NONCONTIG,
        OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
        OPTEE_MSG_CMD_INVOKE_COMMAND,
        OPTEE_MSG_CMD_REGISTER_SHM,
        OPTEE_SMC_ENABLE_SHM_CACHE,
        MsgArg,
        MsgParam,
    )
    from stubdom.optee.smc import OPTEE_SMC_RPC_FUNC_FREE, is_rpc_return, rpc_func
    from stubdom.tee.tas import STORAGE_CMD_READ, STORAGE_UUID

    stack.platform.create_domain(domain_spec(stack.config.domain(1)))
    g = HostileGuest(stack.platform, 1)
    g.negotiate()
    assert g.rpc_arg
    assert g.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
    # a storage READ through CALL_WITH_ARG: OP-TEE allocates its RPC argument
    # with RPC ALLOC and, the cache being on, keeps it on the thread
    session = g.session(STORAGE_UUID)
    name, out_page = g.page(), g.page()
    g.write(name, b"no-such-object")
    read = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_READ, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([name]), 14,
                      g.cookie()),
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([out_page]),
                      PAGE_SIZE, g.cookie())))
    r, _, _ = g.call(read)
    assert r[0] == OPTEE_SMC_RETURN_OK
    assert stack.platform.tee.partition_stats(CLIENT_D1).cached_rpc_args == 1
    # REGISTER_SHM with its own RPC argument: suspended in the RPC FREE
    cookie = g.cookie()
    pages = g.pages(2)
    mfns = [g.frame_of(p) for p in pages]
    arg = g.page()
    g.write_arg(arg, MsgArg(OPTEE_MSG_CMD_REGISTER_SHM, params=(MsgParam.tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list(pages), 2 * PAGE_SIZE,
        cookie),)))
    r = g.start(arg, OPTEE_SMC_CALL_WITH_RPC_ARG)
    assert is_rpc_return(r[0]) and rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_FREE, r
    assert all(stack.platform.machine.frame_refcount(m) == 1 for m in mfns)  # pending registration
    # whether OP-TEE is told UNREGISTER_SHM of it while its frames are pinned
    pinned_at_unregister: list[bool] = []
    inner = stack.platform.tee.smc
    machine = stack.platform.machine

    def smc(regs):
        if regs[7] == CLIENT_D1 and regs[0] & M32 in _STD_CALLS:
            maddr = ((regs[1] & M32) << 32) | (regs[2] & M32)
            hdr = unpack_header(machine.read_machine(maddr, 32))
            if hdr[0] == OPTEE_MSG_CMD_UNREGISTER_SHM:
                pinned_at_unregister.append(all(machine.frame_refcount(m) for m in mfns))
        return inner(regs)

    stack.platform.tee.smc = smc
    # the resume reaches the ring of a stopped daemon, which then dies
    result: list = []
    t = threading.Thread(target=lambda: result.append(g.resume(r[3], vcpu=1)), daemon=True)
    try:
        _stop(stack.daemon.proc)
        sent = stack.platform.placement.statistics(1).requests
        t.start()
        deadline = time.monotonic() + 30
        while stack.platform.placement.statistics(1).requests == sent:
            assert time.monotonic() < deadline, "the resume never reached the ring"
            time.sleep(0.01)
    finally:
        stack.kill()  # SIGKILL ends a stopped process too
    stack.start()
    t.join(30)
    assert result and result[0][0] == OPTEE_SMC_RETURN_ENOTAVAIL, result
    log = stack.daemon.log()
    assert "event=stale_requests_answered" in log, log
    with stack.ctl() as c:
        j = c.call("stats")["journal"]
    assert j["abandoned"] == 1 and j["stale_answered"] >= 1, j
    # OP-TEE was told while the pins were held (the first time: the undo)
    assert pinned_at_unregister and pinned_at_unregister[0], pinned_at_unregister
    assert stack.platform.tee.partition_stats(CLIENT_D1).registered_shm == 0
    assert all(machine.frame_refcount(m) == 0 for m in mfns)
    assert stack.platform.oracle.violations == []
    g.close_session(session)
    stack.platform.destroy_domain(1)
    stack.assert_clean()


def _stop(proc) -> None:
    """SIGSTOP ``proc`` and wait until it is stopped (state T): from then on
    it pops nothing from its rings."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while True:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(") ", 1)[1][0] == "T":
                return
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.01)
