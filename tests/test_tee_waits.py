"""Where OP-TEE parks a thread in the normal world: a call to a session
another call holds, a CLOSE of one, UNREGISTER_SHM of memory a call still
uses, a second REE FS operation while one runs.  Each waits with
OPTEE_RPC_CMD_NOTIFICATION WAIT on its thread's key and is woken by the
releasing thread's NOTIFICATION SEND (core/kernel/mutex.c, wait_queue.c,
notif.c; tee_ta_manager.c tee_ta_get_session; mobj_dyn_shm.c
mobj_reg_shm_release_by_cookie; tee_ree_fs.c ree_fs_mutex)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_NOTIFICATION,
    OPTEE_RPC_CMD_SUSPEND,
    OPTEE_RPC_NOTIFICATION_SEND,
    OPTEE_RPC_NOTIFICATION_WAIT,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ORIGIN_TEE,
    TEEC_SUCCESS,
    MsgArg,
    MsgParam,
)
from stubdom.tee.sync import NOTIF_SYNC_VALUE_BASE
from stubdom.tee.tas import (
    STORAGE_CMD_READ,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    WAIT_CMD_BUSY,
    WAIT_CMD_SLEEP,
    WAIT_CMD_WAIT,
    WAIT_UUID,
)
from stubdom.xen import PAGE_SIZE
from tee_support import hi, lo, setup_guests, value_in, value_out

OK = 0
WAIT_KEY = 100  # the wait TA's own key: above every thread's key


@pytest.fixture
def nw(tmp_path: Path):
    machine, tee, oracle, (world,) = setup_guests(tmp_path, 1)
    world.tee_model = tee
    yield world
    oracle.assert_clean()
    machine.close()


def opened(nw, ta=WAIT_UUID) -> int:
    _, arg = nw.open_session(ta)
    assert arg.ret == TEEC_SUCCESS
    return arg.session


def start(nw, arg: MsgArg) -> tuple[tuple[int, ...], int]:
    ma = nw.arg_page(arg)
    return nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma)), ma


def request(nw, r) -> MsgArg:
    """The RPC CMD request OP-TEE is waiting on: in an RPC ALLOC buffer, or
    (a1 = a2 = 0) in the RPC arg the call supplied."""
    cookie = (r[1] << 32) | r[2]
    return nw.read_arg(nw.rpc_bufs[cookie] if cookie else nw.supplied_rpc_arg)


def resume(nw, r) -> tuple[int, ...]:
    """Answer the RPC of ``r`` (as the test normal world does) and resume."""
    a1, a2, a4, a5 = nw.serve_rpc(r)
    return nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, a1, a2, r[3], a4, a5)


def until(nw, r, want) -> tuple[tuple[int, ...], MsgArg | None]:
    """Serve RPCs until the call completes (None) or OP-TEE asks for an RPC
    CMD ``want(request)`` accepts (that request, not yet answered)."""
    while r[0] != OK:
        if r[0] == OPTEE_SMC_RETURN_RPC_CMD:
            req = request(nw, r)
            if want(req):
                return r, req
        r = resume(nw, r)
    return r, None


def notification(op: int, key: int | None = None):
    def want(req: MsgArg) -> bool:
        return req.cmd == OPTEE_RPC_CMD_NOTIFICATION and req.params[0].a == op and (
            key is None or req.params[0].b == key)
    return want


def wait_of_thread(r) -> tuple[int, int, int]:
    return OPTEE_RPC_NOTIFICATION_WAIT, NOTIF_SYNC_VALUE_BASE + r[3], 0


def hold_session(nw, sid: int) -> tuple[tuple[int, ...], int]:
    """A call on ``sid`` that stays inside the TA, waiting on the TA's own key."""
    r, ma = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_WAIT, session=sid,
                             params=(value_in(WAIT_KEY, 0),)))
    r, req = until(nw, r, notification(OPTEE_RPC_NOTIFICATION_WAIT, WAIT_KEY))
    assert req is not None
    return r, ma


def test_a_call_to_a_busy_session_parks_until_the_holder_sends(nw) -> None:
    sid = opened(nw)
    held, held_ma = hold_session(nw, sid)
    # a second call on the same session: OP-TEE sleeps in the normal world
    r, ma = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_SLEEP, session=sid,
                             params=(value_in(1),)))
    r, req = until(nw, r, lambda q: q.cmd == OPTEE_RPC_CMD_NOTIFICATION)
    assert (req.params[0].a, req.params[0].b, req.params[0].c) == wait_of_thread(r)
    assert r[3] != held[3]
    parked = r
    # woken too early (the normal world answered at once): it sleeps again
    r = resume(nw, parked)
    parked, req = until(nw, r, lambda q: q.cmd == OPTEE_RPC_CMD_NOTIFICATION)
    assert (req.params[0].a, req.params[0].b) == (OPTEE_RPC_NOTIFICATION_WAIT, parked[3])
    # the holder finishes: putting the session back sends the parked thread's key
    r = resume(nw, held)
    r, req = until(nw, r, notification(OPTEE_RPC_NOTIFICATION_SEND))
    assert req.params[0].b == NOTIF_SYNC_VALUE_BASE + parked[3]
    r, _ = until(nw, r, lambda q: False)
    assert r[0] == OK and nw.read_arg(held_ma).ret == TEEC_SUCCESS
    # the parked call now runs: its own RPC (SUSPEND), then completion
    r = resume(nw, parked)
    r, req = until(nw, r, lambda q: q.cmd == OPTEE_RPC_CMD_SUSPEND)
    assert req is not None
    r, _ = until(nw, r, lambda q: False)
    assert r[0] == OK and nw.read_arg(ma).ret == TEEC_SUCCESS
    assert nw.tee_model.partition_stats(nw.client).threads_free == 4


