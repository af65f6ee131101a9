"""The result document's schema (docs/bench-schema.md) as code: the version
and a validator that the tests and ``bench_main`` run on every document."""

from __future__ import annotations

from collections.abc import Mapping

from .counters import OPS
from .errors import SchemaError
from .latency import PERCENTILES

__all__ = ["SCHEMA_VERSION", "validate", "TOP_LEVEL", "CELL_KEYS"]

SCHEMA_VERSION = 1

TOP_LEVEL = {
    "schema_version": int, "tool": str, "created": str, "argv": list, "options": dict, "machine": dict,
    "process_layout": dict, "placements": dict, "cells": list, "ratios": list, "profiles": dict,
    "targets": list, "notes": list, "elapsed_s": float,
}
CELL_KEYS = {
    "sweep": str, "domains": int, "vcpus_per_domain": int, "vcpus_total": int, "pages_per_domain": int,
    "workload": str, "placement": str, "issue": str, "calls": int, "latency_ns": dict,
    "throughput_per_s": (float, type(None)), "cpu_ns_per_call": dict, "ops_per_call": (dict, type(None)),
    "notifications_per_call": (dict, type(None)), "wakeups_per_call": (dict, type(None)),
    "ring_batch": (dict, type(None)), "rss_kib": dict, "projected_ns": (dict, type(None)),
}
_SWEEPS = ("workloads", "vcpus", "scale")
_PLACEMENTS = ("el2", "stubdom", "stubdom-poll", "floor-sleep", "floor-poll")


def _check(where: str, value: object, typ) -> None:
    if isinstance(value, bool) or not isinstance(value, typ):
        raise SchemaError(where, value, f"expected {typ}")


def validate(doc: Mapping) -> None:
    """Raise SchemaError at the first departure from docs/bench-schema.md."""
    _check("$", doc, Mapping)
    for key, typ in TOP_LEVEL.items():
        if key not in doc:
            raise SchemaError(f"$.{key}", None, "missing")
        _check(f"$.{key}", doc[key], typ)
    if doc["schema_version"] != SCHEMA_VERSION:
        raise SchemaError("$.schema_version", doc["schema_version"], f"this validator reads {SCHEMA_VERSION}")
    for name, entry in doc["placements"].items():
        _check(f"$.placements.{name}", entry, Mapping)
        if entry.get("status") not in ("ran", "skipped"):
            raise SchemaError(f"$.placements.{name}.status", entry.get("status"), "must be ran or skipped")
        if entry["status"] == "skipped" and not entry.get("reason"):
            raise SchemaError(f"$.placements.{name}.reason", None, "a skipped placement says why")
    for i, cell in enumerate(doc["cells"]):
        w = f"$.cells[{i}]"
        _check(w, cell, Mapping)
        for key, typ in CELL_KEYS.items():
            if key not in cell:
                raise SchemaError(f"{w}.{key}", None, "missing")
            _check(f"{w}.{key}", cell[key], typ)
        if cell["sweep"] not in _SWEEPS:
            raise SchemaError(f"{w}.sweep", cell["sweep"], f"one of {_SWEEPS}")
        if cell["placement"] not in _PLACEMENTS:
            raise SchemaError(f"{w}.placement", cell["placement"], f"one of {_PLACEMENTS}")
        lat = cell["latency_ns"]
        for key in (*PERCENTILES, "max", "min", "mean", "count"):
            if key not in lat:
                raise SchemaError(f"{w}.latency_ns.{key}", None, "missing")
            _check(f"{w}.latency_ns.{key}", lat[key], (int, float))
        if lat["count"] != cell["calls"]:
            raise SchemaError(f"{w}.latency_ns.count", lat["count"], f"differs from calls {cell['calls']}")
        order = [lat[k] for k in ("min", *PERCENTILES, "max")]
        if cell["calls"] and order != sorted(order):
            raise SchemaError(f"{w}.latency_ns", lat, "percentiles must not decrease")
        if cell["ops_per_call"] is not None and set(cell["ops_per_call"]) != set(OPS):
            raise SchemaError(f"{w}.ops_per_call", sorted(cell["ops_per_call"]), f"keys must be {OPS}")
    for i, r in enumerate(doc["ratios"]):
        for key in ("sweep", "workload", "placement", "p50_ratio_to_el2", "p99_ratio_to_el2",
                    "overhead_over_floor"):
            if key not in r:
                raise SchemaError(f"$.ratios[{i}].{key}", None, "missing")
    for i, t in enumerate(doc["targets"]):
        if t.get("status") not in ("met", "missed", "not measured"):
            raise SchemaError(f"$.targets[{i}].status", t.get("status"), "met, missed or not measured")
