"""The mediator's operations for a daemon that died and came back
(docs/faults.md): snapshot and restore a domain's context, end calls whose
guests will never resume them, undo what a call whose answer was lost may
have left in OP-TEE.

Part of :class:`~stubdom.mediator.Mediator` (a mixin: the same object, the
concern split out of core.py as Xen splits a grown mediator by concern).
Every call that drives OP-TEE to the end of a thread goes through one loop,
:meth:`RecoveryOps._run_to_completion`, which answers each RPC the way a
guest that is gone would: an RPC ALLOC refused, a FREE or SHM_FREE taken
(what the domain held released), an RPC CMD failed with
TEEC_ERROR_COMMUNICATION, a foreign interrupt resumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stubdom.optee.msg import (
    MSG_ARG_HEADER_SIZE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_MAX_NUM_PARAMS,
    MsgArg,
    MsgParam,
    unpack_header,
)
from stubdom.optee.rpc import OPTEE_RPC_CMD_SHM_FREE
from stubdom.optee.smc import (
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FREE,
    OPTEE_SMC_SHM_CACHED,
    OPTEE_SMC_VM_DESTROYED,
    is_rpc_return,
    rpc_func,
)
from stubdom.optee.teec import TEEC_ERROR_BAD_PARAMETERS, TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, Machine

from . import cookies
from .context import DomainContext, RpcState, ShmBuffer, ShmKind, ShmState, StdCall
from .errors import BadSnapshot
from .port import TeePort, client_id
from .profile import Profile
from .ratelog import RateLimitedLog
from .snapshot import SNAPSHOT_VERSION, Intent, Snapshot, call_intent, context_from_data, context_to_data
from .translate import free_list_pages, release_buffer

if TYPE_CHECKING:
    from .core import Regs

__all__ = ["RecoveryOps", "LostCall", "ABANDON_MAX_STEPS", "REFUSED_RPC_ARG_ADDR"]

_U32 = 0xFFFFFFFF
# A thread driven to its end by failing each RPC: OP-TEE bounds its own RPCs
# per call, this bounds ours against a TEE that loops.
ABANDON_MAX_STEPS = 64
# What OP-TEE is resumed with when the mediator refuses an RPC ALLOC: not 0,
# Linux's "no buffer" (on a board whose DRAM starts at 0 that is a real page
# OP-TEE would map); a misaligned address fails OP-TEE's first check
# (thread_rpc_alloc_arg: IS_ALIGNED_WITH_TYPE) before it touches memory, and
# cookie 0 spares the guest an RPC FREE of a buffer it never had.
REFUSED_RPC_ARG_ADDR = 7

# (a1, a2, thread) of an RPC CMD -> (machine address, size) of its request
RpcArgLocator = Callable[[int, int, int], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class LostCall:
    """What :meth:`RecoveryOps.settle_lost_call` did (``done``, for the log;
    None: nothing to do) and whether the frames pinned beyond the restored
    context may be unpinned now (``extras_free``: OP-TEE said it keeps no
    registration the lost call may have made)."""

    done: str | None
    extras_free: bool


class RecoveryOps:
    """Recovery operations of :class:`~stubdom.mediator.Mediator`."""

    # provided by Mediator (core.py)
    _machine: Machine
    _port: TeePort
    _logger: logging.Logger
    _log_clock: Callable[[], float] | None
    tee_threads: int
    profile: Profile

    if TYPE_CHECKING:
        def context(self, domid: int) -> DomainContext: ...
        def _tee(self, ctx: DomainContext, regs: Regs) -> Regs: ...
        def _free_std_call(self, ctx: DomainContext, call: StdCall) -> None: ...
        def _free_rpc_buffer(self, ctx: DomainContext, cookie: int) -> bool: ...
        def _free_rpc_shm(self, ctx: DomainContext, cookie: int) -> None: ...
        def _install_context(self, ctx: DomainContext) -> None: ...
        def _rpc_arg_location(self, ctx: DomainContext, call: StdCall, a1: int,
                              a2: int) -> tuple[int, int, int] | None: ...

    # == snapshot and restore =================================================

    def snapshot(self, domid: int) -> Snapshot:
        """``domid``'s state as plain data (mediator/snapshot.py), at rest:
        BadSnapshot if a call is inside OP-TEE."""
        return context_to_data(self.context(domid))

    def restore(self, snap: Snapshot) -> None:
        """Adopt a context rebuilt from :meth:`snapshot`'s data (check the
        pins first: ``expected_pins``): no SMC, no pin — OP-TEE kept its
        partition, the frame table its pins. BadSnapshot if the data does
        not describe a context."""
        domid = snap.get("domid")
        if not isinstance(domid, int) or isinstance(domid, bool):
            raise BadSnapshot(-1, f"field 'domid' is {domid!r}")
        if snap.get("version") != SNAPSHOT_VERSION:
            raise BadSnapshot(domid, f"version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}")
        log = RateLimitedLog(self._logger, f"d{domid}: ", clock=self._log_clock)
        self._install_context(context_from_data(snap, self._machine, log, self.profile))

    def suspended(self, domid: int) -> dict[int, int]:
        """{OP-TEE thread: call seq} of the domain's calls suspended in RPCs."""
        ctx = self.context(domid)
        with ctx.lock:
            return {tid: call.seq for tid, call in ctx.suspended.items()}

    def intent_of(self, domid: int, tid: int) -> Intent | None:
        """What the call suspended on ``tid`` may leave in OP-TEE (None: no
        such call)."""
        ctx = self.context(domid)
        with ctx.lock:
            call = ctx.suspended.get(tid)
        return None if call is None else call_intent(call)

    def hold_frames(self, domid: int, frames: dict[int, int]) -> int:
        """Keep ``frames`` ({mfn: pins}, pinned on the domain's behalf but in
        no buffer: OP-TEE may reference them) until VM_DESTROYED; they count
        in its snapshots. Returns the pins now held."""
        ctx = self.context(domid)
        with ctx.lock:
            for mfn, n in frames.items():
                if n > 0:
                    ctx.held_frames[mfn] = ctx.held_frames.get(mfn, 0) + n
            return sum(ctx.held_frames.values())

    def vm_destroyed(self, domid: int) -> Regs:
        """VM_DESTROYED for ``domid`` as the hypervisor, whether or not this
        mediator has a context for it (recovery ends partitions it cannot
        vouch for). The gate's failures propagate."""
        return self._port.hyp_call((OPTEE_SMC_VM_DESTROYED, client_id(domid), 0, 0, 0, 0, 0, 0))

    # == the one loop: OP-TEE to the end of a thread, every RPC failed ========

    def _run_to_completion(self, ctx: DomainContext, regs: Regs, locate: RpcArgLocator,
                           call: StdCall | None = None) -> tuple[Regs, bool]:
        """Issue ``regs`` and keep OP-TEE going, answering each RPC as a gone
        guest would, until the thread completes: (its final registers,
        True). False with the last RPC's registers after ABANDON_MAX_STEPS
        (``call``, when given, then records it as its pending RPC)."""
        r = self._tee(ctx, regs)
        for _ in range(ABANDON_MAX_STEPS):
            if call is not None:
                free_list_pages(ctx, call.stale_lists)  # OP-TEE has read them
            if not is_rpc_return(r[0] & _U32):
                return r, True
            r = self._tee(ctx, self._failing_resume(ctx, rpc_func(r[0] & _U32), r[1] & _U32, r[2] & _U32,
                                                    r[3] & _U32, locate))
        if call is not None and is_rpc_return(r[0] & _U32):
            call.thread_id, call.rpc_func = r[3] & _U32, rpc_func(r[0] & _U32)
            call.rpc_a1, call.rpc_a2 = r[1] & _U32, r[2] & _U32
            call.rpc_state, call.rpc_request = RpcState.GUEST, None
        return r, not is_rpc_return(r[0] & _U32)

    def _failing_resume(self, ctx: DomainContext, func: int, a1: int, a2: int, tid: int,
                        locate: RpcArgLocator, *, taken: bool = False) -> Regs:
        """RETURN_FROM_RPC failing the RPC ``func`` OP-TEE waits on in
        thread ``tid``; what OP-TEE gave back with it (RPC FREE, SHM_FREE)
        is released — unless ``taken``: it was when the RPC first came (a
        call suspended in it), and its cookie may name something new now."""
        if func == OPTEE_SMC_RPC_FUNC_ALLOC:
            return (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, REFUSED_RPC_ARG_ADDR, tid, 0, 0, 0, 0)
        if func == OPTEE_SMC_RPC_FUNC_FREE and not taken:
            self._free_rpc_buffer(ctx, (a1 << 32) | a2)
        elif func == OPTEE_SMC_RPC_FUNC_CMD:
            where = locate(a1, a2, tid)
            if where is not None:  # else OP-TEE's preset error answers it
                self._fail_rpc_cmd(ctx, *where, taken=taken)
        return (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid, 0, 0, 0, 0)

    def _fail_rpc_cmd(self, ctx: DomainContext, maddr: int, size: int, *, taken: bool) -> None:
        """OP-TEE's RPC request at ``maddr``, answered
        TEEC_ERROR_COMMUNICATION; an SHM_FREE means OP-TEE let go of that
        RPC SHM buffer (released now, unless ``taken`` already)."""
        try:
            req = MsgArg.unpack(self._machine.read_machine(maddr, size),
                                max_params=OPTEE_MSG_MAX_NUM_PARAMS)
        except ValueError:
            return
        if req.cmd == OPTEE_RPC_CMD_SHM_FREE and req.params and not taken:
            self._free_rpc_shm(ctx, req.params[0].b)
        self._machine.write_machine(maddr, req.replace(
            ret=TEEC_ERROR_COMMUNICATION, ret_origin=TEEC_ORIGIN_COMMS).pack())

    def _rpc_buffer_locator(self, ctx: DomainContext, fallback: RpcArgLocator | None = None) -> RpcArgLocator:
        """Where an RPC CMD's request is: the RPC buffer its cookie names,
        else (cookie 0: the caller's own RPC argument) ``fallback``."""

        def locate(a1: int, a2: int, tid: int) -> tuple[int, int] | None:
            cookie = (a1 << 32) | a2
            if cookie:
                with ctx.lock:
                    buf = ctx.rpc_buffers.get(cookie)
                if buf is None:
                    return None
                return buf.shadow.maddr, PAGE_SIZE - (buf.ipa & (PAGE_SIZE - 1))
            return fallback(a1, a2, tid) if fallback is not None else None

        return locate

    # == a suspended call whose guest is gone =================================

    def abandon(self, domid: int, tid: int) -> bool:
        """End the call suspended on OP-TEE thread ``tid`` for a guest that
        will never resume it (its RETURN_FROM_RPC was lost with a daemon
        that died, or its lease ran out): OP-TEE is resumed failing each RPC
        until the call completes, then what it held is released — a
        REGISTER_SHM OP-TEE may have completed is unregistered first, and
        its pins go only on OP-TEE's word that it holds none. False: nothing
        was suspended there, or OP-TEE would not let go within
        ABANDON_MAX_STEPS (the call stays suspended, released with the
        domain). The gate's failures propagate (the call is then kept)."""
        ctx = self.context(domid)
        with ctx.lock:
            call = ctx.suspended.pop(tid, None)
        if call is None:
            return False

        def own_arg(a1: int, a2: int, t: int) -> tuple[int, int] | None:
            where = self._rpc_arg_location(ctx, call, a1, a2)
            return None if where is None else (where[0], where[2])

        done = False
        try:
            first = self._failing_resume(ctx, call.rpc_func, call.rpc_a1, call.rpc_a2, tid, own_arg,
                                         taken=True)
            _r, done = self._run_to_completion(ctx, first, own_arg, call)
        finally:
            if not done:
                with ctx.lock:
                    ctx.suspended[call.thread_id if call.thread_id is not None else tid] = call
        if not done:
            ctx.log.error("abandoned call %d: OP-TEE still in RPCs after %d steps", call.seq,
                          ABANDON_MAX_STEPS)
            return False
        try:
            if call.register is not None:
                # OP-TEE may have completed it: undo it before its pins go
                ret = self._own_call(ctx, _unregister(call.register.cookie))
                if ret in (0, TEEC_ERROR_BAD_PARAMETERS):
                    buf, call.register = call.register, None
                    if cookies.forget(ctx, buf):
                        release_buffer(self._machine, ctx, buf)
        finally:
            self._free_std_call(ctx, call)  # an undo that failed: the claim kept, LIVE
        return True

    def end_unknown_threads(self, domid: int) -> list[int]:
        """After a daemon died with a call inside OP-TEE: end every thread of
        the domain's partition that OP-TEE holds suspended but the restored
        context does not know (the call the dead daemon was running,
        suspended in an RPC nobody will answer, or a call recovery set
        aside), each driven to its end by :meth:`_run_to_completion`. Threads
        the context holds suspended are left alone; a thread that is not
        suspended answers ERESUME. Returns the threads ended."""
        ctx = self.context(domid)
        with ctx.lock:
            known = set(ctx.suspended)

        def set_aside_arg(a1: int, a2: int, tid: int) -> tuple[int, int] | None:
            # a set-aside call's own RPC argument, after its argument in its
            # shadow page (the set-aside snapshot names it; never journaled)
            with ctx.lock:
                hint = ctx.orphan_rpc_args.get(tid)
            return None if hint is None else ((hint[0] << PAGE_SHIFT) + hint[1], hint[2])

        locate = self._rpc_buffer_locator(ctx, set_aside_arg)
        ended = []
        for tid in range(self.tee_threads):
            if tid in known:
                continue
            r, _done = self._run_to_completion(
                ctx, (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, REFUSED_RPC_ARG_ADDR, tid, 0, 0, 0, 0), locate)
            if r[0] & _U32 != OPTEE_SMC_RETURN_ERESUME:
                ended.append(tid)
        with ctx.lock:
            ctx.orphan_rpc_args.clear()
        return ended

    # == the lasting effect of a call whose answer was lost ===================

    def settle_lost_call(self, domid: int, intent: Intent) -> LostCall:
        """After a daemon died with a call in OP-TEE and every thread of the
        domain it does not hold was ended: undo or finish what that call may
        have done while its guest was answered ENOTAVAIL (outcome unknown),
        always towards holding less —

        - REGISTER_SHM of a cookie the restored context does not hold:
          UNREGISTER_SHM it, so OP-TEE keeps no registration of the frames
          whose pins recovery then drops (invariant 4) — dropped only if
          OP-TEE answers that it holds none (0, or "no such registration");
        - REGISTER_SHM whose claim the context holds without its call (the
          call was set aside): UNREGISTER_SHM it; released on the same
          answer, otherwise kept registered (LIVE, pinned);
        - OPEN_SESSION that OP-TEE completed (a nonzero session in the
          shadow, zeroed on the way in): CLOSE_SESSION it — the guest never
          learnt its id;
        - UNREGISTER_SHM of a registration the context still holds:
          UNREGISTER_SHM again, and on success or "not found" (the lost one
          ran) unpin it;
        - CLOSE_SESSION: CLOSE_SESSION again (the lost one ran, or now it has).

        Each is one standard call as the domain (:meth:`_own_call`). Run
        before the extra pins are dropped; a gate failure propagates (then
        nothing may be dropped)."""
        ctx = self.context(domid)
        cmd, cookie, session = intent.get("cmd"), intent.get("cookie"), intent.get("session") or 0
        if cmd == OPTEE_MSG_CMD_OPEN_SESSION:
            hdr = unpack_header(self._machine.read_machine(
                int(intent["shadow"]) << PAGE_SHIFT, MSG_ARG_HEADER_SIZE))
            session, ret = hdr[2], hdr[5]
            if not session or ret:
                return LostCall(None, True)
            ret = self._own_call(ctx, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))
            return LostCall(f"closed session {session:#x} OP-TEE opened (ret {ret:#x})", True)
        if cmd == OPTEE_MSG_CMD_CLOSE_SESSION and session:
            ret = self._own_call(ctx, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))
            return LostCall(f"closed session {session:#x} again (ret {ret:#x})", True)
        if cmd not in (OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM) or cookie is None:
            return LostCall(None, True)
        with ctx.lock:
            held = ctx.shm_buffers.get(cookie)
        if cmd == OPTEE_MSG_CMD_REGISTER_SHM:
            if held is None:
                ret = self._own_call(ctx, _unregister(cookie))
                gone = ret in (0, TEEC_ERROR_BAD_PARAMETERS)
                return LostCall(f"unregistered cookie {cookie:#x} (ret {ret:#x})"
                                + ("" if gone else ": OP-TEE may hold it, its frames stay pinned"), gone)
            if held.kind is not ShmKind.REGISTERED or held.state is not ShmState.PENDING or held.owner is not None:
                return LostCall(None, True)  # claimed before this call: not this call's
            return LostCall(self._settle_claim(ctx, held), True)
        if held is None or held.kind is not ShmKind.REGISTERED or held.state is not ShmState.LIVE:
            return LostCall(None, True)
        ret = self._own_call(ctx, _unregister(cookie))
        if ret not in (0, TEEC_ERROR_BAD_PARAMETERS):  # busy: OP-TEE still uses it, keep the pins
            return LostCall(f"cookie {cookie:#x} still registered (ret {ret:#x})", True)
        if cookies.forget(ctx, held):
            release_buffer(self._machine, ctx, held)
        return LostCall(f"unregistered cookie {cookie:#x} again (ret {ret:#x}), pins released", True)

    def settle_claims(self, domid: int) -> list[str]:
        """Every registration the restored context holds claimed by no call
        (its REGISTER_SHM was set aside by recovery, outcome unknown):
        UNREGISTER_SHM it, release it if OP-TEE holds none, else keep it
        LIVE. What :meth:`settle_lost_call` did not settle already."""
        ctx = self.context(domid)
        with ctx.lock:
            orphans = [b for b in ctx.shm_buffers.values()
                       if b.state is ShmState.PENDING and b.owner is None]
        return [self._settle_claim(ctx, buf) for buf in orphans]

    def _settle_claim(self, ctx: DomainContext, buf: ShmBuffer) -> str:
        ret = self._own_call(ctx, _unregister(buf.cookie))
        if ret in (0, TEEC_ERROR_BAD_PARAMETERS):
            if cookies.forget(ctx, buf):
                release_buffer(self._machine, ctx, buf)
            return f"cookie {buf.cookie:#x} unregistered (ret {ret:#x}), pins released"
        free_list_pages(ctx, buf.list_pages)
        cookies.commit(ctx, buf)
        return f"cookie {buf.cookie:#x} kept registered (ret {ret:#x})"

    def _own_call(self, ctx: DomainContext, arg: MsgArg) -> int:
        """One standard call the mediator makes for the domain (its client
        ID, through its port), the argument in one of its shadow pages,
        driven to its end by :meth:`_run_to_completion`; returns ``ret``, or
        TEEC_ERROR_COMMUNICATION if OP-TEE did not complete it."""
        with ctx.lock:
            page = ctx.pool.take()
        try:
            self._machine.write_machine(page.maddr, arg.pack())
            r, done = self._run_to_completion(
                ctx, (OPTEE_SMC_CALL_WITH_ARG, page.maddr >> 32, page.maddr & _U32, OPTEE_SMC_SHM_CACHED,
                      0, 0, 0, 0), self._rpc_buffer_locator(ctx))
            if not done or r[0] & _U32 != OPTEE_SMC_RETURN_OK:
                return TEEC_ERROR_COMMUNICATION
            hdr = unpack_header(self._machine.read_machine(page.maddr, MSG_ARG_HEADER_SIZE))
            return int(hdr[5])
        finally:
            with ctx.lock:
                ctx.pool.give(page)


def _unregister(cookie: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM,
                  params=(MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, cookie),))