def test_close_of_a_busy_session_parks_and_cancel_does_not(nw) -> None:
    sid = opened(nw)
    ma = nw.arg_page(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=sid, params=(value_out(),)))
    busy = nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    assert busy[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
    invoke, _ = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_SLEEP, session=sid,
                                 params=(value_in(0),)))
    invoke, _ = until(nw, invoke, notification(OPTEE_RPC_NOTIFICATION_WAIT))
    close, close_ma = start(nw, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=sid))
    close, req = until(nw, close, notification(OPTEE_RPC_NOTIFICATION_WAIT))
    assert req.params[0].b == close[3]
    # CANCEL only references the session: answered at once
    _, arg = nw.call_arg(MsgArg(3, session=sid))
    assert (arg.ret, arg.ret_origin) == (TEEC_SUCCESS, TEEC_ORIGIN_TEE)
    # the busy call ends (cancelled) and wakes the first waiter, the invoke
    r = busy
    while r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR:
        r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])
    r, req = until(nw, r, notification(OPTEE_RPC_NOTIFICATION_SEND))
    assert req.params[0].b == invoke[3]
    assert until(nw, r, lambda q: False)[0][0] == OK
    # the invoke runs and, done, wakes the closer
    r, req = until(nw, resume(nw, invoke), notification(OPTEE_RPC_NOTIFICATION_SEND))
    assert req.params[0].b == close[3]
    assert until(nw, r, lambda q: False)[0][0] == OK
    r, _ = until(nw, resume(nw, close), lambda q: False)
    assert r[0] == OK and nw.read_arg(close_ma).ret == TEEC_SUCCESS
    assert nw.tee_model.partition_stats(nw.client).sessions == 0
    _, arg = nw.close_session(sid)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_TEE)


def test_waiters_on_a_session_being_closed_give_up(nw) -> None:
    sid = opened(nw)
    held, _ = hold_session(nw, sid)
    close, close_ma = start(nw, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=sid))
    close, _ = until(nw, close, notification(OPTEE_RPC_NOTIFICATION_WAIT))
    late, late_ma = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_SLEEP, session=sid,
                                     params=(value_in(0),)))
    late, _ = until(nw, late, notification(OPTEE_RPC_NOTIFICATION_WAIT))
    r, req = until(nw, resume(nw, held), notification(OPTEE_RPC_NOTIFICATION_SEND))
    assert req.params[0].b == close[3]  # the first in line
    assert until(nw, r, lambda q: False)[0][0] == OK
    # the closer unlinks the session, wakes the late caller and waits for its reference
    r, req = until(nw, resume(nw, close), notification(OPTEE_RPC_NOTIFICATION_SEND))
    assert req.params[0].b == late[3]
    close, req = until(nw, resume(nw, r), notification(OPTEE_RPC_NOTIFICATION_WAIT))
    assert req.params[0].b == close[3]
    # the late call finds the session gone (BAD_PARAMETERS) and wakes the closer
    r, req = until(nw, resume(nw, late), notification(OPTEE_RPC_NOTIFICATION_SEND))
    assert req.params[0].b == close[3]
    assert until(nw, r, lambda q: False)[0][0] == OK
    assert (nw.read_arg(late_ma).ret, nw.read_arg(late_ma).ret_origin) == (TEEC_ERROR_BAD_PARAMETERS,
                                                                           TEEC_ORIGIN_TEE)
    assert until(nw, resume(nw, close), lambda q: False)[0][0] == OK
    assert nw.read_arg(close_ma).ret == TEEC_SUCCESS


