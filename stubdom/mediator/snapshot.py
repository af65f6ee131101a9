"""A domain's mediator state as plain data, and back (docs/faults.md):
typed data conversion, nothing that talks to OP-TEE.

The stub-domain daemon journals what it needs to survive a SIGKILL: the
per-domain state that outlives a single trap — calls suspended in RPCs,
registered shared memory and the cookie claims on it, RPC buffers, the
shadow pool, frames held for OP-TEE — with the frames each holds pinned.
Everything is plain ints, strings, lists and bytes (the journal is
msgpack). OP-TEE messages are kept as the bytes the mediator validated,
never re-read from a guest.

A snapshot is taken at rest only: when every call that has reached OP-TEE
is suspended in an RPC. A call still being validated and translated (it has
not reached OP-TEE: not ``begun``) is left out with everything it claimed —
its cookies, its pins, its pages: a restarted daemon drops them as extra.
Counters are computed from what is included, never copied. Registrations
keep their cookie state (docs/security.md, "Cookies"): a PENDING one is
owned by the suspended REGISTER_SHM that claimed it, an UNREGISTERING one
by the UNREGISTER_SHM in OP-TEE. :func:`expected_pins` says which frames the
snapshot holds pinned, so that a restore can be checked against the
machine's frame table before it is trusted. The operations that use these
(snapshot, restore, abandon, settle) are Mediator's (mediator/recovery.py).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypedDict

from stubdom.optee.msg import (
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_MAX_NUM_PARAMS,
    MsgArg,
)

from . import cookies
from .context import (
    DomainContext,
    RpcBuffer,
    RpcState,
    ShadowPage,
    ShadowPool,
    ShmBuffer,
    ShmKind,
    ShmState,
    StdCall,
)
from .errors import BadSnapshot
from .limits import DomainLimits
from .profile import Profile
from .ratelog import RateLimitedLog

__all__ = ["SNAPSHOT_VERSION", "Snapshot", "ShmData", "CallData", "RpcBufferData", "Intent",
           "context_to_data", "context_from_data", "expected_pins", "without_resumed_call", "call_intent"]

SNAPSHOT_VERSION = 2


class ShmData(TypedDict):
    kind: str  # ShmKind value
    cookie: int
    ipas: list[int]
    mfns: list[int]
    offset: int
    size: int
    list_pages: list[int]  # mfns of the translated page list still held
    static: bool
    state: str  # ShmState value
    owner: int | None  # seq of the call that moves it on (PENDING / UNREGISTERING)


class CallData(TypedDict):
    seq: int
    function: int
    shadow: int  # mfn
    guest_ipa: int
    request: bytes | None
    rpc_offset: int | None
    rpc_size: int
    tmem: list[ShmData]
    register: int | None  # cookie of its claimed registration (in shm_buffers)
    unregister: int | None  # cookie of the registration it unregisters
    begun: bool
    thread_id: int | None
    rpc_state: str
    rpc_func: int
    rpc_a1: int
    rpc_a2: int
    rpc_request: bytes | None
    rpc_shm_type: int
    stale_lists: list[int]


class RpcBufferData(TypedDict):
    cookie: int
    ipa: int
    mfn: int | None
    shadow: int


class PoolData(TypedDict, total=False):
    free: list[int]
    frame_zero: list[int]
    total: int


class Snapshot(TypedDict, total=False):
    version: int
    domid: int
    profile: str  # the mediator profile the guest negotiated under (absent: strict)
    limits: list[int]
    max_calls: int
    max_rpc_buffers: int
    static_shm_allowed: bool
    rpc_param_count: int
    dying: bool
    next_seq: int
    internal_errors: int
    pool: PoolData
    suspended: list[list[Any]]  # [thread id, CallData]
    shm_buffers: list[ShmData]
    rpc_buffers: list[RpcBufferData]
    held_frames: list[list[int]]  # [mfn, pins]
    calls: int
    nr_buffers: int
    pinned_pages: int
    orphans: dict[int, list[int]]  # set-aside calls: thread -> [shadow mfn, RPC arg offset, size]


class Intent(TypedDict):
    """What a standard call may leave in OP-TEE (journaled in its ``begin``)."""

    cmd: int
    session: int
    cookie: int | None
    shadow: int  # mfn of its shadow argument page


# == to plain data ===========================================================
# The daemon takes one snapshot per state-changing call (docs/faults.md), so
# this direction is written for speed; the data is the same as ever.

# Enum.value is a slow property, and an Enum's hash a Python call: members
# are singletons, looked up by identity
_VALUE = {id(m): m.value for e in (ShmKind, ShmState, RpcState) for m in e}
# MsgArg is immutable (frozen, a tuple of frozen params): its packed bytes
# are remembered by identity. The entry holds the object, so its id is never
# reused while the entry exists; bounded, cleared when full.
_PACKED: dict[int, tuple[MsgArg, bytes]] = {}
_PACKED_MAX = 256


def _shm(buf: ShmBuffer, state: ShmState | None = None) -> ShmData:
    state = state or buf.state
    return {"kind": _VALUE[id(buf.kind)], "cookie": buf.cookie, "ipas": list(buf.ipas),
            "mfns": list(buf.mfns), "offset": buf.offset, "size": buf.size,
            "list_pages": [p.mfn for p in buf.list_pages], "static": buf.static,
            "state": _VALUE[id(state)], "owner": None if state is ShmState.LIVE else buf.owner}


def _arg(arg: MsgArg | None) -> bytes | None:
    if arg is None:
        return None
    hit = _PACKED.get(id(arg))
    if hit is not None and hit[0] is arg:
        return hit[1]
    data = arg.pack()
    if len(_PACKED) >= _PACKED_MAX:
        _PACKED.clear()
    _PACKED[id(arg)] = (arg, data)
    return data


def _call(call: StdCall) -> CallData:
    register, unregister = call.register, call.unregister
    return {"seq": call.seq, "function": call.function, "shadow": call.shadow.mfn,
            "guest_ipa": call.guest_ipa, "request": _arg(call.request),
            "rpc_offset": call.rpc_offset, "rpc_size": call.rpc_size,
            "tmem": [_shm(b) for b in call.tmem],
            # by cookie: the buffer itself is among the domain's shm_buffers
            "register": None if register is None else register.cookie,
            "unregister": None if unregister is None else unregister.cookie,
            "begun": call.begun,
            "thread_id": call.thread_id, "rpc_state": _VALUE[id(call.rpc_state)],
            "rpc_func": call.rpc_func, "rpc_a1": call.rpc_a1, "rpc_a2": call.rpc_a2,
            "rpc_request": _arg(call.rpc_request), "rpc_shm_type": call.rpc_shm_type,
            "stale_lists": [p.mfn for p in call.stale_lists]}


def context_to_data(ctx: DomainContext) -> Snapshot:
    """The domain's mediator state as plain data. At rest only: every call
    that reached OP-TEE must be suspended (raises BadSnapshot otherwise);
    calls not yet begun are left out, with what they claimed. Its counters
    are those :func:`_count` computes from the data, counted on the way."""
    domid = ctx.domid
    LIVE, UNREGISTERING = ShmState.LIVE, ShmState.UNREGISTERING
    with ctx.lock:
        suspended = ctx.suspended
        begun = {c for c in ctx.all_calls if c.begun}
        if set(suspended.values()) != begun:
            raise BadSnapshot(domid, f"{len(begun)} calls in OP-TEE, "
                                     f"{len(suspended)} suspended: not at rest")
        mine = {c.seq for c in begun}
        shm = []
        nr_buffers = pinned = list_pages = 0
        for b in ctx.shm_buffers.values():
            state = b.state
            if state is LIVE or b.owner in mine:
                d = _shm(b)
            elif state is UNREGISTERING:
                d = _shm(b, LIVE)  # its UNREGISTER_SHM has not reached OP-TEE
            else:
                continue  # PENDING for a call not begun: nothing of it reached OP-TEE
            shm.append(d)
            nr_buffers += 1
            list_pages += len(d["list_pages"])
            if not d["static"]:
                pinned += len(d["mfns"])
        calls = []
        in_calls = 0  # shadow pages of the suspended calls: argument page, stale lists
        for tid in sorted(suspended):
            cd = _call(suspended[tid])
            calls.append([tid, cd])
            in_calls += 1 + len(cd["stale_lists"])
            for t in cd["tmem"]:
                nr_buffers += 1
                list_pages += len(t["list_pages"])
                if not t["static"]:
                    pinned += len(t["mfns"])
        rpc: list[RpcBufferData] = []
        for rb in ctx.rpc_buffers.values():
            rpc.append({"cookie": rb.cookie, "ipa": rb.ipa, "mfn": rb.mfn, "shadow": rb.shadow.mfn})
            if rb.mfn is not None:
                pinned += 1
        pool = ctx.pool
        lim = ctx.limits
        held = ctx.held_frames
        free = [p.mfn for p in pool._free]
        frame_zero = list(pool._frame_zero)
        total = len(free) + len(frame_zero) + len(rpc) + in_calls + list_pages
        snap: Snapshot = {
            "version": SNAPSHOT_VERSION, "domid": domid, "profile": ctx.profile.name,
            "limits": [lim.max_calls, lim.max_shm_buffers, lim.max_pages_per_buffer,
                       lim.max_total_pages],
            "max_calls": ctx.max_calls, "max_rpc_buffers": ctx.max_rpc_buffers,
            "static_shm_allowed": ctx.static_shm_allowed,
            "rpc_param_count": ctx.rpc_param_count, "dying": ctx.dying,
            "next_seq": ctx.next_seq, "internal_errors": ctx.internal_errors,
            "pool": {"free": free, "frame_zero": frame_zero, "total": total},
            "suspended": calls, "shm_buffers": shm, "rpc_buffers": rpc,
            "held_frames": sorted([m, n] for m, n in held.items()) if held else [],
            "calls": len(calls), "nr_buffers": nr_buffers, "pinned_pages": pinned,
        }
        if len(begun) == len(ctx.all_calls):
            # nothing left out: what is counted must be what the context counts
            want = (ctx.calls, ctx.nr_buffers, ctx.pinned_pages, pool.total)
            got = (len(calls), nr_buffers, pinned, total)
            if want != got:
                raise BadSnapshot(domid, f"counters (calls, buffers, pinned pages, shadow pages) "
                                         f"are {want}, the structures hold {got}")
    return snap


def _count(snap: Snapshot) -> None:
    """Set the counters of ``snap`` from what it holds (calls, buffers,
    pinned guest pages, shadow pages allocated)."""
    bufs = list(snap["shm_buffers"])
    total = len(snap["pool"]["free"]) + len(snap["pool"]["frame_zero"]) + len(snap["rpc_buffers"])
    for _tid, c in snap["suspended"]:
        bufs.extend(c["tmem"])
        total += 1 + len(c["stale_lists"])
    snap["calls"] = len(snap["suspended"])
    snap["nr_buffers"] = len(bufs)
    snap["pinned_pages"] = (sum(len(b["mfns"]) for b in bufs if not b["static"])
                            + sum(1 for r in snap["rpc_buffers"] if r["mfn"] is not None))
    snap["pool"]["total"] = total + sum(len(b["list_pages"]) for b in bufs)


# == what a snapshot holds pinned ============================================

def expected_pins(snap: Snapshot) -> Counter[int]:
    """{mfn: pins} the snapshot accounts for: every shadow page (idle or in
    use: each pinned once while the pool holds it) and every guest frame
    behind a buffer (once per buffer page)."""
    pins: Counter[int] = Counter()
    shadows = list(snap["pool"]["free"])
    guest: list[int] = []

    def buf(b: ShmData) -> None:
        guest.extend(b["mfns"])
        shadows.extend(b["list_pages"])

    for _tid, c in snap["suspended"]:
        shadows.append(c["shadow"])
        shadows.extend(c["stale_lists"])
        for b in c["tmem"]:
            buf(b)
    for b in snap["shm_buffers"]:  # a pending registration is here, not in its call
        buf(b)
    for r in snap["rpc_buffers"]:
        shadows.append(r["shadow"])
        if r["mfn"] is not None:
            guest.append(r["mfn"])
    pins.update(shadows)
    pins.update(guest)
    for mfn, n in snap.get("held_frames", []):
        pins[mfn] += n
    return pins


def without_resumed_call(snap: Snapshot, tid: int | None, have: Mapping[int, int],
                         intent: Intent | None = None) -> tuple[Snapshot, Intent | None, str] | None:
    """The snapshot as it stands once the call that was in OP-TEE at a kill
    is set aside — for a frame table (``have``: {mfn: pins}) lacking pins the
    snapshot holds. Since the snapshot, only that call ran (one at a time),
    so only it can have released them: the call suspended on ``tid`` (a
    RETURN_FROM_RPC resumed it; its guest got no answer, so the call is over
    for it) goes with its shadow page, list pages and temporary buffers; a
    registration the call unregistered (its intent, or ``intent``: the open
    standard call's, from its ``begin``) goes if its pins are gone (OP-TEE
    answered the UNREGISTER_SHM with success, the only time the mediator
    unpins one); and so do RPC buffers and RPC SHM buffers whose pins are
    gone (OP-TEE gave them back: FREE, or SHM_FREE). Pages left out are not
    in the pool (``total`` lowered): recovery frees them once OP-TEE let go.

    A set-aside call OP-TEE may still hold suspended is listed under
    ``"orphans"`` ({thread: [shadow mfn, RPC arg offset, size]}) so that
    ``Mediator.end_unknown_threads`` can read the RPCs it makes on its way out.

    Returns (snapshot, the set-aside call's intent — else ``intent`` —, what
    was set aside), or None if pins are still missing: not explained by that
    call."""
    snap = copy.deepcopy(snap)
    gone: list[str] = []
    aside_seq = None
    for i, (t, c) in enumerate(snap["suspended"]):
        if tid is not None and t == tid:
            del snap["suspended"][i]
            aside_seq = c["seq"]
            try:
                intent = call_intent(_restore_call(
                    c, {int(b["cookie"]): _restore_shm(b) for b in snap["shm_buffers"]}))
            except (KeyError, TypeError, ValueError, AttributeError):
                intent = None  # the restore check below refuses such a snapshot
            if c["rpc_offset"] is not None:
                snap["orphans"] = {t: [c["shadow"], c["rpc_offset"], c["rpc_size"]]}
            gone.append(f"call {c['seq']} (thread {t}, {len(c['tmem'])} tmem)")
            break
    _count(snap)
    short = _short(snap, have)

    def missing(b: ShmData) -> bool:
        if any(short[m] > 0 for m in b["mfns"]):
            short.subtract(b["mfns"])
            return True
        return False

    unregistered = intent.get("cookie") if isinstance(intent, dict) and intent.get(
        "cmd") == OPTEE_MSG_CMD_UNREGISTER_SHM else None
    kept: list[ShmData] = []
    for b in snap["shm_buffers"]:
        owned = aside_seq is not None and b["owner"] == aside_seq
        if owned and b["state"] == ShmState.PENDING.value and missing(b):
            gone.append(f"registration {b['cookie']:#x} (refused)")
        elif (b["kind"] == ShmKind.REGISTERED.value and (owned or b["cookie"] == unregistered)
              and b["state"] != ShmState.PENDING.value and missing(b)):
            gone.append(f"registration {b['cookie']:#x} (unregistered)")
        elif b["kind"] == ShmKind.RPC.value and missing(b):
            gone.append(f"rpc shm {b['cookie']:#x}")  # OP-TEE's SHM_FREE
        else:
            if owned:
                # outcome unknown: a registration stays claimed (owner-less
                # PENDING, undone by settle_lost_call), an unregistration is
                # LIVE again until OP-TEE says otherwise
                if b["state"] == ShmState.UNREGISTERING.value:
                    b["state"] = ShmState.LIVE.value
                b["owner"] = None
            kept.append(b)
    snap["shm_buffers"] = kept
    kept_rpc: list[RpcBufferData] = []
    for r in snap["rpc_buffers"]:
        if r["mfn"] is not None and short[r["mfn"]] > 0:
            short[r["mfn"]] -= 1
            gone.append(f"rpc buffer {r['cookie']:#x}")  # OP-TEE's RPC FREE
        else:
            kept_rpc.append(r)
    snap["rpc_buffers"] = kept_rpc
    _count(snap)
    if _short(snap, have):
        return None
    return snap, intent, ", ".join(gone)


def _short(snap: Snapshot, have: Mapping[int, int]) -> Counter[int]:
    """{mfn: pins the snapshot holds that ``have`` lacks}."""
    return Counter({m: n - have.get(m, 0) for m, n in expected_pins(snap).items()
                    if have.get(m, 0) < n})


# == back to objects =========================================================

def _field(snap: Any, key: str, kinds: Any) -> Any:
    v = snap.get(key) if isinstance(snap, dict) else None
    if not isinstance(v, kinds) or isinstance(v, bool) and kinds is int:
        raise BadSnapshot(snap.get("domid", -1) if isinstance(snap, dict) else -1,
                          f"field {key!r} is {v!r}")
    return v


def _unpack_arg(data: bytes | None) -> MsgArg | None:
    return None if data is None else MsgArg.unpack(data, max_params=OPTEE_MSG_MAX_NUM_PARAMS)


def _restore_shm(b: ShmData) -> ShmBuffer:
    owner = b["owner"]
    return ShmBuffer(ShmKind(b["kind"]), int(b["cookie"]), [int(x) for x in b["ipas"]],
                     [int(x) for x in b["mfns"]], int(b["offset"]), int(b["size"]),
                     [ShadowPage(int(m)) for m in b["list_pages"]], bool(b["static"]),
                     ShmState(b["state"]), None if owner is None else int(owner))


def _restore_call(c: CallData, registrations: Mapping[int, ShmBuffer]) -> StdCall:
    """A suspended call; its REGISTER_SHM / UNREGISTER_SHM buffer is the one
    ``registrations`` (cookie -> ShmBuffer) holds for it, claimed by it."""
    seq = int(c["seq"])

    def claimed(key: str, cookie: int | None, state: ShmState) -> ShmBuffer | None:
        if cookie is None:
            return None
        buf = registrations.get(int(cookie))
        if (buf is None or buf.kind is not ShmKind.REGISTERED or buf.state is not state
                or buf.owner != seq):
            raise ValueError(f"call {seq}: its {key} cookie {int(cookie):#x} is not a "
                             f"{state.value} registration it owns")
        return buf

    return StdCall(
        seq=seq, function=int(c["function"]), shadow=ShadowPage(int(c["shadow"])),
        guest_ipa=int(c["guest_ipa"]), request=_unpack_arg(c["request"]),
        rpc_offset=None if c["rpc_offset"] is None else int(c["rpc_offset"]),
        rpc_size=int(c["rpc_size"]), tmem=[_restore_shm(b) for b in c["tmem"]],
        register=claimed("register", c["register"], ShmState.PENDING),
        unregister=claimed("unregister", c["unregister"], ShmState.UNREGISTERING),
        begun=True,  # suspended in an RPC: it reached OP-TEE
        thread_id=None if c["thread_id"] is None else int(c["thread_id"]),
        rpc_state=RpcState(c["rpc_state"]), rpc_func=int(c["rpc_func"]),
        rpc_a1=int(c["rpc_a1"]), rpc_a2=int(c["rpc_a2"]),
        rpc_request=_unpack_arg(c["rpc_request"]), rpc_shm_type=int(c["rpc_shm_type"]),
        stale_lists=[ShadowPage(int(m)) for m in c["stale_lists"]])


def context_from_data(snap: Snapshot, machine: Any, log: RateLimitedLog, profile: Profile) -> DomainContext:
    """A domain's context rebuilt from :func:`context_to_data`'s data — no
    SMC, no pin: the secure world and the frame table kept theirs (check the
    pins first: :func:`expected_pins`) — for a mediator of ``profile``.
    Raises BadSnapshot for data that does not describe a context (counters
    that disagree with what it holds, a cookie twice in the namespace, a
    claimed registration without its call) or one taken under another
    profile (its guest negotiated another protocol; a snapshot without a
    profile predates them: strict)."""
    domid = _field(snap, "domid", int)
    if snap.get("version") != SNAPSHOT_VERSION:
        raise BadSnapshot(domid, f"version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}")
    taken_under = snap.get("profile", "strict")
    if taken_under != profile.name:
        raise BadSnapshot(domid, f"taken under profile {taken_under!r}, this mediator speaks {profile.name!r}")
    try:
        counted = copy.deepcopy(snap)
        _count(counted)
        for key in ("calls", "nr_buffers", "pinned_pages"):
            if counted[key] != _field(snap, key, int):
                raise BadSnapshot(domid, f"{key} = {snap[key]} but it holds {counted[key]}")
        if counted["pool"]["total"] != snap["pool"]["total"]:
            raise BadSnapshot(domid, f"pool total = {snap['pool']['total']} but it holds "
                                     f"{counted['pool']['total']}")
        limits = DomainLimits(*(int(x) for x in _field(snap, "limits", list)))
        pool = ShadowPool(machine, domid)
        p = _field(snap, "pool", dict)
        pool._free = [ShadowPage(int(m)) for m in p["free"]]
        pool._frame_zero = [int(m) for m in p["frame_zero"]]
        pool.total = int(p["total"])
        ctx = DomainContext(domid, limits, _field(snap, "max_calls", int),
                            _field(snap, "max_rpc_buffers", int),
                            bool(snap["static_shm_allowed"]), pool, log, profile)
        for key in ("calls", "nr_buffers", "pinned_pages", "rpc_param_count", "next_seq",
                    "internal_errors"):
            setattr(ctx, key, _field(snap, key, int))
        ctx.dying = bool(snap["dying"])
        for b in snap["shm_buffers"]:
            buf = _restore_shm(b)
            if buf.cookie in ctx.shm_buffers:
                raise BadSnapshot(domid, f"cookie {buf.cookie:#x} twice among the shm buffers")
            ctx.shm_buffers[buf.cookie] = buf
        for r in snap["rpc_buffers"]:
            rb = RpcBuffer(int(r["cookie"]), int(r["ipa"]), None if r["mfn"] is None else int(r["mfn"]),
                           ShadowPage(int(r["shadow"])))
            with ctx.lock:
                if cookies.holder(ctx, rb.cookie) is not None:
                    raise BadSnapshot(domid, f"cookie {rb.cookie:#x} of an RPC buffer is taken")
            ctx.rpc_buffers[rb.cookie] = rb
        for tid, c in snap["suspended"]:
            call = _restore_call(c, ctx.shm_buffers)
            ctx.suspended[int(tid)] = call
            ctx.all_calls.add(call)
            for buf in call.tmem:
                with ctx.lock:
                    if cookies.holder(ctx, buf.cookie) is not None:
                        raise BadSnapshot(domid, f"cookie {buf.cookie:#x} of a temporary memref is taken")
                ctx.temp_cookies[buf.cookie] = buf
        seqs = {c.seq for c in ctx.all_calls}
        for buf in ctx.shm_buffers.values():
            if buf.owner is not None and buf.owner not in seqs:
                raise BadSnapshot(domid, f"cookie {buf.cookie:#x} is claimed by call {buf.owner}, "
                                         f"which is not suspended")
        for tid, (mfn, offset, size) in snap.get("orphans", {}).items():
            ctx.orphan_rpc_args[int(tid)] = (int(mfn), int(offset), int(size))
        for mfn, n in snap["held_frames"]:
            ctx.held_frames[int(mfn)] = int(n)
    except BadSnapshot:
        raise
    except (KeyError, TypeError, ValueError) as e:  # AbiError is a ValueError
        raise BadSnapshot(domid, f"{type(e).__name__}: {e}") from None
    if ctx.calls != len(ctx.all_calls):
        raise BadSnapshot(domid, f"calls = {ctx.calls} but {len(ctx.all_calls)} suspended")
    return ctx


# == the lasting effect of a call =============================================

def call_intent(call: StdCall) -> Intent:
    """What a standard call may leave in OP-TEE, from the mediator's own
    validated copy (never the guest's page): the command, the session it
    names, the cookie it registers or unregisters, the shadow page OP-TEE
    writes its result to. Plain data: the daemon journals it before the call
    reaches the TEE (its ``begin`` record)."""
    arg = call.request
    assert arg is not None, "a call suspended or begun has a validated request"
    cookie = None
    if arg.cmd == OPTEE_MSG_CMD_REGISTER_SHM and call.register is not None:
        cookie = call.register.cookie
    elif arg.cmd == OPTEE_MSG_CMD_UNREGISTER_SHM and arg.params:
        cookie = arg.params[0].shm_ref
    return {"cmd": arg.cmd, "session": arg.session, "cookie": cookie, "shadow": call.shadow.mfn}


