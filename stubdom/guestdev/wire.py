"""The device protocol between the LD_PRELOAD library and the device server.

preload/teedev_wire.h is the definition (its comment explains the
connections and who answers where); this module mirrors its values and
layouts, and tests/test_guestdev_uapi.py compares the two.  Messages from a
process are hostile: :func:`parse_request` checks every length against the
message before it slices, and answers :class:`WireError` otherwise.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import WireError

__all__ = [
    "TEEDEV_MAGIC",
    "TEEDEV_WIRE_VERSION",
    "TEEDEV_OP_OPEN",
    "TEEDEV_OP_IOCTL",
    "TEEDEV_OP_MMAP",
    "TEEDEV_OP_MM_HELLO",
    "TEEDEV_OP_BACK",
    "TEEDEV_OP_UNBACK",
    "TEEDEV_OP_UNMAP",
    "TEEDEV_OP_ADOPT",
    "TEEDEV_OP_STATS",
    "TEEDEV_REGION_WRITABLE",
    "TEEDEV_MAX_MSG",
    "TEEDEV_MAX_REGIONS",
    "TEEDEV_MAX_PAGES",
    "REQ",
    "REGION",
    "RSP",
    "PATCH",
    "Request",
    "parse_request",
    "build_response",
]

TEEDEV_MAGIC = 0x76647374  # "tsdv"
TEEDEV_WIRE_VERSION = 1

TEEDEV_OP_OPEN = 1
TEEDEV_OP_IOCTL = 2
TEEDEV_OP_MMAP = 3
TEEDEV_OP_MM_HELLO = 4
TEEDEV_OP_BACK = 5
TEEDEV_OP_UNBACK = 6
TEEDEV_OP_UNMAP = 7
TEEDEV_OP_ADOPT = 8
TEEDEV_OP_STATS = 9

TEEDEV_REGION_WRITABLE = 1

TEEDEV_MAX_MSG = 72 * 1024
TEEDEV_MAX_REGIONS = 4
TEEDEV_MAX_PAGES = 4096

REQ = struct.Struct("=IHHQQQ16sII")  # struct teedev_req
REGION = struct.Struct("=QII")  # struct teedev_region
RSP = struct.Struct("=IiIIQ16sQ")  # struct teedev_rsp
PATCH = struct.Struct("=QII")  # struct teedev_patch


def _pad8(n: int) -> int:
    return -n % 8


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; ``regions`` are (addr, bytes, writable)."""

    op: int
    cmd: int
    arg: int
    len: int
    token: bytes
    regions: tuple[tuple[int, bytes, bool], ...]
    payload: bytes

    def u64s(self) -> list[int]:
        """The payload as uint64_t values (page addresses, handles)."""
        if len(self.payload) % 8:
            raise WireError(f"payload of {len(self.payload)} bytes is not a uint64_t array")
        n = len(self.payload) // 8
        if n > TEEDEV_MAX_PAGES:
            raise WireError(f"{n} entries; at most {TEEDEV_MAX_PAGES}")
        return list(struct.unpack(f"={n}Q", self.payload))


def parse_request(msg: bytes) -> Request:
    """Validate and decode one request message."""
    if len(msg) < REQ.size:
        raise WireError(f"request of {len(msg)} bytes is shorter than its {REQ.size}-byte header")
    if len(msg) > TEEDEV_MAX_MSG:
        raise WireError(f"request of {len(msg)} bytes exceeds {TEEDEV_MAX_MSG}")
    magic, version, op, cmd, arg, length, token, nregions, npayload = REQ.unpack_from(msg)
    if magic != TEEDEV_MAGIC:
        raise WireError(f"bad magic {magic:#x}")
    if version != TEEDEV_WIRE_VERSION:
        raise WireError(f"wire version {version}, this server speaks {TEEDEV_WIRE_VERSION}")
    if nregions > TEEDEV_MAX_REGIONS:
        raise WireError(f"{nregions} regions; at most {TEEDEV_MAX_REGIONS}")
    at = REQ.size
    regions = []
    for i in range(nregions):
        if at + REGION.size > len(msg):
            raise WireError(f"region {i} header runs past the message")
        addr, rlen, flags = REGION.unpack_from(msg, at)
        at += REGION.size
        if at + rlen > len(msg):
            raise WireError(f"region {i} of {rlen} bytes runs past the message")
        regions.append((addr, bytes(msg[at : at + rlen]), bool(flags & TEEDEV_REGION_WRITABLE)))
        at += rlen + _pad8(rlen)
    if at + npayload != len(msg):
        raise WireError(f"payload of {npayload} bytes at {at} does not end the {len(msg)}-byte message")
    return Request(op, cmd, arg, length, bytes(token), tuple(regions), bytes(msg[at:]))


def build_response(ret: int, *, patches: Sequence[tuple[int, bytes]] = (), data: bytes = b"", handle: int = 0,
                   token: bytes = bytes(16)) -> bytes:
    """One response message."""
    parts = [RSP.pack(TEEDEV_MAGIC, ret, len(patches), len(data), handle, token, 0)]
    for addr, blob in patches:
        parts.append(PATCH.pack(addr, len(blob), 0))
        parts.append(blob + bytes(_pad8(len(blob))))
    parts.append(data)
    out = b"".join(parts)
    if len(out) > TEEDEV_MAX_MSG:
        raise WireError(f"response of {len(out)} bytes exceeds {TEEDEV_MAX_MSG}")
    return out
