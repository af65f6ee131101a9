"""The guest kernel's page allocator over the domain's own RAM.

A real guest's buddy allocator hands out whatever frames are free, so the
pages behind one buffer are rarely contiguous in IPA space.  This allocator
makes that the normal case on purpose: its free list is shuffled by a seeded
RNG, and freed pages go back at random positions, so every multi-page buffer
exercises non-contiguous page lists while runs stay reproducible.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable

from .errors import OutOfGuestPages, PageNotAllocated

__all__ = ["PAGE_SIZE", "PageAllocator"]

PAGE_SIZE = 4096  # OPTEE_MSG_NONCONTIG_PAGE_SIZE; also the Xen/Arm page size here
_PAGE_MASK = PAGE_SIZE - 1


class PageAllocator:
    """Hands out 4 KiB guest pages, by IPA, in a scattered order.

    ``ipas`` are the page-aligned IPAs the allocator owns (normally every RAM
    gfn of the domain, see :meth:`for_domain`).  Thread-safe.
    """

    def __init__(self, ipas: Iterable[int], *, seed: int = 0) -> None:
        pages = sorted(set(ipas))
        for ipa in pages:
            if ipa < 0 or ipa & _PAGE_MASK:
                raise ValueError(f"page address {ipa:#x} is not a 4 KiB aligned IPA")
        self._rng = random.Random(seed)
        self._rng.shuffle(pages)
        self._free: list[int] = pages
        self._owned = frozenset(pages)
        self._allocated: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def for_domain(
        cls, domain, *, seed: int = 0, exclude: Iterable[int] = ()
    ) -> PageAllocator:
        """An allocator over ``domain.ram_gfns()``, minus the IPAs in
        ``exclude`` (pages the platform put there for itself, e.g. a ring)."""
        skip = set(exclude)
        return cls(
            (gfn * PAGE_SIZE for gfn in domain.ram_gfns() if gfn * PAGE_SIZE not in skip),
            seed=seed,
        )

    @property
    def total(self) -> int:
        """Number of pages the allocator owns."""
        return len(self._owned)

    @property
    def free_count(self) -> int:
        with self._lock:
            return len(self._free)

    @property
    def allocated_count(self) -> int:
        with self._lock:
            return len(self._allocated)

    def owns(self, ipa: int) -> bool:
        return ipa in self._owned

    def alloc(self, count: int = 1) -> list[int]:
        """Allocate ``count`` pages; returns their IPAs in allocation order
        (not sorted).  All or nothing: raises :class:`OutOfGuestPages`."""
        if count < 1:
            raise ValueError(f"page count {count} must be at least 1")
        with self._lock:
            if count > len(self._free):
                raise OutOfGuestPages(count, len(self._free))
            taken = [self._free.pop() for _ in range(count)]
            self._allocated.update(taken)
            return taken

    def alloc_page(self) -> int:
        return self.alloc(1)[0]

    def free(self, ipas: Iterable[int]) -> None:
        """Give pages back.  Every page must currently be allocated; on a bad
        one nothing is freed and :class:`PageNotAllocated` is raised."""
        pages = list(ipas)
        with self._lock:
            seen: set[int] = set()
            for ipa in pages:
                if ipa not in self._allocated or ipa in seen:
                    raise PageNotAllocated(ipa)
                seen.add(ipa)
            for ipa in pages:
                self._allocated.remove(ipa)
                self._free.insert(self._rng.randrange(len(self._free) + 1), ipa)

    def free_page(self, ipa: int) -> None:
        self.free((ipa,))
