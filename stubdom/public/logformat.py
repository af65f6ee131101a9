"""The one log format of every stubdom-teed command: one line per event on
stderr, ``key=value`` pairs (a value with a space, a quote or an ``=`` in
double quotes), first the time, the level and the event::

    2026-11-25T18:40:11.729 level=info event=domain_created domid=1 ring=/run/x/dom1/ring
    2026-11-25T18:40:12.001 level=warning event=trap_path domid=2 msg="no answer from stubdom-teed within 5 s: ENOTAVAIL"

A line logged with :func:`event` is written as it is. A line some module
logged in prose (``log.warning("d%d: …", domid)``) becomes
``event=<its component> domid=<N> msg="…"``: the component is named after
the logger (``stubdom.platform.gate`` → ``gate``, the trap path's
``stubdom.platform.stubdom`` → ``trap_path``), the ``d<N>: `` prefix by
which every module names the domain a line is about becomes ``domid=N``.

Both the platform and the daemon use it (docs/daemon.md, "Logs"); it is
defined here, owned by neither, so that the two logs read alike.
"""  # noqa: E501 (an example log line is as long as it is)

from __future__ import annotations

import logging
import re
import sys
import time

__all__ = ["LOG_LEVELS", "LOG_LEVEL_HELP", "EventFormatter", "component", "event", "format_fields", "log_to"]

# The levels every command's --log-level takes.
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL_HELP = "debug, info, warning or error: the least severe log line written to stderr"

# Loggers whose name does not make a good event name by its last part.
_COMPONENTS = {"stubdom.platform.stubdom": "trap_path", "stubdom.daemon.mediator": "mediator",
               "stubdom.platform.platform": "platform", "stubdom.platform.run": "platform"}
# "d<domid>: " at the start of a prose line: the domain it is about.
_DOMAIN_PREFIX = re.compile(r"d(\d+): ")
# A line that is already key=value, as event() writes it.
_EVENT_LINE = re.compile(r"event=\S")


def _value(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def format_fields(fields: dict) -> str:
    """``k=v k=v``, values quoted where they must be."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log one event: ``event=<name>`` then the fields in order."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_fields({"event": name, **fields}))


def component(logger_name: str) -> str:
    """The event name of a prose line from ``logger_name``."""
    return _COMPONENTS.get(logger_name) or logger_name.rpartition(".")[2] or "log"


class EventFormatter(logging.Formatter):
    """Every record as one ``key=value`` line (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        head = f"{t}.{int(record.msecs):03d} level={record.levelname.lower()}"
        text = record.getMessage()
        if _EVENT_LINE.match(text):
            line = f"{head} {text}"
        else:
            fields: dict[str, object] = {"event": component(record.name)}
            m = _DOMAIN_PREFIX.match(text)
            if m is not None:
                fields["domid"] = int(m.group(1))
                text = text[m.end():]
            fields["msg"] = text
            line = f"{head} {format_fields(fields)}"
        if record.exc_info:
            # keep one line per event: the traceback's lines joined
            tb = self.formatException(record.exc_info).replace("\n", " | ")
            line += f" traceback={_value(tb)}"
        return line


def log_to(logger: logging.Logger, level: str, stream=None) -> logging.Logger:
    """Make ``logger`` write :class:`EventFormatter` lines at ``level`` (a
    name of :data:`LOG_LEVELS`) to ``stream`` (stderr), and nowhere else."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EventFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger
