"""The mediator's state, one structure per lifetime (Xen's optee.c keeps
the same four: call context, RPC buffer, pinned shared buffer, per-domain
context), plus the pool of mediator-owned shadow pages.

All of it lives in mediator objects, never in the machine: the stub-domain
daemon attaches to the same machine files from another process and keeps
its own.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

from stubdom.optee.msg import MsgArg
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, Machine

from .limits import DomainLimits
from .profile import Profile
from .ratelog import RateLimitedLog

__all__ = [
    "ShadowPage",
    "ShadowPool",
    "ShmKind",
    "ShmState",
    "ShmBuffer",
    "RpcBuffer",
    "StdCall",
    "DomainContext",
]

_ZERO_PAGE = bytes(PAGE_SIZE)


@dataclass(eq=False, slots=True)
class ShadowPage:
    """One frame the hypervisor keeps for a domain: owned by it, in no p2m,
    pinned for as long as the mediator holds it (so the TEE may use it)."""

    mfn: int

    @property
    def maddr(self) -> int:
        return self.mfn << PAGE_SHIFT


class ShadowPool:
    """Per-domain shadow pages, preallocated (one argument page and one RPC
    page per call the domain may have in flight) and grown on demand for
    translated page lists.  Pages return to the pool, never to the heap,
    until the domain is torn down."""

    def __init__(self, machine: Machine, domid: int) -> None:
        self._machine = machine
        self._domid = domid
        self._free: list[ShadowPage] = []
        # Frame 0, if the heap hands it out: kept (so it is not handed out
        # again) but never used, since OP-TEE would read machine address 0
        # as a NULL buffer.  Freed with the rest at release.
        self._frame_zero: list[int] = []
        self.total = 0  # pages allocated from the heap and not yet freed

    def grow(self, count: int) -> None:
        mfns = self._machine.alloc_domheap_pages(self._domid, count)
        if 0 in mfns:
            try:
                spare = self._machine.alloc_domheap_pages(self._domid, 1)
            except BaseException:
                self._machine.free_domheap_pages(self._domid, mfns)
                raise
            mfns = [m for m in mfns if m] + spare
            self._frame_zero.append(0)
            self.total += 1
        try:
            self._machine.get_pages(mfns, self._domid)
        except BaseException:
            self._machine.free_domheap_pages(self._domid, mfns)
            raise
        self._free.extend(ShadowPage(m) for m in mfns)
        self.total += count

    def take(self) -> ShadowPage:
        """A zeroed page (grows the pool by one if it is empty)."""
        if not self._free:
            self.grow(1)
        page = self._free.pop()
        self._machine.write_machine(page.maddr, _ZERO_PAGE)
        return page

    def give(self, page: ShadowPage) -> None:
        self._free.append(page)

    @property
    def idle(self) -> int:
        return len(self._free)

    @property
    def idle_mfns(self) -> frozenset[int]:
        """Frames of the idle pages (at rest: every page of the pool)."""
        return frozenset(p.mfn for p in self._free)

    def release(self, budget: int) -> int:
        """Unpin and free up to ``budget`` idle pages; returns how many."""
        done = 0
        if self._frame_zero and budget > 0:
            self._machine.free_domheap_pages(self._domid, self._frame_zero)
            self._frame_zero.clear()
            self.total -= 1
            done = 1
            budget -= 1
        batch = self._free[-budget:] if 0 < budget < len(self._free) else (
            list(self._free) if budget > 0 else [])
        if not batch:
            return done
        del self._free[len(self._free) - len(batch):]
        mfns = [p.mfn for p in batch]
        self._machine.put_pages(mfns)
        self._machine.free_domheap_pages(self._domid, mfns)
        self.total -= len(batch)
        return done + len(batch)


class ShmKind(enum.Enum):
    TMEM = "tmem"  # temporary memref of one call; released when the call ends
    REGISTERED = "registered"  # REGISTER_SHM; released when UNREGISTER_SHM succeeds
    RPC = "rpc"  # RPC SHM_ALLOC reply; released when OP-TEE sends SHM_FREE


class ShmState(enum.Enum):
    """Where a cookie's buffer is in its life (docs/security.md, "Cookies").
    Only the standard call named in ``ShmBuffer.owner`` moves a PENDING or
    UNREGISTERING buffer on; nothing else may use its cookie meanwhile."""

    PENDING = "pending"  # accepted and reserved; OP-TEE may not hold it yet
    LIVE = "live"  # OP-TEE holds it (registered, or handed over in an SHM_ALLOC reply)
    UNREGISTERING = "unregistering"  # an UNREGISTER_SHM of it is in OP-TEE


@dataclass(eq=False, slots=True)
class ShmBuffer:
    """A guest buffer whose pages are pinned on the domain's behalf."""

    kind: ShmKind
    cookie: int  # the guest's shm_ref: one namespace per domain (mediator/cookies.py)
    ipas: list[int]  # guest page addresses, in buffer order
    mfns: list[int]  # frames behind them, pinned once each (empty when static)
    offset: int  # where the buffer starts in its first page
    size: int  # bytes
    # Translated page list (machine addresses) handed to OP-TEE; freed once
    # OP-TEE has read it (after the call, or after the registration).
    list_pages: list[ShadowPage] = field(default_factory=list)
    static: bool = False  # lies in the static region (hwdom): nothing pinned
    state: ShmState = ShmState.LIVE
    owner: int | None = None  # seq of the call that moves it on while PENDING / UNREGISTERING

    @property
    def nr_pages(self) -> int:
        return len(self.mfns)


