"""Shared-memory objects of the guest driver (Linux ``struct tee_shm``) and the
two pools they come from.

* Dynamic shared memory: any guest pages, from the :class:`PageAllocator`,
  scattered in IPA space, described to OP-TEE by non-contiguous page lists.
* Reserved (static) shared memory: the carve-out GET_SHM_CONFIG names, which
  a direct-mapped hardware domain addresses by IPA == PA; allocated first-fit
  with 512-byte granules like Linux's genpool (OPTEE_MIN_STATIC_POOL_ALIGN).

A :class:`Shm` reads and writes its bytes through the guest's own ``Domain``
accessors, page by page, so a buffer never assumes IPA contiguity it lacks.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence

from .errors import StaticShmOutOfMemory
from .pages import PAGE_SIZE, PageAllocator

__all__ = ["ShmOwner", "Shm", "DynamicPool", "StaticPool", "OPTEE_MIN_STATIC_POOL_ALIGN"]

OPTEE_MIN_STATIC_POOL_ALIGN = 9  # optee_private.h: 512-byte granules in the static pool


class ShmOwner(enum.Enum):
    """Who a buffer belongs to, which decides how it is freed and shown to OP-TEE."""

    KERNEL = "kernel"  # driver-private (TEE_SHM_PRIV): args, RPC buffers, temp memrefs
    CLIENT = "client"  # a client's registered/allocated shared memory
    SUPPLICANT = "supplicant"  # tee-supplicant's buffers (SHM_ALLOC type APPL)


class Shm:
    """One shared-memory buffer.

    ``cookie`` is the opaque 64-bit ``shm_ref`` OP-TEE sees (Linux passes the
    ``struct tee_shm *``).  Exactly one of ``pages`` (dynamic: one IPA per 4 KiB
    page, the buffer starting ``page_offset`` bytes into the first) or
    ``paddr`` (static pool: contiguous, IPA == PA) is set.
    """

    def __init__(
        self,
        memory,
        *,
        cookie: int,
        size: int,
        owner: ShmOwner,
        pages: Sequence[int] | None = None,
        page_offset: int = 0,
        paddr: int | None = None,
        borrowed: bool = False,
    ) -> None:
        if (pages is None) == (paddr is None):
            raise ValueError("a Shm has either pages or a static paddr")
        self._memory = memory
        self.cookie = cookie
        self.size = size
        self.owner = owner
        self.pages = tuple(pages) if pages is not None else None
        self.page_offset = page_offset
        self.paddr = paddr
        self.registered = False  # REGISTER_SHM succeeded and UNREGISTER_SHM not yet done
        # the pages belong to someone else (a process's pinned memory): freeing
        # the buffer does not free them
        self.borrowed = borrowed

    def __repr__(self) -> str:
        where = f"{len(self.pages)} pages" if self.pages is not None else f"paddr={self.paddr:#x}"
        return f"<Shm cookie={self.cookie:#x} size={self.size} {self.owner.value} {where}>"

    @property
    def is_dynamic(self) -> bool:
        return self.pages is not None

    def ipa(self, offs: int) -> int:
        """The guest address of byte ``offs`` of the buffer."""
        if not 0 <= offs <= self.size:
            raise ValueError(f"offset {offs} outside a {self.size}-byte buffer")
        if self.paddr is not None:
            return self.paddr + offs
        pages = self.pages
        assert pages is not None  # a Shm has either pages or a paddr
        pos = self.page_offset + offs
        index = pos // PAGE_SIZE
        if index == len(pages):  # one past the end, on a page boundary
            return pages[index - 1] + PAGE_SIZE
        return pages[index] + pos % PAGE_SIZE

    def _spans(self, offs: int, length: int):
        if offs < 0 or length < 0 or offs + length > self.size:
            raise ValueError(
                f"range [{offs}, {offs + length}) outside a {self.size}-byte buffer"
            )
        while length:
            addr = self.ipa(offs)
            chunk = min(length, PAGE_SIZE - addr % PAGE_SIZE)
            yield addr, offs, chunk
            offs += chunk
            length -= chunk

    def read(self, offs: int = 0, length: int | None = None) -> bytes:
        if length is None:
            length = self.size - offs
        return b"".join(self._memory.read(addr, n) for addr, _, n in self._spans(offs, length))

    def write(self, offs: int, data: bytes) -> None:
        data = bytes(data)
        for addr, at, n in self._spans(offs, len(data)):
            self._memory.write(addr, data[at - offs : at - offs + n])


class DynamicPool:
    """Buffers from any guest pages: each allocation takes whole pages."""

    def __init__(self, allocator: PageAllocator) -> None:
        self.allocator = allocator

    def alloc_pages(self, size: int) -> list[int]:
        return self.allocator.alloc(max(1, -(-size // PAGE_SIZE)))

    def free_pages(self, pages: Sequence[int]) -> None:
        self.allocator.free(pages)


class StaticPool:
    """First-fit allocator over the reserved shared-memory region [start, end)."""

    GRANULE = 1 << OPTEE_MIN_STATIC_POOL_ALIGN

    def __init__(self, start: int, end: int) -> None:
        if start % PAGE_SIZE or end % PAGE_SIZE or end <= start:
            raise ValueError(f"static pool [{start:#x}, {end:#x}) is not a page-aligned range")
        self.start = start
        self.end = end
        self._free: list[tuple[int, int]] = [(start, end)]  # sorted, disjoint extents
        self._used: dict[int, int] = {}  # addr -> rounded size
        self._lock = threading.Lock()

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(e - s for s, e in self._free)

    @property
    def used_count(self) -> int:
        with self._lock:
            return len(self._used)

    def alloc(self, size: int, align: int = 16) -> int:
        rounded = max(self.GRANULE, -(-size // self.GRANULE) * self.GRANULE)
        align = max(align, self.GRANULE)
        with self._lock:
            for i, (s, e) in enumerate(self._free):
                addr = -(-s // align) * align
                if addr + rounded <= e:
                    pieces = [(s, addr)] if addr > s else []
                    if addr + rounded < e:
                        pieces.append((addr + rounded, e))
                    self._free[i : i + 1] = pieces
                    self._used[addr] = rounded
                    return addr
            raise StaticShmOutOfMemory(size, sum(e - s for s, e in self._free))

    def free(self, addr: int) -> None:
        with self._lock:
            size = self._used.pop(addr)
            self._free.append((addr, addr + size))
            self._free.sort()
            merged: list[tuple[int, int]] = []
            for s, e in self._free:
                if merged and merged[-1][1] == s:
                    merged[-1] = (merged[-1][0], e)
                else:
                    merged.append((s, e))
            self._free = merged
