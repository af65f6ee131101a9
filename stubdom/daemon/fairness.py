"""Fair service between domains (docs/daemon.md, "Fair service").

The stub domain is one vCPU that every domain's calls share. A call whose
page lists take long to translate is cut into steps (the mediator yields
between them); at each step the daemon lets every other ready domain run
first. That alone is not fair to a domain whose guest issues one call at a
time: between its answer and its next request its frontend needs a while
(its vCPU wakes, handles the answer, traps again), and a heavy domain with
steps left would fill every such gap — "deceptive idleness", the problem an
anticipatory disk scheduler solves (Iyer and Druschel, SOSP 2001). So a
domain answered less than ``window_ns`` ago keeps the first claim on the
daemon: a heavy call's next step waits (looking at the rings) until that
domain's next request has been served, or the window has passed. A domain
that stops calling costs the others one window at most, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

__all__ = ["FairShare", "ANTICIPATION_NS"]

# How long a domain's next request is waited for after its answer: above the
# turnaround of a synchronous frontend in this simulation (its vCPU thread
# takes the answer, builds the next call and traps again: ~0.1 ms of Python
# beside a busy platform), far below a heavy call (a 4 x 129-page INVOKE
# takes ~2.5 ms to translate). docs/performance.md has the figures.
ANTICIPATION_NS = 250_000


class FairShare:
    """Who may go on next. Lives in the daemon's trio thread."""

    def __init__(self, window_ns: int = ANTICIPATION_NS, *,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        if window_ns < 0:
            raise ValueError(f"FairShare window must be >= 0 ns, got {window_ns}")
        self.window_ns = window_ns
        self._clock = clock
        self._answered: dict[int, int] = {}  # domid -> when its last answer was pushed
        self.turns = 0  # steps of heavy calls that gave way
        self.anticipations = 0  # of them, those that waited for a recently answered domain
        self.anticipated_ns = 0  # time spent so waiting

    def answered(self, domid: int) -> None:
        """``domid``'s answers were just pushed to its ring."""
        self._answered[domid] = self._clock()

    def forget(self, domid: int) -> None:
        self._answered.pop(domid, None)

    async def step(self, domid: int) -> None:
        """Between two steps of a call of ``domid``: every other ready
        domain runs; then, while a domain answered within the window has not
        been served again, ``domid`` waits for it (bounded by the window)."""
        self.turns += 1
        await trio.lowlevel.checkpoint()
        now = self._clock()
        recent = self._recent(domid, now)
        if not recent:
            return
        self.anticipations += 1
        t0 = now
        while any(self._answered.get(d) == t and now - t < self.window_ns for d, t in recent.items()):
            await trio.lowlevel.checkpoint()  # the ring poller looks; a request found is served
            now = self._clock()
        self.anticipated_ns += now - t0

    def _recent(self, domid: int, now: int) -> dict[int, int]:
        recent = {}
        for d, t in list(self._answered.items()):
            if now - t >= self.window_ns:
                del self._answered[d]  # old news: keep the table as small as the busy set
            elif d != domid:
                recent[d] = t
        return recent

    def statistics(self) -> dict:
        return {"window_us": self.window_ns // 1000, "turns": self.turns,
                "anticipations": self.anticipations, "anticipated_us": self.anticipated_ns // 1000}
