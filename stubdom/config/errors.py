"""Errors of the configuration loader."""

from __future__ import annotations

__all__ = ["ConfigError", "BadTeeConfig"]


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


class BadTeeConfig(ValueError):
    """Raised by :class:`~stubdom.config.tee.TeeConfig` (and by
    :class:`stubdom.tee.OpteeModel` when the config does not fit the
    machine) for a value no OP-TEE build could have; fix the named field."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"TeeConfig.{field} = {value!r}: {why}")
