"""The benchmark's counting, projection arithmetic, result schema and report.
No timed assertions: latencies are whatever they are; operation counts are
checked against calls whose operations are known by construction."""

from __future__ import annotations

import json
import math

import pytest

from stubdom.bench import (
    OPS,
    SCHEMA_VERSION,
    WORKLOADS,
    BadOption,
    BadProfile,
    Layout,
    PlacementUnavailable,
    SchemaError,
    load_profile,
    make_placement,
    parse_options,
    parse_profile,
    per_call,
    project,
    render_report,
    run_bench,
    validate,
)
from stubdom.bench.options import default_profiles
from stubdom.bench.workloads import Worker


def _measure(pl, workload: str, calls: int = 3) -> dict[str, float]:
    """Operations per call of ``workload`` on placement ``pl`` (after one
    unmeasured call, as the benchmark's warm-up)."""
    drv = pl.drivers[pl.layout.domids[0]]
    w = Worker(drv, pl.layout.domids[0], 0, seed=5)
    try:
        call = WORKLOADS[workload].prepare(w)
        call()
        before = pl.counts()
        for _ in range(calls):
            call()
        return per_call(before, pl.counts(), calls)
    finally:
        w.close()


@pytest.fixture(scope="module")
def el2(tmp_path_factory):
    pl = make_placement("el2", tmp_path_factory.mktemp("el2"), Layout(1, 1), seed=3)
    pl.start()
    yield pl
    pl.close()


def test_fast_call_under_el2_is_one_trap_and_one_smc(el2):
    ops = _measure(el2, "fast_call")
    assert ops["guest_traps"] == 1 and ops["smc_world_switches"] == 1
    assert {op for op, n in ops.items() if n} == {"guest_traps", "smc_world_switches"}


def test_el2_has_no_transport(el2):
    for wl in ("invoke_value", "open_close"):
        ops = _measure(el2, wl)
        for op in ("gate_hypercalls", "ring_pushes", "ring_pops", "notifications", "wakeups"):
            assert ops[op] == 0, (wl, op)
    assert el2.transport() == {}


def test_open_close_is_two_std_calls_and_a_ta_load(el2):
    ops = _measure(el2, "open_close")
    # OPEN_SESSION of an REE TA: LOAD_TA (size), SHM_ALLOC APPL, LOAD_TA, SHM_FREE; then CLOSE_SESSION
    assert ops["guest_traps"] == 6 and ops["smc_world_switches"] == 6 and ops["rpc_round_trips"] == 4
    # the image's buffer (32 KiB) is pinned while OP-TEE loads from it, and released
    assert ops["pages_pinned"] == ops["pages_unpinned"] == 8


@pytest.mark.parametrize("pages", [1, 16, 129])
def test_digest_pins_every_data_page_and_releases_them(el2, pages):
    ops = _measure(el2, f"digest_{pages}p")
    # libteec registers each temporary memref for the call: REGISTER_SHM x 2,
    # INVOKE_COMMAND, UNREGISTER_SHM x 2
    assert ops["guest_traps"] == 5 and ops["smc_world_switches"] == 5
    # the input's pages plus the page of the 32-byte output, pinned while
    # registered; every pin is dropped when the registrations end (invariant 6)
    assert ops["pages_pinned"] == pages + 1
    assert ops["pages_unpinned"] == ops["pages_pinned"]
    # every pinned page was translated first; the mediator may look up more
    # (the argument page's type, for one)
    assert ops["p2m_lookups"] >= ops["pages_pinned"]
    # the page list (ceil(pages / 511) pages, read once) is part of what is copied
    assert ops["bytes_copied"] >= 4096 * math.ceil(pages / 511)


def test_storage_round_trip_is_rpc_heavy(el2):
    ops = _measure(el2, "storage_rw", calls=1)
    # two INVOKEs, each with two temporary memrefs registered and unregistered
    # around it; every other trap resumes OP-TEE from an RPC
    assert ops["guest_traps"] == ops["smc_world_switches"] == ops["rpc_round_trips"] + 2 + 8
    # OP-TEE's REE FS, over an existing object: 31 FS RPCs to write 4 KiB, 16 to
    # read it, and one SHM_ALLOC + SHM_FREE each (docs/tee-model.md)
    assert ops["rpc_round_trips"] == 31 + 16 + 2 * 2


def test_counter_is_cumulative_and_per_call_checks_calls():
    with pytest.raises(ValueError):
        per_call({}, {}, 0)
    assert per_call({"guest_traps": 2}, {"guest_traps": 8}, 3)["guest_traps"] == 2
    assert set(per_call({}, {}, 1)) == set(OPS)


