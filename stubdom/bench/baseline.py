"""A previous run to compare against (``--baseline OLD/bench.json``): what
of it the report needs, kept in the new bench.json so that the report can
be rendered again from that file alone.

The comparison is of ratios to el2, measured and projected, per workload at
1 domain and 1 vCPU: the answer the benchmark gives. Both runs' absolute
el2 p50 are shown too, so that a ratio that moved because el2 moved is seen
as such.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .errors import BadOption, SchemaError

__all__ = ["summarize", "load_baseline", "validate_baseline", "BASELINE_KEYS"]

BASELINE_KEYS: dict[str, type | tuple[type, ...]] = {
    "path": str, "created": str, "argv": list, "mediator_profile": (str, type(None)), "cells": dict}


def summarize(doc: Mapping, path: str) -> dict:
    """The part of a result document a later report compares with."""
    cells: dict[str, dict[str, dict]] = {}
    for c in doc.get("cells", ()):
        if c.get("sweep") != "workloads" or not c.get("calls"):
            continue
        if (c.get("domains"), c.get("vcpus_per_domain")) != (1, 1):
            continue
        proj = {name: p["total_ns"] for name, p in (c.get("projected_ns") or {}).items()
                if isinstance(p, Mapping) and isinstance(p.get("total_ns"), (int, float))}
        cells.setdefault(c["workload"], {})[c["placement"]] = {"p50_ns": c["latency_ns"]["p50"],
                                                                "projected_ns": proj}
    options = doc.get("options") or {}
    return {"path": path, "created": str(doc.get("created", "?")), "argv": list(doc.get("argv") or []),
            "mediator_profile": options.get("mediator_profile"), "cells": cells}


def load_baseline(path: Path) -> dict:
    """Read ``path`` (a bench.json) into a baseline, or BadOption saying why not."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise BadOption("--baseline", str(path), f"cannot read it: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise BadOption("--baseline", str(path), f"not JSON: line {e.lineno}: {e.msg}") from e
    if not isinstance(doc, Mapping) or not isinstance(doc.get("cells"), list):
        raise BadOption("--baseline", str(path), "not a stubdom-teed bench.json (no cells)")
    base = summarize(doc, str(path))
    if not base["cells"]:
        raise BadOption("--baseline", str(path), "has no workloads cell at 1 domain, 1 vCPU to compare with")
    return base


def validate_baseline(where: str, base: object) -> None:
    """The ``baseline`` section of a result document (null or this shape)."""
    if base is None:
        return
    if not isinstance(base, Mapping):
        raise SchemaError(where, base, "expected an object or null")
    for key, typ in BASELINE_KEYS.items():
        if key not in base:
            raise SchemaError(f"{where}.{key}", None, "missing")
        if not isinstance(base[key], typ):
            raise SchemaError(f"{where}.{key}", base[key], f"expected {typ}")
    for wl, by_pl in base["cells"].items():
        for pl, cell in by_pl.items():
            w = f"{where}.cells.{wl}.{pl}"
            if not isinstance(cell, Mapping) or not isinstance(cell.get("p50_ns"), (int, float)):
                raise SchemaError(f"{w}.p50_ns", cell, "expected a number")
            if not isinstance(cell.get("projected_ns"), Mapping):
                raise SchemaError(f"{w}.projected_ns", cell.get("projected_ns"), "expected an object")
