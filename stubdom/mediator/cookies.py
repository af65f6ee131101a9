"""One cookie namespace per domain, and who may move a cookie through it
(docs/security.md, "Cookies").

OP-TEE finds shared memory by the guest's 64-bit cookie
(``mobj_reg_shm_get_by_cookie``, core/mm/mobj_dyn_shm.c) and keeps every
dynamic buffer in one list per partition: registrations, RPC argument
buffers, SHM_ALLOC replies and the temporary memrefs of calls in flight
alike. Two buffers with one cookie in that list are two OP-TEE references
the mediator can tell apart by nothing, so the second is refused here,
before any page is pinned and before OP-TEE sees it: a cookie is in at most
one of ``shm_buffers`` (registered, RPC SHM), ``rpc_buffers`` (RPC argument
buffers) and ``temp_cookies`` (temporary memrefs) at a time. Cookie 0 is
never accepted: OP-TEE and Linux read 0 as "no buffer" (OP-TEE sends no RPC
FREE for it, so such a buffer would stay pinned for good).

A cookie is *reserved* when it is accepted (``reserve``: a placeholder in
state PENDING, owned by one call) and only that call moves it on: ``fill``
once its pages are translated and pinned, then ``commit`` (LIVE) or
``forget`` — exactly once. Every function here takes ``ctx.lock`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

from stubdom.optee.teec import TEEC_ERROR_BAD_PARAMETERS

from .context import DomainContext, RpcBuffer, ShmBuffer, ShmKind, ShmState
from .translate import Refusal

__all__ = ["holder", "reserve", "fill", "forget", "commit", "live_registration",
           "begin_unregister", "end_unregister", "claim_rpc_cookie"]


def holder(ctx: DomainContext, cookie: int) -> str | None:
    """What holds ``cookie`` in the domain's namespace (None: free). The
    caller holds ``ctx.lock``."""
    buf = ctx.shm_buffers.get(cookie)
    if buf is not None:
        return f"{buf.kind.value} buffer ({buf.state.value})"
    if cookie in ctx.rpc_buffers:
        return "RPC argument buffer"
    if cookie in ctx.temp_cookies:
        return "temporary memref of a call in flight"
    return None


def _refuse_taken(ctx: DomainContext, cookie: int, what: str) -> None:
    """Raise Refusal if ``cookie`` cannot be claimed (caller holds the lock)."""
    if cookie == 0:
        raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"{what}: cookie 0 (OP-TEE's 'no buffer')")
    used = holder(ctx, cookie)
    if used is not None:
        raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"{what}: cookie {cookie:#x} in use ({used})")


def reserve(ctx: DomainContext, kind: ShmKind, cookie: int, owner: int, what: str) -> ShmBuffer:
    """Claim ``cookie`` for a buffer about to be translated: a PENDING
    placeholder owned by call ``owner``. Refusal (TEEC_ERROR_BAD_PARAMETERS)
    if the cookie is 0 or already in the namespace, whatever its state."""
    placeholder = ShmBuffer(kind, cookie, [], [], 0, 0, state=ShmState.PENDING, owner=owner)
    with ctx.lock:
        _refuse_taken(ctx, cookie, what)
        table = ctx.temp_cookies if kind is ShmKind.TMEM else ctx.shm_buffers
        table[cookie] = placeholder
    return placeholder


def fill(ctx: DomainContext, placeholder: ShmBuffer, buf: ShmBuffer) -> None:
    """Put the translated ``buf`` where ``placeholder`` holds its cookie
    (still PENDING, same owner). Never overwrites anything else."""
    buf.state, buf.owner = ShmState.PENDING, placeholder.owner
    with ctx.lock:
        table = ctx.temp_cookies if buf.kind is ShmKind.TMEM else ctx.shm_buffers
        if table.get(buf.cookie) is not placeholder:
            raise AssertionError(f"d{ctx.domid}: reservation of cookie {buf.cookie:#x} was taken over")
        table[buf.cookie] = buf


def commit(ctx: DomainContext, buf: ShmBuffer) -> None:
    """OP-TEE holds ``buf`` now (or may: an outcome the mediator cannot
    learn is treated as held)."""
    with ctx.lock:
        if ctx.shm_buffers.get(buf.cookie) is not buf:
            raise AssertionError(f"d{ctx.domid}: committing cookie {buf.cookie:#x} it does not hold")
        buf.state, buf.owner = ShmState.LIVE, None


def forget(ctx: DomainContext, buf: ShmBuffer) -> bool:
    """Drop ``buf``'s entry (this very buffer, never another one under the
    same cookie). True if it was there. The caller releases its pins."""
    with ctx.lock:
        table = ctx.temp_cookies if buf.kind is ShmKind.TMEM else ctx.shm_buffers
        if table.get(buf.cookie) is not buf:
            return False
        del table[buf.cookie]
        return True


def live_registration(ctx: DomainContext, cookie: int) -> ShmBuffer | None:
    """The LIVE registration under ``cookie`` (the only kind a guest may name
    in an RMEM parameter or a REGD_ARG call), or None."""
    with ctx.lock:
        buf = ctx.shm_buffers.get(cookie)
    if buf is None or buf.kind is not ShmKind.REGISTERED or buf.state is not ShmState.LIVE:
        return None
    return buf


def begin_unregister(ctx: DomainContext, cookie: int, owner: int) -> ShmBuffer:
    """An UNREGISTER_SHM of ``cookie`` accepted: LIVE -> UNREGISTERING, owned
    by call ``owner``. Refusal unless it names a LIVE registration."""
    with ctx.lock:
        buf = ctx.shm_buffers.get(cookie)
        if buf is None or buf.kind is not ShmKind.REGISTERED or buf.state is not ShmState.LIVE:
            used = holder(ctx, cookie) or "nothing"
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS,
                          f"UNREGISTER_SHM: cookie {cookie:#x} is not a live registration ({used})")
        buf.state, buf.owner = ShmState.UNREGISTERING, owner
    return buf


def end_unregister(ctx: DomainContext, buf: ShmBuffer, gone: bool) -> bool:
    """The UNREGISTER_SHM of ``buf`` ended: ``gone`` (OP-TEE holds no
    registration of it) forgets it — True, the caller releases the pins —
    otherwise it is LIVE again."""
    with ctx.lock:
        if ctx.shm_buffers.get(buf.cookie) is not buf:
            return False
        if gone:
            del ctx.shm_buffers[buf.cookie]
            return True
        buf.state, buf.owner = ShmState.LIVE, None
        return False


def claim_rpc_cookie(ctx: DomainContext, cookie: int, make: Callable[[], RpcBuffer], limit: int) -> RpcBuffer:
    """Insert the RPC argument buffer ``make()`` under ``cookie`` if the
    cookie is free and fewer than ``limit`` such buffers exist; returns the
    buffer, or raises Refusal. One step under the lock: no second claim can
    slip in between the check and the insertion."""
    with ctx.lock:
        _refuse_taken(ctx, cookie, "RPC ALLOC")
        if len(ctx.rpc_buffers) >= limit:
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"RPC ALLOC: {limit} RPC buffers already")
        buf = make()
        ctx.rpc_buffers[cookie] = buf
        return buf
