"""Errors of the benchmark (each carries the offending value)."""

from __future__ import annotations

__all__ = ["BenchError", "BadOption", "BadProfile", "PlacementUnavailable", "SchemaError"]


class BenchError(Exception):
    """Base class of every benchmark error."""


class BadOption(BenchError):
    def __init__(self, option: str, value: object, why: str) -> None:
        super().__init__(f"{option} {value!r}: {why}")
        self.option = option
        self.value = value


class BadProfile(BenchError):
    """A hardware profile that cannot price the counted operations."""

    def __init__(self, path: object, why: str) -> None:
        super().__init__(f"hardware profile {path}: {why}")
        self.path = path


class PlacementUnavailable(BenchError):
    """A placement that cannot run here (not built yet, missing process);
    reported as skipped with this reason, never faked."""

    def __init__(self, placement: str, why: str) -> None:
        super().__init__(f"placement {placement}: {why}")
        self.placement = placement
        self.reason = why


class SchemaError(BenchError):
    """A result document that does not follow docs/bench-schema.md."""

    def __init__(self, where: str, value: object, why: str) -> None:
        super().__init__(f"{where}: {why} (got {value!r})")
        self.where = where
        self.value = value
