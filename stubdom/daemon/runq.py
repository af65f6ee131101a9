"""How many trio tasks are ready to run, asked once per request served.

trio's public answer, ``trio.lowlevel.current_statistics().tasks_runnable``,
comes with the I/O manager's statistics, which count every registered
descriptor: under the blocking placement every served domain's channel is
one, so with 1000 domains each request paid for a walk over 1000 waiters
(1.5 µs per look with a handful of descriptors, measured). The number we
want is the length of trio's run queue, which the same statistics read
from the runner (trio/_core/_run.py, ``Runner.current_statistics``); we
read it there directly. Where a trio release has moved it, the public call
answers instead: the same number, slower.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["tasks_runnable"]


def _public() -> int:
    return trio.lowlevel.current_statistics().tasks_runnable


def _from_runner() -> Callable[[], int] | None:
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT
    except ImportError:
        return None

    def runnable() -> int:
        try:
            return len(GLOBAL_RUN_CONTEXT.runner.runq)
        except AttributeError:  # outside trio.run, or a runner without one
            return _public()

    return runnable


tasks_runnable: Callable[[], int] = _from_runner() or _public
