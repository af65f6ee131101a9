"""Turning the runner's cells into the result document: ratios, targets,
projections and the notes that say which differences come from the
simulation's process layout rather than from the design."""

from __future__ import annotations

from collections.abc import Sequence

from .options import BenchOptions
from .projection import Profile, project
from .runner import Cell, Runner
from .schema import SCHEMA_VERSION

__all__ = ["build_document", "find_cell"]


def find_cell(cells: Sequence[dict], **match) -> dict | None:
    for c in cells:
        if all(c.get(k) == v for k, v in match.items()):
            return c
    return None


def _projector(profiles: Sequence[Profile]):
    """Cell -> {profile: projection}, from the cell's own counts only. The
    floors have no per-call operations. An operation a placement did not
    measure (null) is priced at nothing and named in ``unmeasured_ops``: the
    projection is then a lower bound, never completed with another
    placement's counts (``borrowed_ops`` stays empty: version-1 readers
    find it)."""

    def proj(cell: Cell) -> dict | None:
        js_ops = cell.to_json()["ops_per_call"]
        if js_ops is None or not cell.calls:
            return None
        unmeasured = [op for op, n in js_ops.items() if n is None]
        out = {}
        for p in profiles:
            pr = project(js_ops, p)
            pr["unmeasured_ops"] = unmeasured
            pr["borrowed_ops"] = []
            pr["borrowed_share"] = 0.0
            out[p.name] = pr
        return out

    return proj


def _ratios(cells: list[dict]) -> list[dict]:
    out = []
    for c in cells:
        if c["placement"] not in ("stubdom", "stubdom-poll") or not c["calls"]:
            continue
        key = dict(sweep=c["sweep"], workload=c["workload"], domains=c["domains"],
                   vcpus_per_domain=c["vcpus_per_domain"])
        el2 = find_cell(cells, placement="el2", **key)
        if el2 is None or not el2["calls"]:
            continue
        floor_name = "floor-sleep" if c["placement"] == "stubdom" else "floor-poll"
        floor = find_cell(cells, placement=floor_name, sweep="workloads")
        ops = c["ops_per_call"] or {}
        crossings = (ops.get("guest_traps") or 0) + (ops.get("gate_hypercalls") or 0)
        over = per_crossing = None
        delta = c["latency_ns"]["p50"] - el2["latency_ns"]["p50"]
        if crossings:
            per_crossing = delta / crossings
        if floor and floor["calls"] and crossings:
            over = delta / (crossings * floor["latency_ns"]["p50"])
        out.append({**key, "placement": c["placement"],
                    "p50_ratio_to_el2": c["latency_ns"]["p50"] / el2["latency_ns"]["p50"],
                    "p99_ratio_to_el2": c["latency_ns"]["p99"] / el2["latency_ns"]["p99"],
                    "crossings_per_call": crossings, "floor": floor_name,
                    "delta_p50_per_crossing_ns": per_crossing,
                    "floor_p50_ns": floor["latency_ns"]["p50"] if floor and floor["calls"] else None,
                    "overhead_over_floor": over})
    return out


def _target(name: str, goal: str, value, limit, ok) -> dict:
    if value is None:
        return {"target": name, "goal": goal, "status": "not measured", "value": None, "limit": limit}
    return {"target": name, "goal": goal, "status": "met" if ok else "missed", "value": value, "limit": limit}


def _targets(cells: list[dict], ratios: list[dict]) -> list[dict]:
    t = []
    r = next((x for x in ratios if x["sweep"] == "workloads" and x["workload"] == "fast_call"
              and x["placement"] == "stubdom-poll"), None)
    v = r["p50_ratio_to_el2"] if r else None
    t.append(_target("fast_call_poll", "fast call, 1 vCPU: stubdom-poll p50 <= 1.5 x el2 p50", v, 1.5,
                     v is not None and v <= 1.5))
    r = next((x for x in ratios if x["sweep"] == "workloads" and x["workload"] == "fast_call"
              and x["placement"] == "stubdom"), None)
    v = r["overhead_over_floor"] if r else None
    t.append(_target("daemon_overhead", "(stubdom p50 - el2 p50) <= 1.25 x the C floor for the same crossings",
                     v, 1.25, v is not None and v <= 1.25))
    busy = [c for c in cells if c["sweep"] == "vcpus" and c["vcpus_total"] >= 8
            and c["placement"].startswith("stubdom") and c["notifications_per_call"]]
    v = max((max(c["notifications_per_call"].values()) for c in busy), default=None)
    t.append(_target("notifications_8vcpu", "8 vCPUs busy: <= 0.25 notifications per call each direction",
                     v, 0.25, v is not None and v <= 0.25))
    r = next((x for x in ratios if x["sweep"] == "workloads" and x["workload"] == "digest_129p"
              and x["placement"] == "stubdom"), None)
    v = r["p50_ratio_to_el2"] if r else None
    t.append(_target("digest_129p", "129-page digest: stubdom p50 <= 1.2 x el2 p50", v, 1.2,
                     v is not None and v <= 1.2))
    big = [c for c in cells if c["sweep"] == "scale" and c["domains"] >= 1000 and c["placement"] == "stubdom"]
    rss = max((c["rss_kib"].get("daemon", 0) for c in big), default=None)
    t.append(_target("rss_1000", "1000 domains: daemon RSS <= 100 MB", None if rss is None else rss / 1024,
                     100, rss is not None and rss / 1024 <= 100))
    v = None
    for c in big:
        one = find_cell(cells, sweep="scale", domains=1, placement=c["placement"], workload=c["workload"])
        if one and one["latency_ns"]["p99"]:
            v = max(v or 0, c["latency_ns"]["p99"] / one["latency_ns"]["p99"])
    t.append(_target("p99_1000", "1000 domains: p99 <= 2 x the 1-domain p99", v, 2.0, v is not None and v <= 2))
    return t