def test_unknown_placement_is_refused(tmp_path):
    with pytest.raises(PlacementUnavailable) as e:
        make_placement("el3", tmp_path, Layout(1, 1), seed=1)
    assert "el3" in str(e.value)


# -- projection -------------------------------------------------------------------------------

def _profile_doc(**over) -> dict:
    costs = {op: {"ns": 10, "kind": "measurement", "source": "test"} for op in OPS}
    costs["guest_traps"] = {"cycles": 300, "kind": "estimate", "source": "test", "note": "why"}
    costs["bytes_copied"] = {"ns_per_unit": 0.5, "kind": "estimate", "source": "test", "note": "why"}
    doc = {"name": "t", "cpu_ghz": 3.0, "costs": costs}
    doc.update(over)
    return doc


def test_projection_arithmetic():
    p = parse_profile(_profile_doc())
    assert p.figures["guest_traps"].ns == pytest.approx(100.0)  # 300 cycles at 3 GHz
    ops = dict.fromkeys(OPS, 0.0)
    ops.update(guest_traps=2, smc_world_switches=1, bytes_copied=1000)
    out = project(ops, p)
    assert out["by_op"]["guest_traps"] == pytest.approx(200.0)
    assert out["by_op"]["smc_world_switches"] == pytest.approx(10.0)
    assert out["by_op"]["bytes_copied"] == pytest.approx(500.0)
    assert out["total_ns"] == pytest.approx(710.0)
    assert out["estimated_share"] == pytest.approx(700 / 710)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["costs"].pop("wakeups"), "missing ['wakeups']"),
    (lambda d: d["costs"].update(teleports={"ns": 1, "kind": "estimate", "source": "x", "note": "y"}),
     "unknown ['teleports']"),
    (lambda d: d["costs"]["ring_pops"].update(kind="guess"), "kind"),
    (lambda d: d["costs"]["ring_pops"].update(source=""), "source"),
    (lambda d: d["costs"]["guest_traps"].update(note=""), "note must say why"),
    (lambda d: d["costs"]["ring_pops"].update(cycles=3), "exactly one of"),
    (lambda d: d["costs"]["ring_pops"].update(ns=-1), "non-negative"),
    (lambda d: d.update(cpu_ghz=0), "cpu_ghz"),
])
def test_bad_profiles_are_refused(mutate, message):
    doc = _profile_doc()
    mutate(doc)
    with pytest.raises(BadProfile) as e:
        parse_profile(doc)
    assert message in str(e.value)


def test_shipped_profiles_load_and_name_published_sources():
    profiles = [load_profile(p) for p in default_profiles()]
    assert {p.name for p in profiles} >= {"juno-r1-a57", "n1sdp"}
    for p in profiles:
        smc = p.figures["smc_world_switches"]
        assert smc.kind == "measurement" and "arm-trusted-firmware" in smc.source
        assert all(f.source for f in p.figures.values())


# -- options ------------------------------------------------------------------------------------

def test_options(tmp_path):
    o = parse_options(["--quick", "--out", str(tmp_path), "--placements", "el2", "--seed", "9"])
    assert o.quick and o.placements == ("el2",) and o.seed == 9 and o.plan.rounds >= 1
    with pytest.raises(BadOption):
        parse_options(["--placements", "el2,el3"])
    with pytest.raises(BadOption):
        parse_options(["--open-loop", "0"])


# -- a tiny run: schema and report -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--out", str(out), "--placements", "el2", "--workloads", "fast_call,digest_1p",
            "--sweeps", "workloads,vcpus", "--rounds", "1", "--block", "3", "--no-progress"]
    doc = run_bench(parse_options(argv), argv)
    return out, doc


