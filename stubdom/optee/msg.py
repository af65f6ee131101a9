"""The OP-TEE message layer: ``struct optee_msg_arg`` / ``struct optee_msg_param``
and their constants (OP-TEE ``core/include/optee_msg.h``; Linux
``drivers/tee/optee/optee_msg.h`` carries the same values).

Layout (little-endian, naturally aligned, no implicit padding)::

    struct optee_msg_arg {            /* 32-byte header */
        u32 cmd;         /*  0 */     u32 func;        /*  4 */
        u32 session;     /*  8 */     u32 cancel_id;   /* 12 */
        u32 pad;         /* 16 */     u32 ret;         /* 20 */
        u32 ret_origin;  /* 24 */     u32 num_params;  /* 28 */
        struct optee_msg_param params[num_params];     /* 32 + 32*i */
    };
    struct optee_msg_param {          /* 32 bytes */
        u64 attr;        /*  0 */
        union { tmem, rmem, fmem, value, octets[24] } u;  /* 8 */
    };

:class:`MsgParam` keeps the union as its three u64 words (a, b, c) and offers
typed views on them; :class:`MsgArg` packs and unpacks a whole message.
Unpacking is for hostile input: it reads only what the header announces,
refuses a count over the caller's limit, and never reads past the buffer.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import BadParamAttr, FieldOutOfRange, TooManyParams, TruncatedMessage

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

# -- Parameter attribute types (optee_msg.h) -----------------------------------
OPTEE_MSG_ATTR_TYPE_NONE = 0x0
OPTEE_MSG_ATTR_TYPE_VALUE_INPUT = 0x1
OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT = 0x2
OPTEE_MSG_ATTR_TYPE_VALUE_INOUT = 0x3
OPTEE_MSG_ATTR_TYPE_RMEM_INPUT = 0x5
OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT = 0x6
OPTEE_MSG_ATTR_TYPE_RMEM_INOUT = 0x7
# FF-A memrefs share the RMEM numbers; which one is meant depends on the conduit.
OPTEE_MSG_ATTR_TYPE_FMEM_INPUT = OPTEE_MSG_ATTR_TYPE_RMEM_INPUT
OPTEE_MSG_ATTR_TYPE_FMEM_OUTPUT = OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT
OPTEE_MSG_ATTR_TYPE_FMEM_INOUT = OPTEE_MSG_ATTR_TYPE_RMEM_INOUT
OPTEE_MSG_ATTR_TYPE_TMEM_INPUT = 0x9
OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT = 0xA
OPTEE_MSG_ATTR_TYPE_TMEM_INOUT = 0xB

OPTEE_MSG_ATTR_TYPE_MASK = 0xFF  # GENMASK_32(7, 0)
OPTEE_MSG_ATTR_META = 1 << 8  # consumed by OP-TEE (OPEN_SESSION), not the TA
OPTEE_MSG_ATTR_NONCONTIG = 1 << 9  # tmem.buf_ptr points to a page list
OPTEE_MSG_ATTR_CACHE_SHIFT = 16
OPTEE_MSG_ATTR_CACHE_MASK = 0x7  # GENMASK_32(2, 0)
OPTEE_MSG_ATTR_CACHE_PREDEFINED = 0

VALUE_TYPES = frozenset(
    {OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INOUT}
)
RMEM_TYPES = frozenset(
    {OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_RMEM_INOUT}
)
TMEM_TYPES = frozenset(
    {OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_TMEM_INOUT}
)

# -- Login methods (optee_msg.h: "same values as TEE_LOGIN_*") -----------------
OPTEE_MSG_LOGIN_PUBLIC = 0x00000000
OPTEE_MSG_LOGIN_USER = 0x00000001
OPTEE_MSG_LOGIN_GROUP = 0x00000002
OPTEE_MSG_LOGIN_APPLICATION = 0x00000004
OPTEE_MSG_LOGIN_APPLICATION_USER = 0x00000005
OPTEE_MSG_LOGIN_APPLICATION_GROUP = 0x00000006
# Not in optee_msg.h: OP-TEE's entry_std.c accepts TEE_LOGIN_REE_KERNEL
# (lib/libutee/include/tee_api_defines_extensions.h) for kernel clients, and
# TEE_LOGIN_TRUSTED_APP (tee_api_defines.h) is the TA-to-TA login it refuses
# from the normal world.
OPTEE_MSG_LOGIN_REE_KERNEL = 0x80000000
OPTEE_MSG_LOGIN_TRUSTED_APP = 0xF0000000

# -- Commands in optee_msg_arg.cmd (optee_msg.h) --------------------------------
OPTEE_MSG_CMD_OPEN_SESSION = 0
OPTEE_MSG_CMD_INVOKE_COMMAND = 1
OPTEE_MSG_CMD_CLOSE_SESSION = 2
OPTEE_MSG_CMD_CANCEL = 3
OPTEE_MSG_CMD_REGISTER_SHM = 4
OPTEE_MSG_CMD_UNREGISTER_SHM = 5
OPTEE_MSG_CMD_DO_BOTTOM_HALF = 6
OPTEE_MSG_CMD_STOP_ASYNC_NOTIF = 7
OPTEE_MSG_CMD_LEND_PROTMEM = 8
OPTEE_MSG_CMD_RECLAIM_PROTMEM = 9
OPTEE_MSG_CMD_GET_PROTMEM_CONFIG = 10
OPTEE_MSG_CMD_ASSIGN_PROTMEM = 11  # FF-A ABI only

OPTEE_MSG_CMD_NAMES: Mapping[int, str] = MappingProxyType({
    OPTEE_MSG_CMD_OPEN_SESSION: "OPTEE_MSG_CMD_OPEN_SESSION",
    OPTEE_MSG_CMD_INVOKE_COMMAND: "OPTEE_MSG_CMD_INVOKE_COMMAND",
    OPTEE_MSG_CMD_CLOSE_SESSION: "OPTEE_MSG_CMD_CLOSE_SESSION",
    OPTEE_MSG_CMD_CANCEL: "OPTEE_MSG_CMD_CANCEL",
    OPTEE_MSG_CMD_REGISTER_SHM: "OPTEE_MSG_CMD_REGISTER_SHM",
    OPTEE_MSG_CMD_UNREGISTER_SHM: "OPTEE_MSG_CMD_UNREGISTER_SHM",
    OPTEE_MSG_CMD_DO_BOTTOM_HALF: "OPTEE_MSG_CMD_DO_BOTTOM_HALF",
    OPTEE_MSG_CMD_STOP_ASYNC_NOTIF: "OPTEE_MSG_CMD_STOP_ASYNC_NOTIF",
    OPTEE_MSG_CMD_LEND_PROTMEM: "OPTEE_MSG_CMD_LEND_PROTMEM",
    OPTEE_MSG_CMD_RECLAIM_PROTMEM: "OPTEE_MSG_CMD_RECLAIM_PROTMEM",
    OPTEE_MSG_CMD_GET_PROTMEM_CONFIG: "OPTEE_MSG_CMD_GET_PROTMEM_CONFIG",
    OPTEE_MSG_CMD_ASSIGN_PROTMEM: "OPTEE_MSG_CMD_ASSIGN_PROTMEM",
})

# -- Sizes and offsets -------------------------------------------------------------
OPTEE_MSG_NONCONTIG_PAGE_SIZE = 4096  # optee_msg.h
OPTEE_MSG_FMEM_INVALID_GLOBAL_ID = 0xFFFFFFFFFFFFFFFF  # optee_msg.h

MSG_ARG_HEADER_SIZE = 32  # sizeof(struct optee_msg_arg)
MSG_PARAM_SIZE = 32  # sizeof(struct optee_msg_param)
# optee_msg.h: the largest num_params whose arg does not cross a 4 KiB page.
OPTEE_MSG_MAX_NUM_PARAMS = (OPTEE_MSG_NONCONTIG_PAGE_SIZE - MSG_ARG_HEADER_SIZE) // MSG_PARAM_SIZE

# Byte offsets inside struct optee_msg_arg.
OFFSET_CMD = 0
OFFSET_FUNC = 4
OFFSET_SESSION = 8
OFFSET_CANCEL_ID = 12
OFFSET_PAD = 16
OFFSET_RET = 20
OFFSET_RET_ORIGIN = 24
OFFSET_NUM_PARAMS = 28
OFFSET_PARAMS = 32

# Byte offsets inside struct optee_msg_param.
PARAM_OFFSET_ATTR = 0
PARAM_OFFSET_U = 8
PARAM_OFFSET_A = 8  # value.a, tmem.buf_ptr, rmem.offs, octets[0]
PARAM_OFFSET_B = 16  # value.b, tmem.size, rmem.size, fmem.size
PARAM_OFFSET_C = 24  # value.c, tmem.shm_ref, rmem.shm_ref, fmem.global_id
PARAM_OFFSET_TMEM_BUF_PTR = PARAM_OFFSET_A
PARAM_OFFSET_TMEM_SIZE = PARAM_OFFSET_B
PARAM_OFFSET_TMEM_SHM_REF = PARAM_OFFSET_C
PARAM_OFFSET_RMEM_OFFS = PARAM_OFFSET_A
PARAM_OFFSET_RMEM_SIZE = PARAM_OFFSET_B
PARAM_OFFSET_RMEM_SHM_REF = PARAM_OFFSET_C
PARAM_OFFSET_FMEM_OFFS_LOW = 8  # u32
PARAM_OFFSET_FMEM_OFFS_HIGH = 12  # u16
PARAM_OFFSET_FMEM_INTERNAL_OFFS = 14  # u16
PARAM_OFFSET_FMEM_SIZE = PARAM_OFFSET_B
PARAM_OFFSET_FMEM_GLOBAL_ID = PARAM_OFFSET_C
PARAM_OCTETS_SIZE = 24

_HEADER = struct.Struct("<8I")
_PARAM = struct.Struct("<4Q")
assert _HEADER.size == MSG_ARG_HEADER_SIZE and _PARAM.size == MSG_PARAM_SIZE


def get_arg_size(num_params: int) -> int:
    """OPTEE_MSG_GET_ARG_SIZE: bytes of an optee_msg_arg with ``num_params`` params."""
    if not isinstance(num_params, int) or not 0 <= num_params <= _U32:
        raise FieldOutOfRange("num_params", num_params, 32)
    return MSG_ARG_HEADER_SIZE + MSG_PARAM_SIZE * num_params


def param_offset(index: int) -> int:
    """Byte offset of params[index] inside an optee_msg_arg."""
    if not isinstance(index, int) or not 0 <= index < _U32:
        raise FieldOutOfRange("param index", index, 32)
    return OFFSET_PARAMS + MSG_PARAM_SIZE * index


def _is_int(value: object) -> bool:
    # int subclasses (IntEnum) are fine; bool is not a field value.
    return isinstance(value, int) and not isinstance(value, bool)


def _u32(name: str, value: int) -> None:
    if not _is_int(value) or not 0 <= value <= _U32:
        raise FieldOutOfRange(name, value, 32)


def _u64(name: str, value: int) -> None:
    if not _is_int(value) or not 0 <= value <= _U64:
        raise FieldOutOfRange(name, value, 64)


# -- struct optee_msg_param ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MsgParam:
    """One ``struct optee_msg_param``: ``attr`` and the union as words a, b, c.

    The words are the raw u64 slots at param offsets 8, 16, 24; the typed
    properties below (buf_ptr, size, shm_ref, offs, octets, ...) are views on
    them, so a param read from hostile memory is represented exactly.
    """

    attr: int
    a: int = 0
    b: int = 0
    c: int = 0

    def __post_init__(self) -> None:
        _u64("attr", self.attr)
        _u64("param word a", self.a)
        _u64("param word b", self.b)
        _u64("param word c", self.c)

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def none(cls) -> MsgParam:
        """An unused parameter (attr NONE, union zero)."""
        return cls(OPTEE_MSG_ATTR_TYPE_NONE)

    @classmethod
    def value(cls, attr: int, a: int = 0, b: int = 0, c: int = 0) -> MsgParam:
        """A value parameter; ``attr`` must be a VALUE_* type (META allowed)."""
        _check_family(attr, VALUE_TYPES, "value")
        return cls(attr, a, b, c)

    @classmethod
    def tmem(cls, attr: int, buf_ptr: int, size: int, shm_ref: int) -> MsgParam:
        """A temporary memref; ``attr`` must be a TMEM_* type (NONCONTIG allowed)."""
        _check_family(attr, TMEM_TYPES, "tmem")
        return cls(attr, buf_ptr, size, shm_ref)

    @classmethod
    def rmem(cls, attr: int, offs: int, size: int, shm_ref: int) -> MsgParam:
        """A registered memref; ``attr`` must be an RMEM_* type."""
        _check_family(attr, RMEM_TYPES, "rmem")
        return cls(attr, offs, size, shm_ref)

    @classmethod
    def from_octets(cls, attr: int, data: bytes) -> MsgParam:
        """A parameter whose union is the given 24 raw bytes (``u.octets``)."""
        data = bytes(data)
        if len(data) != PARAM_OCTETS_SIZE:
            raise TruncatedMessage(
                f"param octets must be exactly {PARAM_OCTETS_SIZE} bytes, got {len(data)}"
            )
        a, b, c = struct.unpack("<3Q", data)
        return cls(attr, a, b, c)

    # -- views ------------------------------------------------------------------------
    @property
    def type(self) -> int:
        """attr & OPTEE_MSG_ATTR_TYPE_MASK."""
        return self.attr & OPTEE_MSG_ATTR_TYPE_MASK

    @property
    def is_meta(self) -> bool:
        return bool(self.attr & OPTEE_MSG_ATTR_META)

    @property
    def is_noncontig(self) -> bool:
        return bool(self.attr & OPTEE_MSG_ATTR_NONCONTIG)

    @property
    def cache_attr(self) -> int:
        """The 3-bit cache attribute at bits 18:16 of attr."""
        return (self.attr >> OPTEE_MSG_ATTR_CACHE_SHIFT) & OPTEE_MSG_ATTR_CACHE_MASK

    @property
    def is_value(self) -> bool:
        return self.type in VALUE_TYPES

    @property
    def is_tmem(self) -> bool:
        return self.type in TMEM_TYPES

    @property
    def is_rmem(self) -> bool:
        return self.type in RMEM_TYPES

    @property
    def buf_ptr(self) -> int:
        """tmem.buf_ptr (word a)."""
        return self.a

    @property
    def size(self) -> int:
        """tmem.size / rmem.size / fmem.size (word b)."""
        return self.b

    @property
    def shm_ref(self) -> int:
        """tmem.shm_ref / rmem.shm_ref (word c)."""
        return self.c

    @property
    def offs(self) -> int:
        """rmem.offs (word a)."""
        return self.a

    @property
    def fmem_offs_low(self) -> int:
        return self.a & 0xFFFFFFFF

    @property
    def fmem_offs_high(self) -> int:
        return (self.a >> 32) & 0xFFFF

    @property
    def fmem_internal_offs(self) -> int:
        return (self.a >> 48) & 0xFFFF

    @property
    def fmem_global_id(self) -> int:
        return self.c

    @property
    def octets(self) -> bytes:
        """The 24 raw bytes of the union (u.octets)."""
        return struct.pack("<3Q", self.a, self.b, self.c)

    # -- bytes --------------------------------------------------------------------------
    def pack(self) -> bytes:
        return _PARAM.pack(self.attr, self.a, self.b, self.c)

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> None:
        if offset < 0 or offset + MSG_PARAM_SIZE > len(buf):
            raise TruncatedMessage(
                f"no room for a {MSG_PARAM_SIZE}-byte param at offset {offset} "
                f"of a {len(buf)}-byte buffer"
            )
        _PARAM.pack_into(buf, offset, self.attr, self.a, self.b, self.c)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> MsgParam:
        """Read one param at ``offset``; raises TruncatedMessage if it does not fit."""
        if offset < 0 or offset + MSG_PARAM_SIZE > len(buf):
            raise TruncatedMessage(
                f"a {MSG_PARAM_SIZE}-byte param at offset {offset} does not fit "
                f"a {len(buf)}-byte buffer"
            )
        return cls(*_PARAM.unpack_from(buf, offset))

    def replace(self, **changes: int) -> MsgParam:
        return dataclasses.replace(self, **changes)


def _check_family(attr: int, family: frozenset[int], what: str) -> None:
    _u64("attr", attr)
    if attr & OPTEE_MSG_ATTR_TYPE_MASK not in family:
        raise BadParamAttr(
            f"attr {attr:#x} has type {attr & OPTEE_MSG_ATTR_TYPE_MASK:#x}, not a {what} type "
            f"({', '.join(hex(t) for t in sorted(family))})"
        )


# -- struct optee_msg_arg header --------------------------------------------------------
def pack_header(
    cmd: int,
    func: int = 0,
    session: int = 0,
    cancel_id: int = 0,
    pad: int = 0,
    ret: int = 0,
    ret_origin: int = 0,
    num_params: int = 0,
) -> bytes:
    """The 32-byte optee_msg_arg header alone (num_params need not match any
    params that follow: for crafting hostile messages in tests)."""
    for name, value in (
        ("cmd", cmd),
        ("func", func),
        ("session", session),
        ("cancel_id", cancel_id),
        ("pad", pad),
        ("ret", ret),
        ("ret_origin", ret_origin),
        ("num_params", num_params),
    ):
        _u32(name, value)
    return _HEADER.pack(cmd, func, session, cancel_id, pad, ret, ret_origin, num_params)


def unpack_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, ...]:
    """(cmd, func, session, cancel_id, pad, ret, ret_origin, num_params) at ``offset``."""
    if offset < 0 or offset + MSG_ARG_HEADER_SIZE > len(buf):
        raise TruncatedMessage(
            f"optee_msg_arg header ({MSG_ARG_HEADER_SIZE} bytes) at offset {offset} does not "
            f"fit a {len(buf)}-byte buffer"
        )
    header: tuple[int, ...] = _HEADER.unpack_from(buf, offset)
    return header


# -- struct optee_msg_arg -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MsgArg:
    """One ``struct optee_msg_arg`` with its params.  ``num_params`` is derived
    from ``params``; use :func:`pack_header` to write a header that lies."""

    cmd: int
    func: int = 0
    session: int = 0
    cancel_id: int = 0
    pad: int = 0
    ret: int = 0
    ret_origin: int = 0
    params: tuple[MsgParam, ...] = ()

    def __post_init__(self) -> None:
        for name in ("cmd", "func", "session", "cancel_id", "pad", "ret", "ret_origin"):
            _u32(name, getattr(self, name))
        params = self.params
        if not isinstance(params, tuple):
            if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
                raise TypeError(f"params must be a sequence of MsgParam, got {params!r}")
            params = tuple(params)
            object.__setattr__(self, "params", params)
        for i, p in enumerate(params):
            if not isinstance(p, MsgParam):
                raise TypeError(f"params[{i}] is {p!r}, not a MsgParam")
        _u32("num_params", len(params))

    @property
    def num_params(self) -> int:
        return len(self.params)

    @property
    def size(self) -> int:
        """OPTEE_MSG_GET_ARG_SIZE(num_params)."""
        return get_arg_size(len(self.params))

    def pack(self) -> bytes:
        """Exactly get_arg_size(num_params) bytes."""
        buf = bytearray(self.size)
        self.pack_into(buf)
        return bytes(buf)

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> None:
        """Write the message into ``buf`` at ``offset`` (it must fit entirely)."""
        end = offset + self.size
        if offset < 0 or end > len(buf):
            raise TruncatedMessage(
                f"optee_msg_arg of {self.size} bytes at offset {offset} does not fit "
                f"a {len(buf)}-byte buffer"
            )
        _HEADER.pack_into(
            buf,
            offset,
            self.cmd,
            self.func,
            self.session,
            self.cancel_id,
            self.pad,
            self.ret,
            self.ret_origin,
            len(self.params),
        )
        pos = offset + OFFSET_PARAMS
        for p in self.params:
            _PARAM.pack_into(buf, pos, p.attr, p.a, p.b, p.c)
            pos += MSG_PARAM_SIZE

    @classmethod
    def unpack(
        cls,
        buf: bytes | bytearray | memoryview,
        *,
        offset: int = 0,
        max_params: int = OPTEE_MSG_MAX_NUM_PARAMS,
    ) -> MsgArg:
        """Parse the message at ``offset`` of ``buf`` (typically a private copy
        of a whole page).  Raises TooManyParams when num_params > max_params
        and TruncatedMessage when the header or the params it announces do
        not fit the buffer; bytes after the message are ignored."""
        cmd, func, session, cancel_id, pad, ret, ret_origin, n = unpack_header(buf, offset)
        if n > max_params:
            raise TooManyParams(n, max_params)
        end = offset + get_arg_size(n)
        if end > len(buf):
            raise TruncatedMessage(
                f"optee_msg_arg at offset {offset} announces {n} params ({get_arg_size(n)} bytes) "
                f"but the buffer is {len(buf)} bytes"
            )
        params = tuple(
            MsgParam(*_PARAM.unpack_from(buf, offset + OFFSET_PARAMS + MSG_PARAM_SIZE * i))
            for i in range(n)
        )
        return cls(cmd, func, session, cancel_id, pad, ret, ret_origin, params)

    def replace(self, **changes: Any) -> MsgArg:
        return dataclasses.replace(self, **changes)


__all__ = [name for name in dir() if name.startswith(("OPTEE_MSG_", "OFFSET_", "PARAM_OFFSET_"))] + [
    "MSG_ARG_HEADER_SIZE",
    "MSG_PARAM_SIZE",
    "PARAM_OCTETS_SIZE",
    "VALUE_TYPES",
    "RMEM_TYPES",
    "TMEM_TYPES",
    "MsgArg",
    "MsgParam",
    "get_arg_size",
    "pack_header",
    "param_offset",
    "unpack_header",
]
