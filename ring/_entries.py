"""teeif requests and responses as Python values, and the cffi buffers that
the batch APIs fill and read (``struct teeif_request[n]``,
``struct teeif_response[n]``)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ring._lib import ffi

if TYPE_CHECKING:
    from _cffi_backend import buffer

    from ring._ring import CData

__all__ = [
    "Request",
    "Response",
    "request_buffer",
    "response_buffer",
    "write_requests",
    "write_request",
    "write_responses",
    "read_requests",
    "read_responses",
    "read_response",
    "check_room",
    "pack_entry",
]

_NREGS = 8  # x0..x7: teeif_request.a / teeif_response.a


class Request(NamedTuple):
    """One ``struct teeif_request`` (80 bytes on the ring)."""

    id: int  # chosen by the frontend, echoed back (uint64)
    vcpu: int  # the vCPU that trapped (uint32)
    flags: int  # uint32, 0 in this protocol version
    a: tuple[int, ...]  # x0..x7 at the trap (8 × uint64)


class Response(NamedTuple):
    """One ``struct teeif_response`` (80 bytes on the ring)."""

    id: int  # the request's id (uint64)
    status: int  # 0, or a negative errno when the backend itself failed (int32)
    flags: int  # uint32, 0 in this protocol version
    a: tuple[int, ...]  # x0..x7 the vCPU resumes with (8 × uint64)


def request_buffer(n: int) -> CData:
    """A zeroed ``struct teeif_request[n]`` for the raw batch APIs."""
    return ffi.new("struct teeif_request[]", n)


def response_buffer(n: int) -> CData:
    """A zeroed ``struct teeif_response[n]`` for the raw batch APIs."""
    return ffi.new("struct teeif_response[]", n)


# The two entry layouts (docs/protocol.md), little-endian: one C call packs or
# unpacks a whole entry, where cffi field access costs one Python call per
# field. Sizes are checked against the C compiler's at import.
_REQ = struct.Struct("<QII8Q")  # id, vcpu, flags, a[8]
_RSP = struct.Struct("<QiI8Q")  # id, status, flags, a[8]
_SIZE = 80
assert _REQ.size == _RSP.size == _SIZE == ffi.sizeof("union teeif_sring_entry")


def _pack(layout: struct.Struct, buf: buffer, i: int, x: Request | Response, second: int, a: Sequence[int]) -> None:
    pack_entry(layout, buf, i, x.id, second, x.flags, a)


def pack_entry(layout: struct.Struct, buf: buffer, i: int, first: int, second: int, flags: int,
               a: Sequence[int]) -> None:
    """Pack entry ``i`` of ``buf`` from its fields; every check is the
    packer's, so a good entry costs one C call and a bad one gets its error
    named here. cffi would fill a short list into the front of the array
    and keep the rest: anything but exactly eight registers is refused."""
    try:
        layout.pack_into(buf, i * _SIZE, first, second, flags, *a)
    except struct.error as e:
        entry = (first, second, flags, tuple(a))
        if len(a) != _NREGS:
            raise ValueError(f"a must hold exactly {_NREGS} registers, got {len(a)}: {a!r}") from None
        if "integer" in str(e):
            raise TypeError(f"entry {entry!r}: {e}") from None
        raise OverflowError(f"entry {entry!r}: a field is out of range for its C type") from None


def write_requests(buf: CData, reqs: Sequence[Request], mem: buffer | None = None) -> int:
    """Fill ``buf`` from the Request values; returns how many. ``mem``:
    ``ffi.buffer(buf)`` if the caller keeps one."""
    if mem is None:
        mem = ffi.buffer(buf)
    for i, r in enumerate(reqs):
        _pack(_REQ, mem, i, r, r.vcpu, r.a)
    return len(reqs)


def write_request(mem: buffer, req: Request) -> None:
    """Fill the first entry of a ``request_buffer`` through its
    ``ffi.buffer``: write_requests for one, without its loop (the hot path)."""
    _pack(_REQ, mem, 0, req, req.vcpu, req.a)


def write_responses(buf: CData, rsps: Sequence[Response], mem: buffer | None = None) -> int:
    if mem is None:
        mem = ffi.buffer(buf)
    for i, r in enumerate(rsps):
        _pack(_RSP, mem, i, r, r.status, r.a)
    return len(rsps)


_new = tuple.__new__  # a NamedTuple without its Python-level __new__


def read_requests(buf: CData, n: int, mem: buffer | None = None) -> list[Request]:
    if mem is None:
        mem = ffi.buffer(buf)
    unpack = _REQ.unpack_from
    return [_new(Request, (v[0], v[1], v[2], v[3:])) for v in (unpack(mem, i * _SIZE) for i in range(n))]


def read_responses(buf: CData, n: int, mem: buffer | None = None) -> list[Response]:
    if mem is None:
        mem = ffi.buffer(buf)
    unpack = _RSP.unpack_from
    return [_new(Response, (v[0], v[1], v[2], v[3:])) for v in (unpack(mem, i * _SIZE) for i in range(n))]


def read_response(mem: buffer) -> Response:
    """The first response of a ``response_buffer``'s ``ffi.buffer``: the
    one-entry read of the hot path, without read_responses' list."""
    v = _RSP.unpack_from(mem)
    return _new(Response, (v[0], v[1], v[2], v[3:]))


def check_room(buf: CData, n: int) -> None:
    """Refuse a count larger than a cffi array (C would run past its end).
    A bare pointer (``buf + k``) carries no length: its caller vouches for it."""
    try:
        room = len(buf)
    except TypeError:
        return
    if n > room:
        raise ValueError(f"{n} entries do not fit a buffer of {room}")