@pytest.mark.parametrize("use", ["regd_arg", "rmem"])
def test_unregister_of_memory_in_use_parks_until_its_last_user_is_done(nw, use: str) -> None:
    buf = nw.buffer(PAGE_SIZE)
    nw.register(buf)
    if use == "regd_arg":  # the call's own argument lives in the registration
        sid = opened(nw)
        nw.write_buf_fast(buf, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_WAIT, session=sid,
                                      params=(value_in(WAIT_KEY, 0),)).pack())
        nw.supplied_rpc_arg = buf.pages[0] + 64  # the RPC arg follows the one-param arg
        user = nw.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, hi(buf.cookie), lo(buf.cookie), 0)
        user, req = until(nw, user, notification(OPTEE_RPC_NOTIFICATION_WAIT, WAIT_KEY))
    else:  # an RMEM param of a storage call suspended in its first FS RPC
        sid = opened(nw, STORAGE_UUID)
        nw.write_buf(buf, b"obj")
        user, _ = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=sid, params=(
            MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 3, buf.cookie),
            MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 16, 100, buf.cookie))))
        user, req = until(nw, user, lambda q: q.cmd == OPTEE_RPC_CMD_FS)
    assert req is not None
    unreg, unreg_ma = start(nw, MsgArg(5, params=(MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, buf.cookie),)))
    unreg, req = until(nw, unreg, notification(OPTEE_RPC_NOTIFICATION_WAIT))
    assert req.params[0].b == unreg[3]
    # a second UNREGISTER of it is refused at once: it is being released
    assert nw.unregister(buf.cookie)[1].ret == TEEC_ERROR_BAD_PARAMETERS
    if use == "regd_arg":
        nw.supplied_rpc_arg = buf.pages[0] + 64  # call_arg forgot it
    # the user finishes: its last reference wakes the unregistering thread
    sends = []
    r = user
    while r[0] != OK:
        if r[0] == OPTEE_SMC_RETURN_RPC_CMD:
            q = request(nw, r)
            if q.cmd == OPTEE_RPC_CMD_NOTIFICATION:
                sends.append((q.params[0].a, q.params[0].b))
        r = resume(nw, r)
    assert sends[-1:] == [(OPTEE_RPC_NOTIFICATION_SEND, unreg[3])]
    r, _ = until(nw, resume(nw, unreg), lambda q: False)
    assert r[0] == OK and nw.read_arg(unreg_ma).ret == TEEC_SUCCESS
    assert nw.tee_model.partition_stats(nw.client).registered_shm == 0
    nw.supplied_rpc_arg = None


def test_unregister_of_memory_nobody_uses_does_not_wait(nw) -> None:
    buf = nw.buffer(PAGE_SIZE)
    nw.register(buf)
    nw.rpc_log.clear()
    r, arg = nw.unregister(buf.cookie)
    assert r[0] == OK and arg.ret == TEEC_SUCCESS
    assert not [e for e in nw.rpc_log if e[0] == "cmd"]  # no NOTIFICATION: nothing to wait for


def test_a_second_storage_operation_waits_for_the_ree_fs_mutex(nw) -> None:
    a, b = opened(nw, STORAGE_UUID), opened(nw, STORAGE_UUID)
    ids = [nw.buffer(4), nw.buffer(4)]
    nw.write_buf(ids[0], b"objA")
    nw.write_buf(ids[1], b"objB")
    data = nw.buffer(5000)
    nw.write_buf_fast(data, b"D" * 5000)

    def memref(buf, size):
        return MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, buf.buf_ptr, size, 0xC0FFEE)

    first, ma1 = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=a,
                                  params=(memref(ids[0], 4), memref(data, 5000))))
    first, req = until(nw, first, lambda q: q.cmd == OPTEE_RPC_CMD_FS)  # its first FS RPC: ree_fs_mutex held
    second, ma2 = start(nw, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=b,
                                   params=(memref(ids[1], 4), memref(data, 5000))))
    second, req = until(nw, second, lambda q: q.cmd in (OPTEE_RPC_CMD_FS, OPTEE_RPC_CMD_NOTIFICATION))
    assert req.cmd == OPTEE_RPC_CMD_NOTIFICATION
    assert (req.params[0].a, req.params[0].b) == (OPTEE_RPC_NOTIFICATION_WAIT, second[3])
    sends = []
    r = first
    while r[0] != OK:  # the first write, to its end, sending the second's key when it unlocks
        if r[0] == OPTEE_SMC_RETURN_RPC_CMD:
            q = request(nw, r)
            if q.cmd == OPTEE_RPC_CMD_NOTIFICATION:
                sends.append((q.params[0].a, q.params[0].b))
        r = resume(nw, r)
    assert sends and set(sends) == {(OPTEE_RPC_NOTIFICATION_SEND, second[3])}
    r = second
    while r[0] != OK:  # the second one now runs (its waits answered at once are retried)
        r = resume(nw, r)
    assert nw.read_arg(ma1).ret == TEEC_SUCCESS and nw.read_arg(ma2).ret == TEEC_SUCCESS
    for sid, oid in ((a, ids[0]), (b, ids[1])):
        back = nw.buffer(5000)
        _, arg = nw.invoke(sid, STORAGE_CMD_READ, memref(oid, 4),
                           MsgParam(0xA | OPTEE_MSG_ATTR_NONCONTIG, back.buf_ptr, 5000, 0xC0FFEE))
        assert arg.ret == TEEC_SUCCESS and nw.read_buf(back, 5000) == b"D" * 5000
