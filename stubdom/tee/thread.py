"""OP-TEE threads and their RPCs, as Python generators.

A standard (yielding) call runs on one of its partition's threads.  When the
secure world needs the normal world (``thread_rpc`` in OP-TEE), the thread is
suspended: its generator *yields* an :class:`RpcRequest` (the a0..a2 OP-TEE
returns, a3 being the thread index) and is resumed by
``CALL_RETURN_FROM_RPC`` with an :class:`RpcReply` (a1, a2, a4, a5, the four
words OP-TEE copies back, ``thread_resume_from_rpc``).  The generator's return
value is the call's final a0.

The helpers here are the secure-side RPC library of
``core/arch/arm/kernel/thread_optee_smc.c`` and ``core/kernel/thread.c``:
``thread_rpc_alloc_arg`` / ``thread_rpc_free_arg`` (RPC ALLOC/FREE of the
RPC-arg buffer), ``get_rpc_arg`` / ``thread_rpc_cmd`` (RPC CMD with
``ret`` pre-set to TEE_ERROR_GENERIC), ``thread_rpc_alloc_payload`` /
``thread_rpc_free_payload`` (OPTEE_RPC_CMD_SHM_ALLOC / SHM_FREE) and the
per-thread shm cache that REE FS uses (``thread_rpc_shm_cache_alloc``).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from stubdom.optee.msg import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    MsgArg,
    MsgParam,
    get_arg_size,
    unpack_header,
)
from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    THREAD_RPC_MAX_NUM_PARAMS,
)
from stubdom.optee.smc import (
    OPTEE_SMC_RETURN_RPC_ALLOC,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_RPC_FREE,
)
from stubdom.optee.teec import (
    TEE_ERROR_BAD_PARAMETERS,
    TEE_ERROR_GENERIC,
    TEE_ERROR_OUT_OF_MEMORY,
    TEE_SUCCESS,
)
from stubdom.xen.constants import PAGE_SIZE

from .memory import Mobj, MobjKind, NsAccess

if TYPE_CHECKING:  # pragma: no cover
    from .memory import NsMemoryMap

__all__ = [
    "ThreadState",
    "RpcRequest",
    "RpcReply",
    "RpcParam",
    "Thread",
    "ThreadGen",
    "RPC_ARG_SIZE",
    "SHM_CACHE_USER_FS",
    "SHM_CACHE_USER_I2C",
    "SHM_CACHE_USER_SOCKET",
]

_U32 = 0xFFFFFFFF
# OPTEE_MSG_GET_ARG_SIZE(THREAD_RPC_MAX_NUM_PARAMS) = 160: the RPC arg size
# OP-TEE asks for with RPC ALLOC and expects after a caller-supplied arg.
RPC_ARG_SIZE = get_arg_size(THREAD_RPC_MAX_NUM_PARAMS)
# enum thread_shm_cache_user (core/include/kernel/thread.h): one RPC SHM
# cache slot per user and thread.
SHM_CACHE_USER_SOCKET = 0
SHM_CACHE_USER_FS = 1
SHM_CACHE_USER_I2C = 2


class ThreadState(Enum):
    FREE = "free"  # THREAD_STATE_FREE
    ACTIVE = "active"  # THREAD_STATE_ACTIVE: running inside an SMC
    SUSPENDED = "suspended"  # THREAD_STATE_SUSPENDED: waiting for RETURN_FROM_RPC


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """What a suspending thread returns to the normal world: a0..a2 (a3 is
    the thread index, a4..a7 are the caller's)."""

    a0: int
    a1: int = 0
    a2: int = 0


@dataclass(frozen=True, slots=True)
class RpcReply:
    """The words OP-TEE copies from CALL_RETURN_FROM_RPC: a1, a2, a4, a5."""

    a1: int
    a2: int
    a4: int
    a5: int


ThreadGen = Generator[RpcRequest, RpcReply, Any]


@dataclass(frozen=True, slots=True)
class RpcParam:
    """struct thread_param: a value or a memref passed in an RPC arg.
    ``direction`` is 0 IN, 1 OUT, 2 INOUT."""

    kind: str  # "none", "value", "memref"
    direction: int = 0
    a: int = 0
    b: int = 0
    c: int = 0
    mobj: Mobj | None = None
    offs: int = 0
    size: int = 0

    @classmethod
    def value_in(cls, a: int = 0, b: int = 0, c: int = 0) -> RpcParam:
        return cls("value", 0, a, b, c)

    @classmethod
    def value_out(cls) -> RpcParam:
        return cls("value", 1)

    @classmethod
    def memref(cls, direction: int, mobj: Mobj | None, offs: int, size: int) -> RpcParam:
        return cls("memref", direction, mobj=mobj, offs=offs, size=size)


def _hi_lo(v: int) -> tuple[int, int]:
    return (v >> 32) & _U32, v & _U32


@dataclass(eq=False)
class _ShmCacheEntry:
    mobj: Mobj | None = None
    shm_type: int = -1
    size: int = 0


@dataclass(eq=False)
class Thread:
    """One thread context of a partition (``struct thread_ctx``)."""

    index: int
    state: ThreadState = ThreadState.FREE
    gen: ThreadGen | None = None
    # The RPC arg in use: a caller-supplied one (CALL_WITH_RPC_ARG/REGD_ARG)
    # or the cached RPC ALLOC buffer.  (mobj, offset)
    rpc_arg: tuple[Mobj, int] | None = None
    # The RPC ALLOC buffer this thread owns (thr->rpc_mobj), kept across
    # calls while the partition's prealloc RPC cache is enabled.
    rpc_mobj: Mobj | None = None
    shm_cache: dict[int, _ShmCacheEntry] = field(default_factory=dict)
    # Where this thread's accesses go and what they are for (oracle records).
    ns: NsAccess | None = None
    memmap: NsMemoryMap | None = None
    call: str = ""
    # Mobjs/sessions this call holds, released when the call ends.
    holds: list[Any] = field(default_factory=list)

    # -- RPC primitives ---------------------------------------------------

    def rpc(self, req: RpcRequest) -> Generator[RpcRequest, RpcReply, RpcReply]:
        """thread_rpc: suspend with ``req``, return the normal world's reply."""
        reply = yield req
        return reply

    def foreign_intr(self) -> Generator[RpcRequest, RpcReply, None]:
        """A normal-world interrupt preempts the thread (thread_foreign_intr_exit)."""
        yield RpcRequest(OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, 0, 0)

    def rpc_free_arg(self, cookie: int) -> Generator[RpcRequest, RpcReply, None]:
        """thread_rpc_free_arg: RPC FREE of an RPC-arg buffer (nothing for cookie 0)."""
        if cookie:
            hi, lo = _hi_lo(cookie)
            yield RpcRequest(OPTEE_SMC_RETURN_RPC_FREE, hi, lo)

    def rpc_alloc_arg(self, size: int) -> Generator[RpcRequest, RpcReply, Mobj | None]:
        """thread_rpc_alloc_arg: RPC ALLOC; PA from a1/a2, cookie from a4/a5."""
        reply = yield RpcRequest(OPTEE_SMC_RETURN_RPC_ALLOC, size, 0)
        pa = (reply.a1 << 32) | reply.a2
        cookie = (reply.a4 << 32) | reply.a5
        mobj = None
        if pa % 8 == 0:  # IS_ALIGNED_WITH_TYPE(pa, struct optee_msg_arg)
            assert self.memmap is not None
            mobj = self.memmap.rpc_shm_mobj_alloc(pa, size, cookie)
        if mobj is None:
            yield from self.rpc_free_arg(cookie)
        return mobj

    def clear_prealloc_rpc_cache(self) -> Generator[RpcRequest, RpcReply, None]:
        """Hand this thread's RPC ALLOC buffer back (RPC FREE)."""
        cookie = self.rpc_mobj.cookie if self.rpc_mobj is not None else 0
        yield from self.rpc_free_arg(cookie)
        self.rpc_arg = None
        self.rpc_mobj = None

    def _get_rpc_arg(self, cmd: int, params: list[RpcParam]
                     ) -> Generator[RpcRequest, RpcReply, tuple[int, int]]:
        """get_rpc_arg: make sure an RPC arg exists, write the request into it.
        Returns (TEE result, cookie for a1/a2)."""
        if len(params) > THREAD_RPC_MAX_NUM_PARAMS:
            return TEE_ERROR_BAD_PARAMETERS, 0
        if self.rpc_arg is None:
            mobj = yield from self.rpc_alloc_arg(RPC_ARG_SIZE)
            if mobj is None:
                return TEE_ERROR_OUT_OF_MEMORY, 0
            self.rpc_arg = (mobj, 0)
            self.rpc_mobj = mobj
        msg_params: list[MsgParam] = []
        for p in params:
            if p.kind == "none":
                msg_params.append(MsgParam(OPTEE_MSG_ATTR_TYPE_NONE))
            elif p.kind == "value":
                msg_params.append(MsgParam(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT + p.direction, p.a, p.b, p.c))
            else:
                encoded = _encode_memref(p)
                if encoded is None:
                    return TEE_ERROR_BAD_PARAMETERS, 0
                msg_params.append(encoded)
        arg = MsgArg(cmd, ret=TEE_ERROR_GENERIC, params=tuple(msg_params))
        mobj, offs = self.rpc_arg
        assert self.ns is not None
        self.ns.write(mobj, offs, arg.pack(), "RPC arg")
        # mobj_get_cookie(thr->rpc_mobj): 0 when the caller supplied the RPC arg.
        cookie = self.rpc_mobj.cookie if self.rpc_mobj is not None else 0
        return TEE_SUCCESS, cookie

    def rpc_cmd(self, cmd: int, params: list[RpcParam]
                ) -> Generator[RpcRequest, RpcReply, tuple[int, list[RpcParam]]]:
        """thread_rpc_cmd: returns (arg.ret, params with outputs filled in)."""
        res, cookie = yield from self._get_rpc_arg(cmd, params)
        if res != TEE_SUCCESS:
            return res, params
        hi, lo = _hi_lo(cookie)
        yield RpcRequest(OPTEE_SMC_RETURN_RPC_CMD, hi, lo)
        assert self.rpc_arg is not None and self.ns is not None
        mobj, offs = self.rpc_arg
        raw = self.ns.read(mobj, offs, get_arg_size(len(params)), "RPC arg result")
        ret = unpack_header(raw)[5]
        out: list[RpcParam] = []
        for i, p in enumerate(params):
            m = MsgParam.unpack(raw, 32 + 32 * i)
            if p.kind == "value" and p.direction in (1, 2):
                p = RpcParam("value", p.direction, m.a, m.b, m.c)
            elif p.kind == "memref" and p.direction in (1, 2):
                p = RpcParam("memref", p.direction, mobj=p.mobj, offs=p.offs, size=m.size)
            out.append(p)
        return ret, out

    # -- payload shared memory (OPTEE_RPC_CMD_SHM_ALLOC / SHM_FREE) ----------

    def alloc_payload(self, size: int, shm_type: int) -> Generator[RpcRequest, RpcReply, Mobj | None]:
        """thread_rpc_alloc: SHM_ALLOC(type, size, align 8) and validate the reply."""
        res, cookie = yield from self._get_rpc_arg(
            OPTEE_RPC_CMD_SHM_ALLOC, [RpcParam.value_in(shm_type, size, 8)])
        if res != TEE_SUCCESS:
            return None
        hi, lo = _hi_lo(cookie)
        yield RpcRequest(OPTEE_SMC_RETURN_RPC_CMD, hi, lo)
        assert self.rpc_arg is not None and self.ns is not None and self.memmap is not None
        mobj_arg, offs = self.rpc_arg
        # get_rpc_alloc_res reads ret, num_params and param 0 in place.
        raw = self.ns.read(mobj_arg, offs, get_arg_size(1), "RPC arg result")
        hdr = unpack_header(raw)
        ret, num_params = hdr[5], hdr[7]
        p = MsgParam.unpack(raw, 32)
        if ret or num_params != 1:
            return None
        if p.attr not in (OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                          OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG):
            return None
        if p.size < size:
            return None
        if p.attr == OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT:
            mobj = self.memmap.rpc_shm_mobj_alloc(p.buf_ptr, p.size, p.shm_ref)
        else:
            mobj = self.memmap.mobj_from_noncontig(
                lambda a: self.ns.read_ma(a, PAGE_SIZE, "SHM_ALLOC page list"),  # type: ignore[union-attr]  # a thread with an RPC in flight has its ns
                p.buf_ptr, p.size, p.shm_ref)
        if mobj is None:
            yield from self.free_payload(shm_type, p.shm_ref)
            return None
        return mobj

    def free_payload(self, shm_type: int, cookie: int) -> Generator[RpcRequest, RpcReply, None]:
        """thread_rpc_free: SHM_FREE(type, cookie)."""
        res, carg = yield from self._get_rpc_arg(
            OPTEE_RPC_CMD_SHM_FREE, [RpcParam.value_in(shm_type, cookie, 0)])
        if res == TEE_SUCCESS:
            hi, lo = _hi_lo(carg)
            yield RpcRequest(OPTEE_SMC_RETURN_RPC_CMD, hi, lo)

    def shm_cache_alloc(self, user: int, shm_type: int, size: int
                        ) -> Generator[RpcRequest, RpcReply, Mobj | None]:
        """thread_rpc_shm_cache_alloc: reuse this thread's payload buffer for
        ``user`` when it is big enough, else free it and allocate whole pages."""
        entry = self.shm_cache.setdefault(user, _ShmCacheEntry())
        sz = -(-size // PAGE_SIZE) * PAGE_SIZE
        if entry.mobj is None or entry.shm_type != shm_type or sz > entry.size:
            yield from self._clear_cache_entry(entry)
            mobj = yield from self.alloc_payload(sz, shm_type)
            if mobj is None:
                return None
            if mobj.pa(0) % 8:
                entry.mobj, entry.shm_type, entry.size = mobj, shm_type, sz
                yield from self._clear_cache_entry(entry)
                return None
            entry.mobj, entry.shm_type, entry.size = mobj, shm_type, sz
        return entry.mobj

    def _clear_cache_entry(self, entry: _ShmCacheEntry) -> Generator[RpcRequest, RpcReply, None]:
        if entry.mobj is not None:
            mobj, shm_type = entry.mobj, entry.shm_type
            entry.mobj, entry.shm_type, entry.size = None, -1, 0
            yield from self.free_payload(shm_type, mobj.cookie)

    def shm_cache_clear(self) -> Generator[RpcRequest, RpcReply, None]:
        """thread_rpc_shm_cache_clear: at the end of every std call."""
        for user in sorted(self.shm_cache):
            yield from self._clear_cache_entry(self.shm_cache[user])
        self.shm_cache.clear()


def _encode_memref(p: RpcParam) -> MsgParam | None:
    """set_tmem / set_rmem: TMEM with a PA for the carve-out (or no buffer),
    RMEM with offset and cookie for registered memory."""
    mobj = p.mobj
    if mobj is None or mobj.kind is MobjKind.STATIC:
        pa = shm_ref = 0
        if mobj is not None:
            shm_ref = mobj.cookie
            if not shm_ref:
                return None
            pa = mobj.pa(p.offs)
        return MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT + p.direction, pa, p.size, shm_ref)
    if not mobj.cookie:
        return None
    return MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT + p.direction, p.offs, p.size, mobj.cookie)