@dataclass(eq=False, slots=True)
class RpcBuffer:
    """A guest buffer given to OP-TEE through RPC ALLOC: OP-TEE sees only the
    shadow page, the guest only its own page; the mediator copies between
    them at each RPC CMD."""

    cookie: int  # the guest's cookie (a4/a5 of the ALLOC reply)
    ipa: int  # the guest's buffer
    mfn: int | None  # the guest frame, pinned (None: static region)
    shadow: ShadowPage  # what OP-TEE reads and writes


class RpcState(enum.Enum):
    NONE = "none"  # not suspended in an RPC (starting, or running)
    GUEST = "guest"  # the guest is serving OP-TEE's RPC
    MEDIATOR_FREE = "mediator-free"  # the guest is serving the mediator's own SHM_FREE


@dataclass(eq=False, slots=True)
class StdCall:
    """A standard call from its first SMC to its completion, across RPCs."""

    seq: int  # per-domain sequence number (logs; tells reused thread ids apart)
    function: int  # CALL_WITH_ARG, CALL_WITH_RPC_ARG or CALL_WITH_REGD_ARG
    shadow: ShadowPage  # the mediator's copy of the argument, given to OP-TEE
    guest_ipa: int = 0  # where the guest's argument is (copied back there)
    request: MsgArg | None = None  # the argument as validated (drives copy back)
    rpc_offset: int | None = None  # trailing RPC argument: offset in shadow and guest page
    rpc_size: int = 0  # its size, GET_ARG_SIZE(negotiated RPC param count)
    tmem: list[ShmBuffer] = field(default_factory=list)  # released at completion
    register: ShmBuffer | None = None  # its REGISTER_SHM's buffer (PENDING) until OP-TEE answers
    unregister: ShmBuffer | None = None  # its UNREGISTER_SHM's buffer (UNREGISTERING) until then
    # Its first SMC was issued: from then on OP-TEE may have acted on it, so
    # a registration it carries is released only on OP-TEE's own word.
    begun: bool = False
    thread_id: int | None = None  # OP-TEE thread while suspended
    rpc_state: RpcState = RpcState.NONE
    rpc_func: int = 0  # RPC function OP-TEE returned with
    rpc_a1: int = 0  # its a1 and a2
    rpc_a2: int = 0
    rpc_request: MsgArg | None = None  # OP-TEE's RPC CMD request, as it wrote it
    rpc_shm_type: int = 0  # SHM_ALLOC type, for an injected SHM_FREE
    stale_lists: list[ShadowPage] = field(default_factory=list)  # freed after OP-TEE's next return
    # Cookie of an RPC ALLOC reply the mediator refused but passed to OP-TEE
    # (profile refused_alloc_keeps_cookie): OP-TEE's RPC FREE of it, its very
    # next return, goes to the guest and releases nothing of the mediator's.
    refused_rpc_cookie: int = 0


