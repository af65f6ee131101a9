"""Hardware projection: price the counted operations with a hardware profile.

A profile (configs/hw-*.yaml) gives, for every operation in counters.OPS, a
cost in ``ns``, in ``cycles`` (converted at the profile's ``cpu_ghz``) or in
``ns_per_unit`` (bytes), with its ``source`` and whether it is a
``measurement`` or an ``estimate`` (and why). The projected cost of a call
is the sum over operations of (operations per call × cost): the cost of
mediation and transport on that hardware. The secure world's own work (the
TA) is not in it: it is the same under every placement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .counters import OPS
from .errors import BadProfile

__all__ = ["Figure", "Profile", "load_profile", "project", "KINDS"]

KINDS = ("measurement", "estimate")


@dataclass(frozen=True)
class Figure:
    op: str
    ns: float  # cost of one operation (one byte for bytes_copied), in ns
    kind: str
    source: str
    note: str = ""

    def to_json(self) -> dict:
        return {"ns": self.ns, "kind": self.kind, "source": self.source, "note": self.note}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    cpu_ghz: float
    figures: dict[str, Figure]
    path: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "cpu_ghz": self.cpu_ghz,
                "path": self.path, "figures": {op: f.to_json() for op, f in self.figures.items()}}


def _figure(path, op: str, raw: object, ghz: float) -> Figure:
    if not isinstance(raw, dict):
        raise BadProfile(path, f"costs.{op} must be a mapping, got {raw!r}")
    units = [k for k in ("ns", "cycles", "ns_per_unit") if k in raw]
    if len(units) != 1:
        raise BadProfile(path, f"costs.{op} needs exactly one of ns / cycles / ns_per_unit, got {sorted(raw)}")
    value = raw[units[0]]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadProfile(path, f"costs.{op}.{units[0]} must be a non-negative number, got {value!r}")
    ns = value / ghz if units[0] == "cycles" else float(value)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise BadProfile(path, f"costs.{op}.kind must be one of {KINDS}, got {kind!r}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise BadProfile(path, f"costs.{op}.source must name where the figure comes from")
    note = raw.get("note", "")
    if kind == "estimate" and not str(note).strip():
        raise BadProfile(path, f"costs.{op} is an estimate: its note must say why")
    return Figure(op, ns, kind, source.strip(), str(note).strip())


def parse_profile(doc: Mapping, path: object = "<memory>") -> Profile:
    if not isinstance(doc, Mapping):
        raise BadProfile(path, f"top level must be a mapping, got {type(doc).__name__}")
    ghz = doc.get("cpu_ghz")
    if isinstance(ghz, bool) or not isinstance(ghz, int | float) or ghz <= 0:
        raise BadProfile(path, f"cpu_ghz must be a positive number, got {ghz!r}")
    costs = doc.get("costs")
    if not isinstance(costs, Mapping):
        raise BadProfile(path, "costs must be a mapping of operation -> figure")
    unknown = sorted(set(costs) - set(OPS))
    missing = [op for op in OPS if op not in costs]
    if unknown or missing:
        raise BadProfile(path, f"costs must price exactly the counted operations; unknown {unknown}, "
                               f"missing {missing}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise BadProfile(path, f"name must be a non-empty string, got {name!r}")
    return Profile(name, str(doc.get("description", "")).strip(), float(ghz),
                   {op: _figure(path, op, costs[op], float(ghz)) for op in OPS}, str(path))


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BadProfile(path, str(e)) from None
    return parse_profile(doc, path)


def project(ops_per_call: Mapping[str, float | None], profile: Profile) -> dict:
    """{"total_ns", "by_op": {op: ns}, "estimated_share"}: the projected cost
    of one call and how much of it rests on estimates rather than measurements."""
    by_op = {}
    for op in OPS:
        n = ops_per_call.get(op) or 0.0
        by_op[op] = n * profile.figures[op].ns
    total = sum(by_op.values())
    estimated = sum(v for op, v in by_op.items() if profile.figures[op].kind == "estimate")
    return {"total_ns": total, "by_op": by_op, "estimated_share": (estimated / total) if total else 0.0}
