"""Rate-limited logging of things a guest can trigger, per domain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .limits import LOG_BURST, LOG_REFILL_SECONDS

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """A token bucket in front of a logger: ``burst`` lines, then one per
    ``refill`` seconds; suppressed lines are counted and reported with the
    next line that gets through, so nothing is silently lost."""

    def __init__(self, logger: logging.Logger, prefix: str, *, burst: int = LOG_BURST,
                 refill: float = LOG_REFILL_SECONDS,
                 clock: Callable[[], float] | None = None) -> None:
        """``clock``: seconds, monotonic (None: time.monotonic)."""
        clock = clock or time.monotonic
        self._logger = logger
        self._prefix = prefix
        self._burst = burst
        self._refill = refill
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.emitted = 0
        self.suppressed = 0
        self._pending_suppressed = 0

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._last) / self._refill)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        if not self._take():
            self.suppressed += 1
            self._pending_suppressed += 1
            return
        self.emitted += 1
        if self._pending_suppressed:
            msg += f" ({self._pending_suppressed} similar lines suppressed)"
            self._pending_suppressed = 0
        self._logger.log(level, self._prefix + msg, *args, exc_info=exc_info)

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=exc_info)
