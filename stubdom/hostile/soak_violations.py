"""The soak's record of invariant violations: what broke, when, and the
detail (a traceback for an exception).  Thread-safe; bounded so a broken
system cannot turn the record itself into the run's memory growth."""

from __future__ import annotations

import collections
import threading
import time
import traceback

__all__ = ["Violations", "KEEP_PER_KIND"]

# Enough to diagnose any one kind; past it only the count grows.
KEEP_PER_KIND = 20


class Violations:
    """Every violation counted per kind (``what``), the first
    :data:`KEEP_PER_KIND` of each kept in full."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self._lock = threading.Lock()
        self._kept: list[dict] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, what: str, detail: str, exc: BaseException | None = None) -> None:
        entry = {"t_s": round(time.monotonic() - self.t0, 3), "what": what, "detail": detail}
        if exc is not None:
            entry["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
        with self._lock:
            self.counts[what] += 1
            if self.counts[what] <= KEEP_PER_KIND:
                self._kept.append(entry)

    def __len__(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def kinds(self) -> list[str]:
        with self._lock:
            return sorted(self.counts)

    def entries(self) -> list[dict]:
        with self._lock:
            return list(self._kept)
