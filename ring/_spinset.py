"""One spin over many back rings: a backend that serves many domains from
one thread watches all of its idle rings at once instead of spinning on each
in turn (docs/protocol.md, "Adaptive polling")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ring._back import BackRing
from ring._lib import check, ffi, lib

if TYPE_CHECKING:
    from ring._fast import FastRing, FastTable

__all__ = ["BackSpinSet"]


class BackSpinSet:
    """Slots of BackRings spun on together by ``spin`` (GIL released).

    ``add(ring) -> slot`` and ``discard(slot)`` are O(1); the C side skips
    empty slots. No final check is done on any ring: that, and sleeping,
    stay each ring owner's business. A ring must be discarded before it is
    closed. Not thread-safe: one owner.
    """

    def __init__(self, capacity: int = 16) -> None:
        self._cap = 0
        self._rings = ffi.new("struct teeif_back_ring *[]", 1)
        self._ready = ffi.new("uint32_t[]", 1)
        self._fast = ffi.new("struct teeif_fast_ring *[]", 1)
        self._served = ffi.new("uint32_t[]", 1)
        self._nserved = ffi.new("uint32_t *")
        self._states: list[FastRing | None] = []
        self._owners: list[BackRing | None] = []
        self._free: list[int] = []
        self._count = 0
        self._grow(max(1, capacity))

    def _grow(self, cap: int) -> None:
        rings = ffi.new("struct teeif_back_ring *[]", cap)
        ffi.memmove(rings, self._rings, self._cap * ffi.sizeof("struct teeif_back_ring *"))
        fast = ffi.new("struct teeif_fast_ring *[]", cap)
        ffi.memmove(fast, self._fast, self._cap * ffi.sizeof("struct teeif_fast_ring *"))
        self._rings, self._ready = rings, ffi.new("uint32_t[]", cap)
        self._fast, self._served = fast, ffi.new("uint32_t[]", cap)
        self._free.extend(range(cap - 1, self._cap - 1, -1))
        self._owners.extend([None] * (cap - self._cap))
        self._states.extend([None] * (cap - self._cap))
        self._cap = cap

    def __len__(self) -> int:
        return self._count

    def add(self, ring: BackRing, fast: FastRing | None = None) -> int:
        """Watch ``ring`` (answered by ``fast``'s table in ``spin_serving``);
        returns its slot."""
        ring._live()
        if not self._free:
            self._grow(self._cap * 2)
        slot = self._free.pop()
        self._rings[slot] = ring._c
        self._owners[slot] = ring  # keeps the C state alive while it is watched
        self._fast[slot] = fast._c if fast is not None else ffi.NULL
        self._states[slot] = fast
        self._count += 1
        return slot

    def discard(self, slot: int) -> None:
        """Stop watching ``slot`` (idempotent)."""
        if self._owners[slot] is None:
            return
        self._rings[slot] = ffi.NULL
        self._fast[slot] = ffi.NULL
        self._owners[slot] = None
        self._states[slot] = None
        self._free.append(slot)
        self._count -= 1

    def spin(self, spin_ns: int) -> list[int]:
        """Spin for up to ``spin_ns`` until some watched ring has requests
        (or an impossible req_prod, which its owner's pop reports); returns
        their slots, [] when the window ended with none."""
        n = check(lib.teeif_back_spin_any(self._rings, self._cap, spin_ns, self._ready))
        return [self._ready[i] for i in range(n)]

    def spin_serving(self, spin_ns: int, table: FastTable | None) -> tuple[list[int], list[int]]:
        """``spin``, with ``table`` answering what it may on the way (GIL
        released throughout): returns (slots with requests left for their
        owners, slots whose rings got answers in C). Ends after ``spin_ns``
        or as soon as a ring has something left for its owner."""
        c_table = table.c_table() if table is not None else ffi.NULL
        n = check(lib.teeif_fast_spin_any(c_table, self._rings, self._fast, self._cap, spin_ns, self._ready,
                                          self._served, self._nserved))
        return [self._ready[i] for i in range(n)], [self._served[i] for i in range(self._nserved[0])]
