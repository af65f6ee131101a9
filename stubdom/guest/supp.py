"""The queue between OP-TEE's RPCs and a user-space tee-supplicant, modelled
on Linux drivers/tee/optee/supp.c as of mainline 2025 (killable waits,
request ids allocated when a request is queued).

The driver hands each RPC that needs tee-supplicant to :meth:`SuppQueue.process`
(optee_supp_thrd_req), which queues it and waits; tee-supplicant takes it with
TEE_IOC_SUPPL_RECV (:meth:`recv`) and answers with TEE_IOC_SUPPL_SEND
(:meth:`send`).  With a meta parameter (what tee-supplicant always sends)
requests are named by id and several supplicant threads may work at once;
without one, the supplicant serves one request at a time.  When the
supplicant's context is released (:meth:`release`) every request is failed
with TEEC_ERROR_COMMUNICATION.  A requester whose process is gone stops
waiting (the killable wait); a request the supplicant already took is then
marked so that its SUPPL_SEND fails with EBADF.
"""

from __future__ import annotations

import enum
import errno
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from stubdom.optee.teec import TEEC_ERROR_COMMUNICATION

from .errors import TeeErrno
from .params import TeeParam
from .shm import Shm
from .teeshm import Idr
from .uapi import (
    TEE_IOCTL_PARAM_ATTR_META,
    TEE_IOCTL_PARAM_ATTR_TYPE_MASK,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT,
)

if TYPE_CHECKING:
    from .teecore import TeeContext

__all__ = ["SuppQueue", "SuppParam", "ERESTARTSYS"]

ERESTARTSYS = 512  # include/linux/errno.h: a wait cut short by a signal
_META_VALUE = TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT | TEE_IOCTL_PARAM_ATTR_META
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SuppParam:
    """One struct tee_ioctl_param as the supplicant sees it (attr, a, b, c)."""

    attr: int = 0
    a: int = 0
    b: int = 0
    c: int = 0


@dataclass(eq=False)
class _Req:
    """struct optee_supp_req."""

    id: int
    func: int
    params: list[TeeParam]
    in_queue: bool = True
    processed: bool = False
    ret: int = 0


class _Invalid(enum.Enum):
    REQ_PTR = "INVALID_REQ_PTR"


_INVALID: Final = _Invalid.REQ_PTR  # the requester gave up while the supplicant held the request


class SuppSubsystem(Protocol):
    """What the queue needs of the TEE subsystem (TeeSubsystem): the calling
    process's death, and the supplicant context's buffer ids."""

    def current_killed(self) -> threading.Event: ...

    def supp_shm_get(self, ctx: TeeContext | None, shm_id: int) -> Shm | None: ...

    def supp_shm_put(self, shm: Shm) -> None: ...

    def shm_id_of(self, shm: Shm) -> int: ...


