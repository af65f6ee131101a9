"""Yielding calls of the OP-TEE model: argument location, messages, TEEC
codes and origins, threads, RPCs, NS-virt isolation between clients."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from stubdom.optee import (
    OPTEE_MSG_ATTR_META,
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_DO_BOTTOM_HALF,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_LOGIN_REE_KERNEL,
    OPTEE_MSG_LOGIN_TRUSTED_APP,
    OPTEE_MSG_LOGIN_USER,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_RETURN_RPC_ALLOC,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_RPC_FREE,
    OPTEE_SMC_VM_DESTROYED,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_CANCEL,
    TEEC_ERROR_GENERIC,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_SECURITY,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_ORIGIN_TEE,
    TEEC_ORIGIN_TRUSTED_APP,
    TEEC_SUCCESS,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    get_arg_size,
    pack_header,
)
from stubdom.tee import REASON_FOREIGN, REASON_UNPINNED, IsolationViolation, TeeConfig
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    INCREMENT_UUID,
    STORAGE_CMD_DELETE,
    STORAGE_CMD_READ,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    TA_INCREMENT_CMD_DEC_VALUE,
    TA_INCREMENT_CMD_INC_VALUE,
    WAIT_CMD_BUSY,
    WAIT_CMD_GET_TIME,
    WAIT_CMD_SEND,
    WAIT_CMD_SLEEP,
    WAIT_CMD_WAIT,
    WAIT_UUID,
)
from stubdom.xen import OPTEE_SHMEM_START, PAGE_SIZE
from tee_support import NIL, hi, lo, regs, setup_guests, value_in, value_inout, value_out

OK, ETHREAD_LIMIT, EBUSY, ERESUME, EBADADDR, EBADCMD, ENOTAVAIL = 0, 1, 2, 3, 4, 5, 7


@pytest.fixture
def world(tmp_path: Path):
    machine, tee, oracle, worlds = setup_guests(tmp_path, 1, 2)
    yield tee, oracle, worlds
    oracle.assert_clean()
    machine.close()


def opened(nw, ta=INCREMENT_UUID) -> int:
    r, arg = nw.open_session(ta)
    assert r[0] == OK and (arg.ret, arg.ret_origin) == (TEEC_SUCCESS, TEEC_ORIGIN_TRUSTED_APP)
    assert arg.session != 0
    return arg.session


def memref(buf, attr=OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, size=None) -> MsgParam:
    return MsgParam(attr | OPTEE_MSG_ATTR_NONCONTIG, buf.buf_ptr, buf.size if size is None else size,
                    buf.cookie or 0xC0FFEE)


# -- the increment TA, end to end ------------------------------------------------------


def test_increment_and_decrement(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw)
    r, arg = nw.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_inout(41, 7))
    assert r == (OK, 0, 0, 0, 0, 0, 0, nw.client)
    assert (arg.ret, arg.ret_origin) == (TEEC_SUCCESS, TEEC_ORIGIN_TRUSTED_APP)
    assert (arg.params[0].a, arg.params[0].b) == (42, 7)
    _, arg = nw.invoke(sid, TA_INCREMENT_CMD_DEC_VALUE, value_inout(0))
    assert arg.params[0].a == 0xFFFFFFFF  # u32 wrap, as the TA's uint32_t
    _, arg = nw.invoke(sid, 7, value_inout(1))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TRUSTED_APP)
    _, arg = nw.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_in(1))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TRUSTED_APP)
    r, arg = nw.close_session(sid)
    assert (r[0], arg.ret, arg.ret_origin) == (OK, TEEC_SUCCESS, TEEC_ORIGIN_TEE)
    _, arg = nw.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_inout(1))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)


def test_only_output_fields_are_written_back(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw)
    arg = MsgArg(1, func=TA_INCREMENT_CMD_INC_VALUE, session=sid, cancel_id=0x55, pad=0xAA,
                 params=(value_inout(5, 6), value_in(7, 8, 9)))
    # the TA rejects (VALUE_INOUT, VALUE_INPUT): nothing but ret/origin changes
    ma = nw.arg_page(arg)
    before = nw.read(ma, PAGE_SIZE)
    nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    after = nw.read(ma, PAGE_SIZE)
    changed = [i for i in range(PAGE_SIZE) if before[i] != after[i]]
    assert changed and all(20 <= i < 28 or 32 + 8 <= i < 32 + 24 for i in changed)


# -- OPEN_SESSION refusals ------------------------------------------------------------------


def test_unknown_ta(world) -> None:
    _tee, _oracle, (nw, _) = world
    r, arg = nw.open_session(uuid.UUID("12345678-1234-1234-1234-123456789abc"))
    assert r[0] == OK
    assert (arg.ret, arg.ret_origin, arg.session) == (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_TEE, 0)


@pytest.mark.parametrize("attrs", [(0x1, 0x101), (0x101, 0x1), (0x102, 0x101), (0x101, 0x103)])
def test_bad_meta_attributes(world, attrs) -> None:
    _tee, _oracle, (nw, _) = world
    meta = OpenSessionMeta(INCREMENT_UUID, NIL, 0).to_params()
    params = tuple(p.replace(attr=a) for p, a in zip(meta, attrs))
    _, arg = nw.call_arg(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, session=0x99, params=params))
    assert (arg.ret, arg.ret_origin, arg.session) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE, 0)


def test_open_session_needs_two_meta_params(world) -> None:
    _tee, _oracle, (nw, _) = world
    meta = OpenSessionMeta(INCREMENT_UUID, NIL, 0).to_params()
    _, arg = nw.call_arg(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta[:1]))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)


@pytest.mark.parametrize("login, ok", [(0, True), (OPTEE_MSG_LOGIN_USER, True), (2, True), (4, True),
                                       (5, True), (6, True), (OPTEE_MSG_LOGIN_REE_KERNEL, True),
                                       (3, False), (OPTEE_MSG_LOGIN_TRUSTED_APP, False),
                                       ((1 << 32) | OPTEE_MSG_LOGIN_USER, True)])
def test_login_methods(world, login: int, ok: bool) -> None:
    _tee, _oracle, (nw, _) = world
    meta = list(OpenSessionMeta(INCREMENT_UUID, uuid.UUID(int=5), 0).to_params())
    meta[1] = meta[1].replace(c=login)  # OP-TEE keeps the low 32 bits
    _, arg = nw.call_arg(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=tuple(meta)))
    if ok:
        assert (arg.ret, arg.ret_origin) == (TEEC_SUCCESS, TEEC_ORIGIN_TRUSTED_APP)
    else:
        assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)


def test_ta_params_limits(world) -> None:
    _tee, _oracle, (nw, _) = world
    _, arg = nw.open_session(INCREMENT_UUID, *(value_in(),) * 5)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)
    _, arg = nw.open_session(INCREMENT_UUID, MsgParam(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)
    _, arg = nw.open_session(INCREMENT_UUID, MsgParam(0x4))  # no such type
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)
    # The hello-world TA itself refuses params at open.
    _, arg = nw.open_session(INCREMENT_UUID, value_in())
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TRUSTED_APP)


def test_close_and_cancel_need_zero_params(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw)
    for cmd, unknown in ((OPTEE_MSG_CMD_CLOSE_SESSION, TEEC_ERROR_ITEM_NOT_FOUND),  # tee_ta_close_session
                         (OPTEE_MSG_CMD_CANCEL, TEEC_ERROR_BAD_PARAMETERS)):  # entry_cancel
        _, arg = nw.call_arg(MsgArg(cmd, session=sid, params=(value_in(),)))
        assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)
        _, arg = nw.call_arg(MsgArg(cmd, session=sid + 100))
        assert (arg.ret, arg.ret_origin) == (unknown, TEEC_ORIGIN_TEE)
    _, arg = nw.call_arg(MsgArg(OPTEE_MSG_CMD_CANCEL, session=sid))
    assert (arg.ret, arg.ret_origin) == (TEEC_SUCCESS, TEEC_ORIGIN_TEE)


def test_unknown_cmd_is_ebadcmd_and_arg_untouched(world) -> None:
    _tee, _oracle, (nw, _) = world
    for cmd in (OPTEE_MSG_CMD_DO_BOTTOM_HALF, 0x99):
        arg = MsgArg(cmd, ret=0x1234, ret_origin=0x5678)
        ma = nw.arg_page(arg)
        r = nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
        assert r[0] == EBADCMD
        assert nw.read(ma, 32) == arg.pack()


# -- argument location -----------------------------------------------------------------------


def test_arg_address_rules(world) -> None:
    _tee, _oracle, (nw, _) = world
    ma = nw.arg_page(MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=1))
    assert nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma) + 8)[0] == EBADADDR  # dynamic: page aligned
    assert nw.smc(OPTEE_SMC_CALL_WITH_ARG, 0, 0x1000)[0] == EBADADDR  # not NS DDR
    # num_params > 127, and an arg that does not fit its page
    nw.write(ma, pack_header(2, num_params=128))
    assert nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))[0] == EBADADDR
    nw.write(ma, pack_header(2, num_params=127))
    assert nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))[0] != EBADADDR
    # CALL_WITH_RPC_ARG needs room for 160 more bytes in the page
    nw.write(ma, pack_header(2, num_params=123))  # 32 + 123*32 = 3968; + 160 > 4096
    assert nw.smc(OPTEE_SMC_CALL_WITH_RPC_ARG, hi(ma), lo(ma))[0] == EBADADDR
    # unknown yielding function: a thread is taken, then EBADCMD
    assert nw.smc(0x32000005, hi(ma), lo(ma))[0] == EBADCMD


def test_static_region_only_for_its_owner(tmp_path: Path) -> None:
    # early TAs: nothing pins this domain's pages for the RPCs of a TA load
    machine, tee, oracle, _ = setup_guests(tmp_path, config=TeeConfig(ree_tas=frozenset()))
    machine.create_domain(0, nr_pages=64, hwdom=True, direct_mapped=True)
    from tee_support import NormalWorld

    nw = NormalWorld(machine, tee, 0, pin=False)
    assert nw.vm_created() == OK
    sid_arg = MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=OpenSessionMeta(INCREMENT_UUID, NIL, 0).to_params())
    ma = OPTEE_SHMEM_START + 0x108  # 8-byte aligned inside the carve-out
    nw.write(ma, sid_arg.pack())
    assert nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma) + 4)[0] == EBADADDR  # not 8-byte aligned
    r = nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    assert r[0] == OK
    out = MsgArg.unpack(nw.read(ma, sid_arg.size))
    assert out.ret == TEEC_SUCCESS
    # value + contiguous tmem in the carve-out for the digest TA
    sid = out.session
    digest_sid = MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=OpenSessionMeta(DIGEST_UUID, NIL, 0).to_params())
    nw.write(ma, digest_sid.pack())
    nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    dsid = MsgArg.unpack(nw.read(ma, digest_sid.size)).session
    data_ma, out_ma = OPTEE_SHMEM_START + 0x1000, OPTEE_SHMEM_START + 0x3000
    nw.write(data_ma, b"static shm" * 100)
    inv = MsgArg(1, func=DIGEST_CMD_SHA256, session=dsid, params=(
        MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, data_ma, 1000, 1),
        MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, out_ma, 64, 2)))
    nw.write(ma, inv.pack())
    assert nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))[0] == OK
    res = MsgArg.unpack(nw.read(ma, inv.size))
    assert (res.ret, res.params[1].size) == (TEEC_SUCCESS, 32)
    assert nw.read(out_ma, 32) == hashlib.sha256(b"static shm" * 100).digest()
    # a contiguous tmem outside the carve-out is refused
    bad = inv.replace(params=(MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, 0x4000_0000, 16, 1), inv.params[1]))
    nw.write(ma, bad.pack())
    nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    assert MsgArg.unpack(nw.read(ma, bad.size)).ret == TEEC_ERROR_BAD_PARAMETERS
    assert sid
    oracle.assert_clean()
    machine.close()


def test_static_region_is_a_violation_for_a_domu(world) -> None:
    tee, oracle, (nw, _) = world
    ma = OPTEE_SHMEM_START
    tee._machine.write_machine(ma, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=3).pack())
    nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    found = oracle.clear()
    assert found and all(v.reason == REASON_FOREIGN and v.owner == 0x7FF2 for v in found)


# -- threads and RPC binding -------------------------------------------------------------------


def test_thread_limit_and_resume_binding(tmp_path: Path) -> None:
    machine, tee, oracle, (a, b) = setup_guests(tmp_path, 1, 2, config=TeeConfig(threads_per_guest=2))
    sid = opened(a, WAIT_UUID)
    first = a.arg_page(MsgArg(1, func=WAIT_CMD_BUSY, session=sid, params=(value_out(),)))
    r1 = a.smc(OPTEE_SMC_CALL_WITH_ARG, hi(first), lo(first))
    assert r1[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR and r1[1:3] == (0, 0)
    sid2 = opened(a, WAIT_UUID)
    second = a.arg_page(MsgArg(1, func=WAIT_CMD_SLEEP, session=sid2, params=(value_in(5),)))
    r2 = a.smc(OPTEE_SMC_CALL_WITH_ARG, hi(second), lo(second))
    assert r2[0] == OPTEE_SMC_RETURN_RPC_ALLOC and r2[3] != r1[3]
    third = a.arg_page(MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=sid))
    r3 = a.smc(OPTEE_SMC_CALL_WITH_ARG, hi(third), lo(third), 0xA3, 0xA4, 0xA5, 0xA6)
    assert r3 == (ETHREAD_LIMIT, hi(third), lo(third), 0xA3, 0xA4, 0xA5, 0xA6, a.client)
    assert tee.partition_stats(a.client).threads_suspended == 2
    # b cannot resume a's thread, nor can anyone name a thread that is not suspended
    assert b.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r1[3])[0] == ERESUME
    assert a.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, 7)[0] == ERESUME
    assert tee.smc(regs(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r1[3]))[0] == ENOTAVAIL  # hypervisor
    assert tee.smc(regs(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r1[3], 0, 0, 0, 9))[0] == ENOTAVAIL
    # the cache cannot change while a's threads are busy; b's is independent
    assert a.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == EBUSY
    assert a.smc(OPTEE_SMC_DISABLE_SHM_CACHE)[0] == EBUSY
    assert b.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OK
    # b's threads are its own: it still opens sessions
    opened(b, WAIT_UUID)
    # finish the first call
    r = r1
    while r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR:
        r = a.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r1[3])
    assert r[0] == OK and a.read_arg(first).params[0].a == 3
    assert a.read_arg(first).ret == TEEC_SUCCESS
    assert a.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r1[3])[0] == ERESUME  # finished
    oracle.assert_clean()
    machine.close()


def test_rpc_alloc_cmd_free_without_rpc_arg(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw, WAIT_UUID)
    ma = nw.arg_page(MsgArg(1, func=WAIT_CMD_GET_TIME, session=sid, params=(value_out(),)))
    r = nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma), 0, 0x44, 0x55, 0x66)
    assert r == (OPTEE_SMC_RETURN_RPC_ALLOC, 160, 0, r[3], 0x44, 0x55, 0x66, nw.client)
    buf = nw.alloc_page()
    r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, hi(buf), lo(buf), r[3], 0xC0, 0x0FFEE)
    assert r[:3] == (OPTEE_SMC_RETURN_RPC_CMD, 0xC0, 0x0FFEE)  # the cookie from a4/a5
    req = nw.read_arg(buf)
    assert (req.cmd, req.ret, req.num_params) == (3, TEEC_ERROR_GENERIC, 1)  # GET_TIME, ret pre-set
    nw.write(buf, MsgArg(3, ret=0, params=(req.params[0].replace(a=1234, b=5678),)).pack())
    r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])
    assert r[:3] == (OPTEE_SMC_RETURN_RPC_FREE, 0xC0, 0x0FFEE)  # no shm cache: freed at the end
    r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])
    assert r[0] == OK
    out = nw.read_arg(ma)
    assert (out.ret, out.params[0].a, out.params[0].b) == (TEEC_SUCCESS, 1234, 5678)


def test_rpc_alloc_bad_address_is_freed_and_fails(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw, WAIT_UUID)
    ma = nw.arg_page(MsgArg(1, func=WAIT_CMD_SLEEP, session=sid, params=(value_in(1),)))
    r = nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    buf = nw.alloc_page()
    r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, hi(buf), lo(buf) + 0x10, r[3], 0, 0x77)  # not page aligned
    assert r[:3] == (OPTEE_SMC_RETURN_RPC_FREE, 0, 0x77)
    r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])
    assert r[0] == OK
    out = nw.read_arg(ma)
    assert (out.ret, out.ret_origin) == (0xFFFF000C, TEEC_ORIGIN_TRUSTED_APP)  # OUT_OF_MEMORY from the TA's RPC


def test_rpc_cmd_with_supplied_rpc_arg(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw, WAIT_UUID)
    arg = MsgArg(1, func=WAIT_CMD_SLEEP, session=sid, params=(value_in(3),))
    ma = nw.arg_page(arg)
    r = nw.smc(OPTEE_SMC_CALL_WITH_RPC_ARG, hi(ma), lo(ma))
    assert r[:3] == (OPTEE_SMC_RETURN_RPC_CMD, 0, 0)  # a1/a2 = 0: the RPC arg follows the arg
    req = nw.read_arg(ma + get_arg_size(1))
    assert (req.cmd, req.ret, req.params[0].a) == (5, TEEC_ERROR_GENERIC, 3)
    nw.write(ma + get_arg_size(1) + 20, b"\0\0\0\0")
    r = nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])
    assert r[0] == OK and nw.read_arg(ma).ret == TEEC_SUCCESS
    assert not any(e[0] in (OPTEE_SMC_RETURN_RPC_ALLOC, OPTEE_SMC_RETURN_RPC_FREE) for e in nw.rpc_log
                   if isinstance(e[0], int))


def test_shm_cache_keeps_rpc_args_and_hands_them_back(world) -> None:
    tee, _oracle, (nw, other) = world
    assert nw.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OK
    sid = opened(nw, WAIT_UUID)
    for _ in range(3):  # one thread: one ALLOC, reused, never freed during calls
        r, arg = nw.invoke(sid, WAIT_CMD_SLEEP, value_in(0))
        assert r[0] == OK and arg.ret == TEEC_SUCCESS
    allocs = [e for e in nw.rpc_log if e[0] == OPTEE_SMC_RETURN_RPC_ALLOC]
    assert len(allocs) == 1 and not [e for e in nw.rpc_log if e[0] == OPTEE_SMC_RETURN_RPC_FREE]
    assert tee.partition_stats(nw.client).cached_rpc_args == 1
    assert other.smc(OPTEE_SMC_DISABLE_SHM_CACHE)[0] == ENOTAVAIL  # another client's cache is empty
    (cookie,) = nw.rpc_bufs
    r = nw.smc(OPTEE_SMC_DISABLE_SHM_CACHE)
    assert r[:3] == (OK, hi(cookie), lo(cookie))
    assert nw.smc(OPTEE_SMC_DISABLE_SHM_CACHE)[0] == ENOTAVAIL
    assert not tee.partition_stats(nw.client).prealloc_rpc_cache
    # disabled again: the next call ALLOCs and FREEs
    nw.rpc_log.clear()
    nw.invoke(sid, WAIT_CMD_SLEEP, value_in(0))
    kinds = [e[0] for e in nw.rpc_log if isinstance(e[0], int)]
    assert kinds.count(OPTEE_SMC_RETURN_RPC_ALLOC) == 1 and kinds.count(OPTEE_SMC_RETURN_RPC_FREE) == 1


def test_unknown_client_yielding_call_refused(world) -> None:
    tee, _oracle, (nw, _) = world
    ma = nw.arg_page(MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=1))
    for a7 in (0, 9, 0x10000):
        r = tee.smc(regs(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma), 0, 0, 0, 0, a7))
        assert r == (ENOTAVAIL, hi(ma), lo(ma), 0, 0, 0, 0, a7)
    assert tee.partition_stats(nw.client).threads_free == 4


def test_sessions_are_per_client(world) -> None:
    _tee, _oracle, (a, b) = world
    sid = opened(a)
    _, arg = b.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_inout(1))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)
    _, arg = b.close_session(sid)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_TEE)
    _, arg = a.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_inout(1))
    assert arg.ret == TEEC_SUCCESS


def test_vm_destroyed_frees_everything(world) -> None:
    tee, _oracle, (a, _b) = world
    sid = opened(a, WAIT_UUID)
    buf = a.buffer(100)
    a.register(buf)
    ma = a.arg_page(MsgArg(1, func=WAIT_CMD_BUSY, session=sid, params=(value_out(),)))
    r = a.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    assert r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
    stats = tee.partition_stats(a.client)
    assert (stats.sessions, stats.registered_shm, stats.threads_suspended) == (1, 1, 1)
    assert tee.smc(regs(OPTEE_SMC_VM_DESTROYED, a.client))[0] == OK
    assert tee.partition_stats(a.client) is None
    assert a.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])[0] == ENOTAVAIL
    assert a.vm_created() == OK  # a fresh partition knows nothing of the old one
    _, arg = a.invoke(sid, WAIT_CMD_BUSY, value_out())
    assert arg.ret == TEEC_ERROR_BAD_PARAMETERS
    assert tee.partition_stats(a.client).registered_shm == 0


# -- shared memory -----------------------------------------------------------------------------------


def test_register_shm_and_rmem_params(world) -> None:
    _tee, _oracle, (nw, other) = world
    sid = opened(nw, DIGEST_UUID)
    buf = nw.buffer(3 * PAGE_SIZE + 100, offset=0x234)
    r, arg = nw.register(buf)
    assert (r[0], arg.ret) == (OK, TEEC_SUCCESS)
    data = bytes(range(256)) * 40
    nw.write_buf_fast(buf, data)
    out = MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, len(data), 64, buf.cookie)
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, len(data), buf.cookie),
                       out)
    assert (arg.ret, arg.params[1].size) == (TEEC_SUCCESS, 32)
    assert nw.read_buf(buf, 32, len(data)) == hashlib.sha256(data).digest()
    # offs + size past the registration (which ends with its last page)
    whole = 4 * PAGE_SIZE - 0x234
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 1, whole, buf.cookie), out)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_SECURITY, TEEC_ORIGIN_TEE)
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, whole, buf.cookie), out)
    assert arg.ret == TEEC_SUCCESS
    # unknown cookie, or another client's
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 1, 0xBAD), out)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)
    osid = opened(other, DIGEST_UUID)
    _, arg = other.invoke(osid, DIGEST_CMD_SHA256,
                          MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 1, buf.cookie),
                          MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INOUT, 0, 64, buf.cookie))
    assert arg.ret == TEEC_ERROR_BAD_PARAMETERS
    # unregister: another client cannot, the owner can, once
    assert other.unregister(buf.cookie)[1].ret == TEEC_ERROR_BAD_PARAMETERS
    assert nw.unregister(buf.cookie)[1].ret == TEEC_SUCCESS
    assert nw.unregister(buf.cookie)[1].ret == TEEC_ERROR_BAD_PARAMETERS


@pytest.mark.parametrize("attr", [OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                  OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                                  OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG])
def test_register_shm_bad_attributes(world, attr: int) -> None:
    _tee, _oracle, (nw, _) = world
    buf = nw.buffer(100)
    _, arg = nw.call_arg(MsgArg(4, ret_origin=0x77, params=(MsgParam(attr, buf.buf_ptr, 100, 5),)))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, 0x77)  # origin not written


def test_regd_arg(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw, WAIT_UUID)
    buf = nw.buffer(2 * PAGE_SIZE)
    nw.register(buf)
    arg = MsgArg(1, func=WAIT_CMD_GET_TIME, session=sid, params=(value_out(),))
    offs = PAGE_SIZE - 64  # the arg and its RPC arg straddle two scattered pages
    nw.write_buf_fast(buf, arg.pack(), offs)
    r = nw.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, hi(buf.cookie), lo(buf.cookie), offs)
    assert r[:3] == (OPTEE_SMC_RETURN_RPC_CMD, 0, 0)
    rpc = MsgArg.unpack(nw.read_buf(buf, get_arg_size(1), offs + arg.size))
    assert rpc.cmd == 3
    nw.write_buf_fast(buf, MsgArg(3, params=(rpc.params[0].replace(a=9, b=8),)).pack(), offs + arg.size)
    assert nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])[0] == OK
    out = MsgArg.unpack(nw.read_buf(buf, arg.size, offs))
    assert (out.ret, out.params[0].a, out.params[0].b) == (TEEC_SUCCESS, 9, 8)
    assert nw.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, 0, 0xBAD, 0)[0] == EBADADDR
    assert nw.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, hi(buf.cookie), lo(buf.cookie), 4)[0] == EBADADDR
    assert nw.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, hi(buf.cookie), lo(buf.cookie), 2 * PAGE_SIZE - 100)[0] \
        == EBADADDR


def test_digest_noncontig_and_short_buffer(world) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw, DIGEST_UUID)
    data = bytes((i * 7) & 0xFF for i in range(512 * 1024))
    src = nw.buffer(len(data), offset=0x10)
    nw.write_buf_fast(src, data)
    dst = nw.buffer(32)
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, memref(src), memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, 31))
    assert (arg.ret, arg.ret_origin, arg.params[1].size) == (TEEC_ERROR_SHORT_BUFFER, TEEC_ORIGIN_TRUSTED_APP, 32)
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, memref(src), memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
    assert (arg.ret, arg.params[1].size) == (TEEC_SUCCESS, 32)
    assert nw.read_buf(dst, 32) == hashlib.sha256(data).digest()
    # NULL memref input: the empty message
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, 0, 99, 0),
                       memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
    assert arg.ret == TEEC_SUCCESS and nw.read_buf(dst, 32) == hashlib.sha256(b"").digest()
    # a broken page list (unaligned entry) is BAD_PARAMETERS from the core
    nw.write(src.list_pages[0] + 8, (src.pages[1] + 1).to_bytes(8, "little"))
    _, arg = nw.invoke(sid, DIGEST_CMD_SHA256, memref(src), memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE)


# -- storage and waiting -------------------------------------------------------------------------------


@pytest.mark.parametrize("with_rpc_arg", [False, True])
def test_storage_objects_round_trip(world, with_rpc_arg: bool) -> None:
    _tee, _oracle, (nw, _) = world
    sid = opened(nw, STORAGE_UUID)
    oid = nw.buffer(5)
    nw.write_buf(oid, b"key-1")
    payload = bytes(range(256)) * 150  # 38400 bytes: three READ chunks
    data = nw.buffer(len(payload))
    nw.write_buf_fast(data, payload)
    kw = {"with_rpc_arg": with_rpc_arg}
    _, arg = nw.invoke(sid, STORAGE_CMD_WRITE, memref(oid, size=5), memref(data), **kw)
    assert arg.ret == TEEC_SUCCESS
    # OP-TEE's REE FS: the directory file and the object's hash-tree file
    assert sorted(nw.files) == ["/0", "/dirf.db"]
    assert payload[:4072] in bytes(nw.files["/0"])  # stored in clear (a simplification)
    kinds = [e[1] for e in nw.rpc_log if e[0] == "cmd"]
    assert OPTEE_RPC_CMD_SHM_ALLOC in kinds and kinds[-1] == OPTEE_RPC_CMD_SHM_FREE
    assert nw.shm == {}  # every payload buffer handed back
    small = nw.buffer(10)
    _, arg = nw.invoke(sid, STORAGE_CMD_READ, memref(oid, size=5), memref(small, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT),
                       **kw)
    assert (arg.ret, arg.ret_origin, arg.params[1].size) == (TEEC_ERROR_SHORT_BUFFER, TEEC_ORIGIN_TRUSTED_APP,
                                                              len(payload))
    back = nw.buffer(len(payload))
    _, arg = nw.invoke(sid, STORAGE_CMD_READ, memref(oid, size=5), memref(back, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT),
                       **kw)
    assert (arg.ret, arg.params[1].size) == (TEEC_SUCCESS, len(payload))
    assert nw.read_buf(back, len(payload)) == payload
    _, arg = nw.invoke(sid, STORAGE_CMD_DELETE, memref(oid, size=5), **kw)
    assert arg.ret == TEEC_SUCCESS and sorted(nw.files) == ["/dirf.db"]
    _, arg = nw.invoke(sid, STORAGE_CMD_READ, memref(oid, size=5), memref(back, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT),
                       **kw)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_TRUSTED_APP)
    assert nw.invoke(sid, STORAGE_CMD_DELETE, memref(oid, size=5))[1].ret == TEEC_ERROR_ITEM_NOT_FOUND
    assert nw.shm == {}


def test_wait_ta_notification_pair_and_cancel(world) -> None:
    _tee, _oracle, (nw, _) = world
    waiter, sender = opened(nw, WAIT_UUID), opened(nw, WAIT_UUID)
    ma = nw.arg_page(MsgArg(1, func=WAIT_CMD_WAIT, session=waiter, params=(value_in(42, 0),)))
    r = nw.smc(OPTEE_SMC_CALL_WITH_RPC_ARG, hi(ma), lo(ma))
    assert r[0] == OPTEE_SMC_RETURN_RPC_CMD
    wait_req = nw.read_arg(ma + get_arg_size(1))
    assert (wait_req.cmd, wait_req.params[0].a, wait_req.params[0].b) == (4, 0, 42)  # NOTIFICATION WAIT key 42
    # while it waits, another session sends; the NW would wake the waiter
    nw.invoke(sender, WAIT_CMD_SEND, value_in(42))
    assert nw.notifications == [(1, 42)]
    nw.write(ma + get_arg_size(1) + 20, b"\0\0\0\0")
    assert nw.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])[0] == OK
    assert nw.read_arg(ma).ret == TEEC_SUCCESS
    # CANCEL while BUSY is preempted stops it with TEE_ERROR_CANCEL (CANCEL
    # only references the session: it does not wait for the busy call)
    ma = nw.arg_page(MsgArg(1, func=WAIT_CMD_BUSY, session=waiter, params=(value_out(),)))
    r = nw.smc(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    assert r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
    assert nw.call_arg(MsgArg(OPTEE_MSG_CMD_CANCEL, session=waiter))[1].ret == TEEC_SUCCESS
    assert nw.run(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, r[3])[0] == OK
    out = nw.read_arg(ma)
    assert (out.ret, out.ret_origin, out.params[0].a) == (TEEC_ERROR_CANCEL, TEEC_ORIGIN_TRUSTED_APP, 1)


def test_foreign_intr_count_is_configurable(tmp_path: Path) -> None:
    machine, _tee, oracle, (nw,) = setup_guests(tmp_path, 1, config=TeeConfig(wait_ta_foreign_intr=7))
    sid = opened(nw, WAIT_UUID)
    _, arg = nw.invoke(sid, WAIT_CMD_BUSY, value_out())
    assert arg.params[0].a == 7
    assert sum(1 for e in nw.rpc_log if e[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR) == 7
    oracle.assert_clean()
    machine.close()


# -- the isolation oracle --------------------------------------------------------------------------------


def test_oracle_records_foreign_and_unpinned_frames(world) -> None:
    tee, oracle, (a, b) = world
    sid = opened(a, DIGEST_UUID)
    theirs = b.buffer(64)  # b's frames, pinned by b
    dst = a.buffer(32)
    # a's page list names b's page: OP-TEE cannot tell, the oracle can
    evil = a.buffer(64)
    from stubdom.optee import build_page_list

    a.write(evil.list_pages[0], build_page_list([theirs.pages[0]], evil.list_pages)[0])
    _, arg = a.invoke(sid, DIGEST_CMD_SHA256, memref(evil), memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
    assert arg.ret == TEEC_SUCCESS  # the access proceeded
    (v,) = oracle.clear()
    assert (v.client_id, v.domid, v.owner, v.reason, v.access) == (a.client, 1, 2, REASON_FOREIGN, "read")
    assert v.maddr == theirs.pages[0] and v.what == "digest input"
    assert "INVOKE_COMMAND" in v.call and v.smc == "OPTEE_SMC_CALL_WITH_ARG"
    # an unpinned page of a's own
    a.write(evil.list_pages[0], build_page_list(evil.pages, evil.list_pages)[0])
    a.machine.put_page(evil.pages[0] // PAGE_SIZE)
    a.invoke(sid, DIGEST_CMD_SHA256, memref(evil), memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
    (v,) = oracle.clear()
    assert (v.reason, v.refcount, v.owner) == (REASON_UNPINNED, 0, 1)
    a.machine.get_page(evil.pages[0] // PAGE_SIZE, 1)
    with pytest.raises(IsolationViolation, match="1 isolation violation"):
        a.machine.put_page(dst.pages[0] // PAGE_SIZE)
        a.invoke(sid, DIGEST_CMD_SHA256, memref(evil), memref(dst, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
        oracle.assert_clean()
    oracle.clear()
    a.machine.get_page(dst.pages[0] // PAGE_SIZE, 1)


def test_require_pins_false_checks_ownership_only(tmp_path: Path) -> None:
    machine, tee, oracle, (nw, other) = setup_guests(tmp_path, 1, 2, pin=False)
    oracle.require_pins = False
    sid = opened(nw)
    assert nw.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_inout(1))[1].params[0].a == 2
    assert oracle.violations == [] and oracle.accesses > 0
    ma = other.arg_page(MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=sid))
    nw.run(OPTEE_SMC_CALL_WITH_ARG, hi(ma), lo(ma))
    assert {v.reason for v in oracle.clear()} == {REASON_FOREIGN}
    machine.close()


def test_concurrent_vcpus_are_serialised(tmp_path: Path) -> None:
    import threading

    machine, tee, oracle, worlds = setup_guests(tmp_path, 1, 2, 3)
    sessions = [opened(nw) for nw in worlds]
    errors: list[BaseException] = []

    def vcpu(nw, sid) -> None:
        try:
            value = 0
            for _ in range(15):
                _, arg = nw.invoke(sid, TA_INCREMENT_CMD_INC_VALUE, value_inout(value))
                assert arg.ret == TEEC_SUCCESS and arg.params[0].a == value + 1
                value += 1
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=vcpu, args=(nw, sid)) for nw, sid in zip(worlds, sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(tee.partition_stats(nw.client).threads_free == 4 for nw in worlds)
    oracle.assert_clean()
    machine.close()


def test_shm_cache_users_are_optee_values():
    # enum thread_shm_cache_user, core/include/kernel/thread.h
    from stubdom.tee.thread import SHM_CACHE_USER_FS, SHM_CACHE_USER_I2C, SHM_CACHE_USER_SOCKET

    assert (SHM_CACHE_USER_SOCKET, SHM_CACHE_USER_FS, SHM_CACHE_USER_I2C) == (0, 1, 2)
