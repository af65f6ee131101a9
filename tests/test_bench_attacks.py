"""``stubdom-teed bench --sweeps attacks``: the bystander under every attack
of the hostile catalogue, under el2 and stubdom (a real daemon).  Checked:
the document's structure, that every attack appears per placement, and that
the bound's evaluation is the one the recorded numbers give (not that the
rows pass: that is a measurement, never a test verdict)."""

from __future__ import annotations

import copy
import json

import pytest

from stubdom.bench import SchemaError, bench_main, validate
from stubdom.bench.attacks import BOUND_SHARE, evaluate_bound, lock_wait_allowance_ns
from stubdom.bench.options import parse_options
from stubdom.hostile import ATTACKS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-attacks")
    work = tmp_path_factory.mktemp("bench-attacks-work")
    rc = bench_main(["--quick", "--sweeps", "attacks", "--block", "5", "--out", str(out), "--no-progress",
                     "--workdir", str(work)])
    doc = json.loads((out / "bench.json").read_text())
    return rc, doc, out


def test_exit_status_is_0_whatever_the_rows(run):
    rc, doc, _ = run
    assert rc == 0
    validate(doc)


def test_every_attack_appears_per_placement(run):
    _, doc, _ = run
    att = doc["attacks"]
    assert {n for n, p in att["placements"].items() if p["status"] == "ran"} == {"el2", "stubdom"}
    assert att["placements"]["stubdom-poll"]["status"] == "skipped"
    assert set(att["attacks"]) == set(ATTACKS)
    for pl in ("el2", "stubdom"):
        for wl in ("fast_call", "invoke_value"):
            got = [r["attack"] for r in att["rows"] if (r["placement"], r["workload"]) == (pl, wl)]
            assert sorted(got) == sorted(ATTACKS), (pl, wl)
            q = [q for q in att["quiet"] if (q["placement"], q["workload"]) == (pl, wl)]
            assert len(q) == 1 and len(q[0]["block_p50_ns"]) == len(ATTACKS)
            blocks = [b for b in att["blocks"] if (b["placement"], b["workload"], b["attack"]) == (pl, wl, None)]
            assert q[0]["calls"] == sum(b["calls"] for b in blocks)
    for r in att["rows"]:
        # blocks are chunks of --block calls, and each overlapped an attack iteration
        assert r["calls"] >= 5 and r["calls"] % 5 == 0
        assert r["attacker_iterations"] >= 1 and r["attacker_iterations_per_s"] > 0
        blocks = [b for b in att["blocks"] if (b["placement"], b["workload"], b["attack"])
                  == (r["placement"], r["workload"], r["attack"])]
        assert len(blocks) == 1 and blocks[0]["calls"] == r["calls"]
    # the daemon really ran for stubdom, on its own process
    roles = {p["role"] for p in att["placements"]["stubdom"]["processes"]}
    assert roles == {"platform", "daemon"}
    # only the attacks sweep ran: no cells, the bench's placements not started
    assert doc["cells"] == [] and doc["options"]["sweeps"] == ["attacks"]


def test_the_bound_is_computed_from_the_recorded_numbers(run):
    _, doc, _ = run
    att = doc["attacks"]
    switch = att["bound"]["switch_interval_ns"]
    quiet = {(q["placement"], q["workload"]): q for q in att["quiet"]}
    over = 0
    for r in att["rows"]:
        q = quiet[(r["placement"], r["workload"])]
        takes = 1 + (q["traps_per_call"] + q["gate_hypercalls_per_call"] if r["placement"] == "stubdom" else 0)
        assert q["lock_takes_per_call"] == pytest.approx(takes)
        contenders = ATTACKS[r["attack"]].threads + (r["placement"] == "stubdom")
        assert r["contenders"] == contenders
        allowance = takes * contenders * switch
        for k in ("p50", "p99"):
            bound = BOUND_SHARE * q["latency_ns"][k] + allowance
            assert r[f"bound_{k}_ns"] == pytest.approx(bound)
            assert r[f"over_{k}"] is (r["latency_ns"][k] > bound)
            assert r[f"{k}_ratio_to_quiet"] == pytest.approx(r["latency_ns"][k] / q["latency_ns"][k])
        over += r["over"]
    assert att["rows_over_bound"] == over
    # stubdom's calls cross the ring and the gate: the lock is taken more often
    assert quiet[("stubdom", "fast_call")]["traps_per_call"] == 1
    assert quiet[("stubdom", "fast_call")]["gate_hypercalls_per_call"] == 1
    assert quiet[("el2", "fast_call")]["gate_hypercalls_per_call"] == 0


def test_the_report_says_how_many_rows_exceeded(run):
    _, doc, out = run
    report = (out / "report.md").read_text()
    att = doc["attacks"]
    assert f"{att['rows_over_bound']} of {len(att['rows'])} rows over the bound" in report
    assert "## Bystander under attack" in report
    for name in ATTACKS:
        assert f"| el2 | {name} |" in report and f"| stubdom | {name} |" in report
    assert report.count("**OVER**") == att["rows_over_bound"]
    assert (out / "attacks.png").stat().st_size > 0


@pytest.mark.parametrize("tamper, where", [
    (lambda r: r.update(over=not r["over"]), "over"),
    (lambda r: r.update(bound_p99_ns=r["bound_p99_ns"] * 2), "bound_p99_ns"),
    (lambda r: r["latency_ns"].update(p50=r["bound_p50_ns"] + 1), "over_p50"),
    (lambda r: r.update(contenders=r["contenders"] + 1), "lock_wait_allowance_ns"),
])
def test_validate_refuses_a_row_its_numbers_do_not_give(run, tamper, where):
    _, doc, _ = run
    bad = copy.deepcopy(doc)
    row = bad["attacks"]["rows"][0]
    if where == "over_p50":  # keep the percentiles ordered while moving p50 over its bound
        row["latency_ns"].update(p90=max(row["latency_ns"]["p90"], row["bound_p50_ns"] + 1),
                                 p99=max(row["latency_ns"]["p99"], row["bound_p50_ns"] + 1),
                                 p99_9=max(row["latency_ns"]["p99_9"], row["bound_p50_ns"] + 1),
                                 max=max(row["latency_ns"]["max"], row["bound_p50_ns"] + 1))
    tamper(row)
    with pytest.raises(SchemaError) as e:
        validate(bad)
    assert where in str(e.value)


def test_evaluate_bound_flags_each_percentile():
    quiet = {"p50": 100, "p99": 1000}
    allowance = lock_wait_allowance_ns(3, 2, 5_000)
    assert allowance == 30_000
    ev = evaluate_bound(quiet, {"p50": 30_201, "p99": 32_000}, share=2, allowance_ns=allowance)
    assert (ev["over_p50"], ev["over_p99"], ev["over"]) == (True, False, True)
    assert ev["bound_p50_ns"] == 30_200 and ev["bound_p99_ns"] == 32_000
    ev = evaluate_bound(quiet, {"p50": 30_200, "p99": 32_001}, share=2, allowance_ns=allowance)
    assert (ev["over_p50"], ev["over_p99"], ev["over"]) == (False, True, True)


def test_attacks_is_not_a_default_sweep_and_quick_shrinks_it():
    assert "attacks" not in parse_options([]).sweeps
    full = parse_options(["--sweeps", "attacks"]).plan
    quick = parse_options(["--quick", "--sweeps", "attacks"]).plan
    assert quick.attack_block < full.attack_block and quick.attack_rounds <= full.attack_rounds
    assert {"fast_call", "invoke_value"} <= set(full.attack_workloads)
