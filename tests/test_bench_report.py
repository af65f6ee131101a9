"""The benchmark's report and plots from a real `stubdom-teed bench --quick`
run (issue 15, items 14-17): the summary comes first and answers the
question, an unmeasured value is "not measured" (and fills in by itself once
measured), percentiles only where the sample supports them, plots whose
axes a reader can use. No timed assertion: latencies are whatever they are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types

import matplotlib.pyplot as plt
import pytest

from stubdom.bench import OPS, validate
from stubdom.bench.counters import MEDIATOR_OPS
from stubdom.bench.plots import STYLE, write_plots
from stubdom.bench.report import NOT_MEASURED, render_report, supported
from stubdom.bench.stubdom_run import StubdomBench

WORKLOADS = ("fast_call", "digest_1p")
PLACEMENTS = ("el2", "stubdom", "stubdom-poll")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """`stubdom-teed bench --quick`, as a user runs it, on two workloads."""
    out = tmp_path_factory.mktemp("quick")
    proc = subprocess.run([sys.executable, "-P", "-m", "stubdom", "bench", "--quick", "--out", str(out),
                           "--workloads", ",".join(WORKLOADS), "--no-progress"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "bench.json").read_text())
    validate(doc)
    if any(doc["placements"][p]["status"] != "ran" for p in PLACEMENTS):
        pytest.skip(f"a placement did not run: {doc['placements']}")
    return out, doc, (out / "report.md").read_text()


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_summary_comes_first_and_answers_el2_against_stubdom(quick):
    _, doc, md = quick
    sections = re.findall(r"^## (.+)$", md, re.M)
    assert sections[0] == "Summary", sections
    summary = _section(md, "Summary")
    profiles = list(doc["profiles"])
    assert len(profiles) >= 2
    header = next(line for line in summary.splitlines() if line.startswith("| workload |"))
    assert header == ("| workload | placement | measured p50 (× el2) | "
                      + " | ".join(f"{p}: projected (× el2; est.)" for p in profiles) + " |")
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| workload")]
    assert len(rows) == len(WORKLOADS) * len(PLACEMENTS)
    for i, line in enumerate(rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        placement = PLACEMENTS[i % len(PLACEMENTS)]
        assert cells[1] == placement
        if placement == "el2":
            assert cells[0] == WORKLOADS[i // len(PLACEMENTS)]
            assert re.fullmatch(r"[\d.]+", cells[2]), cells
        else:
            assert re.fullmatch(r"[\d.]+ \([\d.e+]+×\)", cells[2]), cells  # measured, and × el2
        for projected in cells[3:]:  # every profile: µs, × el2 (not for el2 itself), the share on estimates
            pattern = r"[\d.]+ \(est\. \d+%\)" if placement == "el2" else r"[\d.]+ \([\d.e+]+×; est\. \d+%\)"
            assert re.fullmatch(pattern, projected), projected
    sentences = [line for line in summary.splitlines() if line.startswith("What dominates the difference: ")]
    assert len(sentences) == 1 and sentences[0].endswith(".")
    assert all(f"on {p}" in sentences[0] for p in profiles), sentences[0]


def test_unmeasured_operation_counts_say_so_and_are_never_zero(quick):
    _, doc, md = quick
    for c in doc["cells"]:
        if c["sweep"] == "workloads" and c["placement"] in ("stubdom", "stubdom-poll"):
            for op in MEDIATOR_OPS:
                assert c["ops_per_call"][op] is None, (c["placement"], op)  # null in bench.json, not 0
            proj = c["projected_ns"]["juno-r1-a57"]
            assert proj["borrowed_ops"] == [op for op in OPS if op in MEDIATOR_OPS]
        if c["sweep"] == "workloads" and c["placement"] == "el2":
            assert all(c["ops_per_call"][op] is not None for op in OPS)
    ops = _section(md, "Operations per call (counted in real runs)")
    header = next(line for line in ops.splitlines() if line.startswith("| workload |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    for line in ops.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(columns) or cells[1] not in PLACEMENTS:
            continue
        for op in MEDIATOR_OPS:
            value = cells[columns.index(op)]
            if cells[1] == "el2":
                assert re.fullmatch(r"[\d.]+", value), (line, op)
            else:
                assert value == NOT_MEASURED, (line, op)
    assert f'"{NOT_MEASURED}": the placement does not observe it' in ops


def test_percentiles_only_where_the_sample_supports_them(quick):
    _, doc, md = quick
    table = _section(md, "Latency per workload (1 domain, 1 vCPU)")
    assert "Percentiles are printed only where the sample supports them" in table
    calls = {c["calls"] for c in doc["cells"] if c["sweep"] == "workloads" and c["placement"] in PLACEMENTS}
    assert calls == {60}  # --quick: 3 rounds of 20
    assert supported("p90", 60) and not supported("p99", 60) and not supported("max", 60)
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[1] in PLACEMENTS:
            assert cells[2] == "60"
            assert re.fullmatch(r"[\d.]+", cells[3]) and re.fullmatch(r"[\d.]+", cells[4])  # p50, p90
            assert cells[5:8] == ["(n=60)"] * 3  # p99, p99.9, max: not supported by 60 calls


def test_report_fills_in_counts_once_the_daemon_exports_them(quick):
    """Nothing in the report decides that stubdom's mediator counts are
    missing: a document with them has them printed."""
    _, doc, _ = quick
    filled = json.loads(json.dumps(doc))
    for c in filled["cells"]:
        if c["ops_per_call"]:
            for op in MEDIATOR_OPS:
                if c["ops_per_call"][op] is None:
                    c["ops_per_call"][op] = 7.0
    ops = _section(render_report(filled), "Operations per call (counted in real runs)")
    assert NOT_MEASURED not in ops and "7.00" in ops


def test_a_daemon_that_exports_its_counts_is_counted():
    """StubdomBench takes the daemon's own counts from its stats answer
    (``mediator_ops``) and then counts them as measured."""
    answers = []

    class Toolstack:
        def stats(self, domid=None):
            return answers[-1]

    bench = StubdomBench.__new__(StubdomBench)
    bench.platform = types.SimpleNamespace(placement=types.SimpleNamespace(toolstack=Toolstack()))
    bench.drivers = {1: object()}
    answers.append({"domains": {}})  # today's daemon
    assert bench.counted_ops() == frozenset(OPS) - frozenset(MEDIATOR_OPS)
    answers.append({"domains": {}, "mediator_ops": {"p2m_lookups": 3, "pages_pinned": 2, "pages_unpinned": 2,
                                                    "bytes_copied": 4096}})
    assert bench.counted_ops() == frozenset(OPS)
    assert bench._daemon_ops()["bytes_copied"] == 4096


def _figures(doc, tmp_path, monkeypatch) -> dict:
    """The figures write_plots draws, kept open (by name)."""
    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    names = write_plots(doc, tmp_path)
    for name, num in zip(names, plt.get_fignums()[-len(names):]):
        kept[name] = plt.figure(num)
    return kept


def test_plots_read_on_their_own(quick, tmp_path, monkeypatch):
    _, doc, _ = quick
    figs = _figures(doc, tmp_path, monkeypatch)
    try:
        scaling = figs["scaling.png"].axes
        layouts = [t.get_text() for t in scaling[0].get_xticklabels()]
        assert layouts == ["1×1", "1×2\n2 vCPUs", "2×1\n2 vCPUs"]  # domains × vCPUs: each its own
        domains = [t.get_text() for t in scaling[1].get_xticklabels()]
        assert domains == ["1", "8"]  # the values run, as numbers: no 2×10⁰
        cdf = figs["latency-cdf.png"]
        floors = {}
        for ax in cdf.axes:
            for line in ax.get_lines():
                floors.setdefault(line.get_label(), set()).add(line.get_color())
        assert all(len(colours) == 1 for colours in floors.values()), floors  # one colour per placement
        assert floors["C floor, sleeping (one ring round trip)"] == {STYLE["floor-sleep"]["color"]}
        assert len(cdf.legends) == 1  # one legend for every panel, not one per panel over the curves
        for fig in figs.values():
            assert "calls per cell" in fig.get_suptitle()
    finally:
        for fig in figs.values():
            plt.close(fig)  # monkeypatched away: only the module's calls
        monkeypatch.undo()
        for fig in figs.values():
            plt.close(fig)
