"""What both ends of a teeif ring share: the mapped ring file, the layout
facts, the statistics record."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self, cast

from ring._lib import check, ffi, lib
from ring.errors import RingClosed

if TYPE_CHECKING:
    from _typeshed import StrPath

    from ring._ring import CData, CRingEnd

__all__ = [
    "PAGE_SIZE",
    "HEADER_SIZE",
    "ENTRY_SIZE",
    "MAX_RING_PAGES",
    "ring_entries",
    "create_ring_file",
    "SharedIndices",
    "RingStatistics",
]

PAGE_SIZE: int = lib.TEEIF_PAGE_SIZE  # io/ring.h: ring pages are always 4 KiB (XEN_PAGE_SHIFT 12)
HEADER_SIZE: int = lib.TEEIF_RING_HDR_SIZE  # req_prod, req_event, rsp_prod, rsp_event, pvt[4], __pad[44]
ENTRY_SIZE: int = lib.TEEIF_ENTRY_SIZE  # union teeif_sring_entry
MAX_RING_PAGES: int = lib.TEEIF_MAX_RING_PAGES


def ring_entries(ring_pages: int) -> int:
    """Slots in a ring of ``ring_pages`` pages: the largest power of two that
    fits after the header (io/ring.h __CONST_RING_SIZE); 1 page → 32."""
    if not 1 <= ring_pages <= MAX_RING_PAGES:
        raise ValueError(f"ring_pages must be in 1..{MAX_RING_PAGES}, got {ring_pages}")
    return lib.teeif_ring_entries(ring_pages)


def _check_start(start: int) -> int:
    if not 0 <= start <= 0xFFFFFFFF:
        raise ValueError(f"start index must be a uint32, got {start:#x}")
    return start


def create_ring_file(path: StrPath, ring_pages: int = 1, *, start: int = 0) -> None:
    """Create and initialise a ring file (it must not exist) without
    attaching an end to it: indices at ``start``, event indices at start+1."""
    sring = ffi.new("struct teeif_sring **")
    pages = ffi.new("uint32_t *")
    ring_entries(ring_pages)
    check(lib.teeif_ring_map(os.fsencode(path), ring_pages, 1, _check_start(start), sring, pages),
          os.fspath(path))
    check(lib.teeif_ring_unmap(sring[0], pages[0]), os.fspath(path))


@dataclass(frozen=True, slots=True)
class SharedIndices:
    """A snapshot of the shared header's four indices (for logs and tests)."""

    req_prod: int
    req_event: int
    rsp_prod: int
    rsp_event: int


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """Counters of one ring end since it was attached (``struct teeif_stats``)."""

    pushes: int  # entries produced
    pops: int  # entries consumed
    batches: int  # push/pop calls that moved at least one entry
    notifications_sent: int  # pushes after which the peer had to be notified
    notifications_suppressed: int  # pushes the peer's event index said need no notify
    final_checks: int  # final checks that re-armed our event index
    sleeps: int  # final checks that found nothing (the caller may sleep)
    poll_hits: int  # polls that found work while spinning


class _RingEnd(abc.ABC):
    """A mapped ring file and one end's C state; subclassed by FrontRing/BackRing."""

    _ctype = ""  # the C struct of the end's private state
    _c: CRingEnd  # that state (each subclass names its own struct)

    def __init__(self, path: StrPath, ring_pages: int, create: bool, start: int) -> None:
        self.path = os.fspath(path)
        sring = ffi.new("struct teeif_sring **")
        pages = ffi.new("uint32_t *")
        if create or ring_pages:
            ring_entries(ring_pages)  # a clear ValueError before C says ESIZE
        check(lib.teeif_ring_map(os.fsencode(self.path), ring_pages, int(create),
                                 _check_start(start), sring, pages), self.path)
        self._sring: CData = sring[0]
        self._pages: int = pages[0]
        self._c = cast("CRingEnd", ffi.new(self._ctype + " *"))
        self._notify = ffi.new("int *")
        self._indices = ffi.new("uint32_t[4]")
        try:
            self._attach()
        except BaseException:
            lib.teeif_ring_unmap(self._sring, self._pages)
            raise
        self._closed = False

    @abc.abstractmethod
    def _attach(self) -> None:
        """Bind the C ring end to the mapped page (front or back role)."""

    @property
    def ring_pages(self) -> int:
        return self._pages

    @property
    def size(self) -> int:
        """Slots in the ring (io/ring.h RING_SIZE)."""
        return self._c.nr_ents

    def shared_indices(self) -> SharedIndices:
        # through C, under the SIGBUS guard: Python never reads the mapping itself
        check(lib.teeif_ring_indices(self._live(), self._pages, self._indices), self.path,
              pages=self._pages)
        return SharedIndices(*self._indices)

    def statistics(self) -> RingStatistics:
        st = self._c.stats
        return RingStatistics(st.pushes, st.pops, st.batches, st.notify_sent,
                              st.notify_suppressed, st.final_checks, st.sleeps, st.poll_hits)

    def _live(self) -> CData:
        if self._closed:
            raise RingClosed(f"{type(self).__name__} on {self.path} is closed")
        return self._sring

    def close(self) -> None:
        """Unmap the ring; idempotent. The file stays (its creator removes it)."""
        if self._closed:
            return
        self._closed = True
        self._c.sring = ffi.NULL
        check(lib.teeif_ring_unmap(self._sring, self._pages), self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A ring end dropped without close() must not leak its mapping.
        if getattr(self, "_closed", True) is False:
            self._closed = True
            lib.teeif_ring_unmap(self._sring, self._pages)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} slots"
        return f"<{type(self).__name__} {self.path} {self._pages} page(s), {state}>"
