"""One block of calls, timed: the benchmark's driver, shared by the
workloads sweeps (runner.py) and the attacks sweep (attacks.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["SPIN_BEFORE_NS", "drive_block", "settle"]

SPIN_BEFORE_NS = 500_000  # open loop: sleep until this close to the intended start, then spin


def drive_block(calls: list[Callable[[], None]], n: int, *, rate: float | None,
                round_robin: bool) -> tuple[list[int], int]:
    """Run one block: ``n`` calls per worker (per_vcpu, a thread each) or ``n``
    calls cycling over the workers from one thread (round_robin); ``rate``
    calls per second per worker (open loop: latency from each call's
    intended start) or back to back. Returns the latencies in ns and the
    block's wall time."""
    period = int(1e9 / rate) if rate else 0

    def loop(fns: list[Callable[[], None]], count: int, out: list[int], start: int) -> None:
        clock = time.perf_counter_ns
        k = len(fns)
        for i in range(count):
            fn = fns[i % k]
            if period:
                t0 = start + i * period
                while (d := t0 - clock()) > 0:
                    if d > SPIN_BEFORE_NS:
                        time.sleep((d - SPIN_BEFORE_NS) / 1e9)
            else:
                t0 = clock()
            fn()
            out.append(clock() - t0)

    if round_robin or len(calls) == 1:
        out: list[int] = []
        t = time.perf_counter_ns()
        loop(calls, n, out, t)
        return out, time.perf_counter_ns() - t
    outs: list[list[int]] = [[] for _ in calls]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls) + 1)
    start = [0]

    def worker(i: int) -> None:
        try:
            barrier.wait()
            loop([calls[i]], n, outs[i], start[0])
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,), name=f"vcpu-{i}") for i in range(len(calls))]
    for th in threads:
        th.start()
    start[0] = time.perf_counter_ns()
    barrier.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter_ns() - start[0]
    if errors:
        raise errors[0]
    return [v for o in outs for v in o], wall


def settle(calls: list[Callable[[], None]], budget_ns: int, *, round_robin: bool) -> int:
    """Calls not recorded, back to back, until they have run for
    ``budget_ns`` (at least one per worker): what a block starts with, so
    that it measures its placement in the state its own calls keep it in,
    not in the one the block before (another placement's) left it in.
    Returns the calls made."""
    made, spent, n = 0, 0, len(calls) if round_robin else 1
    while True:
        _, wall = drive_block(calls, n, rate=None, round_robin=round_robin)
        made += n if round_robin else n * len(calls)
        spent += wall
        if spent >= budget_ns:
            return made
        # enough for the rest at the pace just seen, at most four times as many
        n = max(1, min(4 * n, (budget_ns - spent) * n // max(wall, 1) + 1))
