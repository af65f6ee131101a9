"""What a built-in TA sees: GlobalPlatform params, its session, and a context
through which it touches shared memory and issues RPCs.

Param types and their numbers are GP's (``lib/libutee/include/tee_api_defines.h``,
TEE_PARAM_TYPE_*); values are 32-bit as in ``struct tee_ta_param`` (OP-TEE
truncates ``optee_msg_param.u.value.a/b`` on the way in and zero-extends them
on the way out).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stubdom.optee.teec import TEE_ERROR_BAD_PARAMETERS, TEE_SUCCESS

from ..errors import TaProtocolError
from ..memory import Mobj
from ..sync import Condvar

if TYPE_CHECKING:  # pragma: no cover
    from stubdom.config.tee import TeeConfig

    from ..fs.ree_fs import ReeFs
    from ..thread import RpcReply, RpcRequest, Thread

__all__ = [
    "TEE_PARAM_TYPE_NONE",
    "TEE_PARAM_TYPE_VALUE_INPUT",
    "TEE_PARAM_TYPE_VALUE_OUTPUT",
    "TEE_PARAM_TYPE_VALUE_INOUT",
    "TEE_PARAM_TYPE_MEMREF_INPUT",
    "TEE_PARAM_TYPE_MEMREF_OUTPUT",
    "TEE_PARAM_TYPE_MEMREF_INOUT",
    "TEE_PARAM_TYPES",
    "TaParam",
    "TaSession",
    "TaContext",
    "TrustedApp",
    "TaGen",
]

# tee_api_defines.h
TEE_PARAM_TYPE_NONE = 0
TEE_PARAM_TYPE_VALUE_INPUT = 1
TEE_PARAM_TYPE_VALUE_OUTPUT = 2
TEE_PARAM_TYPE_VALUE_INOUT = 3
TEE_PARAM_TYPE_MEMREF_INPUT = 5
TEE_PARAM_TYPE_MEMREF_OUTPUT = 6
TEE_PARAM_TYPE_MEMREF_INOUT = 7

_MEMREF_TYPES = (TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_MEMREF_INOUT)

TaGen = Generator["RpcRequest", "RpcReply", Any]


def TEE_PARAM_TYPES(t0: int, t1: int, t2: int, t3: int) -> int:
    """tee_api_defines.h TEE_PARAM_TYPES: four 4-bit types packed low to high."""
    return t0 | (t1 << 4) | (t2 << 8) | (t3 << 12)


@dataclass(eq=False)
class TaParam:
    """One of the four TA params (``struct tee_ta_param`` u[n])."""

    type: int = TEE_PARAM_TYPE_NONE
    a: int = 0  # value.a (u32)
    b: int = 0  # value.b (u32)
    mobj: Mobj | None = None  # memref: None is a NULL memref
    offs: int = 0
    size: int = 0

    @property
    def is_memref(self) -> bool:
        return self.type in _MEMREF_TYPES


@dataclass(eq=False)
class TaSession:
    """An open session (``struct tee_ta_session``, tee_ta_manager.c).

    A call that uses the session takes it exclusively (``lock_thread``); a
    second one sleeps on ``lock_cv`` until it is put back.  ``ref_count``
    counts the list's reference and every get; closing waits on ``refc_cv``
    until only its own is left.  All of it is guarded by the partition's
    ``ta_mutex``.  ``ta`` is None until the TA is found (a session is listed
    before its TA is loaded, as tee_ta_init_session lists it)."""

    id: int
    ta: TrustedApp | None
    login: int
    client_uuid: uuid.UUID
    state: Any = None
    cancel: bool = False
    ref_count: int = 1
    lock_thread: int | None = None  # THREAD_ID_INVALID when None
    unlink: bool = False
    lock_cv: Condvar = field(default_factory=Condvar)
    refc_cv: Condvar = field(default_factory=Condvar)


@dataclass(eq=False)
class TaContext:
    """The TA's view of the world for one entry: its thread (for RPCs), the
    partition's configuration, the session being served and the
    partition's REE FS (secure storage)."""

    thread: Thread
    config: TeeConfig
    session: TaSession
    client_id: int
    ree_fs: ReeFs | None = None
    scratch: dict[str, Any] = field(default_factory=dict)

    def read_memref(self, p: TaParam, what: str) -> bytes:
        """The bytes of memref ``p`` (b"" for a NULL memref), read now."""
        if not p.is_memref:
            raise TaProtocolError(f"{what}: param type {p.type} is not a memref")
        if p.mobj is None or p.size == 0:
            return b""
        assert self.thread.ns is not None
        return self.thread.ns.read(p.mobj, p.offs, p.size, what)

    def write_memref(self, p: TaParam, data: bytes, what: str) -> None:
        """Write ``data`` at the start of memref ``p`` (it must fit)."""
        if not p.is_memref:
            raise TaProtocolError(f"{what}: param type {p.type} is not a memref")
        if len(data) > p.size or (data and p.mobj is None):
            raise TaProtocolError(f"{what}: {len(data)} bytes do not fit a {p.size}-byte memref")
        if data:
            assert self.thread.ns is not None and p.mobj is not None
            self.thread.ns.write(p.mobj, p.offs, data, what)


def param_types(params: list[TaParam]) -> int:
    """The TEE_PARAM_TYPES word of four params."""
    t = [p.type for p in params] + [TEE_PARAM_TYPE_NONE] * (4 - len(params))
    return TEE_PARAM_TYPES(*t[:4])


class TrustedApp(Protocol):
    """A built-in TA: a fixed UUID and three entry points.  ``open_session``
    and ``invoke`` are generators (they may suspend the thread with RPCs)
    returning a TEE result; ``open_session`` returns (result, session state)."""

    uuid: uuid.UUID
    name: str

    def open_session(self, ctx: TaContext, params: list[TaParam]) -> TaGen: ...

    def invoke(self, ctx: TaContext, cmd: int, params: list[TaParam]) -> TaGen: ...

    def close_session(self, ctx: TaContext) -> None: ...


# A TA entry taking no parameters (all four slots NONE).
NO_PARAMS = TEE_PARAM_TYPES(TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE)


class StatelessTa:
    """Base of the built-in TAs: sessions carry no state, so opening one takes
    no parameters (anything else is TEE_ERROR_BAD_PARAMETERS, as a TA's
    TA_OpenSessionEntryPoint that checks its param types answers) and
    closing one has nothing to release."""

    def open_session(self, ctx: TaContext, params: list[TaParam]) -> TaGen:
        if param_types(params) != NO_PARAMS:
            return TEE_ERROR_BAD_PARAMETERS, None
        return TEE_SUCCESS, None
        yield  # a generator like every TA entry point

    def close_session(self, ctx: TaContext) -> None:
        return None
