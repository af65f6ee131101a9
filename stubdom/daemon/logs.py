"""Structured logs: one line per event, ``key=value`` pairs.

    2024-05-01T12:00:00.123 level=info event=domain_created domid=1 ring=/run/x/dom1/ring

Everything a guest can trigger goes through a :class:`GuestLog`, rate-limited
per domain, so a hostile guest cannot flood the log; what it suppressed is
counted and reported on the next line that gets through.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from stubdom.mediator.limits import LOG_BURST, LOG_REFILL_SECONDS

__all__ = ["LOGGER_NAME", "MEDIATOR_LOGGER", "LEVELS", "setup_logging", "event", "GuestLog", "format_fields"]

LOGGER_NAME = "stubdom.daemon"
MEDIATOR_LOGGER = LOGGER_NAME + ".mediator"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def _value(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def format_fields(fields: dict) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        head = f"{t}.{int(record.msecs):03d} level={record.levelname.lower()}"
        if record.name == LOGGER_NAME:
            line = f"{head} {record.getMessage()}"
        else:  # the mediator's own (rate-limited) prose lines
            line = f"{head} event=mediator msg={_value(record.getMessage())}"
        if record.exc_info:
            # keep one line per event: the traceback's lines joined
            tb = self.formatException(record.exc_info).replace("\n", " | ")
            line += f" traceback={_value(tb)}"
        return line


def setup_logging(level: str, stream=None) -> logging.Logger:
    """The daemon's logger writes structured lines to ``stream`` (stderr);
    the mediator is given its child ``stubdom.daemon.mediator``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    return logger


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log one event: ``event=<name>`` then the fields in order."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_fields({"event": name, **fields}))


class GuestLog:
    """Per-domain token bucket in front of :func:`event` (the mediator's
    limits: ``LOG_BURST`` lines, then one per ``LOG_REFILL_SECONDS``)."""

    def __init__(self, logger: logging.Logger, domid: int, *, burst: int = LOG_BURST,
                 refill: float = LOG_REFILL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._domid = domid
        self._burst = burst
        self._refill = refill
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0  # lines dropped since the last one that got through
        self.suppressed_total = 0

    def event(self, level: int, name: str, **fields: object) -> None:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._last) / self._refill)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            self.suppressed_total += 1
            return
        self._tokens -= 1.0
        if self.suppressed:
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        event(self._logger, level, name, domid=self._domid, **fields)
