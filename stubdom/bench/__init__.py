"""``stubdom-teed bench``: EL2 vs stub-domain OP-TEE mediation, measured and
projected onto hardware (docs/performance.md; result schema in
docs/bench-schema.md).

    from stubdom.bench import bench_main
    bench_main(["--quick", "--out", "bench-out"])

The command (``bench_main``, ``run_bench`` and its file names, in
``main.py``) is imported when it is first asked for. Latency histograms and
process accounting are stubdom.measure's (shared with the soak run).
"""

from typing import Any

from .counters import MEDIATOR_OPS as MEDIATOR_OPS
from .counters import OPS as OPS
from .counters import CountingTee as CountingTee
from .counters import OpCounter as OpCounter
from .counters import counting_trap as counting_trap
from .counters import per_call as per_call
from .errors import BadOption as BadOption
from .errors import BadProfile as BadProfile
from .errors import BenchError as BenchError
from .errors import PlacementUnavailable as PlacementUnavailable
from .errors import SchemaError as SchemaError
from .layout import Layout as Layout
from .options import BenchOptions as BenchOptions
from .options import parse_options as parse_options
from .placements import PLACEMENT_NAMES as PLACEMENT_NAMES
from .placements import make_placement as make_placement
from .projection import Profile as Profile
from .projection import load_profile as load_profile
from .projection import parse_profile as parse_profile
from .projection import project as project
from .report import render_report as render_report
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import validate as validate
from .workloads import WORKLOADS as WORKLOADS

__all__ = [
    "BadOption",
    "BadProfile",
    "BenchError",
    "BenchOptions",
    "CountingTee",
    "JSON_NAME",
    "Layout",
    "MEDIATOR_OPS",
    "OPS",
    "OpCounter",
    "PLACEMENT_NAMES",
    "PlacementUnavailable",
    "Profile",
    "REPORT_NAME",
    "SCHEMA_VERSION",
    "SchemaError",
    "WORKLOADS",
    "bench_main",
    "counting_trap",
    "load_profile",
    "make_placement",
    "parse_options",
    "parse_profile",
    "per_call",
    "project",
    "render_report",
    "run_bench",
    "validate",
]


def __getattr__(name: str) -> Any:
    # the command, on first use (PEP 562)
    if name in ("JSON_NAME", "REPORT_NAME", "bench_main", "run_bench"):
        from . import main

        return getattr(main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
