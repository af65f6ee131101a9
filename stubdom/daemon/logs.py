"""Structured logs: one line per event, ``key=value`` pairs.

    2024-05-01T12:00:00.123 level=info event=domain_created domid=1 ring=/run/x/dom1/ring

Everything a guest can trigger goes through a :class:`GuestLog`, rate-limited
per domain, so a hostile guest cannot flood the log; what it suppressed is
counted and reported on the next line that gets through.

Levels work as Xen's ``loglvl`` / ``guest_loglvl``: the daemon's level
(``--log-level``, ``mediator.log_level``) governs the daemon's own events;
each domain's policy ``log_level`` governs the lines that domain's calls
trigger — the daemon's (:class:`GuestLog`) and the mediator's
(:class:`DomainLevelFilter`) — so one domain can be traced or silenced
without touching the others.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from stubdom.mediator.limits import LOG_BURST, LOG_REFILL_SECONDS
from stubdom.public.logformat import event, format_fields, log_to

__all__ = ["LOGGER_NAME", "MEDIATOR_LOGGER", "LEVELS", "setup_logging", "event", "GuestLog",
           "DomainLevelFilter", "format_fields"]

LOGGER_NAME = "stubdom.daemon"
MEDIATOR_LOGGER = LOGGER_NAME + ".mediator"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def setup_logging(level: str, stream=None) -> logging.Logger:
    """The daemon's logger writes structured lines to ``stream`` (stderr);
    the mediator is given its child ``stubdom.daemon.mediator``."""
    logger = log_to(logging.getLogger(LOGGER_NAME), level, stream)
    # The mediator's lines are judged by DomainLevelFilter (a domain's level
    # may be below the daemon's), not by an inherited logger level.
    logging.getLogger(MEDIATOR_LOGGER).setLevel(logging.DEBUG)
    return logger


class GuestLog:
    """Per-domain token bucket in front of :func:`event` (the mediator's
    limits: ``LOG_BURST`` lines, then one per ``LOG_REFILL_SECONDS``).

    ``level`` is the domain's policy ``log_level`` (set by the daemon at
    domain_create and on reload): a line below it is dropped before it takes
    a token; a line at or above it is written whatever the daemon's level.
    """

    def __init__(self, logger: logging.Logger, domid: int, *, level: int = logging.INFO,
                 burst: int = LOG_BURST, refill: float = LOG_REFILL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._domid = domid
        self.level = level
        self._burst = burst
        self._refill = refill
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0  # lines dropped since the last one that got through
        self.suppressed_total = 0

    def event(self, level: int, name: str, **fields: object) -> None:
        if level < self.level:
            return
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
        line = format_fields({"event": name, "domid": self._domid, **fields})
        # the domain's level decided: past the logger's own level check
        self._logger.handle(self._logger.makeRecord(self._logger.name, level, __file__, 0, "%s",
                                                    (line,), None))


# The mediator prefixes every line about a domain with "d<domid>: ".
_DOMAIN_PREFIX = re.compile(r"d(\d+): ")


class DomainLevelFilter(logging.Filter):
    """On the mediator's logger: a line about a domain passes when it is at
    or above that domain's level (``level_of(domid)``, None for a domain the
    daemon does not serve); any other line when it is at or above
    ``daemon_level``."""

    def __init__(self, level_of: Callable[[int], int | None], daemon_level: int) -> None:
        super().__init__()
        self._level_of = level_of
        self.daemon_level = daemon_level

    def filter(self, record: logging.LogRecord) -> bool:
        m = _DOMAIN_PREFIX.match(record.msg) if isinstance(record.msg, str) else None
        level = self._level_of(int(m.group(1))) if m is not None else None
        return record.levelno >= (self.daemon_level if level is None else level)
