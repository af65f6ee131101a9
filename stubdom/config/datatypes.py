"""One converter per value type (in the manner of supervisor's datatypes):
each takes the plain value PyYAML constructed and returns the converted
value, or raises :class:`Invalid` with a message that shows the bad value.
The loader adds the file, line and key path.

Every converter also describes itself (``type_name``, ``range_text``) so the
reference documentation and the schema test read the same table."""

from __future__ import annotations

import abc
import difflib
import math
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import cast

__all__ = [
    "Invalid",
    "Converter",
    "Integer",
    "Number",
    "Boolean",
    "Choice",
    "Text",
    "PathValue",
    "UuidValue",
    "closest",
    "show",
]


class Invalid(ValueError):
    """A value the converter refuses; ``str()`` is the whole message."""


def show(value: object) -> str:
    """A value as it was spelled in YAML, with its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a bool)"
    if isinstance(value, int):
        return f"{value} (an int)"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r} (a {type(value).__name__})"


def closest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest choice, or nothing."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Converter(abc.ABC):
    """Base: ``type_name`` reads after "expected" ("an int"); ``range_text``
    is the accepted range for the reference ("" when any value goes)."""

    type_name = "a value"
    range_text = ""

    @abc.abstractmethod
    def __call__(self, value: object) -> object:
        """The converted value, or raises Invalid naming what was wrong."""

    def wrong_type(self, value: object) -> Invalid:
        return Invalid(f"expected {self.type_name}, got {show(value)}")


class Integer(Converter):
    """An int (never a bool) in ``lo..hi``; ``hex_range`` prints the bounds in hex."""

    type_name = "an int"

    def __init__(self, lo: int, hi: int, *, hex_range: bool = False) -> None:
        self.lo, self.hi = lo, hi
        self.range_text = f"{lo:#x}..{hi:#x}" if hex_range else f"{lo}..{hi}"

    def __call__(self, value: object) -> int:
        if type(value) is not int:
            raise self.wrong_type(value)
        if not self.lo <= value <= self.hi:
            raise Invalid(f"{value} is out of range {self.range_text}")
        return value


class Number(Converter):
    """An int or a float (never a bool), finite, ``0 < x <= hi``."""

    type_name = "a number"

    def __init__(self, hi: float) -> None:
        self.hi = hi
        self.range_text = f"0 < x <= {hi:g}"

    def __call__(self, value: object) -> float:
        if type(value) not in (int, float):
            raise self.wrong_type(value)
        number = cast("int | float", value)  # exactly int or float (bool refused), as checked
        if not math.isfinite(number) or not 0 < number <= self.hi:
            raise Invalid(f"{number} is out of range {self.range_text}")
        return float(number)


class Boolean(Converter):
    type_name = "a bool (true or false)"
    range_text = "true, false"

    def __call__(self, value: object) -> bool:
        if type(value) is not bool:
            raise self.wrong_type(value)
        return value


class Choice(Converter):
    """One string among ``choices``; a near miss gets a suggestion."""

    def __init__(self, choices: Iterable[str], *, what: str = "a string") -> None:
        self.choices = tuple(choices)
        self.type_name = what
        self.range_text = ", ".join(self.choices)

    def __call__(self, value: object) -> str:
        if type(value) is not str:
            raise self.wrong_type(value)
        if value not in self.choices:
            raise Invalid(f"{value!r} is not one of {self.range_text}{closest(value, self.choices)}")
        return value


class Text(Converter):
    """A non-empty string of printable characters without whitespace."""

    type_name = "a string"

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.range_text = f"1..{max_len} printable characters, no whitespace"

    def __call__(self, value: object) -> str:
        if type(value) is not str:
            raise self.wrong_type(value)
        if not 1 <= len(value) <= self.max_len or not value.isprintable() or any(
                c.isspace() for c in value):
            raise Invalid(f"{value!r} is not {self.range_text}")
        return value


class PathValue(Converter):
    """A filesystem path; ``~`` expands, a relative one is taken relative to
    ``base`` (the directory of the configuration file)."""

    type_name = "a path (string)"
    range_text = "absolute, ~/..., or relative to the configuration file"

    def __init__(self, base: Path | None = None) -> None:
        self.base = base

    def with_base(self, base: Path | None) -> PathValue:
        return PathValue(base)

    def __call__(self, value: object) -> Path:
        if type(value) is not str:
            raise self.wrong_type(value)
        if not value or "\0" in value:
            raise Invalid(f"{value!r} is not a path")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (self.base or Path.cwd()) / path
        return path


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


class UuidValue(Converter):
    """A UUID in its canonical 8-4-4-4-12 form (the form TA UUIDs are
    written in everywhere, e.g. optee_os's ta/*/user_ta_header_defines.h)."""

    type_name = "a UUID string"
    range_text = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)"

    def __call__(self, value: object) -> uuid.UUID:
        if type(value) is not str:
            raise self.wrong_type(value)
        if not _UUID_RE.match(value):
            raise Invalid(f"{value!r} is not a UUID (expected 8-4-4-4-12 hex digits)")
        return uuid.UUID(value)
