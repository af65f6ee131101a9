"""Processes' memory that lives in the guest's pages.

Linux registers a process's own memory with OP-TEE by pinning the physical
pages behind it (pin_user_pages): the secure world then reads and writes the
very bytes the process sees.  A process outside the simulation has no guest
pages behind its memory, so before it registers a range its library (the
LD_PRELOAD shim) moves the range into the guest: it asks this table for one
fresh guest page per page of the range (:meth:`MmTable.back`), copies its
bytes there and maps the guest page, from the simulated machine's RAM file,
over its own page at the same address.  From then on the process's page *is*
that guest page, and pinning it is what Linux does: a reference that keeps
the page while a registration uses it.

A :class:`UserMm` is one process's view: which of its page addresses are
backed by which guest page (``mapped``), how many registrations pin each
(``pins``), and the shared-memory mappings it holds (``maps``).  A guest
page goes back to the allocator when it is neither mapped by its process
nor pinned, so a process that unmaps (or dies) while OP-TEE still has the
page registered keeps it allocated until the registration ends, as a pinned
page outlives munmap in Linux.
"""

from __future__ import annotations

import errno
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import GuestError, TeeErrno
from .pages import PAGE_SIZE, PageAllocator

if TYPE_CHECKING:
    from stubdom.xen import Domain

    from .teeshm import TeeShm

__all__ = ["UserPage", "UserMm", "MmTable", "MAX_BACK_PAGES", "MM_TOKEN_BYTES"]

# Pages one BACK request may ask for: the largest registration libteec makes
# is the caller's buffer, and 16 MiB bounds the reply the library reads.
MAX_BACK_PAGES = 4096
MM_TOKEN_BYTES = 16  # the random name a process's library presents for its mm


@dataclass(eq=False, slots=True)
class UserPage:
    """One guest page behind a process page."""

    ipa: int
    mapped: bool = True  # the process still maps it
    pins: int = 0  # registrations using it


@dataclass(eq=False)
class UserMm:
    """One process's address space, as far as the guest kernel tracks it."""

    token: bytes
    pid: int
    pages: dict[int, UserPage] = field(default_factory=dict)  # page address -> guest page
    maps: dict[int, TeeShm] = field(default_factory=dict)  # mapping handle -> the shm it references
    dead: bool = False


