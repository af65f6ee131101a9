"""teeif requests and responses as Python values, and the cffi buffers that
the batch APIs fill and read (``struct teeif_request[n]``,
``struct teeif_response[n]``)."""

from typing import NamedTuple

from ring._lib import ffi

__all__ = [
    "Request",
    "Response",
    "request_buffer",
    "response_buffer",
    "write_requests",
    "write_responses",
    "read_requests",
    "read_responses",
    "check_room",
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


def request_buffer(n: int):
    """A zeroed ``struct teeif_request[n]`` for the raw batch APIs."""
    return ffi.new("struct teeif_request[]", n)


def response_buffer(n: int):
    """A zeroed ``struct teeif_response[n]`` for the raw batch APIs."""
    return ffi.new("struct teeif_response[]", n)


def _regs(a) -> tuple:
    # cffi fills a short list into the front of the array and keeps the rest:
    # refuse anything but exactly eight registers.
    if len(a) != _NREGS:
        raise ValueError(f"a must hold exactly {_NREGS} registers, got {len(a)}: {a!r}")
    return a


def write_requests(buf, reqs) -> int:
    """Fill ``buf`` from the Request values; returns how many."""
    for i, r in enumerate(reqs):
        c = buf[i]
        c.id = r.id
        c.vcpu = r.vcpu
        c.flags = r.flags
        c.a = _regs(r.a)
    return len(reqs)


def write_responses(buf, rsps) -> int:
    for i, r in enumerate(rsps):
        c = buf[i]
        c.id = r.id
        c.status = r.status
        c.flags = r.flags
        c.a = _regs(r.a)
    return len(rsps)


def read_requests(buf, n: int) -> list[Request]:
    return [Request(c.id, c.vcpu, c.flags, tuple(c.a)) for c in (buf[i] for i in range(n))]


def read_responses(buf, n: int) -> list[Response]:
    return [Response(c.id, c.status, c.flags, tuple(c.a)) for c in (buf[i] for i in range(n))]


def check_room(buf, n: int) -> None:
    """Refuse a count larger than a cffi array (C would run past its end).
    A bare pointer (``buf + k``) carries no length: its caller vouches for it."""
    try:
        room = len(buf)
    except TypeError:
        return
    if n > room:
        raise ValueError(f"{n} entries do not fit a buffer of {room}")
