"""A call that completed in OP-TEE while its daemon died before answering
(docs/faults.md, "A call whose answer was lost").

The guest got ENOTAVAIL (outcome unknown); OP-TEE kept what the call made. A
REGISTER_SHM it kept would let the guest name that cookie in an RMEM param
after recovery dropped the pins the dead daemon took: OP-TEE would touch
unpinned frames (invariant 4). Recovery journals each standard call's intent
before the TEE sees it and undoes it: UNREGISTER_SHM / CLOSE_SESSION as the
domain, through the gate.

The kill is exact: the TEE is wrapped in the platform process (what the SMC
gate calls), and the wrapper SIGKILLs the daemon after OP-TEE completed the
chosen call and before the gate can hand the answer back.
"""

from __future__ import annotations

import threading

import pytest

from faults_support import Stack
from stubdom.hostile import HostileGuest
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_OK,
    MsgArg,
    MsgParam,
)
from stubdom.optee.msg import unpack_header
from stubdom.optee.teec import TEEC_ERROR_BAD_PARAMETERS, TEEC_ERROR_ITEM_NOT_FOUND
from stubdom.platform.platform import domain_spec
from stubdom.tee.tas import DIGEST_UUID, INCREMENT_UUID
from stubdom.tee.tas.digest import DIGEST_CMD_SHA256
from stubdom.xen import PAGE_SIZE

ONE_DOMAIN = """\
domains:
  - domid: 1
    nr_pages: 1024
    vcpus: 2
"""
M32 = 0xFFFFFFFF


class KillAfter:
    """Wraps the platform's TEE: once armed, SIGKILLs the daemon right after
    OP-TEE completed a CALL_WITH_ARG of ``cmd`` for ``client`` — the gate
    then answers a dead daemon. A call that made RPCs (an OPEN_SESSION of an
    REE-loaded TA asks for OPTEE_RPC_CMD_LOAD_TA) completes on the answer to
    its last RETURN_FROM_RPC: the wrapper remembers the message's address
    from the CALL_WITH_ARG that started it."""

    def __init__(self, stack: Stack, client: int, cmd: int) -> None:
        self.stack, self.client, self.cmd = stack, client, cmd
        self.armed = False
        self.fired = threading.Event()
        self.result: tuple | None = None  # (ret, session) OP-TEE wrote
        inner = stack.platform.tee.smc
        started: list[int] = []  # the armed client's message address

        def smc(regs):
            r = inner(regs)
            fn = regs[0] & M32
            if not (self.armed and regs[7] == self.client):
                return r
            if fn == OPTEE_SMC_CALL_WITH_ARG:
                started[:] = [((regs[1] & M32) << 32) | (regs[2] & M32)]
            if (fn in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_RETURN_FROM_RPC) and started
                    and r[0] & M32 == OPTEE_SMC_RETURN_OK):
                maddr = started.pop()
                hdr = unpack_header(stack.platform.machine.read_machine(maddr, 32))
                if hdr[0] == self.cmd:
                    self.armed = False
                    self.result = (hdr[5], hdr[2])
                    stack.daemon.proc.kill()
                    stack.daemon.proc.wait(20)
                    self.fired.set()
            return r

        stack.platform.tee.smc = smc  # the instance attribute the gate calls


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path, domains=ONE_DOMAIN) as s:
        yield s


def _hostile(stack: Stack) -> HostileGuest:
    stack.platform.create_domain(domain_spec(stack.config.domain(1)))
    g = HostileGuest(stack.platform, 1)
    g.negotiate()
    return g


def _lose_answer(stack: Stack, kill: KillAfter, call) -> tuple:
    """Run ``call()`` (a guest SMC) while the daemon is killed at the armed
    point, restart the daemon; the guest's registers."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(call()), daemon=True)
    kill.armed = True
    t.start()
    assert kill.fired.wait(30), "the armed call never completed in OP-TEE"
    stack.daemon.stop()
    stack.start()
    t.join(30)
    assert not t.is_alive(), "the guest was never answered"
    return out[0]


def test_register_shm_completed_then_daemon_killed_is_unregistered(stack):
    g = _hostile(stack)
    kill = KillAfter(stack, client=2, cmd=OPTEE_MSG_CMD_REGISTER_SHM)
    cookie = g.cookie()
    pages = g.pages(2)
    mfns = [g.frame_of(p) for p in pages]
    for p in pages:
        g.write(p, b"secret!!" * (PAGE_SIZE // 8))
    buf_ptr = g.page_list(pages)
    r = _lose_answer(stack, kill, lambda: g.register(cookie, 2, buf_ptr=buf_ptr)[0])
    assert kill.result == (0, 0)  # OP-TEE registered it
    assert r == (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7  # outcome unknown to the guest
    log = stack.daemon.log()
    assert f"unregistered cookie {cookie:#x} (ret 0x0)" in log, log
    # recovery dropped the pins the dead daemon took for it
    assert all(stack.platform.machine.frame_refcount(m) == 0 for m in mfns)
    assert stack.platform.tee.partition_stats(2).registered_shm == 0
    # the guest names the old cookie: OP-TEE no longer knows it, touches nothing
    session = g.session(DIGEST_UUID)
    out_page = g.page()
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session,
                              params=(MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, PAGE_SIZE, cookie),
                                      _tmem_out(g, out_page))))
    assert stack.platform.oracle.violations == []  # without the fix: REASON_UNPINNED, per page
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_BAD_PARAMETERS
    with stack.ctl() as c:
        assert c.call("stats")["journal"]["lost_calls_settled"] == 1
    g.close_session(session)
    stack.platform.destroy_domain(1)
    stack.assert_clean()


def _tmem_out(g: HostileGuest, page: int) -> MsgParam:
    return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                         g.page_list([page]), 32, 0)


def test_open_session_completed_then_daemon_killed_is_closed(stack):
    g = _hostile(stack)
    kept = g.session(INCREMENT_UUID)  # opened and answered before: must survive
    kill = KillAfter(stack, client=2, cmd=OPTEE_MSG_CMD_OPEN_SESSION)
    r = _lose_answer(stack, kill, lambda: g.open_session(INCREMENT_UUID)[0])
    ret, lost = kill.result
    assert ret == 0 and lost not in (0, kept)
    assert r[0] == OPTEE_SMC_RETURN_ENOTAVAIL
    log = stack.daemon.log()
    assert f"closed session {lost:#x} OP-TEE opened (ret 0x0)" in log, log
    assert stack.platform.tee.partition_stats(2).sessions == 1  # only the answered one
    # the answered session still works, the lost one is gone in OP-TEE
    _, out = g.close_session(lost)
    assert out.ret == TEEC_ERROR_ITEM_NOT_FOUND  # entry_close_session: no such session
    _, out = g.close_session(kept)
    assert out.ret == 0
    assert stack.platform.oracle.violations == []
    stack.platform.destroy_domain(1)
    stack.assert_clean()
