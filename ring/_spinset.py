"""One spin over many back rings: a backend that serves many domains from
one thread watches all of its idle rings at once instead of spinning on each
in turn (docs/protocol.md, "Adaptive polling")."""

from ring._back import BackRing
from ring._lib import check, ffi, lib

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
        self._owners: list[BackRing | None] = []
        self._free: list[int] = []
        self._count = 0
        self._grow(max(1, capacity))

    def _grow(self, cap: int) -> None:
        rings = ffi.new("struct teeif_back_ring *[]", cap)
        ffi.memmove(rings, self._rings, self._cap * ffi.sizeof("struct teeif_back_ring *"))
        self._rings, self._ready = rings, ffi.new("uint32_t[]", cap)
        self._free.extend(range(cap - 1, self._cap - 1, -1))
        self._owners.extend([None] * (cap - self._cap))
        self._cap = cap

    def __len__(self) -> int:
        return self._count

    def add(self, ring: BackRing) -> int:
        """Watch ``ring``; returns its slot."""
        ring._live()
        if not self._free:
            self._grow(self._cap * 2)
        slot = self._free.pop()
        self._rings[slot] = ring._c
        self._owners[slot] = ring  # keeps the C state alive while it is watched
        self._count += 1
        return slot

    def discard(self, slot: int) -> None:
        """Stop watching ``slot`` (idempotent)."""
        if self._owners[slot] is None:
            return
        self._rings[slot] = ffi.NULL
        self._owners[slot] = None
        self._free.append(slot)
        self._count -= 1

    def spin(self, spin_ns: int) -> list[int]:
        """Spin for up to ``spin_ns`` until some watched ring has requests
        (or an impossible req_prod, which its owner's pop reports); returns
        their slots, [] when the window ended with none."""
        n = check(lib.teeif_back_spin_any(self._rings, self._cap, spin_ns, self._ready))
        return [self._ready[i] for i in range(n)]
