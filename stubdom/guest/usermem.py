"""What the guest kernel knows of the process a system call comes from.

A real kernel reads and writes the caller's memory with copy_from_user and
copy_to_user at the moment it needs to.  The calling process lives outside
the simulation, so its library (the LD_PRELOAD shim) reads the bytes the call
names before the call — the ioctl's argument and, for the buffer ioctls, the
buffer it points at — and sends them along with whether each region may be
written.  :class:`UserMemory` serves the kernel's copies from that snapshot:
every byte the kernel validates is read once, from its own copy; an address
outside the snapshot faults (EFAULT), as an unmapped one would; writes are
recorded and the library applies them, field by field, when the call
returns, so the process sees exactly the fields Linux would have written.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import TeeErrno

if TYPE_CHECKING:
    from .mm import UserMm

__all__ = ["UserRegion", "UserMemory", "Caller"]


@dataclass(frozen=True, slots=True)
class UserRegion:
    """Bytes of the caller's memory at ``addr``, read before the call;
    ``writable`` says whether the library found the region writable."""

    addr: int
    data: bytes
    writable: bool


class UserMemory:
    """The caller's memory during one system call (see the module docstring)."""

    def __init__(self, regions: Iterable[UserRegion] = ()) -> None:
        self._regions = [(r.addr, bytearray(r.data), r.writable) for r in regions]
        self._patches: list[tuple[int, bytes]] = []

    def _find(self, addr: int, length: int) -> tuple[int, bytearray, bool] | None:
        for start, data, writable in self._regions:
            if start <= addr and addr + length <= start + len(data):
                return start, data, writable
        return None

    def copy_from_user(self, addr: int, length: int, what: str) -> bytes:
        """``length`` bytes at ``addr``; EFAULT when they were not readable."""
        found = self._find(addr, length)
        if found is None:
            raise TeeErrno(errno.EFAULT, f"{what}: {length} bytes at {addr:#x} are not readable")
        start, data, _ = found
        return bytes(data[addr - start : addr - start + length])

    def copy_to_user(self, addr: int, data: bytes, what: str) -> None:
        """Write ``data`` at ``addr``; EFAULT when the region is not writable."""
        found = self._find(addr, len(data))
        if found is None or not found[2]:
            raise TeeErrno(errno.EFAULT, f"{what}: {len(data)} bytes at {addr:#x} are not writable")
        start, buf, _ = found
        buf[addr - start : addr - start + len(data)] = data
        self._patches.append((addr, bytes(data)))

    @property
    def patches(self) -> list[tuple[int, bytes]]:
        """The writes the call made, in order: (address, bytes)."""
        return list(self._patches)


@dataclass(frozen=True, slots=True)
class Caller:
    """The calling process, as ``current`` is to a Linux system call.

    ``uid``/``gid`` are its effective ids and ``groups`` its supplementary
    groups (tee_session_calc_client_uuid); ``mm`` its address space as far as
    the guest kernel tracks it (None: it has registered no memory yet);
    ``killed`` is set when the process is gone, which ends its interruptible
    and killable waits as a fatal signal would.
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    mm: UserMm | None = None
    killed: threading.Event = field(default_factory=threading.Event)
