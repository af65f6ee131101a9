"""``stubdom-teed trace FILE...``: read trace files (merging those of
several processes), print the per-stage table of the sampled calls, and
optionally write the merged file and a timeline PNG of one call per scope
(docs/performance.md, "Tracing a call")."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from .summary import CallTrace, calls_in, load_trace, merge_documents, stage_table
from .tracer import write_document

__all__ = ["trace_main", "typical_call"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stubdom-teed trace",
        description="Per-stage breakdown of the calls sampled by --trace (bench, platform, daemon).")
    p.add_argument("files", nargs="+", metavar="FILE", help="Trace Event JSON files (one per process, or merged)")
    p.add_argument("--fn", default=None, metavar="NAME",
                   help="only calls whose first SMC's name contains NAME (e.g. GET_OS_REVISION for fast_call)")
    p.add_argument("--merge", default=None, metavar="OUT", help="write the files merged into one, for Perfetto")
    p.add_argument("--png", default=None, metavar="OUT",
                   help="a timeline of one typical call per scope (needs matplotlib: the bench extra)")
    return p


def typical_call(calls: list[CallTrace]) -> CallTrace:
    """The call whose trap took the median time (ties: the earlier)."""
    def total(c: CallTrace) -> float:
        return c.stages().get(("vCPU", "trap"), 0.0)

    med = statistics.median_low([total(c) for c in calls])
    return next(c for c in calls if total(c) == med)


def trace_main(argv: list[str]) -> int:
    opts = _parser().parse_args(argv)
    try:
        docs = [load_trace(f) for f in opts.files]
    except (OSError, ValueError) as e:
        print(f"stubdom-teed trace: {e}", file=sys.stderr)
        return 2
    doc = docs[0] if len(docs) == 1 else merge_documents(docs)
    if opts.merge:
        write_document(doc, opts.merge)
    groups: dict[tuple, list[CallTrace]] = defaultdict(list)
    for c in calls_in(doc):
        if opts.fn is None or opts.fn in c.fn:
            groups[(c.scope or "", c.fn)].append(c)
    if not groups:
        print("stubdom-teed trace: no sampled call" + (f" of {opts.fn}" if opts.fn else ""), file=sys.stderr)
        return 1
    for (scope, fn), calls in sorted(groups.items()):
        print(f"\n{scope or '(one platform)'} — {fn}: {len(calls)} sampled call(s), median µs\n")
        print("| thread | stage | µs | calls |\n|---|---|---|---|")
        for where, name, us, n in stage_table(calls):
            print(f"| {where} | {name} | {us:.1f} | {n} |")
    if opts.png:
        from .timeline import plot_timelines

        picks = {scope or "(one platform)": typical_call(calls) for (scope, _fn), calls in sorted(groups.items())}
        what = f" ({opts.fn})" if opts.fn else ""
        plot_timelines(picks, Path(opts.png), title=f"one sampled call per placement{what}")
    return 0