def _s32(v: int) -> int:
    """A u64 assigned to a C int, as supp.c's ``id = param->u.value.a``."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


@dataclass(eq=False)
class SuppQueue:
    """struct optee_supp, and the driver's SupplicantPort over it.

    ``subsystem`` resolves buffers between the driver and the supplicant's
    context (TeeSubsystem); ``ctx`` is the supplicant's open context, if any.
    """

    subsystem: SuppSubsystem
    ctx: TeeContext | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _reqs: list[_Req] = field(default_factory=list)
    _idr: Idr[_Req | _Invalid] = field(default_factory=Idr)
    _req_id: int = -1

    # -- the supplicant's context ------------------------------------------------------
    def claim(self, ctx: TeeContext) -> bool:
        """optee_open on the supplicant device: one context at a time."""
        with self._cond:
            if self.ctx is not None:
                return False
            self.ctx = ctx
            return True

    def release(self) -> None:
        """optee_supp_release: fail every request, forget the context."""
        with self._cond:
            for rid, req in self._idr.items():
                self._idr.remove(rid)
                if req is None or req is _INVALID:  # None: an id reserved but not filled (never, here)
                    continue
                if req.in_queue:
                    self._reqs.remove(req)
                    req.in_queue = False
                req.processed = True
                req.ret = TEEC_ERROR_COMMUNICATION
            self.ctx = None
            self._req_id = -1
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiters re-check whether their process is gone."""
        with self._cond:
            self._cond.notify_all()

    # -- the driver's side (SupplicantPort) --------------------------------------------
    def attach(self, device: object) -> None:
        """The driver attaches its supplicant at construction; nothing to keep."""

    def process(self, cmd: int, params: list[TeeParam]) -> int:
        """optee_supp_thrd_req: queue, then wait until the supplicant answers or
        the calling process is gone."""
        killed = self.subsystem.current_killed()
        with self._cond:
            req = _Req(0, cmd, params)
            req.id = self._idr.alloc(req)
            self._reqs.append(req)
            self._cond.notify_all()
            while not req.processed and not killed.is_set():
                self._cond.wait()
            if req.processed:
                return req.ret
            if req.in_queue:  # the supplicant never saw it
                self._idr.remove(req.id)
                self._reqs.remove(req)
                req.in_queue = False
            else:  # the supplicant holds it: its SUPPL_SEND will fail
                self._idr.replace(req.id, _INVALID)
            return TEEC_ERROR_COMMUNICATION

    def get_shm(self, shm_id: int) -> Shm | None:
        return self.subsystem.supp_shm_get(self.ctx, shm_id)

    def put_shm(self, shm: Shm) -> None:
        self.subsystem.supp_shm_put(shm)

    def shm_id(self, shm: Shm) -> int:
        return self.subsystem.shm_id_of(shm)

    # -- the supplicant's side (TEE_IOC_SUPPL_RECV / SEND) -------------------------------
    def recv(self, params: list[SuppParam], killed: threading.Event) -> tuple[int, list[SuppParam]]:
        """optee_supp_recv: ``params`` are what the supplicant passed (only NONE,
        or META first); returns (func, params to copy out)."""
        if not params:
            raise TeeErrno(errno.EINVAL, "SUPPL_RECV with no parameter room")
        for n, p in enumerate(params):
            if p.attr and p.attr != TEE_IOCTL_PARAM_ATTR_META:
                raise TeeErrno(errno.EINVAL, f"SUPPL_RECV param {n} attr {p.attr:#x}: only NONE or META")
        num_meta = 1 if params[0].attr == TEE_IOCTL_PARAM_ATTR_META else 0
        with self._cond:
            while True:
                if self._req_id != -1:
                    raise TeeErrno(errno.EINVAL, "a request without meta parameter is still unanswered")
                if self._reqs:
                    req = self._reqs[0]
                    if len(params) - num_meta < len(req.params):
                        raise TeeErrno(errno.EINVAL, f"room for {len(params) - num_meta} params, "
                                                     f"request has {len(req.params)}")
                    self._reqs.pop(0)
                    req.in_queue = False
                    break
                if killed.is_set():
                    raise TeeErrno(ERESTARTSYS, "SUPPL_RECV interrupted: the supplicant is gone")
                self._cond.wait()
            out: list[SuppParam] = []
            if num_meta:
                out.append(SuppParam(_META_VALUE, req.id, 0, 0))
            else:
                self._req_id = req.id
            out.extend(self._to_supp(p) for p in req.params)
            return req.func, out

    def _to_supp(self, p: TeeParam) -> SuppParam:
        """params_to_supp: memrefs by the id of their buffer in the supplicant's
        context; a NULL memref (or one of the kernel's own buffers) by id -1."""
        if p.is_value:
            return SuppParam(p.attr, p.a, p.b, p.c)
        if p.is_memref:
            if p.shm is None:
                return SuppParam(p.attr, 0, p.size, _U64)
            sid = self.subsystem.shm_id_of(p.shm)
            return SuppParam(p.attr, p.offs, p.size, sid & _U64)
        return SuppParam(p.attr)

    def send(self, ret: int, params: list[SuppParam]) -> None:
        """optee_supp_send: ``params`` as params_from_supp left them."""
        with self._cond:
            if not params:
                raise TeeErrno(errno.EINVAL, "SUPPL_SEND with no parameter")
            if self._req_id == -1:
                if params[0].attr != _META_VALUE:
                    raise TeeErrno(errno.EINVAL, f"SUPPL_SEND param 0 attr {params[0].attr:#x} is not the meta id")
                rid, nm = _s32(params[0].a), 1
            else:
                rid, nm = self._req_id, 0
            req = self._idr.find(rid)
            if req is None:
                raise TeeErrno(errno.ENOENT, f"no request with id {rid}")
            if req is not _INVALID and len(params) - nm != len(req.params):
                raise TeeErrno(errno.EINVAL, f"request {rid} has {len(req.params)} params, "
                                             f"SUPPL_SEND gives {len(params) - nm}")
            self._idr.remove(rid)
            self._req_id = -1
            if req is _INVALID:
                raise TeeErrno(errno.EBADF, f"request {rid}: its requester is gone")
            for n, p in enumerate(req.params):
                src = params[n + nm]
                t = p.attr & TEE_IOCTL_PARAM_ATTR_TYPE_MASK
                if t in (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT, TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT):
                    p.a, p.b, p.c = src.a, src.b, src.c
                elif t in (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT):
                    p.size = src.b
            req.ret = ret & 0xFFFFFFFF
            req.processed = True
            self._cond.notify_all()

    # -- introspection --------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        with self._cond:
            return {"queued": len(self._reqs), "pending": len(self._idr) - len(self._reqs),
                    "supplicant": int(self.ctx is not None)}
