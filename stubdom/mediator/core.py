"""The OP-TEE mediator core, placement agnostic.

Input: the calling domain, the vCPU and its trapped registers.  Output: the
registers the vCPU resumes with.  It reaches the secure world only through a
:class:`~stubdom.mediator.port.TeePort` and memory only through the machine
model (``Machine``/``Domain``), so the same core runs at EL2 (in the
hypervisor) and in the stub-domain daemon.

Which protocol it speaks towards guests is its profile (mediator/profile.py):
``xen``, what upstream Xen's mediator (xen/arch/arm/tee/optee.c) does at
RELEASE-4.22.0 with its defects made safe, or ``strict``, this project's own;
the core consults the profile's data where the two differ (docs/mediator.md,
"Profiles").  Unsupported under both, on purpose: asynchronous notifications
(ENABLE_ASYNC_NOTIF / GET_ASYNC_NOTIF_VALUE answer UNKNOWN_FUNCTION and the
capability is hidden), protected memory, BOOT_SECONDARY, L2CC_MUTEX.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from stubdom.optee.errors import AbiError, BadMetaParam, TooManyParams
from stubdom.optee.msg import (
    MSG_ARG_HEADER_SIZE,
    OFFSET_RET,
    OFFSET_RET_ORIGIN,
    OFFSET_SESSION,
    OPTEE_MSG_ATTR_CACHE_MASK,
    OPTEE_MSG_ATTR_CACHE_SHIFT,
    OPTEE_MSG_ATTR_META,
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_MASK,
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_MAX_NUM_PARAMS,
    RMEM_TYPES,
    TMEM_TYPES,
    VALUE_TYPES,
    MsgArg,
    MsgParam,
    get_arg_size,
    param_offset,
    unpack_header,
)
from stubdom.optee.rpc import OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE
from stubdom.optee.smc import (
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_NSEC_CAP_UNIPROCESSOR,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_EBADCMD,
    OPTEE_SMC_RETURN_ENOMEM,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FOREIGN_INTR,
    OPTEE_SMC_RPC_FUNC_FREE,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SEC_CAP_VIRTUALIZATION,
    OPTEE_SMC_SHM_CACHED,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    is_rpc_return,
    rpc_func,
)
from stubdom.optee.smccc import function_id
from stubdom.optee.teec import (
    TEE_NUM_PARAMS,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_GENERIC,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
)
from stubdom.optee.uuid import OpenSessionMeta
from stubdom.trace import TRACER, now_ns
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, Machine, MachineError, P2mType, WrongP2mType

from . import cookies
from .context import (
    DomainContext,
    RpcBuffer,
    RpcState,
    ShadowPool,
    ShmBuffer,
    ShmKind,
    ShmState,
    StdCall,
)
from .errors import (
    DomainAlreadyInitialised,
    DomainNotInitialised,
    DomainRefused,
    TeardownInvariantBroken,
    TeeProbeFailed,
)
from .hooks import BeforeStdCall, CallHooks, FunctionHooks, OpenSessionFilter
from .limits import MAX_RPC_BUFFERS_PER_THREAD, RELINQUISH_BATCH, DomainLimits
from .opcount import CountedMachine, MediatorOps
from .port import TeePort, client_id
from .profile import DEFAULT_PROFILE, STRICT, Profile, profile_named
from .ratelog import RateLimitedLog
from .recovery import REFUSED_RPC_ARG_ADDR, RecoveryOps
from .steps import Steps, drive
from .translate import (
    Refusal,
    buffer_buf_ptr,
    free_list_pages,
    release_buffer,
    translate_noncontig,
    translate_noncontig_steps,
    translate_page,
)

__all__ = ["Mediator", "KNOWN_NSEC_CAPS", "KNOWN_SEC_CAPS", "ALLOWED_STD_CMDS", "Regs"]

Regs = tuple[int, int, int, int, int, int, int, int]
_U32 = 0xFFFFFFFF
_PAGE_MASK = PAGE_SIZE - 1
_MSG_ARG_ALIGN = 8  # OP-TEE: an argument in the reserved shm must be 8-byte aligned

# Normal-world capabilities passed to OP-TEE (Xen's OPTEE_KNOWN_NSEC_CAPS).
KNOWN_NSEC_CAPS = OPTEE_SMC_NSEC_CAP_UNIPROCESSOR
# OP-TEE capabilities the strict profile can stand behind; anything else is
# hidden (a guest must never be told of a feature the mediator would not
# mediate). Each profile has its own set (Profile.sec_caps).
KNOWN_SEC_CAPS = STRICT.sec_caps
# Commands a guest may send in a standard call (the others need features the
# mediator hides, or are FF-A only).
ALLOWED_STD_CMDS = frozenset({
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
})
# Every attr bit a guest may set: type, META, NONCONTIG, cache attribute.
_KNOWN_ATTR_BITS = (OPTEE_MSG_ATTR_TYPE_MASK | OPTEE_MSG_ATTR_META | OPTEE_MSG_ATTR_NONCONTIG
                    | (OPTEE_MSG_ATTR_CACHE_MASK << OPTEE_MSG_ATTR_CACHE_SHIFT))
_KNOWN_TYPES = VALUE_TYPES | RMEM_TYPES | TMEM_TYPES | {OPTEE_MSG_ATTR_TYPE_NONE}
_VALUE_OUT = frozenset({OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INOUT})
_MEMREF_OUT = frozenset({OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
                         OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_RMEM_INOUT})
_SHM_ALLOC_NONCONTIG = OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG
_U32S = struct.Struct("<I")
_U64S = struct.Struct("<Q")
_API_UID = (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3)

_log = logging.getLogger("stubdom.mediator")


def _let_others_run() -> None:
    time.sleep(0)  # releases the interpreter lock: a waiting vCPU thread takes it


def _ret(a0: int, a1: int = 0, a2: int = 0, a3: int = 0) -> Regs:
    """Registers for the guest: the chosen ones, every other one zero."""
    return (a0 & _U32, a1, a2, a3, 0, 0, 0, 0)


def _pair(hi: int, lo: int) -> int:
    """Join an SMC32 register pair (each half is a W register)."""
    return ((hi & _U32) << 32) | (lo & _U32)


def _split(value: int) -> tuple[int, int]:
    return value >> 32, value & _U32


class _Resume:
    """What handling one step of a call decided: resume OP-TEE with
    ``regs``, or (``to_guest``) return ``regs`` to the guest."""

    __slots__ = ("regs", "to_guest")

    def __init__(self, regs: Regs, to_guest: bool) -> None:
        self.regs = regs
        self.to_guest = to_guest


class Mediator(RecoveryOps):
    """One OP-TEE mediator for every domain of a machine (its recovery
    operations, for a stub-domain daemon that restarts, in recovery.py)."""

    def __init__(self, machine: Machine, port: TeePort, *, logger: logging.Logger | None = None,
                 log_clock: Callable[[], float] | None = None,
                 open_session_filter: OpenSessionFilter | None = None,
                 before_std_call: BeforeStdCall | None = None,
                 tee_num_params: int = TEE_NUM_PARAMS,
                 profile: Profile | str = DEFAULT_PROFILE) -> None:
        """``profile`` is the protocol it speaks to guests (mediator/profile.py),
        or its name (UnknownProfile for another).
        ``open_session_filter(domid, ta_uuid, login)`` is policy: None lets
        an OPEN_SESSION through, ``(ret, ret_origin)`` refuses it without
        reaching the TEE.  It is judged on the mediator's own copy of the
        meta params and is called with no mediator lock held.
        ``tee_num_params`` is what the OP-TEE behind takes per call (its
        TEE_NUM_PARAMS; OP-TEE does not report it): a call with more is
        refused before anything of it is translated or pinned."""
        if type(tee_num_params) is not int or not 0 < tee_num_params <= OPTEE_MSG_MAX_NUM_PARAMS - 2:
            raise ValueError(f"tee_num_params must be 1..{OPTEE_MSG_MAX_NUM_PARAMS - 2}, "
                             f"got {tee_num_params!r}")
        if isinstance(profile, str):
            profile = profile_named(profile)
        if not isinstance(profile, Profile):
            raise TypeError(f"profile must be a mediator Profile or its name, got {profile!r}")
        self.tee_num_params = tee_num_params
        self.profile = profile
        # every p2m look-up, pin, unpin and copy of the core is counted here,
        # whatever the placement (mediator/opcount.py; :meth:`op_counts`)
        self._ops = MediatorOps()
        self._machine = cast(Machine, CountedMachine(machine, self._ops))
        self._port = port
        # the hooks of every call that brings none of its own (EL2)
        self._hooks: CallHooks = FunctionHooks(open_session_filter, before_std_call)
        self._logger = logger or _log
        self._log_clock = log_clock
        self._domains: dict[int, DomainContext] = {}
        self._lock = threading.Lock()  # guards _domains
        # identity queries forwarded as themselves: function -> registers of
        # OP-TEE's answer the guest gets (each a W register), the rest zero
        forwarded = {OPTEE_SMC_CALLS_UID: 4, OPTEE_SMC_CALLS_REVISION: 2, OPTEE_SMC_CALL_GET_OS_UUID: 4,
                     OPTEE_SMC_CALL_GET_OS_REVISION: profile.os_revision_regs}
        handlers: dict[int, Callable[[DomainContext, int, Regs], Regs]] = {
            OPTEE_SMC_CALLS_COUNT: self._calls_count,
            **{f: self._forward(f, n) for f, n in forwarded.items()},
            OPTEE_SMC_EXCHANGE_CAPABILITIES: self._exchange_capabilities,
            OPTEE_SMC_GET_SHM_CONFIG: self._get_shm_config,
            OPTEE_SMC_GET_THREAD_COUNT: self._get_thread_count,
            OPTEE_SMC_ENABLE_SHM_CACHE: self._enable_shm_cache,
            OPTEE_SMC_DISABLE_SHM_CACHE: self._disable_shm_cache,
            OPTEE_SMC_CALL_WITH_ARG: self._std_call,
            OPTEE_SMC_CALL_WITH_RPC_ARG: self._std_call,
            OPTEE_SMC_CALL_WITH_REGD_ARG: self._std_call,
            OPTEE_SMC_CALL_RETURN_FROM_RPC: self._return_from_rpc,
        }
        missing = profile.functions - handlers.keys()
        if missing:
            raise ValueError(f"profile {profile.name} names functions no handler serves: "
                             f"{sorted(hex(f) for f in missing)}")
        # one flat dispatch: the profile's functions, nothing else
        self._dispatch = {f: h for f, h in handlers.items() if f in profile.functions}
        self._forwarded = {f: n for f, n in forwarded.items() if f in profile.functions}
        self._probe()

    # == probe ================================================================

    def _probe(self) -> None:
        """Probe the TEE once, as the hypervisor: OP-TEE API UID, per-guest
        thread count, NS-virtualization from its capability bit."""
        r = self._port.hyp_call((OPTEE_SMC_CALLS_UID, 0, 0, 0, 0, 0, 0, 0))
        if tuple(x & _U32 for x in r[:4]) != _API_UID:
            raise TeeProbeFailed("CALLS_UID is not OP-TEE's API UID", tuple(hex(x) for x in r[:4]))
        r = self._port.hyp_call((OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, 0))
        if r[0] != OPTEE_SMC_RETURN_OK or not r[1] & _U32:
            raise TeeProbeFailed("GET_THREAD_COUNT failed", (hex(r[0]), r[1]))
        self.tee_threads = r[1] & _U32
        r = self._port.hyp_call((OPTEE_SMC_EXCHANGE_CAPABILITIES, 0, 0, 0, 0, 0, 0, 0))
        if r[0] != OPTEE_SMC_RETURN_OK:
            raise TeeProbeFailed("EXCHANGE_CAPABILITIES failed", hex(r[0]))
        self.tee_caps = r[1] & _U32
        if not self.tee_caps & OPTEE_SMC_SEC_CAP_VIRTUALIZATION:
            raise TeeProbeFailed("OP-TEE lacks NS-virtualization (SEC_CAP_VIRTUALIZATION)",
                                 hex(self.tee_caps))
        self.tee_rpc_param_count = (r[3] & 0xFF) if self.tee_caps & OPTEE_SMC_SEC_CAP_RPC_ARG else 0

    # == toolstack ============================================================

    def domain_init(self, domid: int, *, limits: DomainLimits | None = None,
                    static_shm: bool = True, rpc_param_count: int = 0) -> None:
        """Create the domain's context, preallocate its shadow pages, then
        VM_CREATED; raises DomainRefused (nothing left behind) if OP-TEE
        refuses. ``rpc_param_count``: the RPC argument size the guest already
        negotiated (a domain reset by recovery: its guest will not ask again)."""
        limits = self.profile.bound(limits or DomainLimits())
        with self._lock:
            if domid in self._domains:
                raise DomainAlreadyInitialised(domid)
        max_calls = min(limits.max_calls, self.tee_threads)
        pool = ShadowPool(self._machine, domid)
        # One argument page and one RPC page per call that may be in flight.
        pool.grow(2 * max_calls)
        log = RateLimitedLog(self._logger, f"d{domid}: ", clock=self._log_clock)
        ctx = DomainContext(domid, limits, max_calls, MAX_RPC_BUFFERS_PER_THREAD * max_calls,
                            static_shm, pool, log, self.profile)
        ctx.rpc_param_count = rpc_param_count
        r = self._port.hyp_call((OPTEE_SMC_VM_CREATED, client_id(domid), 0, 0, 0, 0, 0, 0))
        if r[0] != OPTEE_SMC_RETURN_OK:
            pool.release(pool.total)
            raise DomainRefused(domid, r[0])
        with self._lock:
            self._domains[domid] = ctx

    def _install_context(self, ctx: DomainContext) -> None:
        """Adopt a context rebuilt from a journal (:meth:`restore`): OP-TEE
        already has the partition, the frames are already pinned."""
        with self._lock:
            if ctx.domid in self._domains:
                raise DomainAlreadyInitialised(ctx.domid)
            self._domains[ctx.domid] = ctx

    def context(self, domid: int) -> DomainContext:
        ctx = self._domains.get(domid)
        if ctx is None:
            raise DomainNotInitialised(domid)
        return ctx

    def calls_in_flight(self, domid: int) -> int:
        """Standard calls of ``domid`` alive (suspended, or in the mediator);
        0 for a domain without a context."""
        ctx = self._domains.get(domid)
        return 0 if ctx is None else ctx.calls

    def serves(self, domid: int) -> bool:
        """``domid`` has a context that takes new calls (not dying)."""
        ctx = self._domains.get(domid)
        return ctx is not None and not ctx.dying

    def stateless_calls(self) -> dict[int, Regs | int]:
        """The fast calls this mediator answers alike for every domain it
        serves, touching no domain state and no guest memory: function ID ->
        the registers answered, or (an int) the number of registers of the
        same call made to OP-TEE, ``(function, 0, ..., 0)``, that the guest
        gets, each masked to 32 bits, the others zero. What a stub domain
        may answer without its interpreter (stubdom.daemon.fastpath); a
        domain without a context, or dying, is answered by :meth:`call_steps`."""
        out: dict[int, Regs | int] = dict(self._forwarded)
        if OPTEE_SMC_CALLS_COUNT in self._dispatch:
            out[OPTEE_SMC_CALLS_COUNT] = _ret(len(self._dispatch))
        return out

    def op_counts(self, domid: int | None = None) -> dict[str, int]:
        """``{op: count}`` of the operations in opcount.MEDIATOR_OPS since
        this mediator was made: for ``domid`` (kept after its teardown), or
        for every domain together."""
        return self._ops.snapshot(domid)

    def dump(self, domid: int, cap: int) -> dict[str, Any]:
        """The domain's mediator state for the ``dump`` control operation
        and the tests' harness: counters, limits, calls, suspended threads,
        buffers by cookie (lists cut at ``cap`` entries; counts exact)."""
        ctx = self.context(domid)
        with ctx.lock:
            calls = sorted(ctx.all_calls, key=lambda c: c.seq)
            shm = list(ctx.shm_buffers.values())
            rpc = list(ctx.rpc_buffers.values())
            suspended = {tid: c.seq for tid, c in ctx.suspended.items()}
            out: dict[str, Any] = {
                "domid": domid, "profile": self.profile.name,
                "limits": {"max_calls": ctx.limits.max_calls, "max_shm_buffers": ctx.limits.max_shm_buffers,
                           "max_pages_per_buffer": ctx.limits.max_pages_per_buffer,
                           "max_total_pages": ctx.limits.max_total_pages},
                "max_calls": ctx.max_calls, "max_rpc_buffers": ctx.max_rpc_buffers,
                "static_shm_allowed": ctx.static_shm_allowed, "rpc_param_count": ctx.rpc_param_count,
                "dying": ctx.dying, "internal_errors": ctx.internal_errors,
                "calls_in_flight": ctx.calls, "buffers": ctx.nr_buffers,
                "pinned_pages": ctx.pinned_pages, "shadow_pages": ctx.pool.total,
                "held_frames": sum(ctx.held_frames.values()),
            }
        out["calls"] = [{"seq": c.seq, "function": f"{c.function:#x}", "thread": c.thread_id,
                         "rpc_state": c.rpc_state.value, "tmem_buffers": len(c.tmem)} for c in calls[:cap]]
        out["suspended"] = {str(t): s for t, s in list(suspended.items())[:cap]}
        out["shm_buffers"] = [{"cookie": b.cookie, "kind": b.kind.value, "state": b.state.value,
                               "pages": b.nr_pages, "size": b.size, "static": b.static} for b in shm[:cap]]
        out["nr_shm_buffers"] = len(shm)
        out["rpc_buffers"] = [{"cookie": b.cookie, "pinned": b.mfn is not None} for b in rpc[:cap]]
        out["nr_rpc_buffers"] = len(rpc)
        return out

    def relinquish_resources(self, domid: int) -> bool:
        """Release a bounded chunk of the domain's state; True when all is
        gone (call again while False).  The domain's vCPUs must be stopped."""
        ctx = self.context(domid)
        budget = RELINQUISH_BATCH
        with ctx.lock:
            ctx.dying = True
            ctx.suspended.clear()
            calls = list(ctx.all_calls)[:budget]
        for call in calls:
            self._free_std_call(ctx, call)
            budget -= 1
        while budget > 0 and ctx.rpc_buffers:
            with ctx.lock:
                cookie = next(iter(ctx.rpc_buffers))
            self._free_rpc_buffer(ctx, cookie)
            budget -= 1
        while budget > 0 and ctx.shm_buffers:
            with ctx.lock:
                cookie, buf = next(iter(ctx.shm_buffers.items()))
                del ctx.shm_buffers[cookie]
            release_buffer(self._machine, ctx, buf)
            budget -= max(1, buf.nr_pages // 64)
        if budget > 0 and not ctx.all_calls and not ctx.rpc_buffers and not ctx.shm_buffers:
            with ctx.lock:
                ctx.pool.release(budget)
        return not (ctx.all_calls or ctx.rpc_buffers or ctx.shm_buffers or ctx.pool.total)

    def domain_teardown(self, domid: int) -> None:
        """Relinquish whatever is left, VM_DESTROYED, forget the domain, then
        check that nothing of it is left. The teardown always finishes: a
        pin the mediator lost track of (a bug) is dropped once OP-TEE has
        let the partition go, and TeardownInvariantBroken reports every
        such leftover after the domain is gone, not instead of it. Only a
        failing port (the gate) stops it before VM_DESTROYED: the context
        stays and the call may be repeated."""
        ctx = self.context(domid)
        while not self.relinquish_resources(domid):
            pass
        r = self._port.hyp_call((OPTEE_SMC_VM_DESTROYED, client_id(domid), 0, 0, 0, 0, 0, 0))
        if r[0] != OPTEE_SMC_RETURN_OK:
            self._logger.error("d%d: VM_DESTROYED answered a0=%#x", domid, r[0])
        with self._lock:
            del self._domains[domid]
        with ctx.lock:
            held, ctx.held_frames = ctx.held_frames, {}
        for mfn, n in held.items():  # OP-TEE has let the partition go
            self._machine.put_pages([mfn] * n)
        problems = []
        for name, value in (("calls", ctx.calls), ("buffers", ctx.nr_buffers),
                            ("pinned pages", ctx.pinned_pages), ("shadow pages", ctx.pool.total),
                            ("suspended", len(ctx.suspended)), ("rpc buffers", len(ctx.rpc_buffers)),
                            ("shm buffers", len(ctx.shm_buffers)),
                            ("temporary cookies", len(ctx.temp_cookies))):
            if value:
                problems.append(f"{name} = {value}")
        pinned = self._machine.pinned_frames(domid)
        if pinned:
            problems.append(f"frames still pinned: {sorted(hex(m) for m in pinned)[:8]}")
            # OP-TEE has dropped the partition (VM_DESTROYED): nothing can
            # reach these frames any more, and the domain must be destroyable
            for mfn, n in pinned.items():
                self._machine.put_pages([mfn] * n)
        if problems:
            self._logger.error("d%d: teardown invariant broken: %s", domid, ", ".join(problems))
            raise TeardownInvariantBroken(domid, ", ".join(problems))

    # == dispatch =============================================================

    def handle_call(self, domid: int, vcpu: int, regs: Regs) -> Regs:
        """One trapped SMC owned by the Trusted OS: the registers to resume
        with. Run in the trapping vCPU's thread (EL2), to its end; between
        two steps of a long translation the thread lets another take the
        interpreter, as another pCPU would go on running under Xen."""
        return drive(self.call_steps(domid, vcpu, regs), between=_let_others_run)

    def call_steps(self, domid: int, vcpu: int, regs: Regs, hooks: CallHooks | None = None) -> Steps[Regs]:
        """:meth:`handle_call` as steps: yields between bounded pieces of a
        standard call's translation (only before the call reaches OP-TEE,
        so nothing of it is in OP-TEE or in a snapshot while it waits) and
        returns the registers. Closing it early releases what the call took.
        ``hooks``: this call's (mediator/hooks.py), else the constructor's."""
        ctx = self._domains.get(domid)
        # SMC32: the function ID is W0, bits 63:32 of x0 are not part of it
        # (DEN0028; Xen's vsmc.c and optee_handle_call read (uint32_t)x0)
        function = function_id(regs[0])
        if ctx is None:
            return _ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)
        if ctx.dying:
            return _ret(OPTEE_SMC_RETURN_ENOTAVAIL)
        handler = self._dispatch.get(function)
        if handler is None:
            return _ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)
        try:
            if handler == self._std_call:
                return (yield from self._std_call_steps(ctx, vcpu, regs, hooks or self._hooks))
            return handler(ctx, vcpu, regs)
        except Exception as e:  # a mediator bug: log, never crash the platform
            ctx.internal_errors += 1
            ctx.log.error("internal error handling %#x: %s", function, e, exc_info=True)
            return _ret(OPTEE_SMC_RETURN_ENOMEM)

    def _tee(self, ctx: DomainContext, regs: Regs) -> Regs:
        return self._port.call(ctx.domid, regs)

    # == fast calls ===========================================================

    def _calls_count(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        return _ret(len(self._dispatch))  # the profile's calls_count

    def _forward(self, function: int, meaningful: int) -> Callable[[DomainContext, int, Regs], Regs]:
        """A query forwarded as itself, returning its meaningful registers only."""

        def handler(ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
            r = self._tee(ctx, (function, 0, 0, 0, 0, 0, 0, 0))
            return _ret(*(x & _U32 for x in r[:meaningful]))

        return handler

    def _static_ok(self, ctx: DomainContext) -> bool:
        """May this domain use the static shm region?  Two explicit checks
        (hardware domain, direct-mapped) plus policy plus the TEE having it,
        under a profile that has static shm at all."""
        if not self.profile.static_shm:
            return False
        if not ctx.static_shm_allowed or not self.tee_caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM:
            return False
        domain = self._machine.domain(ctx.domid)
        if not domain.is_hwdom:
            return False
        if not domain.direct_mapped:
            return False
        return True

    def _exchange_capabilities(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        r = self._tee(ctx, (OPTEE_SMC_EXCHANGE_CAPABILITIES, regs[1] & KNOWN_NSEC_CAPS,
                            0, 0, 0, 0, 0, 0))
        if r[0] != OPTEE_SMC_RETURN_OK:
            return _ret(r[0])
        caps = r[1] & self.profile.sec_caps
        if not self._static_ok(ctx):
            caps &= ~OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
        if not caps & OPTEE_SMC_SEC_CAP_DYNAMIC_SHM:
            # The mediator needs dynamic shm for its own shadow pages.
            return _ret(OPTEE_SMC_RETURN_ENOTAVAIL)
        count = r[3] & 0xFF if caps & OPTEE_SMC_SEC_CAP_RPC_ARG else 0
        if not count:
            caps &= ~OPTEE_SMC_SEC_CAP_RPC_ARG
        with ctx.lock:
            ctx.rpc_param_count = count
        return _ret(OPTEE_SMC_RETURN_OK, caps, 0, count)

    def _get_shm_config(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        if not self._static_ok(ctx):
            return _ret(OPTEE_SMC_RETURN_ENOTAVAIL)
        r = self._tee(ctx, (OPTEE_SMC_GET_SHM_CONFIG, 0, 0, 0, 0, 0, 0, 0))
        shm = self._machine.static_shm
        if r[0] != OPTEE_SMC_RETURN_OK or (r[1], r[2]) != (shm.base, shm.size):
            ctx.log.error("GET_SHM_CONFIG: OP-TEE answered a0=%#x %#x+%#x, machine has %#x+%#x",
                          r[0], r[1], r[2], shm.base, shm.size)
            return _ret(OPTEE_SMC_RETURN_ENOTAVAIL)
        domain = self._machine.domain(ctx.domid)
        if not domain.static_shm_mapped:
            try:
                domain.map_static_shm()
            except MachineError as e:
                ctx.log.warning("GET_SHM_CONFIG: cannot map the static region: %s", e)
                return _ret(OPTEE_SMC_RETURN_ENOTAVAIL)
        return _ret(OPTEE_SMC_RETURN_OK, r[1], r[2], r[3] & _U32)

    def _get_thread_count(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        # What this domain may have in flight, so its driver queues calls
        # instead of collecting ETHREAD_LIMIT.
        return _ret(OPTEE_SMC_RETURN_OK, ctx.max_calls)

    def _enable_shm_cache(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        r = self._tee(ctx, (OPTEE_SMC_ENABLE_SHM_CACHE, 0, 0, 0, 0, 0, 0, 0))
        return _ret(r[0])

    def _disable_shm_cache(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        r = self._tee(ctx, (OPTEE_SMC_DISABLE_SHM_CACHE, 0, 0, 0, 0, 0, 0, 0))
        if r[0] != OPTEE_SMC_RETURN_OK:
            return _ret(r[0])
        hi, lo = r[1] & _U32, r[2] & _U32
        if not self._free_rpc_buffer(ctx, _pair(hi, lo)):
            ctx.log.warning("DISABLE_SHM_CACHE returned unknown cookie %#x", _pair(hi, lo))
        return _ret(OPTEE_SMC_RETURN_OK, hi, lo)

    # == RPC buffers (RPC ALLOC / FREE) =======================================

    def _alloc_rpc_buffer(self, ctx: DomainContext, call: StdCall, ipa: int,
                          cookie: int) -> RpcBuffer | None:
        """The guest answered RPC ALLOC with its buffer at ``ipa``: pin it,
        give OP-TEE a shadow page instead.  None = refuse (OP-TEE sees a
        failed allocation)."""
        if ipa == 0:
            return None  # the guest could not allocate
        with ctx.lock:
            taken = cookies.holder(ctx, cookie) if cookie else "cookie 0 (OP-TEE's 'no buffer')"
        if taken is not None:  # checked again when it is claimed, after the pin
            ctx.log.warning("RPC ALLOC: refusing cookie %#x: %s", cookie, taken)
            return None
        size = call.rpc_a1
        shm = self._machine.static_shm
        static = self._static_ok(ctx) and shm.contains(ipa, max(size, 1))
        if size > PAGE_SIZE or (ipa & _PAGE_MASK if not static else ipa & (_MSG_ARG_ALIGN - 1)):
            ctx.log.warning("RPC ALLOC: refusing buffer %#x for %d bytes", ipa, size)
            return None
        if not static and (ipa & _PAGE_MASK) + size > PAGE_SIZE:
            return None
        mfn = None
        if not static:
            try:
                entry = self._machine.domain(ctx.domid).lookup(ipa >> 12)
                if entry.type != P2mType.p2m_ram_rw or entry.mfn == 0:
                    raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"IPA {ipa:#x} is {entry.type.name}")
                with ctx.lock:
                    # counted in pinned_pages either way (every pin is); held
                    # against max_total_pages only if the profile says so
                    if self.profile.rpc_pages_count and ctx.pinned_pages >= ctx.limits.max_total_pages:
                        raise Refusal(TEEC_ERROR_OUT_OF_MEMORY, "max_total_pages reached")
                    ctx.pinned_pages += 1
                try:
                    self._machine.get_page(entry.mfn, ctx.domid)
                except MachineError:
                    with ctx.lock:
                        ctx.pinned_pages -= 1
                    raise
                mfn = entry.mfn
            except (Refusal, MachineError) as e:
                ctx.log.warning("RPC ALLOC: refusing buffer %#x: %s", ipa, e)
                return None
        try:
            buf = cookies.claim_rpc_cookie(ctx, cookie, lambda: RpcBuffer(cookie, ipa, mfn, ctx.pool.take()),
                                           ctx.max_rpc_buffers)
        except Refusal as e:
            if mfn is not None:
                self._machine.put_page(mfn)
                with ctx.lock:
                    ctx.pinned_pages -= 1
            ctx.log.warning("RPC ALLOC: refusing buffer %#x: %s", ipa, e.reason)
            return None
        return buf

    def _free_rpc_buffer(self, ctx: DomainContext, cookie: int) -> bool:
        """Forget an RPC buffer the moment OP-TEE gives it back."""
        with ctx.lock:
            buf = ctx.rpc_buffers.pop(cookie, None)
            if buf is None:
                return False
            ctx.pool.give(buf.shadow)
        if buf.mfn is not None:
            self._machine.put_page(buf.mfn)
            with ctx.lock:
                ctx.pinned_pages -= 1
        return True

    # == standard calls =======================================================

    def _allocate_std_call(self, ctx: DomainContext, function: int) -> StdCall | None:
        with ctx.lock:
            if ctx.calls >= ctx.max_calls:
                return None
            ctx.calls += 1
            call = StdCall(ctx.next_seq, function, ctx.pool.take())
            ctx.next_seq += 1
            ctx.all_calls.add(call)
        return call

    def _free_std_call(self, ctx: DomainContext, call: StdCall) -> None:
        """Release everything a call holds (its temporary buffers, its list
        pages and shadow page) and settle the cookies it claimed. A
        registration whose outcome OP-TEE never told (the call reached it,
        then ended without an answer: abandoned, a dying domain, a failed
        gate) is kept LIVE, pinned, for OP-TEE may hold it: an UNREGISTER_SHM
        or the domain's end releases it."""
        for buf in call.tmem:
            cookies.forget(ctx, buf)
            release_buffer(self._machine, ctx, buf)
        call.tmem.clear()
        if call.register is not None:
            buf, call.register = call.register, None
            if call.begun:
                free_list_pages(ctx, buf.list_pages)  # OP-TEE is done with the call
                cookies.commit(ctx, buf)
                ctx.log.warning("call %d: REGISTER_SHM of cookie %#x ended unanswered: kept registered",
                                call.seq, buf.cookie)
            else:
                cookies.forget(ctx, buf)
                release_buffer(self._machine, ctx, buf)
        if call.unregister is not None:
            # unanswered: OP-TEE may still hold it, so it stays LIVE (pinned)
            cookies.end_unregister(ctx, call.unregister, gone=False)
            call.unregister = None
        free_list_pages(ctx, call.stale_lists)
        with ctx.lock:
            if call in ctx.all_calls:
                ctx.all_calls.discard(call)
                ctx.calls -= 1
                ctx.pool.give(call.shadow)
            if call.thread_id is not None and ctx.suspended.get(call.thread_id) is call:
                del ctx.suspended[call.thread_id]

    def _std_call(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        return drive(self._std_call_steps(ctx, vcpu, regs, self._hooks))

    def _std_call_steps(self, ctx: DomainContext, vcpu: int, regs: Regs, hooks: CallHooks) -> Steps[Regs]:
        function = regs[0] & _U32
        if function != OPTEE_SMC_CALL_WITH_ARG and not ctx.rpc_param_count:
            # Only for a guest that negotiated SEC_CAP_RPC_ARG.
            return _ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)
        call = self._allocate_std_call(ctx, function)
        if call is None:
            return _ret(OPTEE_SMC_RETURN_ETHREAD_LIMIT)
        keep = False
        # a sampled call (stubdom.trace): its copy-in and translation is one span
        tcall = TRACER.current() if TRACER.on else None
        if tcall is not None:
            t0 = now_ns()
        try:
            a0 = self._copy_std_request(ctx, call, regs)
            if a0 is not None:
                return _ret(a0)
            verdict = self._filter_open_session(ctx, call, hooks)
            if verdict is not None:
                # Refused by policy: nothing pinned, nothing reaches the TEE.
                self._write_result(ctx, call, *verdict)
                return _ret(OPTEE_SMC_RETURN_OK)
            try:
                shadow_arg = yield from self._translate_params(ctx, call)
            except Refusal as e:
                ctx.log.warning("call %d: %s", call.seq, e.reason)
                self._write_result(ctx, call, e.ret, TEEC_ORIGIN_COMMS)
                return _ret(OPTEE_SMC_RETURN_OK)
            page = bytearray(PAGE_SIZE)
            shadow_arg.pack_into(page)
            self._machine.write_machine(call.shadow.maddr, page)
            hi, lo = _split(call.shadow.maddr)
            if tcall is not None:
                TRACER.span(tcall, "translate", "mediator", t0, now_ns(), {"params": len(shadow_arg.params)})
            tee_function = OPTEE_SMC_CALL_WITH_ARG if call.rpc_offset is None else OPTEE_SMC_CALL_WITH_RPC_ARG
            if not hooks.before_std_call(ctx.domid, call):
                return _ret(OPTEE_SMC_RETURN_ENOTAVAIL)
            call.begun = True  # from here on OP-TEE may act on it, whatever we learn
            out, keep = self._run(ctx, call, (tee_function, hi, lo, OPTEE_SMC_SHM_CACHED, 0, 0, 0, 0))
            return out
        finally:
            if not keep:
                self._free_std_call(ctx, call)

    def _copy_std_request(self, ctx: DomainContext, call: StdCall, regs: Regs) -> int | None:
        """Copy the guest's argument once into the call, validate it there.
        Returns an a0 error, or None."""
        domain = self._machine.domain(ctx.domid)
        if call.function == OPTEE_SMC_CALL_WITH_REGD_ARG:
            cookie, offs = _pair(regs[1], regs[2]), regs[3] & _U32
            buf = cookies.live_registration(ctx, cookie)
            # OP-TEE's get_msg_arg: the argument (and the RPC argument after
            # it) must lie inside the registration, 8-byte aligned.
            if buf is None:
                ctx.log.warning("call %d: REGD_ARG cookie %#x is not a live registration", call.seq, cookie)
                return OPTEE_SMC_RETURN_EBADADDR
            if offs & (_MSG_ARG_ALIGN - 1) or offs + MSG_ARG_HEADER_SIZE > buf.size:
                ctx.log.warning("call %d: REGD_ARG offset %#x in a registration of %#x bytes",
                                call.seq, offs, buf.size)
                return OPTEE_SMC_RETURN_EBADADDR
            pos = buf.offset + offs
            ipa = buf.ipas[pos // PAGE_SIZE] + pos % PAGE_SIZE
            registered = buf.size - offs  # bytes of the registration from the argument on
        else:
            ipa = _pair(regs[1], regs[2])
            shm = self._machine.static_shm
            if self._static_ok(ctx) and shm.contains(ipa, MSG_ARG_HEADER_SIZE):
                # The 2017 RFC's contiguous argument from the hwdom's static
                # pool: still shadowed, only 8-byte alignment required.
                if ipa & (_MSG_ARG_ALIGN - 1):
                    return OPTEE_SMC_RETURN_EBADADDR
            elif ipa & _PAGE_MASK:
                return OPTEE_SMC_RETURN_EBADADDR
        # The argument is read from one guest page: the pages of a
        # registration are not contiguous, and Linux never lets an argument
        # cross a page (its arg cache packs whole arguments into pages).
        room = PAGE_SIZE - (ipa & _PAGE_MASK)
        if call.function == OPTEE_SMC_CALL_WITH_REGD_ARG:
            room = min(room, registered)
        try:
            # The profile's page types: strict takes writable RAM only (the
            # results go back to this page, so a read-only one is refused up
            # front); xen reads any RAM, as access_guest_memory_by_gpa does,
            # and the result is then lost (copy-back needs p2m_ram_rw).
            entry_type = domain.lookup(ipa >> PAGE_SHIFT).type
            if entry_type not in self.profile.argument_page_types:
                raise WrongP2mType(ctx.domid, ipa, entry_type.name, "argument")
            data = domain.read(ipa, room)
        except MachineError as e:
            ctx.log.warning("call %d: argument at %#x: %s", call.seq, ipa, e)
            return OPTEE_SMC_RETURN_EBADADDR
        rpc_size = get_arg_size(ctx.rpc_param_count) if call.function != OPTEE_SMC_CALL_WITH_ARG else 0
        max_params = min(OPTEE_MSG_MAX_NUM_PARAMS, (room - rpc_size - MSG_ARG_HEADER_SIZE) // 32)
        try:
            arg = MsgArg.unpack(data, max_params=max(max_params, 0))
        except AbiError as e:
            ctx.log.warning("call %d: bad argument: %s", call.seq, e)
            if (isinstance(e, TooManyParams) and call.function == OPTEE_SMC_CALL_WITH_ARG
                    and self.profile.oversized_arg_in_message):
                # Xen's answer: the error in the argument, a0 left as the
                # guest's function ID; EBADADDR if that page is not writable
                call.guest_ipa = ipa
                if not self._write_result(ctx, call, TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS):
                    return OPTEE_SMC_RETURN_EBADADDR
                return call.function
            return OPTEE_SMC_RETURN_EBADADDR
        if rpc_size and get_arg_size(arg.num_params) + rpc_size > room:
            # The trailing RPC argument must fit too (get_msg_arg checks it).
            ctx.log.warning("call %d: no room for the RPC argument after %d params",
                            call.seq, arg.num_params)
            return OPTEE_SMC_RETURN_EBADADDR
        call.guest_ipa = ipa
        call.request = arg
        if rpc_size:
            call.rpc_offset = get_arg_size(arg.num_params)
            call.rpc_size = rpc_size
        if arg.cmd not in ALLOWED_STD_CMDS:
            return OPTEE_SMC_RETURN_EBADCMD
        return None

    def _filter_open_session(self, ctx: DomainContext, call: StdCall, hooks: CallHooks) -> tuple[int, int] | None:
        """Policy on an OPEN_SESSION, decided on the validated shadow copy:
        None, or the (ret, ret_origin) the guest gets instead."""
        arg = call.request
        assert arg is not None  # copied and validated before
        if arg.cmd != OPTEE_MSG_CMD_OPEN_SESSION or not hooks.filters_open_session:
            return None
        try:
            meta = OpenSessionMeta.from_params(arg.params)
        except BadMetaParam as e:
            # OP-TEE refuses these too; with a policy in place refuse here,
            # so no malformed request can slip past the filter.
            ctx.log.warning("call %d: %s", call.seq, e)
            return TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS
        verdict = hooks.open_session(ctx.domid, meta.ta_uuid, meta.login)
        if verdict is None:
            return None
        ret, origin = verdict
        for v in (ret, origin):
            if type(v) is not int or not 0 <= v <= _U32:
                raise ValueError(f"open_session_filter returned {verdict!r}, not None or two u32")
        if ret == 0:
            raise ValueError(f"open_session_filter refused with ret 0 (TEEC_SUCCESS): {verdict!r}")
        ctx.log.warning("call %d: OPEN_SESSION of %s (login %#x) refused by policy: %#x",
                        call.seq, meta.ta_uuid, meta.login, ret)
        return ret, origin

    def _check_shape(self, arg: MsgArg) -> None:
        """Refuse, before any translation, a call OP-TEE's entry_std would
        refuse for its number of parameters alone (core/tee/entry_std.c).
        Always: REGISTER_SHM exactly one TMEM_OUTPUT|NONCONTIG,
        UNREGISTER_SHM exactly one (one buffer per registration, so its pins
        follow OP-TEE's answer). With the profile's early_shape_check also:
        OPEN_SESSION its two meta params and at most TEE_NUM_PARAMS more,
        INVOKE_COMMAND at most TEE_NUM_PARAMS, CLOSE_SESSION and CANCEL none
        (a guest cannot make the mediator pin pages for a call that cannot
        run)."""
        n, cmd = arg.num_params, arg.cmd
        if cmd in (OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM):
            if n != 1:
                raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"command {cmd} takes 1 param, not {n}")
            p = arg.params[0]
            if cmd == OPTEE_MSG_CMD_REGISTER_SHM and (p.attr != _SHM_ALLOC_NONCONTIG or not p.buf_ptr):
                raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"REGISTER_SHM of attr {p.attr:#x} at "
                              f"{p.buf_ptr:#x}: not a TMEM_OUTPUT|NONCONTIG page list")
            return
        if not self.profile.early_shape_check:
            return  # OP-TEE refuses it; what was pinned for it goes when it ends
        if cmd == OPTEE_MSG_CMD_OPEN_SESSION:
            most = self.tee_num_params + 2
        elif cmd == OPTEE_MSG_CMD_INVOKE_COMMAND:
            most = self.tee_num_params
        else:  # CLOSE_SESSION, CANCEL
            most = 0
        if n > most:
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS,
                          f"command {cmd} with {n} params: OP-TEE takes at most {most}")

    def _translate_params(self, ctx: DomainContext, call: StdCall) -> Steps[MsgArg]:
        """The argument OP-TEE gets: shape and attributes checked, cookies
        claimed, temporary memory translated and pinned.  Raises Refusal
        (whatever was claimed or pinned is released by _free_std_call)."""
        arg = call.request
        assert arg is not None
        self._check_shape(arg)
        if arg.cmd == OPTEE_MSG_CMD_UNREGISTER_SHM:
            # OP-TEE reads only the cookie (attr unchecked); it must name a
            # LIVE registration, which stays claimed until OP-TEE answers.
            call.unregister = cookies.begin_unregister(ctx, arg.params[0].shm_ref, call.seq)
            return arg
        out: list[MsgParam] = []
        for i, p in enumerate(arg.params):
            t = p.type
            if self.profile.check_attributes:
                self._check_attr(arg.cmd, i, p)
            if t in RMEM_TYPES:
                # OP-TEE looks the cookie up among every buffer of the
                # partition, temporary and RPC ones included: a guest may
                # name only what it registered and OP-TEE confirmed.
                if cookies.live_registration(ctx, p.shm_ref) is None:
                    raise Refusal(TEEC_ERROR_BAD_PARAMETERS,
                                  f"param {i}: RMEM cookie {p.shm_ref:#x} is not a live registration")
                out.append(p)
            elif t not in TMEM_TYPES:
                out.append(p)
            elif p.buf_ptr == 0:
                out.append(p.replace(attr=p.attr & ~OPTEE_MSG_ATTR_NONCONTIG))  # NULL memref
            elif p.is_noncontig:
                out.append((yield from self._translate_tmem(ctx, call, arg.cmd, p)))
            else:
                shm = self._machine.static_shm
                if not (self._static_ok(ctx) and shm.contains(p.buf_ptr, p.size)):
                    raise Refusal(TEEC_ERROR_BAD_PARAMETERS,
                                  f"param {i}: contiguous tmem {p.buf_ptr:#x}+{p.size:#x} refused")
                out.append(p)
        if arg.cmd == OPTEE_MSG_CMD_OPEN_SESSION:
            # OP-TEE never reads it (entry_open_session only writes it): zero,
            # a session id in the shadow afterwards is OP-TEE's own word
            # (a recovering daemon closes a session its guest never learnt of)
            return arg.replace(params=tuple(out), session=0)
        return arg.replace(params=tuple(out))

    @staticmethod
    def _check_attr(cmd: int, i: int, p: MsgParam) -> None:
        """Refuse attributes OP-TEE would refuse: unknown bits or types, META
        outside OPEN_SESSION's value params, NONCONTIG on anything but a
        tmem. (Without this check they reach OP-TEE, which judges them.)"""
        t = p.type
        if p.attr & ~_KNOWN_ATTR_BITS or t not in _KNOWN_TYPES:
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"param {i}: unknown attr {p.attr:#x}")
        if p.is_meta and not (cmd == OPTEE_MSG_CMD_OPEN_SESSION and t in VALUE_TYPES):
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"param {i}: META on attr {p.attr:#x}")
        if p.is_noncontig and t not in TMEM_TYPES:
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"param {i}: NONCONTIG on attr {p.attr:#x}")

    def _translate_tmem(self, ctx: DomainContext, call: StdCall, cmd: int, p: MsgParam) -> Steps[MsgParam]:
        """A NONCONTIG memref: its cookie claimed first (nothing is read or
        pinned for a cookie that is taken), then its pages."""
        register = cmd == OPTEE_MSG_CMD_REGISTER_SHM
        kind = ShmKind.REGISTERED if register else ShmKind.TMEM
        placeholder = cookies.reserve(ctx, kind, p.shm_ref, call.seq,
                                      "REGISTER_SHM" if register else "temporary memref")
        try:
            buf = yield from translate_noncontig_steps(self._machine, self._machine.domain(ctx.domid), ctx,
                                                       kind, p.buf_ptr, p.size, p.shm_ref)
        except BaseException:
            cookies.forget(ctx, placeholder)
            raise
        cookies.fill(ctx, placeholder, buf)
        if register:
            call.register = buf
        else:
            call.tmem.append(buf)
        return p.replace(a=buffer_buf_ptr(buf))

    # -- running a call: OP-TEE until it completes or needs the guest ---------

    def _run(self, ctx: DomainContext, call: StdCall, regs: Regs) -> tuple[Regs, bool]:
        """(guest registers, call still alive)."""
        while True:
            r = self._tee(ctx, regs)
            # OP-TEE has consumed any page list handed to it on the way in.
            free_list_pages(ctx, call.stale_lists)
            if TRACER.on and (tcall := TRACER.current()) is not None:
                t0 = now_ns()
                if not is_rpc_return(r[0] & _U32):
                    out = self._complete(ctx, call, r[0] & _U32)
                    TRACER.span(tcall, "copy back", "mediator", t0, now_ns())
                    return out, False
                step = self._handle_rpc_return(ctx, call, r)
                TRACER.span(tcall, "RPC", "mediator", t0, now_ns(),
                            {"rpc": f"{r[0] & _U32:#x}", "to_guest": step.to_guest})
            elif not is_rpc_return(r[0] & _U32):
                return self._complete(ctx, call, r[0] & _U32), False
            else:
                step = self._handle_rpc_return(ctx, call, r)
            if step.to_guest:
                self._suspend(ctx, call)
                return step.regs, True
            regs = step.regs

    def _suspend(self, ctx: DomainContext, call: StdCall) -> None:
        tid = call.thread_id
        assert tid is not None  # set by the RPC that suspends it
        with ctx.lock:
            stale = ctx.suspended.get(tid)
            ctx.suspended[tid] = call
        if stale is not None and stale is not call:
            # OP-TEE reused a thread we believed suspended: that call is dead.
            ctx.log.error("OP-TEE thread %d reused while call %d was suspended on it", tid, stale.seq)
            self._free_std_call(ctx, stale)

    def _complete(self, ctx: DomainContext, call: StdCall, a0: int) -> Regs:
        arg = call.request
        assert arg is not None
        ret = None
        if a0 == OPTEE_SMC_RETURN_OK:
            result = self._read_shadow_result(call)
            self._copy_std_request_back(ctx, call, result)
            ret = result[0]
        # OP-TEE answered: the cookies this call claimed move on, once
        if call.register is not None:
            buf, call.register = call.register, None
            if ret == 0:
                free_list_pages(ctx, buf.list_pages)  # OP-TEE keeps its own page array
                cookies.commit(ctx, buf)
            else:  # refused, or the command never ran (a0 an error): OP-TEE holds nothing
                cookies.forget(ctx, buf)
                release_buffer(self._machine, ctx, buf)
        if call.unregister is not None:
            buf, call.unregister = call.unregister, None
            # 0, or "no such registration" (one cookie is one registration in
            # OP-TEE, so it holds none under it): the pins can go
            gone = ret in (0, TEEC_ERROR_BAD_PARAMETERS)
            if cookies.end_unregister(ctx, buf, gone):
                release_buffer(self._machine, ctx, buf)
        return _ret(a0)

    def _read_shadow_result(self, call: StdCall) -> tuple[int, int, int, list[MsgParam]]:
        """(ret, ret_origin, session, params) as OP-TEE left them in the shadow."""
        arg = call.request
        assert arg is not None
        data = self._machine.read_machine(call.shadow.maddr, get_arg_size(arg.num_params))
        hdr = unpack_header(data)
        params = [MsgParam.unpack(data, param_offset(i)) for i in range(arg.num_params)]
        return hdr[5], hdr[6], hdr[2], params

    def _copy_std_request_back(self, ctx: DomainContext, call: StdCall,
                               result: tuple[int, int, int, list[MsgParam]]) -> None:
        """Only ret, ret_origin, session and output values/sizes go back, to a
        guest page re-validated (p2m_ram_rw) now."""
        ret, origin, session, params = result
        writes = [(OFFSET_RET, _U32S.pack(ret)), (OFFSET_RET_ORIGIN, _U32S.pack(origin)),
                  (OFFSET_SESSION, _U32S.pack(session))]
        assert call.request is not None
        for i, (mine, theirs) in enumerate(zip(call.request.params, params)):
            base = param_offset(i)
            if mine.type in _VALUE_OUT:
                writes.append((base + 8, struct.pack("<3Q", theirs.a, theirs.b, theirs.c)))
            elif mine.type in _MEMREF_OUT:
                writes.append((base + 16, _U64S.pack(theirs.b)))
        self._write_guest(ctx, call.guest_ipa, writes)

    def _write_result(self, ctx: DomainContext, call: StdCall, ret: int, origin: int) -> bool:
        return self._write_guest(ctx, call.guest_ipa, [(OFFSET_RET, _U32S.pack(ret)),
                                                       (OFFSET_RET_ORIGIN, _U32S.pack(origin))])

    def _write_guest(self, ctx: DomainContext, ipa: int, writes: list[tuple[int, bytes]]) -> bool:
        """Write into the guest's argument; False (logged) if its page is
        no longer writable RAM."""
        domain = self._machine.domain(ctx.domid)
        try:
            for off, data in writes:
                domain.write(ipa + off, data)
        except MachineError as e:
            ctx.log.warning("cannot copy the result back to %#x: %s", ipa, e)
            return False
        return True

    # -- RPCs: OP-TEE -> guest ------------------------------------------------

    def _handle_rpc_return(self, ctx: DomainContext, call: StdCall, r: Regs) -> _Resume:
        func = rpc_func(r[0] & _U32)
        a1, a2, tid = r[1] & _U32, r[2] & _U32, r[3] & _U32
        call.thread_id, call.rpc_func, call.rpc_a1, call.rpc_a2 = tid, func, a1, a2
        refused, call.refused_rpc_cookie = call.refused_rpc_cookie, 0
        call.rpc_state = RpcState.GUEST
        resume = (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid, 0, 0, 0, 0)
        if func == OPTEE_SMC_RPC_FUNC_ALLOC:
            return _Resume(_ret(r[0], a1, 0, tid), True)
        if func == OPTEE_SMC_RPC_FUNC_FREE:
            cookie = _pair(a1, a2)
            if refused and cookie == refused:
                pass  # OP-TEE hands back the buffer the mediator refused: the guest's alone
            elif not self._free_rpc_buffer(ctx, cookie):
                ctx.log.warning("RPC FREE of unknown cookie %#x", cookie)
            return _Resume(_ret(r[0], a1, a2, tid), True)
        if func == OPTEE_SMC_RPC_FUNC_FOREIGN_INTR:
            return _Resume(_ret(r[0], 0, 0, tid), True)
        if func == OPTEE_SMC_RPC_FUNC_CMD:
            where = self._rpc_arg_location(ctx, call, a1, a2)
            if where is None:
                # No buffer to put the request in: OP-TEE preset ret to an
                # error, so resuming at once fails just that request.
                ctx.log.error("RPC CMD with unknown cookie %#x", _pair(a1, a2))
                return _Resume(resume, False)
            shadow_addr, guest_ipa, room = where
            data = self._machine.read_machine(shadow_addr, room)
            try:
                req = MsgArg.unpack(data, max_params=(room - MSG_ARG_HEADER_SIZE) // 32)
            except AbiError as e:
                ctx.log.error("RPC CMD: OP-TEE's request is malformed: %s", e)
                return _Resume(resume, False)
            call.rpc_request = req
            if req.cmd == OPTEE_RPC_CMD_SHM_FREE and req.params:
                self._free_rpc_shm(ctx, req.params[0].b)
            if req.cmd == OPTEE_RPC_CMD_SHM_ALLOC and req.params:
                call.rpc_shm_type = req.params[0].a
            try:
                self._machine.domain(ctx.domid).write(guest_ipa, req.pack())
            except MachineError as e:
                ctx.log.warning("RPC CMD: cannot pass the request to the guest: %s", e)
                self._machine.write_machine(shadow_addr + OFFSET_RET, _U32S.pack(TEEC_ERROR_GENERIC))
                return _Resume(resume, False)
            return _Resume(_ret(r[0], a1, a2, tid), True)
        ctx.log.error("unknown RPC function %#x from OP-TEE", func)
        return _Resume(resume, False)

    def _rpc_arg_location(self, ctx: DomainContext, call: StdCall, a1: int,
                          a2: int) -> tuple[int, int, int] | None:
        """(shadow address, guest IPA, size) of the RPC argument of an RPC CMD."""
        if call.rpc_offset is not None:
            return (call.shadow.maddr + call.rpc_offset, call.guest_ipa + call.rpc_offset,
                    call.rpc_size)
        with ctx.lock:
            buf = ctx.rpc_buffers.get(_pair(a1, a2))
        if buf is None:
            return None
        return buf.shadow.maddr, buf.ipa, PAGE_SIZE - (buf.ipa & _PAGE_MASK)

    def _free_rpc_shm(self, ctx: DomainContext, cookie: int) -> None:
        """OP-TEE's SHM_FREE: it no longer uses the buffer, unpin it now."""
        with ctx.lock:
            buf = ctx.shm_buffers.get(cookie)
            if buf is None or buf.kind is not ShmKind.RPC:
                return
            if buf.state is not ShmState.LIVE:
                return  # still being translated for the guest's reply: not OP-TEE's yet
            del ctx.shm_buffers[cookie]
        release_buffer(self._machine, ctx, buf)

    # -- RPCs: guest -> OP-TEE ------------------------------------------------

    def _return_from_rpc(self, ctx: DomainContext, vcpu: int, regs: Regs) -> Regs:
        tid = regs[3] & _U32
        with ctx.lock:
            # Popping marks it in flight: a second resume of the same thread
            # (another vCPU, or a replay) finds nothing and gets ERESUME.
            call = ctx.suspended.pop(tid, None)
        if call is None:
            return _ret(OPTEE_SMC_RETURN_ERESUME)
        keep = False
        try:
            if TRACER.on and (tcall := TRACER.current()) is not None:
                t0 = now_ns()
                step = self._resume_step(ctx, call, regs)
                TRACER.span(tcall, "RPC reply", "mediator", t0, now_ns())
            else:
                step = self._resume_step(ctx, call, regs)
            if step.to_guest:
                self._suspend(ctx, call)
                keep = True
                return step.regs
            out, keep = self._run(ctx, call, step.regs)
            return out
        finally:
            if not keep:
                self._free_std_call(ctx, call)

    def _resume_step(self, ctx: DomainContext, call: StdCall, regs: Regs) -> _Resume:
        tid = call.thread_id
        assert tid is not None  # suspended on it
        func, state = call.rpc_func, call.rpc_state
        call.rpc_state = RpcState.NONE
        if func == OPTEE_SMC_RPC_FUNC_ALLOC:
            cookie = _pair(regs[4], regs[5])
            buf = self._alloc_rpc_buffer(ctx, call, _pair(regs[1], regs[2]), cookie)
            if buf is None:
                # never address 0 (a real page where DRAM starts at 0): OP-TEE
                # fails on the misaligned address before touching memory
                hi, lo = _split(REFUSED_RPC_ARG_ADDR)
                if not self.profile.refused_alloc_keeps_cookie:
                    return _Resume((OPTEE_SMC_CALL_RETURN_FROM_RPC, hi, lo, tid, 0, 0, 0, 0), False)
                # the guest's cookie, as Xen passes it: OP-TEE answers with an
                # RPC FREE of it, which goes to the guest and releases nothing
                # of the mediator's (the cookie may name a buffer it holds)
                call.refused_rpc_cookie = cookie
                chi, clo = _split(cookie)
                return _Resume((OPTEE_SMC_CALL_RETURN_FROM_RPC, hi, lo, tid, chi, clo, 0, 0), False)
            hi, lo = _split(buf.shadow.maddr)
            chi, clo = _split(buf.cookie)
            return _Resume((OPTEE_SMC_CALL_RETURN_FROM_RPC, hi, lo, tid, chi, clo, 0, 0), False)
        if func == OPTEE_SMC_RPC_FUNC_CMD:
            self._merge_rpc_reply(ctx, call, state)
            if call.rpc_state is RpcState.MEDIATOR_FREE:
                return _Resume(_ret(OPTEE_SMC_RETURN_RPC_CMD, call.rpc_a1, call.rpc_a2, tid), True)
        return _Resume((OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid, 0, 0, 0, 0), False)

    def _merge_rpc_reply(self, ctx: DomainContext, call: StdCall, state: RpcState) -> None:
        """Put the guest's answer to an RPC CMD into the shadow: only ret,
        ret_origin and output values/sizes, plus a translated SHM_ALLOC."""
        where = self._rpc_arg_location(ctx, call, call.rpc_a1, call.rpc_a2)
        req = call.rpc_request
        if where is None or req is None:
            return
        shadow_addr, guest_ipa, _room = where
        if state is RpcState.MEDIATOR_FREE:
            # The guest freed the buffer we could not translate; now fail
            # OP-TEE's allocation, its request otherwise untouched.
            self._machine.write_machine(shadow_addr, req.replace(
                ret=TEEC_ERROR_OUT_OF_MEMORY, ret_origin=TEEC_ORIGIN_COMMS).pack())
            return
        try:
            data = self._machine.domain(ctx.domid).read(guest_ipa, req.size)
        except MachineError as e:
            ctx.log.warning("RPC CMD: cannot read the guest's reply: %s", e)
            self._machine.write_machine(shadow_addr, req.replace(ret=TEEC_ERROR_GENERIC).pack())
            return
        hdr = unpack_header(data)
        ret, origin = hdr[5], hdr[6]
        theirs = [MsgParam.unpack(data, param_offset(i)) for i in range(req.num_params)]
        merged: list[MsgParam] = []
        for i, (mine, g) in enumerate(zip(req.params, theirs)):
            if req.cmd == OPTEE_RPC_CMD_SHM_ALLOC and i == 0 and ret == 0:
                param = self._translate_shm_alloc(ctx, call, g)
                if param is None:
                    return  # an SHM_FREE for the guest was injected instead
                merged.append(param)
            elif mine.type in _VALUE_OUT:
                merged.append(mine.replace(a=g.a, b=g.b, c=g.c))
            elif mine.type in _MEMREF_OUT:
                merged.append(mine.replace(b=g.b))
            else:
                merged.append(mine)
        self._machine.write_machine(shadow_addr, req.replace(
            ret=ret, ret_origin=origin, params=tuple(merged)).pack())

    def _translate_shm_alloc(self, ctx: DomainContext, call: StdCall, g: MsgParam) -> MsgParam | None:
        """The guest's SHM_ALLOC reply, in either form: a page list (what
        Linux sends), or one page by address. Never passed through
        untranslated. Its cookie is claimed before anything is read or
        pinned; a buffer that cannot be taken is handed back to the guest
        (SHM_FREE) before OP-TEE is told the allocation failed."""
        domain = self._machine.domain(ctx.domid)
        placeholder = None
        try:
            placeholder = cookies.reserve(ctx, ShmKind.RPC, g.shm_ref, call.seq, "SHM_ALLOC reply")
            if g.attr == _SHM_ALLOC_NONCONTIG:
                buf = translate_noncontig(self._machine, domain, ctx, ShmKind.RPC, g.buf_ptr, g.size,
                                          g.shm_ref)
                buf_ptr = buffer_buf_ptr(buf)
                call.stale_lists.extend(buf.list_pages)  # OP-TEE reads it on resume
                buf.list_pages = []
            elif g.attr == OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT and self.profile.shm_alloc_plain_page:
                shm = self._machine.static_shm
                if g.buf_ptr and self._static_ok(ctx) and shm.contains(g.buf_ptr, g.size):
                    buf = ShmBuffer(ShmKind.RPC, g.shm_ref, [], [], 0, g.size, static=True)
                    with ctx.lock:
                        ctx.nr_buffers += 1
                else:
                    buf = translate_page(self._machine, domain, ctx, ShmKind.RPC, g.buf_ptr,
                                         g.size, g.shm_ref)
                    buf_ptr = buffer_buf_ptr(buf)
            else:
                raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"SHM_ALLOC reply attr {g.attr:#x}")
        except Refusal as e:
            if placeholder is not None:
                cookies.forget(ctx, placeholder)
            ctx.log.warning("RPC SHM_ALLOC: %s", e.reason)
            self._inject_shm_free(ctx, call, g.shm_ref)
            return None
        # OP-TEE gets it with this very resume: LIVE from now on, until its SHM_FREE
        cookies.fill(ctx, placeholder, buf)
        cookies.commit(ctx, buf)
        if buf.static:
            return g
        return MsgParam(g.attr, buf_ptr, g.size, g.shm_ref)

    def _inject_shm_free(self, ctx: DomainContext, call: StdCall, cookie: int) -> None:
        """Ask the guest, in OP-TEE's own words, to free a buffer the mediator
        refused; OP-TEE learns of the failure when the guest answers."""
        req = MsgArg(OPTEE_RPC_CMD_SHM_FREE, ret=TEEC_ERROR_GENERIC, params=(
            MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, call.rpc_shm_type, cookie, 0),))
        where = self._rpc_arg_location(ctx, call, call.rpc_a1, call.rpc_a2)
        assert where is not None
        try:
            self._machine.domain(ctx.domid).write(where[1], req.pack())
        except MachineError as e:
            # Cannot even ask: fail the allocation now; the guest leaks its buffer.
            ctx.log.warning("cannot inject SHM_FREE: %s", e)
            assert call.rpc_request is not None  # the SHM_ALLOC being answered
            self._machine.write_machine(where[0], call.rpc_request.replace(
                ret=TEEC_ERROR_OUT_OF_MEMORY, ret_origin=TEEC_ORIGIN_COMMS).pack())
            return
        call.rpc_state = RpcState.MEDIATOR_FREE
