"""A domain's mediator state as plain data, and back (docs/faults.md).

The stub-domain daemon journals what it needs to survive a SIGKILL: the
per-domain state that outlives a single trap — calls suspended in RPCs,
registered shared memory, RPC buffers, the shadow pool — with the frames
each holds pinned. Everything is plain ints, strings, lists and bytes (the
journal is msgpack). ``OptEE`` messages are kept as the bytes the mediator
validated, never re-read from a guest.

A snapshot is taken at rest only: when every call that has reached OP-TEE
is suspended in an RPC. A call still being validated and translated (it has
not reached OP-TEE: not ``begun``) is left out with everything it claimed —
its cookies, its pins, its pages: a restarted daemon drops them as extra.
Counters are computed from what is included, never copied. Registrations
keep their cookie state (docs/security.md, "Cookies"): a PENDING one is
owned by the suspended REGISTER_SHM that claimed it, an UNREGISTERING one
by the UNREGISTER_SHM in OP-TEE. :func:`expected_pins` says which frames the
snapshot holds pinned, so that a restore can be checked against the
machine's frame table before it is trusted.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

from stubdom.optee.msg import (
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    MSG_ARG_HEADER_SIZE,
    OPTEE_MSG_MAX_NUM_PARAMS,
    MsgArg,
    MsgParam,
    unpack_header,
)
from stubdom.optee.smc import (
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_SHM_CACHED,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FREE,
    is_rpc_return,
    rpc_func,
)
from stubdom.optee.rpc import OPTEE_RPC_CMD_SHM_FREE
from stubdom.optee.teec import TEEC_ERROR_BAD_PARAMETERS, TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS

from stubdom.xen import PAGE_SHIFT, PAGE_SIZE

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
from .ratelog import RateLimitedLog
from .translate import free_list_pages, release_buffer

__all__ = ["SNAPSHOT_VERSION", "snapshot_domain", "restore_domain", "expected_pins",
           "abandon_suspended", "settle_orphans", "ABANDON_MAX_STEPS", "call_intent",
           "settle_lost_call", "LostCall", "settle_claims", "without_resumed_call"]

SNAPSHOT_VERSION = 2
_U32 = 0xFFFFFFFF
# An abandoned call is driven to completion by failing each RPC; OP-TEE
# bounds its own RPCs per call, this bounds ours against a TEE that loops.
ABANDON_MAX_STEPS = 64
# Where OP-TEE is resumed when the mediator refuses an RPC ALLOC on behalf
# of a guest that is gone (misaligned: fails OP-TEE's first check).
_REFUSED_RPC_ARG_ADDR = 7


# == to plain data ===========================================================

def _shm(buf: ShmBuffer, state: ShmState | None = None) -> dict:
    state = state or buf.state
    return {"kind": buf.kind.value, "cookie": buf.cookie, "ipas": list(buf.ipas),
            "mfns": list(buf.mfns), "offset": buf.offset, "size": buf.size,
            "list_pages": [p.mfn for p in buf.list_pages], "static": buf.static,
            "state": state.value, "owner": None if state is ShmState.LIVE else buf.owner}


def _arg(arg: MsgArg | None) -> bytes | None:
    return None if arg is None else arg.pack()


def _call(call: StdCall) -> dict:
    return {"seq": call.seq, "function": call.function, "shadow": call.shadow.mfn,
            "guest_ipa": call.guest_ipa, "request": _arg(call.request),
            "rpc_offset": call.rpc_offset, "rpc_size": call.rpc_size,
            "tmem": [_shm(b) for b in call.tmem],
            # by cookie: the buffer itself is among the domain's shm_buffers
            "register": None if call.register is None else call.register.cookie,
            "unregister": None if call.unregister is None else call.unregister.cookie,
            "begun": call.begun,
            "thread_id": call.thread_id, "rpc_state": call.rpc_state.value,
            "rpc_func": call.rpc_func, "rpc_a1": call.rpc_a1, "rpc_a2": call.rpc_a2,
            "rpc_request": _arg(call.rpc_request), "rpc_shm_type": call.rpc_shm_type,
            "stale_lists": [p.mfn for p in call.stale_lists]}


def snapshot_domain(mediator, domid: int) -> dict:
    """The domain's mediator state as plain data. At rest only: every call
    that reached OP-TEE must be suspended (raises BadSnapshot otherwise);
    calls not yet begun are left out, with what they claimed."""
    ctx = mediator.context(domid)
    with ctx.lock:
        suspended = dict(ctx.suspended)
        begun = {c for c in ctx.all_calls if c.begun}
        if set(suspended.values()) != begun:
            raise BadSnapshot(domid, f"{len(begun)} calls in OP-TEE, "
                                     f"{len(suspended)} suspended: not at rest")
        mine = {c.seq for c in begun}
        shm = []
        for b in ctx.shm_buffers.values():
            if b.state is ShmState.LIVE or b.owner in mine:
                shm.append(_shm(b))
            elif b.state is ShmState.UNREGISTERING:
                shm.append(_shm(b, ShmState.LIVE))  # its UNREGISTER_SHM has not reached OP-TEE
            # else: PENDING for a call not begun: nothing of it reached OP-TEE
        calls = [[tid, _call(c)] for tid, c in sorted(suspended.items())]
        rpc = [{"cookie": b.cookie, "ipa": b.ipa, "mfn": b.mfn, "shadow": b.shadow.mfn}
               for b in ctx.rpc_buffers.values()]
        pool = ctx.pool
        lim = ctx.limits
        snap = {
            "version": SNAPSHOT_VERSION, "domid": domid,
            "limits": [lim.max_calls, lim.max_shm_buffers, lim.max_pages_per_buffer,
                       lim.max_total_pages],
            "max_calls": ctx.max_calls, "max_rpc_buffers": ctx.max_rpc_buffers,
            "static_shm_allowed": ctx.static_shm_allowed,
            "rpc_param_count": ctx.rpc_param_count, "dying": ctx.dying,
            "next_seq": ctx.next_seq, "internal_errors": ctx.internal_errors,
            "pool": {"free": [p.mfn for p in pool._free], "frame_zero": list(pool._frame_zero)},
            "suspended": calls, "shm_buffers": shm, "rpc_buffers": rpc,
            "held_frames": sorted([m, n] for m, n in ctx.held_frames.items()),
        }
        _count(snap)
        if len(begun) == len(ctx.all_calls):
            # nothing left out: what is counted must be what the context counts
            want = (ctx.calls, ctx.nr_buffers, ctx.pinned_pages, pool.total)
            got = (snap["calls"], snap["nr_buffers"], snap["pinned_pages"], snap["pool"]["total"])
            if want != got:
                raise BadSnapshot(domid, f"counters (calls, buffers, pinned pages, shadow pages) "
                                         f"are {want}, the structures hold {got}")
    return snap


def _count(snap: dict) -> None:
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

def expected_pins(snap: dict) -> Counter:
    """{mfn: pins} the snapshot accounts for: every shadow page (idle or in
    use: each pinned once while the pool holds it) and every guest frame
    behind a buffer (once per buffer page)."""
    pins: Counter = Counter()
    shadows = list(snap["pool"]["free"])
    guest: list[int] = []

    def buf(b: dict) -> None:
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


def without_resumed_call(snap: dict, tid: int | None, have,
                         intent: dict | None = None) -> tuple[dict, dict | None, str] | None:
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
    :func:`settle_orphans` can read the RPCs it makes on its way out.

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

    def missing(b: dict) -> bool:
        if any(short[m] > 0 for m in b["mfns"]):
            short.subtract(b["mfns"])
            return True
        return False

    unregistered = intent.get("cookie") if isinstance(intent, dict) and intent.get(
        "cmd") == OPTEE_MSG_CMD_UNREGISTER_SHM else None
    kept = []
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
    kept = []
    for r in snap["rpc_buffers"]:
        if r["mfn"] is not None and short[r["mfn"]] > 0:
            short[r["mfn"]] -= 1
            gone.append(f"rpc buffer {r['cookie']:#x}")  # OP-TEE's RPC FREE
        else:
            kept.append(r)
    snap["rpc_buffers"] = kept
    _count(snap)
    if _short(snap, have):
        return None
    return snap, intent, ", ".join(gone)


def _short(snap: dict, have) -> Counter:
    """{mfn: pins the snapshot holds that ``have`` lacks}."""
    return Counter({m: n - have.get(m, 0) for m, n in expected_pins(snap).items()
                    if have.get(m, 0) < n})


# == back to objects =========================================================

def _field(snap: dict, key: str, kinds):
    v = snap.get(key) if isinstance(snap, dict) else None
    if not isinstance(v, kinds) or isinstance(v, bool) and kinds is int:
        raise BadSnapshot(snap.get("domid", -1) if isinstance(snap, dict) else -1,
                          f"field {key!r} is {v!r}")
    return v


def _unpack_arg(data: bytes | None) -> MsgArg | None:
    return None if data is None else MsgArg.unpack(data, max_params=OPTEE_MSG_MAX_NUM_PARAMS)


def _restore_shm(b: dict) -> ShmBuffer:
    owner = b["owner"]
    return ShmBuffer(ShmKind(b["kind"]), int(b["cookie"]), [int(x) for x in b["ipas"]],
                     [int(x) for x in b["mfns"]], int(b["offset"]), int(b["size"]),
                     [ShadowPage(int(m)) for m in b["list_pages"]], bool(b["static"]),
                     ShmState(b["state"]), None if owner is None else int(owner))


def _restore_call(c: dict, registrations: dict) -> StdCall:
    """A suspended call; its REGISTER_SHM / UNREGISTER_SHM buffer is the one
    ``registrations`` (cookie -> ShmBuffer) holds for it, claimed by it."""
    seq = int(c["seq"])

    def claimed(key: str, state: ShmState) -> ShmBuffer | None:
        cookie = c[key]
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
        register=claimed("register", ShmState.PENDING),
        unregister=claimed("unregister", ShmState.UNREGISTERING),
        begun=True,  # suspended in an RPC: it reached OP-TEE
        thread_id=None if c["thread_id"] is None else int(c["thread_id"]),
        rpc_state=RpcState(c["rpc_state"]), rpc_func=int(c["rpc_func"]),
        rpc_a1=int(c["rpc_a1"]), rpc_a2=int(c["rpc_a2"]),
        rpc_request=_unpack_arg(c["rpc_request"]), rpc_shm_type=int(c["rpc_shm_type"]),
        stale_lists=[ShadowPage(int(m)) for m in c["stale_lists"]])


def restore_domain(mediator, snap: dict) -> DomainContext:
    """Rebuild a domain's context from :func:`snapshot_domain`'s data and
    install it in ``mediator`` — no SMC, no pin: the secure world and the
    frame table kept theirs. Check the pins first (:func:`expected_pins`).
    Raises BadSnapshot for data that does not describe a context (counters
    that disagree with what it holds, a cookie twice in the namespace, a
    claimed registration without its call)."""
    domid = _field(snap, "domid", int)
    if snap.get("version") != SNAPSHOT_VERSION:
        raise BadSnapshot(domid, f"version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}")
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
        pool = ShadowPool(mediator._machine, domid)
        p = _field(snap, "pool", dict)
        pool._free = [ShadowPage(int(m)) for m in p["free"]]
        pool._frame_zero = [int(m) for m in p["frame_zero"]]
        pool.total = int(p["total"])
        log = RateLimitedLog(mediator._logger, f"d{domid}: ",
                             **({"clock": mediator._log_clock} if mediator._log_clock else {}))
        ctx = DomainContext(domid, limits, _field(snap, "max_calls", int),
                            _field(snap, "max_rpc_buffers", int),
                            bool(snap["static_shm_allowed"]), pool, log)
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
    mediator._install_context(ctx)
    return ctx


# == a suspended call whose guest is gone ====================================

def abandon_suspended(mediator, domid: int, tid: int) -> bool:
    """End the call suspended on OP-TEE thread ``tid`` for a guest that will
    never resume it (its RETURN_FROM_RPC was lost with a daemon that died):
    resume OP-TEE failing each RPC — ALLOC refused, CMD answered
    TEEC_ERROR_COMMUNICATION, FREE and foreign interrupts resumed — until the
    call completes, then release what it held. False: nothing was suspended
    there, or OP-TEE would not let go within ABANDON_MAX_STEPS (the call
    stays suspended and is released with the domain)."""
    ctx = mediator.context(domid)
    with ctx.lock:
        call = ctx.suspended.pop(tid, None)
    if call is None:
        return False
    done = False
    try:
        for _ in range(ABANDON_MAX_STEPS):
            regs = _failing_resume(mediator, ctx, call, tid)
            r = mediator._tee(ctx, regs)
            free_list_pages(ctx, call.stale_lists)  # OP-TEE has read them
            if not is_rpc_return(r[0] & _U32):
                done = True
                return True
            func = rpc_func(r[0] & _U32)
            call.thread_id, call.rpc_func = r[3] & _U32, func
            call.rpc_a1, call.rpc_a2 = r[1] & _U32, r[2] & _U32
            call.rpc_state = RpcState.GUEST
            call.rpc_request = None
            tid = call.thread_id
            if func == OPTEE_SMC_RPC_FUNC_FREE:
                mediator._free_rpc_buffer(ctx, (call.rpc_a1 << 32) | call.rpc_a2)
        ctx.log.error("abandoned call %d: OP-TEE still in RPCs after %d steps", call.seq,
                      ABANDON_MAX_STEPS)
        with ctx.lock:
            ctx.suspended[tid] = call
        return False
    finally:
        if done:
            if call.register is not None:
                # A REGISTER_SHM (suspended before OP-TEE ran the command:
                # an RPC FREE of the thread's cached RPC argument comes
                # first) that OP-TEE may now have completed: undo it before
                # its pins go, so OP-TEE never holds a registration of
                # unpinned frames (invariant 4). Only OP-TEE's word that it
                # holds none (0, or "no such registration") releases them;
                # otherwise (busy, a gate failure) _free_std_call keeps it.
                try:
                    _undo_registration(mediator, ctx, call)
                finally:
                    mediator._free_std_call(ctx, call)
            else:
                mediator._free_std_call(ctx, call)


def _undo_registration(mediator, ctx: DomainContext, call: StdCall) -> None:
    """UNREGISTER_SHM the registration ``call`` claimed; release it if OP-TEE
    answers that it holds none. A gate failure propagates, the claim intact."""
    buf = call.register
    ret = _own_call(mediator, ctx, _unregister(buf.cookie))
    if ret in (0, TEEC_ERROR_BAD_PARAMETERS):
        call.register = None
        if cookies.forget(ctx, buf):
            release_buffer(mediator._machine, ctx, buf)


def _failing_resume(mediator, ctx: DomainContext, call: StdCall, tid: int) -> tuple:
    """RETURN_FROM_RPC registers that fail the RPC OP-TEE is waiting on."""
    if call.rpc_func == OPTEE_SMC_RPC_FUNC_ALLOC:
        return (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, _REFUSED_RPC_ARG_ADDR, tid, 0, 0, 0, 0)
    if call.rpc_func == OPTEE_SMC_RPC_FUNC_CMD:
        where = mediator._rpc_arg_location(ctx, call, call.rpc_a1, call.rpc_a2)
        if where is not None:
            shadow_addr = where[0]
            try:
                req = MsgArg.unpack(mediator._machine.read_machine(shadow_addr, where[2]),
                                    max_params=OPTEE_MSG_MAX_NUM_PARAMS)
            except ValueError:
                req = None
            if req is not None:
                if req.cmd == OPTEE_RPC_CMD_SHM_FREE and req.params:
                    mediator._free_rpc_shm(ctx, req.params[0].b)
                mediator._machine.write_machine(shadow_addr, req.replace(
                    ret=TEEC_ERROR_COMMUNICATION, ret_origin=TEEC_ORIGIN_COMMS).pack())
    return (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid, 0, 0, 0, 0)


def settle_orphans(mediator, domid: int) -> list[int]:
    """After a daemon died with a call inside OP-TEE: end every thread of the
    domain's partition that OP-TEE holds suspended but the restored context
    does not know (the call the dead daemon was running, suspended in an
    RPC nobody will answer, or a call recovery set aside). Each is resumed
    failing its RPC (an ALLOC gets a misaligned address, the rest are
    resumed as they are) until it completes; an RPC buffer (FREE) or RPC SHM
    buffer (SHM_FREE) the context holds that OP-TEE gives back on the way is
    released then. Threads the context holds suspended are left alone; a
    thread that is not suspended answers ERESUME. Returns the threads ended."""
    ctx = mediator.context(domid)
    with ctx.lock:
        known = set(ctx.suspended)
    ended = []
    for tid in range(mediator.tee_threads):
        if tid in known:
            continue
        t = tid
        for _ in range(ABANDON_MAX_STEPS):
            r = mediator._tee(ctx, (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, _REFUSED_RPC_ARG_ADDR, t,
                                    0, 0, 0, 0))
            if not is_rpc_return(r[0] & _U32):
                break
            t = r[3] & _U32
            func = rpc_func(r[0] & _U32)
            if func == OPTEE_SMC_RPC_FUNC_FREE:
                mediator._free_rpc_buffer(ctx, ((r[1] & _U32) << 32) | (r[2] & _U32))
            elif func == OPTEE_SMC_RPC_FUNC_CMD:
                _orphan_shm_free(mediator, ctx, t, r[1] & _U32, r[2] & _U32)
            if t not in ended:
                ended.append(t)
    with ctx.lock:
        ctx.orphan_rpc_args.clear()
    return ended


def _orphan_shm_free(mediator, ctx: DomainContext, tid: int, a1: int, a2: int) -> None:
    """An orphan's RPC CMD: if it is SHM_FREE of an RPC SHM buffer the
    context holds (one a set-aside call had, pinned in the snapshot), OP-TEE
    let go of it: unpin it now, once (``_free_rpc_shm`` forgets it). The
    request is in an RPC buffer (a1:a2 its cookie) or after the set-aside
    call's argument in its shadow page; anywhere else it names nothing the
    context holds (an orphan's own buffers postdate the snapshot: their
    pins are dropped as extra after the settle)."""
    cookie = (a1 << 32) | a2
    with ctx.lock:
        buf = ctx.rpc_buffers.get(cookie) if cookie else None
        hint = ctx.orphan_rpc_args.get(tid)
    if buf is not None:
        where = (buf.shadow.maddr, PAGE_SIZE - (buf.ipa & (PAGE_SIZE - 1)))
    elif not cookie and hint is not None:
        where = ((hint[0] << PAGE_SHIFT) + hint[1], hint[2])
    else:
        return
    try:
        req = MsgArg.unpack(mediator._machine.read_machine(*where), max_params=OPTEE_MSG_MAX_NUM_PARAMS)
    except ValueError:
        return
    if req.cmd == OPTEE_RPC_CMD_SHM_FREE and req.params:
        mediator._free_rpc_shm(ctx, req.params[0].b)


# == the lasting effect of a call whose answer was lost =======================

def call_intent(call: StdCall) -> dict:
    """What a standard call may leave in OP-TEE, from the mediator's own
    validated copy (never the guest's page): the command, the session it
    names, the cookie it registers or unregisters, the shadow page OP-TEE
    writes its result to. Plain data: the daemon journals it before the call
    reaches the TEE (its ``begin`` record)."""
    arg = call.request
    cookie = None
    if arg.cmd == OPTEE_MSG_CMD_REGISTER_SHM and call.register is not None:
        cookie = call.register.cookie
    elif arg.cmd == OPTEE_MSG_CMD_UNREGISTER_SHM and arg.params:
        cookie = arg.params[0].shm_ref
    return {"cmd": arg.cmd, "session": arg.session, "cookie": cookie, "shadow": call.shadow.mfn}


@dataclass(frozen=True, slots=True)
class LostCall:
    """What :func:`settle_lost_call` did (``done``, for the log; None:
    nothing to do) and whether the frames pinned beyond the restored context
    may be unpinned now (``extras_free``: OP-TEE said it keeps no
    registration the lost call may have made)."""

    done: str | None
    extras_free: bool


def settle_lost_call(mediator, domid: int, intent: dict) -> LostCall:
    """After a daemon died with a call in OP-TEE and recovery ended every
    thread of the domain it does not hold (:func:`settle_orphans`,
    :func:`abandon_suspended`): undo or finish what that call may have done
    while its guest was answered ENOTAVAIL (outcome unknown), always towards
    holding less —

    - REGISTER_SHM of a cookie the restored context does not hold:
      UNREGISTER_SHM it, so OP-TEE keeps no registration of the frames whose
      pins recovery then drops (invariant 4) — dropped only if OP-TEE answers
      that it holds none (0, or "no such registration");
    - REGISTER_SHM whose claim the context holds without its call (the call
      was set aside): UNREGISTER_SHM it; released on the same answer,
      otherwise kept registered (LIVE, pinned);
    - OPEN_SESSION that OP-TEE completed (a nonzero session in the shadow,
      zeroed on the way in): CLOSE_SESSION it — the guest never learnt its id;
    - UNREGISTER_SHM of a registration the context still holds: UNREGISTER_SHM
      again, and on success or "not found" (the lost one ran) unpin it;
    - CLOSE_SESSION: CLOSE_SESSION again (the lost one ran, or now it has).

    Each is one standard call as the domain, through the mediator's port,
    its argument in one of the domain's shadow pages. Run before the extra
    pins are dropped; a gate failure propagates (then nothing may be
    dropped)."""
    ctx = mediator.context(domid)
    cmd, cookie, session = intent.get("cmd"), intent.get("cookie"), intent.get("session") or 0
    if cmd == OPTEE_MSG_CMD_OPEN_SESSION:
        hdr = unpack_header(mediator._machine.read_machine(int(intent["shadow"]) << PAGE_SHIFT, MSG_ARG_HEADER_SIZE))
        session, ret = hdr[2], hdr[5]
        if not session or ret:
            return LostCall(None, True)
        ret = _own_call(mediator, ctx, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))
        return LostCall(f"closed session {session:#x} OP-TEE opened (ret {ret:#x})", True)
    if cmd == OPTEE_MSG_CMD_CLOSE_SESSION and session:
        ret = _own_call(mediator, ctx, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))
        return LostCall(f"closed session {session:#x} again (ret {ret:#x})", True)
    if cmd not in (OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM) or cookie is None:
        return LostCall(None, True)
    with ctx.lock:
        held = ctx.shm_buffers.get(cookie)
    if cmd == OPTEE_MSG_CMD_REGISTER_SHM:
        if held is None:
            ret = _own_call(mediator, ctx, _unregister(cookie))
            gone = ret in (0, TEEC_ERROR_BAD_PARAMETERS)
            return LostCall(f"unregistered cookie {cookie:#x} (ret {ret:#x})"
                            + ("" if gone else ": OP-TEE may hold it, its frames stay pinned"), gone)
        if held.kind is not ShmKind.REGISTERED or held.state is not ShmState.PENDING or held.owner is not None:
            return LostCall(None, True)  # claimed before this call: not this call's
        ret = _own_call(mediator, ctx, _unregister(cookie))
        if ret in (0, TEEC_ERROR_BAD_PARAMETERS):
            if cookies.forget(ctx, held):
                release_buffer(mediator._machine, ctx, held)
            return LostCall(f"unregistered cookie {cookie:#x} (ret {ret:#x}), pins released", True)
        free_list_pages(ctx, held.list_pages)
        cookies.commit(ctx, held)
        return LostCall(f"cookie {cookie:#x} kept registered (ret {ret:#x})", True)
    if held is None or held.kind is not ShmKind.REGISTERED or held.state is not ShmState.LIVE:
        return LostCall(None, True)
    ret = _own_call(mediator, ctx, _unregister(cookie))
    if ret not in (0, TEEC_ERROR_BAD_PARAMETERS):  # busy: OP-TEE still uses it, keep the pins
        return LostCall(f"cookie {cookie:#x} still registered (ret {ret:#x})", True)
    if cookies.forget(ctx, held):
        release_buffer(mediator._machine, ctx, held)
    return LostCall(f"unregistered cookie {cookie:#x} again (ret {ret:#x}), pins released", True)


def settle_claims(mediator, domid: int) -> list[str]:
    """Every registration the restored context holds claimed by no call (its
    REGISTER_SHM was set aside by recovery, outcome unknown): UNREGISTER_SHM
    it, release it if OP-TEE holds none, else keep it LIVE. What
    :func:`settle_lost_call` did not settle already. Returns what was done."""
    ctx = mediator.context(domid)
    with ctx.lock:
        orphans = [b for b in ctx.shm_buffers.values()
                   if b.state is ShmState.PENDING and b.owner is None]
    done = []
    for buf in orphans:
        ret = _own_call(mediator, ctx, _unregister(buf.cookie))
        if ret in (0, TEEC_ERROR_BAD_PARAMETERS):
            if cookies.forget(ctx, buf):
                release_buffer(mediator._machine, ctx, buf)
            done.append(f"cookie {buf.cookie:#x} unregistered, released")
        else:
            free_list_pages(ctx, buf.list_pages)
            cookies.commit(ctx, buf)
            done.append(f"cookie {buf.cookie:#x} kept registered (ret {ret:#x})")
    return done


def _unregister(cookie: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM,
                  params=(MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, cookie),))


def _own_call(mediator, ctx: DomainContext, arg: MsgArg) -> int:
    """One standard call the mediator makes for the domain (its client ID,
    through its port), the argument in a shadow page; returns ``ret`` (or
    TEEC_ERROR_COMMUNICATION if OP-TEE did not complete it). RPCs are failed
    as :func:`settle_orphans` does."""
    with ctx.lock:
        page = ctx.pool.take()
    try:
        mediator._machine.write_machine(page.maddr, arg.pack())
        r = mediator._tee(ctx, (OPTEE_SMC_CALL_WITH_ARG, page.maddr >> 32, page.maddr & _U32,
                                OPTEE_SMC_SHM_CACHED, 0, 0, 0, 0))
        for _ in range(ABANDON_MAX_STEPS):
            if not is_rpc_return(r[0] & _U32):
                break
            if rpc_func(r[0] & _U32) == OPTEE_SMC_RPC_FUNC_FREE:
                mediator._free_rpc_buffer(ctx, ((r[1] & _U32) << 32) | (r[2] & _U32))
            r = mediator._tee(ctx, (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, _REFUSED_RPC_ARG_ADDR,
                                    r[3] & _U32, 0, 0, 0, 0))
        if r[0] & _U32 != OPTEE_SMC_RETURN_OK:
            return TEEC_ERROR_COMMUNICATION
        return unpack_header(mediator._machine.read_machine(page.maddr, MSG_ARG_HEADER_SIZE))[5]
    finally:
        with ctx.lock:
            ctx.pool.give(page)
