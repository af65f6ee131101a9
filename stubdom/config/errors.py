"""Errors of the configuration loader."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """The configuration is invalid.  Raised by :func:`load_config` with every
    problem found, not just the first: each one a string
    ``file:line: key.path: message``.  At startup print them and exit; on a
    reload keep the old configuration and return them to whoever asked."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the configuration:"
        super().__init__("\n".join((head, *self.problems)))
