"""Standard (yielding) call entry: locating the message, and the messages.

Mirrors, function for function:

* ``core/arch/arm/kernel/thread_optee_smc.c``: std_smc_entry,
  std_entry_with_parg, std_entry_with_regd_arg, get_msg_arg, call_entry_std;
* ``core/tee/entry_std.c``: __tee_entry_std, entry_open_session,
  entry_invoke_command, entry_close_session, entry_cancel, register_shm,
  unregister_shm, copy_in_params / set_tmem_param / set_rmem_param,
  copy_out_param, get_open_session_meta.

and, from ``core/kernel/tee_ta_manager.c``, the session life cycle:
tee_ta_get_session (a call takes its session exclusively; a second one
sleeps on the session's condvar, parked in the normal world with
NOTIFICATION WAIT, until the first puts it back and wakes it with
NOTIFICATION SEND), tee_ta_put_session, tee_ta_open_session,
tee_ta_close_session / destroy_session (close waits for every other
reference to go); from ``core/mm/mobj_dyn_shm.c``,
mobj_reg_shm_release_by_cookie (UNREGISTER_SHM of memory a call still uses
drops the registration and sleeps until the last user puts it back).

The message is read once into a private copy: its header (for num_params,
READ_ONCE in OP-TEE), then the params it announces.  Afterwards only output
fields are written back: ret, ret_origin, session and, per param, value.a/b
or the memref size.  The RPC arg, when supplied, is written and read in place
as OP-TEE does.
"""

from __future__ import annotations

import struct
import uuid
from typing import TYPE_CHECKING

from stubdom.optee.msg import (
    MSG_ARG_HEADER_SIZE,
    OFFSET_RET,
    OFFSET_RET_ORIGIN,
    OFFSET_SESSION,
    OPTEE_MSG_ATTR_META,
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_MASK,
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_NAMES,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_LOGIN_APPLICATION,
    OPTEE_MSG_LOGIN_APPLICATION_GROUP,
    OPTEE_MSG_LOGIN_APPLICATION_USER,
    OPTEE_MSG_LOGIN_GROUP,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_MSG_LOGIN_REE_KERNEL,
    OPTEE_MSG_LOGIN_USER,
    OPTEE_MSG_MAX_NUM_PARAMS,
    MsgArg,
    MsgParam,
    get_arg_size,
    param_offset,
)
from stubdom.optee.smc import (
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_EBADCMD,
    OPTEE_SMC_RETURN_OK,
)
from stubdom.optee.teec import (
    TEE_ERROR_BAD_PARAMETERS,
    TEE_ERROR_ITEM_NOT_FOUND,
    TEE_ERROR_OVERFLOW,
    TEE_ERROR_SECURITY,
    TEE_NUM_PARAMS,
    TEE_SUCCESS,
    TEEC_ORIGIN_TEE,
    TEEC_ORIGIN_TRUSTED_APP,
)
from stubdom.optee.uuid import META_PARAM_ATTR, value_words_to_uuid
from stubdom.xen.constants import PAGE_SIZE

from .memory import Mobj
from .ta_store import find_ta
from .tas.ta import TaContext, TaParam, TaSession
from .thread import RPC_ARG_SIZE, Thread, ThreadGen

if TYPE_CHECKING:  # pragma: no cover
    from stubdom.config.tee import TeeConfig

    from .memory import NsMemoryMap
    from .partition import Partition
    from .tas.ta import TrustedApp

__all__ = ["StdCall", "TEE_NUM_PARAMS"]

_U32 = 0xFFFFFFFF
_NIL_UUID = uuid.UUID(int=0)
_LOGIN_NIL = (OPTEE_MSG_LOGIN_PUBLIC, OPTEE_MSG_LOGIN_REE_KERNEL)
_LOGIN_WITH_UUID = (
    OPTEE_MSG_LOGIN_USER,
    OPTEE_MSG_LOGIN_GROUP,
    OPTEE_MSG_LOGIN_APPLICATION,
    OPTEE_MSG_LOGIN_APPLICATION_USER,
    OPTEE_MSG_LOGIN_APPLICATION_GROUP,
)
_VALUE = (OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INOUT)
_TMEM = (OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_TMEM_INOUT)
_RMEM = (OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_RMEM_INOUT)
_OUT_MEM = (OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_RMEM_INOUT)
_OUT_VALUE = (OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INOUT)


class _NotHandled(Exception):
    """__tee_entry_std's default case: unknown cmd, a0 = EBADCMD."""


class StdCall:
    """One standard call on one thread of one partition."""

    def __init__(self, *, partition: Partition, thread: Thread, client_id: int, config: TeeConfig,
                 memmap: NsMemoryMap, tas: dict[uuid.UUID, TrustedApp]) -> None:
        self.part = partition
        self.thread = thread
        self.client_id = client_id
        self.config = config
        self.memmap = memmap
        self.tas = tas
        # Where the message lives: (mobj, offset) once located.
        self._arg: tuple[Mobj, int] | None = None
        # Registrations the message's RMEM params reference (copy_in_params).
        self._param_holds: list[Mobj] = []

    # -- std_smc_entry -------------------------------------------------------

    def run(self, fid: int, a1: int, a2: int, a3: int) -> ThreadGen:
        """std_smc_entry: the body of the thread; returns the final a0."""
        try:
            if fid in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG):
                return (yield from self._with_parg((a1 << 32) | a2, fid == OPTEE_SMC_CALL_WITH_RPC_ARG))
            if fid == OPTEE_SMC_CALL_WITH_REGD_ARG and self.config.rpc_arg:
                return (yield from self._with_regd_arg((a1 << 32) | a2, a3))
            return OPTEE_SMC_RETURN_EBADCMD
        finally:
            # Only when the thread dies mid-call (VM_DESTROYED closes it): a
            # call that ends puts every reference back on its way out.
            for held in self.thread.holds:
                held.users -= 1
            self.thread.holds.clear()

    def _with_parg(self, parg: int, with_rpc_arg: bool) -> ThreadGen:
        """std_entry_with_parg."""
        mm = self.memmap
        if with_rpc_arg and not self.config.rpc_arg:
            return OPTEE_SMC_RETURN_EBADCMD  # OP-TEE < 3.17: unknown SMC
        if mm.in_static(parg, MSG_ARG_HEADER_SIZE):
            if parg % 8:
                return OPTEE_SMC_RETURN_EBADADDR
            assert mm.static_base is not None
            region = Mobj.static(mm.static_base, mm.static_size)
            offs = parg - mm.static_base
            header = self._read(region, offs, MSG_ARG_HEADER_SIZE, "msg arg header")
            num_params = struct.unpack_from("<I", header, 28)[0]
            if num_params > OPTEE_MSG_MAX_NUM_PARAMS:
                return OPTEE_SMC_RETURN_EBADADDR
            sz = get_arg_size(num_params)
            total = sz + (RPC_ARG_SIZE if with_rpc_arg else 0)
            if not mm.in_static(parg, total):
                return OPTEE_SMC_RETURN_EBADADDR
            rpc = (region, offs + sz) if with_rpc_arg else None
            return (yield from self._call_entry_std(region, offs, header, num_params, rpc))
        if parg % PAGE_SIZE:
            return OPTEE_SMC_RETURN_EBADADDR
        # mobj_mapped_shm_alloc(&parg, 1, ...): one page of NS DDR, dyn shm only.
        if not mm.dynamic_shm or not mm.is_ns_ram(parg, PAGE_SIZE):
            return OPTEE_SMC_RETURN_EBADADDR
        page = Mobj.reg((parg,), 0, 0)
        return (yield from self._get_msg_arg_and_call(page, 0, with_rpc_arg))

    def _with_regd_arg(self, cookie: int, offset: int) -> ThreadGen:
        """std_entry_with_regd_arg: the arg inside registered shm, referenced
        until the call is over (its mobj_put comes after everything else)."""
        mobj = self.part.find_reg_shm(cookie) if self.memmap.dynamic_shm else None
        if mobj is None:
            return OPTEE_SMC_RETURN_EBADADDR
        mobj.users += 1
        self.thread.holds.append(mobj)
        rv = yield from self._get_msg_arg_and_call(mobj, offset, True)
        yield from self._put_mobj(mobj)
        return rv

    def _get_msg_arg_and_call(self, mobj: Mobj, offs: int, with_rpc_arg: bool) -> ThreadGen:
        """get_msg_arg, then call_entry_std."""
        if not mobj.contains(offs, MSG_ARG_HEADER_SIZE) or mobj.pa(offs) % 8:
            return OPTEE_SMC_RETURN_EBADADDR
        header = self._read(mobj, offs, MSG_ARG_HEADER_SIZE, "msg arg header")
        num_params = struct.unpack_from("<I", header, 28)[0]
        if num_params > OPTEE_MSG_MAX_NUM_PARAMS:
            return OPTEE_SMC_RETURN_EBADADDR
        sz = get_arg_size(num_params)
        if not mobj.contains(offs, sz):
            return OPTEE_SMC_RETURN_EBADADDR
        rpc = None
        if with_rpc_arg:
            if not mobj.contains(offs + sz, RPC_ARG_SIZE):
                return OPTEE_SMC_RETURN_EBADADDR
            rpc = (mobj, offs + sz)
        return (yield from self._call_entry_std(mobj, offs, header, num_params, rpc))

    def _call_entry_std(self, mobj: Mobj, offs: int, header: bytes, num_params: int,
                        rpc: tuple[Mobj, int] | None) -> ThreadGen:
        """call_entry_std."""
        t = self.thread
        cache_on = self.config.prealloc_rpc_cache and self.part.prealloc_rpc_cache
        if rpc is not None:
            if cache_on:
                yield from t.clear_prealloc_rpc_cache()
            t.rpc_arg = rpc
        self._arg = (mobj, offs)
        body = self._read(mobj, offs + MSG_ARG_HEADER_SIZE, get_arg_size(num_params) - MSG_ARG_HEADER_SIZE,
                          "msg arg params")
        arg = MsgArg.unpack(header + body, max_params=num_params)
        try:
            yield from self._tee_entry_std(arg)
            rv = OPTEE_SMC_RETURN_OK
        except _NotHandled:
            rv = OPTEE_SMC_RETURN_EBADCMD
        t.call = "end of call"
        yield from t.shm_cache_clear()
        if rpc is not None:
            t.rpc_arg = None
        if rv == OPTEE_SMC_RETURN_OK and not cache_on:
            yield from t.clear_prealloc_rpc_cache()
        return rv

    # -- __tee_entry_std ---------------------------------------------------

    def _tee_entry_std(self, arg: MsgArg) -> ThreadGen:
        cmd = arg.cmd
        self.thread.call = OPTEE_MSG_CMD_NAMES.get(cmd, f"msg cmd {cmd:#x}")
        if cmd == OPTEE_MSG_CMD_OPEN_SESSION:
            yield from self._open_session(arg)
        elif cmd == OPTEE_MSG_CMD_INVOKE_COMMAND:
            self.thread.call = f"OPTEE_MSG_CMD_INVOKE_COMMAND session {arg.session:#x} func {arg.func:#x}"
            yield from self._invoke_command(arg)
        elif cmd == OPTEE_MSG_CMD_CLOSE_SESSION:
            yield from self._close_session(arg)
        elif cmd == OPTEE_MSG_CMD_CANCEL:
            yield from self._cancel(arg)
        elif cmd == OPTEE_MSG_CMD_REGISTER_SHM and self.memmap.dynamic_shm:
            self._register_shm(arg)
        elif cmd == OPTEE_MSG_CMD_UNREGISTER_SHM and self.memmap.dynamic_shm:
            yield from self._unregister_shm(arg)
        else:
            # DO_BOTTOM_HALF / STOP_ASYNC_NOTIF without async notif, protmem
            # commands, anything unknown: TEE_ERROR_NOT_IMPLEMENTED -> EBADCMD.
            raise _NotHandled(cmd)

    # -- sessions (tee_ta_manager.c) -------------------------------------------

    def _get_session(self, sid: int, exclusive: bool) -> ThreadGen:
        """tee_ta_get_session: the listed session ``sid`` (None if it is not
        there or going away), referenced; ``exclusive`` also takes it, sleeping
        on its lock_cv while another thread has it."""
        t, m = self.thread, self.part.ta_mutex
        yield from m.lock(t)
        s = self.part.sessions.get(sid)
        if s is not None:
            if s.unlink:
                s = None
            else:
                s.ref_count += 1
                if exclusive:
                    while s.lock_thread is not None and not s.unlink:
                        yield from s.lock_cv.wait(t, m)
                    if s.unlink:
                        _dec_session_ref_count(s)
                        s = None
                    else:
                        s.lock_thread = t.index
        yield from m.unlock(t)
        return s

    def _put_session(self, s: TaSession) -> ThreadGen:
        """tee_ta_put_session: let go of it, waking one thread waiting for it."""
        t, m = self.thread, self.part.ta_mutex
        yield from m.lock(t)
        if s.lock_thread == t.index:
            s.lock_thread = None
            s.lock_cv.signal()
        _dec_session_ref_count(s)
        yield from m.unlock(t)

    def _destroy_session(self, s: TaSession) -> ThreadGen:
        """destroy_session / tee_ta_unlink_session: mark it going (every
        waiter gives up), wait until only this reference is left, unlist it."""
        t, m = self.thread, self.part.ta_mutex
        yield from m.lock(t)
        s.unlink = True
        s.lock_cv.broadcast()
        while s.ref_count != 1:
            yield from s.refc_cv.wait(t, m)
        self.part.sessions.pop(s.id, None)
        yield from m.unlock(t)

    def _close(self, s: TaSession) -> ThreadGen:
        """close_session: the TA's close entry point, then destroy_session."""
        if s.ta is not None:
            s.ta.close_session(self._ta_context(s))
        yield from self._destroy_session(s)

    def _init_session(self, ta_uuid: uuid.UUID, login: int, client_uuid: uuid.UUID) -> ThreadGen:
        """tee_ta_init_session: list a new session (taken by this thread, so
        nobody else can use it yet), then find its TA; (result, session)."""
        t, m = self.thread, self.part.ta_mutex
        s = TaSession(0, None, login, client_uuid, lock_thread=t.index)
        yield from m.lock(t)
        s.id = self.part.new_session_id()
        if not s.id:
            yield from m.unlock(t)
            return TEE_ERROR_OVERFLOW, None
        self.part.sessions[s.id] = s
        yield from m.unlock(t)
        res, s.ta = yield from find_ta(t, self.config, self.tas, ta_uuid)
        if res != TEE_SUCCESS:
            yield from m.lock(t)
            self.part.sessions.pop(s.id, None)
            yield from m.unlock(t)
            return res, None
        return TEE_SUCCESS, s

    # -- the entry points (entry_std.c) ------------------------------------------

    def _open_session(self, arg: MsgArg) -> ThreadGen:
        """entry_open_session + tee_ta_open_session."""
        origin = TEEC_ORIGIN_TEE
        session = None
        params = arg.params
        res, ta_uuid, login, client_uuid = _open_session_meta(params)
        if res == TEE_SUCCESS:
            res, ta_params, saved = self._copy_in_params(params[2:])
            if res == TEE_SUCCESS:
                res, s = yield from self._init_session(ta_uuid, login, client_uuid)
                if res == TEE_SUCCESS:
                    ctx = self._ta_context(s)
                    res, s.state = yield from s.ta.open_session(ctx, ta_params)
                    origin = TEEC_ORIGIN_TRUSTED_APP
                    if res != TEE_SUCCESS:
                        yield from self._close(s)
                    else:
                        session = s
                        yield from self._put_session(s)
                self._copy_out_params(ta_params, saved, 2)
            yield from self._cleanup_shm_refs()
        self._write_u32(OFFSET_SESSION, session.id if session is not None else 0)
        self._write_u32(OFFSET_RET, res)
        self._write_u32(OFFSET_RET_ORIGIN, origin)

    def _invoke_command(self, arg: MsgArg) -> ThreadGen:
        """entry_invoke_command."""
        origin = TEEC_ORIGIN_TEE
        res, ta_params, saved = self._copy_in_params(arg.params)
        if res == TEE_SUCCESS:
            s = yield from self._get_session(arg.session, True)
            if s is None:
                res = TEE_ERROR_BAD_PARAMETERS
            else:
                s.cancel = False
                res = yield from s.ta.invoke(self._ta_context(s), arg.func, ta_params)
                origin = TEEC_ORIGIN_TRUSTED_APP
                yield from self._put_session(s)
                self._copy_out_params(ta_params, saved, 0)
        yield from self._cleanup_shm_refs()
        self._write_u32(OFFSET_RET, res)
        self._write_u32(OFFSET_RET_ORIGIN, origin)

    def _close_session(self, arg: MsgArg) -> ThreadGen:
        """entry_close_session + tee_ta_close_session: ret_origin is always
        TEE; a session that is not there is ITEM_NOT_FOUND."""
        if arg.num_params:
            res = TEE_ERROR_BAD_PARAMETERS
        else:
            s = yield from self._get_session(arg.session, True)
            if s is None:
                res = TEE_ERROR_ITEM_NOT_FOUND
            else:
                yield from self._close(s)
                res = TEE_SUCCESS
        self._write_u32(OFFSET_RET, res)
        self._write_u32(OFFSET_RET_ORIGIN, TEEC_ORIGIN_TEE)

    def _cancel(self, arg: MsgArg) -> ThreadGen:
        """entry_cancel: the session is referenced, not taken (a busy one is
        cancelled at once), and marked cancelled (tee_ta_cancel_command)."""
        if arg.num_params:
            res = TEE_ERROR_BAD_PARAMETERS
        else:
            s = yield from self._get_session(arg.session, False)
            if s is None:
                res = TEE_ERROR_BAD_PARAMETERS
            else:
                s.cancel = True
                res = TEE_SUCCESS
                yield from self._put_session(s)
        self._write_u32(OFFSET_RET, res)
        self._write_u32(OFFSET_RET_ORIGIN, TEEC_ORIGIN_TEE)

    def _register_shm(self, arg: MsgArg) -> None:
        """register_shm: exactly one TMEM_OUTPUT|NONCONTIG param; ret_origin untouched."""
        res = TEE_ERROR_BAD_PARAMETERS
        if arg.num_params == 1 and arg.params[0].attr == (OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT
                                                          | OPTEE_MSG_ATTR_NONCONTIG):
            p = arg.params[0]
            mobj = self._noncontig(p, "REGISTER_SHM page list")
            if mobj is not None:
                self.part.reg_shm.insert(0, mobj)
                res = TEE_SUCCESS
        self._write_u32(OFFSET_RET, res)

    def _unregister_shm(self, arg: MsgArg) -> ThreadGen:
        """unregister_shm + mobj_reg_shm_release_by_cookie: the cookie in
        params[0].u.rmem.shm_ref (attr unchecked).  The registration's
        reference is dropped at once (a second UNREGISTER_SHM of it is
        BAD_PARAMETERS); while a call still uses the memory this thread
        sleeps on shm_cv until the last user puts it back."""
        if arg.num_params != 1:
            self._write_u32(OFFSET_RET, TEE_ERROR_BAD_PARAMETERS)
            self._write_u32(OFFSET_RET_ORIGIN, TEEC_ORIGIN_TEE)
            return
        part, t = self.part, self.thread
        mobj = part.find_reg_shm(arg.params[0].shm_ref)
        if mobj is None or mobj.releasing:
            self._write_u32(OFFSET_RET, TEE_ERROR_BAD_PARAMETERS)
            return
        mobj.releasing = True
        if not mobj.users:
            mobj.release_frees = True  # the registration's was the last reference
        yield from part.shm_mu.lock(t)
        part.shm_release_waiters += 1
        while not mobj.release_frees:
            yield from part.shm_cv.wait(t, part.shm_mu)
        part.reg_shm.remove(mobj)
        part.shm_release_waiters -= 1
        yield from part.shm_mu.unlock(t)
        self._write_u32(OFFSET_RET, TEE_SUCCESS)

    def _put_mobj(self, mobj: Mobj) -> ThreadGen:
        """mobj_put of a registration a call held: the last user of one being
        released wakes the unregistering threads (mobj_reg_shm_free)."""
        self.thread.holds.remove(mobj)
        mobj.users -= 1
        if mobj.users or not mobj.releasing:
            return
        mobj.release_frees = True
        part, t = self.part, self.thread
        yield from part.shm_mu.lock(t)
        if part.shm_release_waiters:
            part.shm_cv.broadcast()
        yield from part.shm_mu.unlock(t)

    def _cleanup_shm_refs(self) -> ThreadGen:
        """cleanup_shm_refs: put back the registrations the params referenced."""
        for mobj in list(self._param_holds):
            yield from self._put_mobj(mobj)
        self._param_holds.clear()

    # -- params --------------------------------------------------------------

    def _copy_in_params(self, params: tuple[MsgParam, ...]) -> tuple[int, list[TaParam], list[int]]:
        """copy_in_params: at most four, no META, each a known type."""
        saved: list[int] = []
        ta_params: list[TaParam] = []
        if len(params) > TEE_NUM_PARAMS:
            return TEE_ERROR_BAD_PARAMETERS, ta_params, saved
        for i, p in enumerate(params):
            saved.append(p.attr)
            if p.attr & OPTEE_MSG_ATTR_META:
                return TEE_ERROR_BAD_PARAMETERS, ta_params, saved
            t = p.attr & OPTEE_MSG_ATTR_TYPE_MASK
            if t == OPTEE_MSG_ATTR_TYPE_NONE:
                ta_params.append(TaParam())
            elif t in _VALUE:
                ta_params.append(TaParam(1 + t - OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, p.a & _U32, p.b & _U32))
            elif t in _TMEM:
                res, mem = self._tmem_param(p, i)
                if res != TEE_SUCCESS:
                    return res, ta_params, saved
                mobj, offs, size = mem
                ta_params.append(TaParam(5 + t - OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, mobj=mobj, offs=offs, size=size))
            elif t in _RMEM and self.memmap.dynamic_shm:
                mobj = self.part.find_reg_shm(p.shm_ref)
                if mobj is None:
                    return TEE_ERROR_BAD_PARAMETERS, ta_params, saved
                end = p.offs + p.size
                if end > 0xFFFFFFFFFFFFFFFF or mobj.size < end:
                    return TEE_ERROR_SECURITY, ta_params, saved
                mobj.users += 1
                self.thread.holds.append(mobj)
                self._param_holds.append(mobj)
                ta_params.append(TaParam(5 + t - OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, mobj=mobj, offs=p.offs,
                                         size=p.size))
            else:
                return TEE_ERROR_BAD_PARAMETERS, ta_params, saved
        return TEE_SUCCESS, ta_params, saved

    def _tmem_param(self, p: MsgParam, index: int) -> tuple[int, tuple[Mobj | None, int, int]]:
        """set_tmem_param."""
        if p.buf_ptr == 0:
            return TEE_SUCCESS, (None, 0, 0)  # NULL memref (SEC_CAP_MEMREF_NULL)
        if p.attr & OPTEE_MSG_ATTR_NONCONTIG:
            mobj = self._noncontig(p, f"memref {index} page list")
            if mobj is None:
                return TEE_ERROR_BAD_PARAMETERS, (None, 0, 0)
            return TEE_SUCCESS, (mobj, 0, p.size)
        found = self.memmap.static_param_mem(p.buf_ptr, p.size)
        if found is None:
            return TEE_ERROR_BAD_PARAMETERS, (None, 0, 0)
        mobj, offs = found
        return TEE_SUCCESS, (mobj, offs, p.size)

    def _noncontig(self, p: MsgParam, what: str) -> Mobj | None:
        ns = self.thread.ns
        assert ns is not None
        return self.memmap.mobj_from_noncontig(lambda a: ns.read_ma(a, PAGE_SIZE, what),
                                               p.buf_ptr, p.size, p.shm_ref)

    def _copy_out_params(self, ta_params: list[TaParam], saved: list[int], first: int) -> None:
        """copy_out_param: the size of output memrefs, a/b of output values."""
        for i, (tp, attr) in enumerate(zip(ta_params, saved)):
            t = attr & OPTEE_MSG_ATTR_TYPE_MASK
            base = param_offset(first + i)
            if t in _OUT_MEM:
                self._write_u64(base + 16, tp.size, f"param {first + i} size")
            elif t in _OUT_VALUE:
                self._write(base + 8, struct.pack("<QQ", tp.a & _U32, tp.b & _U32), f"param {first + i} value")

    # -- helpers -----------------------------------------------------------------

    def _ta_context(self, session: TaSession) -> TaContext:
        return TaContext(self.thread, self.config, session, self.client_id, self.part.ree_fs)

    def _read(self, mobj: Mobj, offs: int, length: int, what: str) -> bytes:
        assert self.thread.ns is not None
        return self.thread.ns.read(mobj, offs, length, what)

    def _write(self, field_offset: int, data: bytes, what: str) -> None:
        assert self._arg is not None and self.thread.ns is not None
        mobj, offs = self._arg
        self.thread.ns.write(mobj, offs + field_offset, data, what)

    def _write_u32(self, field_offset: int, value: int) -> None:
        names = {OFFSET_RET: "msg arg ret", OFFSET_RET_ORIGIN: "msg arg ret_origin",
                 OFFSET_SESSION: "msg arg session"}
        self._write(field_offset, struct.pack("<I", value & _U32), names.get(field_offset, "msg arg"))

    def _write_u64(self, field_offset: int, value: int, what: str) -> None:
        self._write(field_offset, struct.pack("<Q", value), what)


def _dec_session_ref_count(s: TaSession) -> None:
    """dec_session_ref_count: with one reference left, wake the closer."""
    s.ref_count -= 1
    if s.ref_count == 1:
        s.refc_cv.signal()


def _open_session_meta(params: tuple[MsgParam, ...]) -> tuple[int, uuid.UUID, int, uuid.UUID]:
    """get_open_session_meta: two params of attr exactly 0x101; the login is
    the low 32 bits of params[1].c (OP-TEE stores it in a uint32_t)."""
    if len(params) < 2 or params[0].attr != META_PARAM_ATTR or params[1].attr != META_PARAM_ATTR:
        return TEE_ERROR_BAD_PARAMETERS, _NIL_UUID, 0, _NIL_UUID
    ta_uuid = value_words_to_uuid(params[0].a, params[0].b)
    login = params[1].c & _U32
    if login in _LOGIN_NIL:
        client = _NIL_UUID
    elif login in _LOGIN_WITH_UUID:
        client = value_words_to_uuid(params[1].a, params[1].b)
    else:
        return TEE_ERROR_BAD_PARAMETERS, _NIL_UUID, 0, _NIL_UUID
    return TEE_SUCCESS, ta_uuid, login, client
