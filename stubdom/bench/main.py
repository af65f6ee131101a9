"""``stubdom-teed bench``: run, then write bench.json, report.md and the PNGs."""

from __future__ import annotations

import datetime
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

import ring
from stubdom.hostile import AttackOutcomeWrong
from stubdom.measure import latency, machine_description
from stubdom.public.logformat import log_to
from stubdom.trace import TRACER, merge_documents, write_document
from stubdom.workloads import WorkloadFailed

from .baseline import load_baseline
from .errors import BenchError
from .options import BenchOptions, parse_options
from .plots import write_plots
from .projection import load_profile
from .report import render_report
from .results import build_document
from .runner import Runner
from .schema import validate

__all__ = ["bench_main", "run_bench", "JSON_NAME", "REPORT_NAME"]

JSON_NAME = "bench.json"
REPORT_NAME = "report.md"


def run_bench(opts: BenchOptions, argv: list[str] | None = None) -> dict:
    """Run the benchmark described by ``opts``; write and return the document."""
    profiles = [load_profile(p) for p in opts.hw_profiles]
    baseline = None if opts.baseline is None else load_baseline(opts.baseline)  # refused before the run
    machine = machine_description()
    # what the polled paths' steps cost here, on the platform's CPU (docs/performance.md,
    # "Machine dependence"): the polled ratios move with these between machines
    cpus = opts.cpu_pair()
    machine["probes"] = ring.probe_machine(cpus[0] if cpus else None).to_json()
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runner = Runner(opts)
    bar = tqdm(total=runner.total_blocks(), desc="bench", unit="block", file=sys.stderr,
               disable=not opts.progress, leave=False)
    runner._progress = bar
    try:
        with tempfile.TemporaryDirectory(prefix="stubdom-bench-", dir=opts.work_base()) as root:
            runner.run(Path(root))
    finally:
        bar.close()
        TRACER.disable()
    if opts.trace is not None:
        docs = [(TRACER.document(), None), *runner.trace_documents]
        write_document(merge_documents([d for d, _ in docs], [label for _, label in docs]), opts.trace)
        TRACER.clear()
    cdfs: dict = {}
    for c in runner.cells:
        if c.sweep == "workloads" and c.calls:
            cdfs.setdefault(c.workload, {})[c.placement] = latency.cdf_points(c.hist)
    doc = build_document(runner, opts, argv=list(argv or []), machine=machine, created=created,
                         elapsed_s=time.perf_counter() - t0, profiles=profiles, cdfs=cdfs)
    doc["baseline"] = baseline
    validate(doc)
    (out / JSON_NAME).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    plots = write_plots(doc, out)
    (out / REPORT_NAME).write_text(render_report(doc, plots))
    return doc


def bench_main(argv: list[str]) -> int:
    """Entry point of ``stubdom-teed bench``: 0 on success (rows of the
    attacks sweep over their bound included: that is a measurement), 1 when
    a workload got a wrong answer or an attack a wrong outcome, 2 on bad
    options or profiles."""
    try:
        opts = parse_options(list(argv))
    except BenchError as e:
        print(f"stubdom-teed bench: {e}", file=sys.stderr)
        return 2
    log_to(logging.getLogger("stubdom"), opts.log_level)
    try:
        doc = run_bench(opts, argv)
    except WorkloadFailed as e:
        print(f"stubdom-teed bench: wrong answer: {e}", file=sys.stderr)
        return 1
    except AttackOutcomeWrong as e:
        print(f"stubdom-teed bench: wrong outcome: {e}", file=sys.stderr)
        return 1
    except BenchError as e:
        print(f"stubdom-teed bench: {e}", file=sys.stderr)
        return 2
    ran = [n for n, p in doc["placements"].items() if p["status"] == "ran"]
    skipped = [n for n, p in doc["placements"].items() if p["status"] == "skipped"]
    if doc["cells"]:
        print(f"bench: {len(doc['cells'])} cells over {', '.join(ran)}"
              + (f" (skipped: {', '.join(skipped)})" if skipped else "")
              + f" in {doc['elapsed_s']:.1f} s -> {opts.out / JSON_NAME}, {opts.out / REPORT_NAME}")
    else:
        print(f"bench: {doc['elapsed_s']:.1f} s -> {opts.out / JSON_NAME}, {opts.out / REPORT_NAME}")
    if doc.get("attacks") is not None:
        att = doc["attacks"]
        print(f"bench: attacks: {att['rows_over_bound']} of {len(att['rows'])} bystander rows over the bound")
    return 0