class DomainContext:
    """Everything the mediator holds for one domain (Xen's optee_domain)."""

    def __init__(self, domid: int, limits: DomainLimits, max_calls: int, max_rpc_buffers: int,
                 static_shm_allowed: bool, pool: ShadowPool, log: RateLimitedLog, profile: Profile) -> None:
        self.domid = domid
        self.profile = profile  # the mediator's (mediator/profile.py): what translation consults
        self.limits = limits  # the policy's, within the profile's bounds
        self.max_calls = max_calls  # min(limits.max_calls, OP-TEE threads)
        self.max_rpc_buffers = max_rpc_buffers
        self.static_shm_allowed = static_shm_allowed  # policy; hwdom + direct map checked at use
        self.pool = pool
        self.log = log
        self.lock = threading.Lock()  # guards everything below
        self.calls = 0  # StdCalls allocated (in flight or suspended)
        self.suspended: dict[int, StdCall] = {}  # OP-TEE thread id -> call waiting for the guest
        self.all_calls: set[StdCall] = set()  # every allocated call (for teardown)
        self.rpc_buffers: dict[int, RpcBuffer] = {}  # by guest cookie
        self.shm_buffers: dict[int, ShmBuffer] = {}  # REGISTERED and RPC, by guest cookie
        # Cookies of the temporary memrefs of calls in flight: OP-TEE finds
        # those by cookie too (mobj_reg_shm_get_by_cookie), so they share
        # the namespace of shm_buffers and rpc_buffers (mediator/cookies.py).
        self.temp_cookies: dict[int, ShmBuffer] = {}
        # Frames pinned on the domain's behalf that no buffer accounts for
        # but OP-TEE may still reference (a restarted daemon could not learn
        # the fate of a registration): {mfn: pins}, dropped only after
        # VM_DESTROYED.
        self.held_frames: dict[int, int] = {}
        self.nr_buffers = 0  # ShmBuffers alive, temporary ones included
        self.pinned_pages = 0  # guest pages pinned for this domain (buffers + RPC buffers)
        self.rpc_param_count = 0  # negotiated by EXCHANGE_CAPABILITIES (0: no RPC_ARG)
        self.dying = False  # relinquish started: every new call is refused
        self.next_seq = 1
        self.internal_errors = 0  # mediator bugs caught at the dispatch boundary
        # Only between a restart's restore and its settle: OP-TEE thread ->
        # (shadow mfn, offset, size) of the RPC argument of a call recovery
        # set aside but OP-TEE may hold suspended (end_unknown_threads reads the
        # SHM_FREE it makes on its way out there). Never snapshotted.
        self.orphan_rpc_args: dict[int, tuple[int, int, int]] = {}

    @property
    def rpc_pinned_pages(self) -> int:
        """Guest pages pinned for RPC argument buffers (one each; none in
        the static region). The caller holds ``lock``."""
        return sum(1 for b in self.rpc_buffers.values() if b.mfn is not None)

    def counted_pages(self) -> int:
        """Pinned pages held against ``limits.max_total_pages``: all of them,
        or (a profile whose RPC argument pages do not count, as Xen's
        optee_shm_buf_pages) those of the shared buffers alone. The caller
        holds ``lock``."""
        if self.profile.rpc_pages_count:
            return self.pinned_pages
        return self.pinned_pages - self.rpc_pinned_pages
