"""The result document's schema (docs/bench-schema.md) as code: the version
and a validator that the tests and ``bench_main`` run on every document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stubdom.measure import PERCENTILES

from .baseline import validate_baseline
from .counters import OPS
from .errors import SchemaError

__all__ = ["SCHEMA_VERSION", "validate", "TOP_LEVEL", "CELL_KEYS", "ATTACK_ROW_KEYS"]

SCHEMA_VERSION = 1

# what a key's value must be: a type, or a tuple of them (isinstance's second argument)
_Types = type | tuple[type, ...]

TOP_LEVEL: dict[str, _Types] = {
    "schema_version": int, "tool": str, "created": str, "argv": list, "options": dict, "machine": dict,
    "process_layout": dict, "placements": dict, "cells": list, "ratios": list, "profiles": dict,
    "targets": list, "notes": list, "elapsed_s": float,
}
CELL_KEYS: dict[str, _Types] = {
    "sweep": str, "domains": int, "vcpus_per_domain": int, "vcpus_total": int, "pages_per_domain": int,
    "workload": str, "placement": str, "issue": str, "calls": int, "latency_ns": dict,
    "throughput_per_s": (float, type(None)), "cpu_ns_per_call": dict, "ops_per_call": (dict, type(None)),
    "notifications_per_call": (dict, type(None)), "wakeups_per_call": (dict, type(None)),
    "ring_batch": (dict, type(None)), "rss_kib": dict, "projected_ns": (dict, type(None)),
}
_SWEEPS = ("workloads", "vcpus", "scale")
# The optional ``attacks`` section (``--sweeps attacks``): null or an object.
ATTACKS_KEYS: dict[str, _Types] = {
    "bound": dict, "limits": dict, "attacks": dict, "workloads": list, "rounds": int, "block": int,
    "block_min_s": float,
    "placements": dict, "quiet": list, "rows": list, "rows_over_bound": int, "blocks": list,
}
QUIET_KEYS: dict[str, _Types] = {
    "placement": str, "workload": str, "calls": int, "latency_ns": dict, "block_p50_ns": list,
    "traps_per_call": (int, float), "gate_hypercalls_per_call": (int, float), "lock_takes_per_call": (int, float),
}
# Added to the attacks section since it was first written: the bystander's
# throughput (calls per second of block wall time) and the attacks that run
# from a domain with limits of their own.
ATTACKS_OPTIONAL: dict[str, _Types] = {"own_limits": dict}
QUIET_OPTIONAL: dict[str, _Types] = {"calls_per_s": (float, type(None))}
ATTACK_ROW_OPTIONAL: dict[str, _Types] = {
    "calls_per_s": (float, type(None)), "throughput_to_quiet": (float, type(None)),
}
ATTACK_ROW_KEYS: dict[str, _Types] = {
    "placement": str, "attack": str, "workload": str, "calls": int, "latency_ns": dict,
    "quiet_p50_ns": (int, float), "quiet_p99_ns": (int, float), "lock_takes_per_call": (int, float),
    "contenders": int, "lock_wait_allowance_ns": (int, float), "bound_p50_ns": (int, float),
    "bound_p99_ns": (int, float),
    "p50_ratio_to_quiet": (float, type(None)), "p99_ratio_to_quiet": (float, type(None)),
    "over_p50": bool, "over_p99": bool, "over": bool,
    "attacker_iterations": int, "attacker_iterations_per_s": (float, type(None)),
}
# machine.probes (ring.probe_machine): nanoseconds, the turns timed, the CPU
PROBE_KEYS: dict[str, _Types] = {
    "syscall_ns": int, "yield_alone_ns": int, "turn_p50_ns": int, "turn_p90_ns": int, "turns": int,
    "cpu": (int, type(None)),
}
_PLACEMENTS = ("el2", "stubdom", "stubdom-poll", "floor-sleep", "floor-poll")


def _check(where: str, value: object, typ: _Types) -> None:
    if typ is bool:
        if not isinstance(value, bool):
            raise SchemaError(where, value, "expected a boolean")
        return
    if isinstance(value, bool) or not isinstance(value, typ):
        raise SchemaError(where, value, f"expected {typ}")


def _mapping(where: str, value: object) -> Mapping[str, Any]:
    """``value``, checked to be an object (a JSON document's: its values
    are checked key by key)."""
    if not isinstance(value, Mapping):
        raise SchemaError(where, value, f"expected {Mapping}")  # _check's words
    return value


def _latency(where: str, value: object, calls: int) -> None:
    lat = _mapping(where, value)
    for key in (*PERCENTILES, "max", "min", "mean", "count"):
        if key not in lat:
            raise SchemaError(f"{where}.{key}", None, "missing")
        _check(f"{where}.{key}", lat[key], (int, float))
    if lat["count"] != calls:
        raise SchemaError(f"{where}.count", lat["count"], f"differs from calls {calls}")
    order = [lat[k] for k in ("min", *PERCENTILES, "max")]
    if calls and order != sorted(order):
        raise SchemaError(where, lat, "percentiles must not decrease")


def _keys(where: str, value: object, keys: Mapping[str, _Types],
          optional: Mapping[str, _Types] | None = None) -> None:
    """Every key of ``keys`` present with its type; those of ``optional``
    (added since documents were first written) typed when present."""
    obj = _mapping(where, value)
    for key, typ in keys.items():
        if key not in obj:
            raise SchemaError(f"{where}.{key}", None, "missing")
        _check(f"{where}.{key}", obj[key], typ)
    for key, typ in (optional or {}).items():
        if key in obj:
            _check(f"{where}.{key}", obj[key], typ)


def _validate_attacks(sec: Mapping[str, Any]) -> None:
    """The attacks section; the bound of every row must be the one its
    recorded numbers give (docs/bench-schema.md)."""
    _keys("$.attacks", sec, ATTACKS_KEYS, ATTACKS_OPTIONAL)
    bound = sec["bound"]
    for key in ("share", "switch_interval_ns", "p50", "p99", "allowance"):
        if key not in bound:
            raise SchemaError(f"$.attacks.bound.{key}", None, "missing")
    for name, entry in sec["placements"].items():
        if not isinstance(entry, Mapping) or entry.get("status") not in ("ran", "skipped"):
            raise SchemaError(f"$.attacks.placements.{name}", entry, "status ran or skipped")
    quiet = {}
    for i, q in enumerate(sec["quiet"]):
        w = f"$.attacks.quiet[{i}]"
        _keys(w, q, QUIET_KEYS, QUIET_OPTIONAL)
        _latency(f"{w}.latency_ns", q["latency_ns"], q["calls"])
        quiet[(q["placement"], q["workload"])] = q
    over = 0
    for i, r in enumerate(sec["rows"]):
        w = f"$.attacks.rows[{i}]"
        _keys(w, r, ATTACK_ROW_KEYS, ATTACK_ROW_OPTIONAL)
        _latency(f"{w}.latency_ns", r["latency_ns"], r["calls"])
        if r["attack"] not in sec["attacks"]:
            raise SchemaError(f"{w}.attack", r["attack"], f"one of {sorted(sec['attacks'])}")
        q = quiet.get((r["placement"], r["workload"]))
        if q is None:
            raise SchemaError(w, (r["placement"], r["workload"]), "no quiet record for this placement and workload")
        ql = q["latency_ns"]
        allowance = q["lock_takes_per_call"] * r["contenders"] * bound["switch_interval_ns"]
        want = {
            "quiet_p50_ns": ql["p50"], "quiet_p99_ns": ql["p99"], "lock_takes_per_call": q["lock_takes_per_call"],
            "lock_wait_allowance_ns": allowance,
            "bound_p50_ns": bound["share"] * ql["p50"] + allowance,
            "bound_p99_ns": bound["share"] * ql["p99"] + allowance,
        }
        for key, v in want.items():
            if abs(r[key] - v) > 1e-6 * max(1.0, abs(v)):
                raise SchemaError(f"{w}.{key}", r[key], f"the recorded numbers give {v}")
        flags = {"over_p50": r["latency_ns"]["p50"] > want["bound_p50_ns"],
                 "over_p99": r["latency_ns"]["p99"] > want["bound_p99_ns"]}
        flags["over"] = flags["over_p50"] or flags["over_p99"]
        for key, v in flags.items():
            if r[key] != v:
                raise SchemaError(f"{w}.{key}", r[key], f"the recorded numbers give {v}")
        over += flags["over"]
    if sec["rows_over_bound"] != over:
        raise SchemaError("$.attacks.rows_over_bound", sec["rows_over_bound"], f"{over} rows are over the bound")


def validate(doc: Mapping[str, Any]) -> None:
    """Raise SchemaError at the first departure from docs/bench-schema.md."""
    _check("$", doc, Mapping)
    for key, typ in TOP_LEVEL.items():
        if key not in doc:
            raise SchemaError(f"$.{key}", None, "missing")
        _check(f"$.{key}", doc[key], typ)
    validate_baseline("$.baseline", doc.get("baseline"))  # optional: --baseline
    if doc["schema_version"] != SCHEMA_VERSION:
        raise SchemaError("$.schema_version", doc["schema_version"], f"this validator reads {SCHEMA_VERSION}")
    probes = doc["machine"].get("probes")  # optional: runs before the probes have none
    if probes is not None:
        _check("$.machine.probes", probes, Mapping)
        for key, typ in PROBE_KEYS.items():
            if key not in probes:
                raise SchemaError(f"$.machine.probes.{key}", None, "missing")
            _check(f"$.machine.probes.{key}", probes[key], typ)
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
        _latency(f"{w}.latency_ns", cell["latency_ns"], cell["calls"])
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
    if doc.get("attacks") is not None:
        _validate_attacks(doc["attacks"])