def _notes(cells: list[dict], opts: BenchOptions, skipped: dict) -> list[str]:
    notes = [
        "el2 runs the mediator in the guest vCPU's thread inside the platform process: its vCPU threads "
        "share one Python interpreter lock, so el2 cannot run two vCPUs' calls at once here, while on "
        "hardware every pCPU runs its own. stubdom's daemon is a second process with its own lock, so "
        "part of its multi-vCPU throughput advantage (or el2's lack of scaling) comes from the "
        "simulation's process layout, not from the design.",
        "Latency is wall time of one guest call from the guest driver's view (perf_counter_ns), Python "
        "interpreter included; the C floor is the same ring and event channel with no Python in the loop.",
        "The projection prices only mediation and transport (counted operations x hardware figures); "
        "the secure world's own work is excluded: it is identical under every placement.",
    ]
    el2 = {c["vcpus_total"]: c for c in cells if c["sweep"] == "vcpus" and c["placement"] == "el2"
           and c["workload"] == "fast_call" and c["domains"] == 1}
    if 1 in el2 and len(el2) > 1:
        top = max(el2)
        t1, tn = el2[1]["throughput_per_s"], el2[top]["throughput_per_s"]
        if t1 and tn:
            notes.append(f"el2 fast-call throughput with {top} vCPUs is {tn / t1:.2f}x that of 1 vCPU "
                         "(here the vCPU threads share one interpreter lock; on hardware each vCPU "
                         "runs the mediator on its own pCPU).")
    if opts.cpus == "same":
        notes.append("--cpus same: the platform process and the daemon share one core, so every "
                     "crossing that sleeps is a context switch on that core; polling spins against its peer.")
    for name, why in skipped.items():
        notes.append(f"{name} skipped: {why}")
    return notes


def build_document(runner: Runner, opts: BenchOptions, *, argv: list[str], machine: dict, created: str,
                   elapsed_s: float, profiles: Sequence[Profile], cdfs: dict) -> dict:
    proj = _projector(profiles)
    cells = [c.to_json(proj) for c in runner.cells]
    ratios = _ratios(cells)
    placements: dict[str, dict[str, object]] = {}  # the document's "placements": name -> a JSON object
    for name in opts.placements:
        if name in runner.skipped:
            placements[name] = {"status": "skipped", "reason": runner.skipped[name]}
        elif name in runner.processes:
            placements[name] = {"status": "ran", "processes": runner.processes[name]}
        else:  # only the attacks sweep ran: it reports its own placements
            placements[name] = {"status": "skipped",
                                "reason": "no sweep of this run started the bench's placements (the attacks "
                                          "sweep uses the hostile harness's: see the attacks section)"}
    if "workloads" in opts.sweeps:
        for f in ("floor-sleep", "floor-poll"):
            placements[f] = {"status": "ran", "spin_ns": 0 if f == "floor-sleep" else opts.poll_window_us * 1000,
                             "processes": [{"role": "floor-front", "what": "this process, in C"},
                                           {"role": "floor-back", "what": "a spawned process, in C"}]}
    cpus = opts.cpu_pair()
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "stubdom-teed bench",
        "created": created,
        "argv": list(argv),
        "options": opts.to_json(),
        "machine": machine,
        "process_layout": {
            "cpus": opts.cpus,
            "platform_cpu": cpus[0] if cpus else None,
            "daemon_cpu": cpus[1] if cpus else None,
            "floor_cpus": list(cpus) if cpus else None,
            "by_placement": {k: v.get("processes", []) for k, v in placements.items()},
        },
        "placements": placements,
        "cells": cells,
        "ratios": ratios,
        "profiles": {p.name: p.to_json() for p in profiles},
        "targets": _targets(cells, ratios),
        "notes": _notes(cells, opts, runner.skipped),
        "cdf": cdfs,
        "attacks": runner.attack_sweep.to_json() if runner.attack_sweep is not None else None,
        "elapsed_s": float(elapsed_s),
    }