class MmTable:
    """Every process's :class:`UserMm`, and the guest pages behind them.
    Thread-safe."""

    def __init__(self, allocator: PageAllocator, domain: Domain) -> None:
        self._pages = allocator
        self._domain = domain
        self._lock = threading.Lock()
        self._mms: dict[bytes, UserMm] = {}
        self._orphans: set[int] = set()  # ids of pinned pages whose process is gone or unmapped them

    # -- processes --------------------------------------------------------------------
    def create(self, pid: int) -> UserMm:
        mm = UserMm(token=secrets.token_bytes(MM_TOKEN_BYTES), pid=pid)
        with self._lock:
            self._mms[mm.token] = mm
        return mm

    def lookup(self, token: bytes) -> UserMm | None:
        with self._lock:
            mm = self._mms.get(token)
        return None if mm is None or mm.dead else mm

    def release(self, mm: UserMm) -> list[TeeShm]:
        """The process is gone: its pages are no longer mapped (each goes back
        unless pinned). Returns the shm references its mappings held, for the
        caller to drop."""
        with self._lock:
            mm.dead = True
            self._mms.pop(mm.token, None)
            freed = [p for p in mm.pages.values() if self._unmap_locked(p)]
            mm.pages.clear()
            held = list(mm.maps.values())
            mm.maps.clear()
        self._free(freed)
        return held

    # -- pages --------------------------------------------------------------------------
    def back(self, mm: UserMm, addrs: Sequence[int]) -> list[int]:
        """Fresh, zeroed guest pages behind the page addresses ``addrs``; returns
        their IPAs.  A page address already backed gets a new page (the process
        replaced the old mapping): the old one is unmapped."""
        if len(addrs) > MAX_BACK_PAGES:
            raise TeeErrno(errno.ENOMEM, f"{len(addrs)} pages at once; at most {MAX_BACK_PAGES}")
        for a in addrs:
            if a % PAGE_SIZE or a < 0:
                raise TeeErrno(errno.EINVAL, f"page address {a:#x} is not page aligned")
        if len(set(addrs)) != len(addrs):
            raise TeeErrno(errno.EINVAL, "a page address is named twice")
        if not addrs:
            return []
        try:
            ipas = self._pages.alloc(len(addrs))
        except GuestError as e:
            raise TeeErrno(errno.ENOMEM, str(e)) from None
        for ipa in ipas:
            self._domain.write(ipa, bytes(PAGE_SIZE))  # no stale guest data reaches a process
        freed: list[UserPage | int] = []
        with self._lock:
            if mm.dead:
                freed = list(ipas)
                ipas = []
            else:
                for a, ipa in zip(addrs, ipas):
                    old = mm.pages.get(a)
                    if old is not None and self._unmap_locked(old):
                        freed.append(old)
                    mm.pages[a] = UserPage(ipa)
        self._free(freed)
        if not ipas:
            raise TeeErrno(errno.ESRCH, f"process {mm.pid} is gone")
        return ipas

    def unback(self, mm: UserMm, addrs: Sequence[int]) -> int:
        """The process no longer maps these pages (it put its own memory back,
        or unmapped them); returns how many were backed."""
        freed = []
        with self._lock:
            for a in addrs:
                page = mm.pages.pop(a, None)
                if page is not None and self._unmap_locked(page):
                    freed.append(page)
        self._free(freed)
        return len(freed)

    def pin(self, mm: UserMm | None, start: int, count: int) -> list[UserPage]:
        """pin_user_pages_fast(start, count, FOLL_WRITE): every page must be
        backed.  As in Linux, a first page that cannot be pinned is EFAULT and
        a later one makes the pin short, which tee_shm turns into ENOMEM."""
        with self._lock:
            got: list[UserPage] = []
            for i in range(count):
                page = None if mm is None or mm.dead else mm.pages.get(start + i * PAGE_SIZE)
                if page is None:
                    for p in got:
                        p.pins -= 1
                    where = start + i * PAGE_SIZE
                    if i == 0:
                        raise TeeErrno(errno.EFAULT, f"page {where:#x} is not guest memory of the process")
                    raise TeeErrno(errno.ENOMEM, f"pinned {i} of {count} pages: {where:#x} is not guest memory")
                page.pins += 1
                got.append(page)
            return got

    def unpin(self, pages: Sequence[UserPage]) -> None:
        freed = []
        with self._lock:
            for p in pages:
                p.pins -= 1
                assert p.pins >= 0, p
                if not p.pins and not p.mapped:
                    self._orphans.discard(id(p))
                    freed.append(p)
        self._free(freed)

    # -- shared-memory mappings (a vma holding its tee_shm file) ------------------------
    def add_map(self, mm: UserMm, shm: TeeShm) -> int:
        """Record that ``mm`` maps ``shm`` (the caller took a reference for
        it); returns the mapping's handle, an unguessable 63-bit number."""
        with self._lock:
            if mm.dead:
                raise TeeErrno(errno.ESRCH, f"process {mm.pid} is gone")
            handle = secrets.randbits(63) | 1
            while any(handle in m.maps for m in self._mms.values()):
                handle = secrets.randbits(63) | 1
            mm.maps[handle] = shm
            return handle

    def drop_map(self, mm: UserMm, handle: int) -> TeeShm | None:
        """The mapping is gone; returns the shm whose reference it held."""
        with self._lock:
            return mm.maps.pop(handle, None)

    def find_map(self, handle: int) -> TeeShm | None:
        """The shm a live mapping with this handle holds, in any process (a
        forked child inherits its parent's mappings)."""
        with self._lock:
            for m in self._mms.values():
                if handle in m.maps:
                    return m.maps[handle]
        return None

    def _unmap_locked(self, page: UserPage) -> bool:
        """(lock held) Mark unmapped; True if nothing holds the page any more."""
        page.mapped = False
        if page.pins:
            self._orphans.add(id(page))
            return False
        return True

    def _free(self, pages: Sequence[UserPage | int]) -> None:
        ipas = [p if isinstance(p, int) else p.ipa for p in pages]
        if ipas:
            self._pages.free(ipas)

    # -- introspection ------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        with self._lock:
            backed = sum(len(mm.pages) for mm in self._mms.values())
            return {"mms": len(self._mms), "backed_pages": backed, "orphan_pages": len(self._orphans),
                    "mappings": sum(len(mm.maps) for mm in self._mms.values())}