def test_tiny_run_writes_every_output(tiny):
    out, doc = tiny
    on_disk = json.loads((out / "bench.json").read_text())
    validate(on_disk)
    assert on_disk["schema_version"] == SCHEMA_VERSION
    for png in ("latency-cdf.png", "latency-bars.png", "scaling.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Ratios" not in report or "stubdom" in report
    assert "| fast_call | el2 |" in report and "juno-r1-a57" in report
    assert f"a system call {doc['machine']['probes']['syscall_ns']} ns" in report


def test_tiny_run_content(tiny):
    _, doc = tiny
    wl = {(c["workload"], c["placement"]): c for c in doc["cells"] if c["sweep"] == "workloads"}
    fast = wl[("fast_call", "el2")]
    assert fast["calls"] == 3 and fast["ops_per_call"]["guest_traps"] == 1
    assert fast["projected_ns"]["juno-r1-a57"]["total_ns"] > 0
    assert wl[("transport_round_trip", "floor-sleep")]["calls"] > 0
    assert doc["placements"]["el2"]["status"] == "ran"
    assert doc["machine"]["packages"]["hdrhistogram"]
    probes = doc["machine"]["probes"]  # measured on the platform's CPU
    assert probes["cpu"] == doc["process_layout"]["platform_cpu"]
    assert 0 < probes["turn_p50_ns"] <= probes["turn_p90_ns"] and probes["syscall_ns"] > 0
    assert {t["status"] for t in doc["targets"]} <= {"met", "missed", "not measured"}


def test_schema_rejects_departures(tiny):
    _, doc = tiny
    bad = json.loads(json.dumps(doc))
    bad["cells"][0]["latency_ns"]["p99"] = bad["cells"][0]["latency_ns"]["max"] + 1
    with pytest.raises(SchemaError):
        validate(bad)
    bad = json.loads(json.dumps(doc))
    del bad["schema_version"]
    with pytest.raises(SchemaError):
        validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["placements"]["stubdom"] = {"status": "skipped"}
    with pytest.raises(SchemaError):
        validate(bad)
    bad = json.loads(json.dumps(doc))
    del bad["machine"]["probes"]["turn_p50_ns"]
    with pytest.raises(SchemaError, match="turn_p50_ns"):
        validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["machine"]["probes"]["syscall_ns"] = "fast"
    with pytest.raises(SchemaError, match="syscall_ns"):
        validate(bad)
    older = json.loads(json.dumps(doc))
    del older["machine"]["probes"]  # a run from before the probes
    validate(older)


def test_report_renders_ratios_and_skips():
    cell = {"sweep": "workloads", "domains": 1, "vcpus_per_domain": 1, "vcpus_total": 1, "pages_per_domain": 8,
            "issue": "per_vcpu", "calls": 10, "throughput_per_s": 1.0, "cpu_ns_per_call": {},
            "notifications_per_call": None, "wakeups_per_call": None, "ring_batch": None, "rss_kib": {},
            "projected_ns": None, "ops_per_call": dict.fromkeys(OPS, 1.0)}
    lat = {"count": 10, "min": 1, "p50": 1000, "p90": 1000, "p99": 2000, "p99_9": 2000, "max": 2000, "mean": 1.0}
    doc = {
        "created": "now", "elapsed_s": 1.0, "argv": [], "schema_version": SCHEMA_VERSION,
        "machine": {"cpu_model": "m", "logical_cpus": 2, "usable_cpus": [0, 1], "machine": "x", "kernel": "k",
                    "python": "3", "packages": {}, "loadavg": [0.0, 0.0, 0.0]},
        "options": {"open_loop_rate": None, "seed": 1, "cpus": "same",
                    "plan": {"warmup": 1, "rounds": 1, "block": 1}},
        "process_layout": {"platform_cpu": 0, "daemon_cpu": 0},
        "placements": {"el2": {"status": "ran", "processes": []},
                       "stubdom-poll": {"status": "skipped", "reason": "not built"}},
        "cells": [{**cell, "workload": "fast_call", "placement": "el2", "latency_ns": lat},
                  {**cell, "workload": "fast_call", "placement": "stubdom", "latency_ns": lat}],
        "ratios": [{"sweep": "workloads", "workload": "fast_call", "domains": 1, "vcpus_per_domain": 1,
                    "placement": "stubdom", "p50_ratio_to_el2": 1.5, "p99_ratio_to_el2": 2.0,
                    "crossings_per_call": 2, "overhead_over_floor": 0.75, "floor": "floor-sleep",
                    "delta_p50_per_crossing_ns": 500.0, "floor_p50_ns": 700.0}],
        "profiles": {}, "targets": [], "notes": ["a note"],
    }
    md = render_report(doc, ["latency-cdf.png"])
    # 10 calls support no p99: the cell says why instead of a number (issue 15, item 16)
    assert "| fast_call | 1×1 | stubdom | 1.50 | (n=10) | 2.0 | 0.5 | 0.7 (floor-sleep) |" in md
    assert "**stubdom-poll**: skipped — not built" in md
    assert "![latency-cdf.png](latency-cdf.png)" in md and "- a note" in md


def test_settle_runs_its_budget_and_at_least_one_call_per_worker() -> None:
    from stubdom.bench.blocks import settle

    made: list[int] = []
    fns = [lambda i=i: made.append(i) for i in range(3)]
    assert settle(fns, 0, round_robin=True) == 3 and sorted(made) == [0, 1, 2]
    made.clear()
    assert settle(fns, 0, round_robin=False) == 3 and sorted(made) == [0, 1, 2]
    made.clear()
    n = settle(fns[:1], 2_000_000, round_robin=False)  # 2 ms of calls that take next to nothing
    assert n == len(made) > 1
