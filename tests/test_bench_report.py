"""The benchmark's report and plots from a real `stubdom-teed bench --quick`
run (issue 15, items 14-17): the summary comes first and answers the
question, every placement's counts are its own (an unmeasured value is "not
measured", never another placement's), percentiles only where the sample supports them, plots whose
axes a reader can use. No timed assertion: latencies are whatever they are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from stubdom.bench import OPS, Layout, load_profile, validate
from stubdom.bench.counters import MEDIATOR_OPS
from stubdom.bench.plots import STYLE, write_plots
from stubdom.bench.report import NOT_MEASURED, render_report, supported
from stubdom.bench.results import _projector
from stubdom.bench.runner import Cell
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


def test_every_placement_is_counted_and_projected_from_its_own_counts(quick):
    """The stub-domain cells' mediator counts come from the daemon: measured
    (never null, never el2's stand-ins), equal to el2's where the same core
    does the same work, and the transport counts differ."""
    _, doc, md = quick
    cells = {(c["workload"], c["placement"]): c for c in doc["cells"] if c["sweep"] == "workloads"
             and c["placement"] in PLACEMENTS}
    for (wl, pl), c in cells.items():
        assert all(c["ops_per_call"][op] is not None for op in OPS), (wl, pl)
        for proj in c["projected_ns"].values():
            assert proj["unmeasured_ops"] == [] and proj["borrowed_ops"] == [] and proj["borrowed_share"] == 0.0
        if pl != "el2":
            el2 = cells[(wl, "el2")]["ops_per_call"]
            assert {op: c["ops_per_call"][op] for op in MEDIATOR_OPS} == {op: el2[op] for op in MEDIATOR_OPS}
            ops = c["ops_per_call"]
            assert ops["gate_hypercalls"] == ops["guest_traps"] > el2["gate_hypercalls"] == 0
    assert cells[("digest_1p", "stubdom")]["ops_per_call"]["pages_pinned"] == 2  # the data page and the digest's
    ops = _section(md, "Operations per call (counted in real runs)")
    assert NOT_MEASURED not in ops
    header = next(line for line in ops.splitlines() if line.startswith("| workload |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = 0
    for line in ops.splitlines():
        cells_ = [c.strip() for c in line.strip("|").split("|")]
        if len(cells_) != len(columns) or cells_[1] not in PLACEMENTS:
            continue
        rows += 1
        for op in MEDIATOR_OPS:
            assert re.fullmatch(r"[\d.]+", cells_[columns.index(op)]), (line, op)
    assert rows == len(WORKLOADS) * len(PLACEMENTS)


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


def test_a_count_a_placement_did_not_measure_says_so_and_is_not_filled_in(quick):
    """Nothing in the report fills a placement's missing count with another
    placement's: a stub-domain cell without its mediator counts (a daemon
    that does not export them) prints "not measured", and its projection
    names what it lacks."""
    _, doc, _ = quick
    holed = json.loads(json.dumps(doc))
    for c in holed["cells"]:
        if c["placement"] == "stubdom" and c["ops_per_call"]:
            for op in MEDIATOR_OPS:
                c["ops_per_call"][op] = None
            for proj in (c["projected_ns"] or {}).values():
                proj["unmeasured_ops"] = list(MEDIATOR_OPS)
    md = render_report(holed)
    ops = _section(md, "Operations per call (counted in real runs)")
    assert f'"{NOT_MEASURED}": the placement does not observe it — {", ".join(sorted(MEDIATOR_OPS))}' in ops
    for line in ops.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 1 and cells[1] == "stubdom":
            assert cells.count(NOT_MEASURED) == len(MEDIATOR_OPS), line
    projected = _section(md, "Measured and projected (µs per call)")
    assert f"lacks {', '.join(MEDIATOR_OPS)}" in projected and "el2 counts" not in projected


def test_the_projection_prices_only_a_cells_own_counts():
    """A cell that did not measure an operation is projected without it (a
    lower bound, said in unmeasured_ops), never with el2's count."""
    profile = load_profile(Path(__file__).resolve().parents[1] / "configs" / "hw-juno-a57.yaml")
    cell = Cell("workloads", Layout(1, 1), "digest_1p", "stubdom", "per_vcpu")
    cell.calls = 2
    cell.ops = {"guest_traps": 10, "gate_hypercalls": 10}
    cell.counted = frozenset(OPS) - frozenset(MEDIATOR_OPS)
    (name, proj), = _projector([profile])(cell).items()
    assert proj["unmeasured_ops"] == list(MEDIATOR_OPS)
    assert proj["borrowed_ops"] == [] and proj["borrowed_share"] == 0.0
    assert all(proj["by_op"][op] == 0.0 for op in MEDIATOR_OPS)
    assert proj["total_ns"] == 5 * (profile.figures["guest_traps"].ns + profile.figures["gate_hypercalls"].ns)


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
    answers.append({"domains": {}})  # a daemon without the key
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


def test_the_report_says_which_protocol_and_guest(quick):
    _, doc, md = quick
    assert doc["options"]["mediator_profile"] == "xen"  # upstream Xen's protocol unless told
    intro = md.split("## Summary", 1)[0]
    assert "the `xen` profile" in intro and "docs/fidelity.md" in intro, intro
    old = json.loads(json.dumps(doc))
    del old["options"]["mediator_profile"]  # a run from before the profiles
    assert "predates the mediator profiles" in render_report(old).split("## Summary", 1)[0]


def test_against_a_baseline_each_ratio_then_and_now(quick, tmp_path):
    """--baseline: how the answer moved, each ratio to el2 (measured and
    projected) then → now, el2's own p50 beside them; kept in bench.json."""
    from stubdom.bench.baseline import load_baseline

    out, doc, _ = quick
    base = load_baseline(out / "bench.json")
    assert base["mediator_profile"] == "xen" and set(WORKLOADS) <= set(base["cells"])
    again = dict(doc, baseline=base)
    validate(again)
    section = _section(render_report(again), "Against the baseline")
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| workload")]
    assert len(rows) == len(WORKLOADS) * 2  # stubdom, stubdom-poll
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] in ("stubdom", "stubdom-poll")
        then, now = cells[2].split(" → ")
        assert then == now  # the run against itself
        for moved in cells[3:]:
            a, b = moved.split(" → ")
            assert a == b and a.endswith("×"), moved
    assert "## Against the baseline" not in render_report(doc)  # only when asked


@pytest.mark.parametrize("content,why", [(None, "cannot read it"), ("{", "not JSON: line 1"),
                                         ('{"cells": 3}', "no cells"),
                                         ('{"cells": []}', "no workloads cell at 1 domain, 1 vCPU")])
def test_a_bad_baseline_is_refused_before_the_run(tmp_path, content, why):
    from stubdom.bench import BadOption
    from stubdom.bench.baseline import load_baseline

    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadOption) as e:
        load_baseline(path)
    assert why in str(e.value) and str(path) in str(e.value)
    proc = subprocess.run([sys.executable, "-P", "-m", "stubdom", "bench", "--quick", "--out", str(tmp_path / "o"),
                           "--baseline", str(path), "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and why in proc.stderr and not (tmp_path / "o").exists(), proc.stderr
