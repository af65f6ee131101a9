"""The Markdown report of one result document.

The report answers its question first: a summary of el2 against stubdom
(and stubdom-poll) per workload, measured on this machine and projected
onto each hardware profile, with the share of each projection that rests on
estimates, and one sentence on what dominates the difference. The tables
follow. Two rules hold everywhere:

- a value that was not measured is printed "not measured", never 0 (an
  operation count a placement does not observe is null in bench.json, and
  no other placement's count stands in for it);
- a percentile is printed only where the cell's sample supports it: at
  least :data:`TAIL_SAMPLES` calls at or beyond it (p90 from 50 calls, p99
  from 500, p99.9 from 5000), max from as many calls as p99; otherwise the
  cell says how many calls it has.
"""

from __future__ import annotations

from .baseline import summarize
from .counters import OPS

__all__ = ["render_report", "supported", "TAIL_SAMPLES", "NOT_MEASURED"]

NOT_MEASURED = "not measured"
#: Calls that must lie at or beyond a percentile for it to be printed.
TAIL_SAMPLES = 5
_QUANTILE = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99_9": 0.999, "max": 0.99}
_LABEL = {"p50": "p50", "p90": "p90", "p99": "p99", "p99_9": "p99.9", "max": "max"}
_PLACEMENTS = ("el2", "stubdom", "stubdom-poll")
# What each counted operation is, for the summary's sentence.
_OP_WORDS = {
    "guest_traps": "guest traps", "smc_world_switches": "world switches", "rpc_round_trips": "RPC round trips",
    "gate_hypercalls": "SMC-gate hypercalls", "ring_pushes": "ring pushes", "ring_pops": "ring pops",
    "notifications": "event-channel notifications (a virtual IPI each)",
    "wakeups": "wake-ups (a VM switch each)", "p2m_lookups": "p2m look-ups", "pages_pinned": "page pins",
    "pages_unpinned": "page unpins", "bytes_copied": "bytes copied",
}


def supported(key: str, calls: int) -> bool:
    """Whether a cell of ``calls`` calls supports printing percentile ``key``
    (p50, p90, p99, p99_9, max)."""
    return calls * (1 - _QUANTILE[key]) >= TAIL_SAMPLES


def _us(ns) -> str:
    return NOT_MEASURED if ns is None else f"{ns / 1000:.1f}"


def _pct(cell: dict, key: str) -> str:
    """A latency percentile of a cell in µs, or why it is not printed."""
    if not supported(key, cell["calls"]):
        return f"(n={cell['calls']})"
    return _us(cell["latency_ns"][key])


def _x(v, digits: int = 2) -> str:
    return NOT_MEASURED if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _percentile_rule(cells: list[dict]) -> str:
    sizes = sorted({c["calls"] for c in cells if c["calls"] and c["placement"] in _PLACEMENTS})
    shown = [_LABEL[k] for k in ("p50", "p90", "p99", "p99_9", "max") if sizes and supported(k, sizes[0])]
    size = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}" if sizes else "no"
    return (f"Percentiles are printed only where the sample supports them: at least {TAIL_SAMPLES} calls at or "
            f"beyond the percentile (p90 needs 50 calls, p99 500, p99.9 5000; max is printed with p99). The "
            f"placements' cells here have {size} calls, enough for {', '.join(shown) or 'none'}; a value left "
            f"out shows (n=calls).")


def _est_share(pr: dict, figures: dict) -> float:
    """The share of a projection resting on estimates: priced by an
    estimated figure (or, in documents written before the daemon exported
    its counts, counted by el2 for a placement that did not count it:
    ``borrowed_ops``)."""
    if not pr["total_ns"]:
        return 0.0
    borrowed = set(pr.get("borrowed_ops", ()))
    est = sum(v for op, v in pr["by_op"].items() if figures[op]["kind"] == "estimate" or op in borrowed)
    return est / pr["total_ns"]


def _what_is_compared(o: dict) -> str:
    """Which protocol and which guest every figure of the report is for."""
    profile = o.get("mediator_profile")
    if profile is None:
        return ("This run predates the mediator profiles and the Linux-shaped guest: its mediators spoke what "
                "is now the `strict` profile, to a guest whose temporary memrefs were per-call page lists and "
                "a secure world with built-in TAs and plain-file storage (docs/fidelity.md describes today's).")
    if profile == "xen":
        said = "the `xen` profile (upstream Xen's optee.c protocol: the guest negotiates no RPC_ARG)"
    else:
        said = f"the `{profile}` profile"
    return (f"Every figure is for mediators speaking {said} in every placement (docs/mediator.md), a "
            "Linux-shaped guest driver and libteec-shaped client, and the OP-TEE-shaped secure world; the "
            "SMC/RPC sequence of each workload is in docs/fidelity.md. The attacks sweep, when it runs, uses "
            "the hostile-guest harness with the `strict` profile.")


def _moved(before, now) -> str:
    if before is None and now is None:
        return NOT_MEASURED
    b = "–" if before is None else f"{before:.2g}×"
    n = "–" if now is None else f"{now:.2g}×"
    return f"{b} → {n}"


def _against_baseline(doc: dict) -> list[str]:
    """How the answer moved against ``--baseline``'s run: each placement's
    ratio to el2, measured and projected, then and now."""
    base = doc.get("baseline")
    if not base:
        return []
    now = summarize(doc, "this run")["cells"]
    then = base["cells"]
    profiles = list(doc.get("profiles") or {})
    was = base.get("mediator_profile") or "strict (before the profiles existed)"
    L = ["## Against the baseline", "",
         f"Baseline: `{base['path']}`, run {base['created']} (`{' '.join(['stubdom-teed', 'bench', *base['argv']])}`), "
         f"mediator profile {was}; this run: profile {(doc['options'].get('mediator_profile') or '?')}. "
         "Ratios to el2 at p50 (1 domain, 1 vCPU), baseline → this run; el2's own p50 in µs beside them, so that "
         "a ratio that moved because el2 moved shows as such. What changed between the runs is in "
         "docs/bench/HISTORY.md.", ""]
    header = ["workload", "placement", "el2 p50 µs", "measured × el2", *(f"{n}: projected × el2" for n in profiles)]
    rows = []
    for wl in [w for w in now if w in then]:
        el2_now, el2_then = now[wl].get("el2"), then[wl].get("el2")
        if not el2_now or not el2_then:
            continue
        for pl in ("stubdom", "stubdom-poll"):
            c_now, c_then = now[wl].get(pl), then[wl].get(pl)
            if not c_now and not c_then:
                continue

            def ratio(c, el2, key=None):
                if not c:
                    return None
                if key is None:
                    return c["p50_ns"] / el2["p50_ns"] if el2["p50_ns"] else None
                a, b = c["projected_ns"].get(key), el2["projected_ns"].get(key)
                return a / b if a is not None and b else None

            rows.append([wl if pl == "stubdom" or not now[wl].get("stubdom") else "", pl,
                         f"{_us(el2_then['p50_ns'])} → {_us(el2_now['p50_ns'])}",
                         _moved(ratio(c_then, el2_then), ratio(c_now, el2_now)),
                         *(_moved(ratio(c_then, el2_then, n), ratio(c_now, el2_now, n)) for n in profiles)])
    if not rows:
        return L + ["No workload ran in both runs at 1 domain, 1 vCPU: nothing to compare.", ""]
    return L + _table(header, rows) + [""]


def _summary(doc: dict) -> list[str]:
    wl = [c for c in doc["cells"] if c["sweep"] == "workloads" and c["calls"] and c["placement"] in _PLACEMENTS]
    by = {(c["workload"], c["placement"]): c for c in wl}
    workloads = list(dict.fromkeys(c["workload"] for c in wl))
    pls = [p for p in _PLACEMENTS if any(c["placement"] == p for c in wl)]
    profiles = doc.get("profiles") or {}
    L = ["## Summary", ""]
    if not workloads or "el2" not in pls:
        return L + ["The workloads sweep did not run (or without el2): nothing to compare.", ""]
    calls = sorted({c["calls"] for c in wl})
    L += [f"Per workload (1 domain, 1 vCPU): p50 in µs measured on this machine ({calls[0]}"
          + (f"–{calls[-1]}" if len(calls) > 1 else "") + " calls per cell), and the cost of mediation and "
          "transport projected onto each hardware profile (counted operations × the profile's figures; the "
          "TA's own work, the same under every placement, is left out). × el2: the ratio to el2. est.: the "
          "share of the projection that rests on figures that are estimates. Every placement is projected from "
          "its own operation counts.", ""]
    header = ["workload", "placement", "measured p50 (× el2)", *(f"{n}: projected (× el2; est.)" for n in profiles)]
    rows = []
    for w in workloads:
        el2 = by.get((w, "el2"))
        for pl in pls:
            c = by.get((w, pl))
            if c is None:
                continue
            m = _us(c["latency_ns"]["p50"])
            if pl != "el2" and el2:
                m += f" ({c['latency_ns']['p50'] / el2['latency_ns']['p50']:.2g}×)"
            cols = []
            for name, prof in profiles.items():
                pr = (c.get("projected_ns") or {}).get(name)
                base = (el2.get("projected_ns") or {}).get(name) if el2 else None
                if pr is None:
                    cols.append(NOT_MEASURED)
                    continue
                ratio = (f"{pr['total_ns'] / base['total_ns']:.2g}×; " if pl != "el2" and base
                         and base["total_ns"] else "")
                cols.append(f"{_us(pr['total_ns'])} ({ratio}est. {_est_share(pr, prof['figures']):.0%})")
            rows.append([w if pl == pls[0] or (w, pls[0]) not in by else "", pl, m, *cols])
    L += _table(header, rows)
    L += [_dominates(doc, wl, by, workloads, profiles), ""]
    return L


def _dominates(doc: dict, wl: list[dict], by: dict, workloads: list[str], profiles: dict) -> str:
    """One sentence: which operation makes most of stubdom's extra cost over
    el2 (projected, summed over the workloads), and what a crossing costs
    here against the C floor (measured)."""
    parts, top_op = [], None
    for name in profiles:
        extra = dict.fromkeys(OPS, 0.0)
        for w in workloads:
            ps = (by.get((w, "stubdom")) or {}).get("projected_ns") or {}
            pe = (by.get((w, "el2")) or {}).get("projected_ns") or {}
            if name in ps and name in pe:
                for op in OPS:
                    extra[op] += ps[name]["by_op"][op] - pe[name]["by_op"][op]
        total = sum(v for v in extra.values() if v > 0)
        if total > 0:
            top_op = max(extra, key=lambda op: extra[op])
            parts.append(f"{extra[top_op] / total:.0%} on {name}")
    clauses = []
    if top_op is not None:
        first = workloads[0]
        s_n = (by.get((first, "stubdom")) or {}).get("ops_per_call") or {}
        p_n = (by.get((first, "stubdom-poll")) or {}).get("ops_per_call") or {}
        how = ""
        if s_n.get(top_op) is not None and p_n.get(top_op) is not None:
            how = (f" ({_x(s_n[top_op])} per {first} call under stubdom, {_x(p_n[top_op])} under "
                   f"stubdom-poll, which spins before it sleeps)")
        clauses.append(f"projected, the stub domain's {_OP_WORDS.get(top_op, top_op)}, {' and '.join(parts)} of "
                       f"stubdom's extra cost over el2 across these workloads{how}")
    ratio = next((r for r in doc.get("ratios", []) if r["sweep"] == "workloads" and r["placement"] == "stubdom"
                  and r.get("delta_p50_per_crossing_ns") is not None and r.get("floor_p50_ns")), None)
    if ratio is not None:
        clauses.append(f"measured here, the crossings between the two Python processes ({ratio['workload']}: "
                       f"{_us(ratio['delta_p50_per_crossing_ns'])} µs more than el2 per crossing at p50, against "
                       f"{_us(ratio['floor_p50_ns'])} µs for the same ring round trip between two C processes)")
    if not clauses:
        return ""
    return "What dominates the difference: " + "; ".join(clauses) + "."


def _probes_line(p: dict | None) -> list[str]:
    """The machine probes (ring.probe_machine), when the run has them."""
    if p is None:
        return []
    where = f"both threads on CPU {p['cpu']}" if p["cpu"] is not None else "threads where the scheduler put them"
    return [f"- Machine probes (in C): a system call {p['syscall_ns']} ns, a sched_yield() alone "
            f"{p['yield_alone_ns']} ns; a turn between two threads of one process and back "
            f"{p['turn_p50_ns'] / 1000:.2f} µs p50, {p['turn_p90_ns'] / 1000:.2f} µs p90 "
            f"({where}; {p['turns']} turns). "
            "A polled fast call under the stub domain takes one such turn: the platform's vCPU thread "
            "and SMC-gate thread share a CPU (docs/performance.md, \"Machine dependence\")"]


def render_report(doc: dict, plots: list[str] | None = None) -> str:
    m, o = doc["machine"], doc["options"]
    cells = doc["cells"]
    L = ["# stubdom-teed bench report", ""]
    L += [f"Run {doc['created']}, {doc['elapsed_s']:.1f} s, `{' '.join(['stubdom-teed', 'bench', *doc['argv']])}`"
          f" — schema {doc['schema_version']}.", ""]
    L += [_what_is_compared(o), ""]
    att = doc.get("attacks")
    if att is not None:
        L += [f"**Bystander under attack: {att['rows_over_bound']} of {len(att['rows'])} rows over the bound**"
              " (a measurement, not a gate: see *Bystander under attack* below).", ""]
    if cells:
        L += _summary(doc)
        L += _against_baseline(doc)
    L += ["## Machine and process layout", ""]
    L += [f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs (usable {m['usable_cpus']}), {m['machine']}",
          f"- Kernel: {m['kernel']}",
          f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
          f"- Load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg'])}",
          *_probes_line(m.get("probes")),
          f"- Sweeps: {', '.join(o.get('sweeps', ('workloads', 'vcpus', 'scale')))}. Mode: "
          + (f"open loop at {o['open_loop_rate']:g} calls/s per vCPU (latency from the intended start)"
             if o["open_loop_rate"] else "closed loop") + "; "
          f"seed {o['seed']}; warm-up {o['plan']['warmup']} calls per worker"
          + (f"; {o['plan']['rounds']} interleaved rounds of {o['plan']['block']} calls per worker and placement"
             if cells else ""),
          f"- CPU placement: `--cpus {o['cpus']}` (platform CPU {doc['process_layout']['platform_cpu']}, "
          f"daemon CPU {doc['process_layout']['daemon_cpu']})",
          f"- Runtime directories (machine files, rings, the daemon's journal) under "
          f"`{o.get('workdir', '?')}` ({_fs_type(o.get('workdir'))})", ""]
    for name, p in doc["placements"].items():
        if p["status"] == "skipped":
            L.append(f"- **{name}**: skipped — {p['reason']}")
        else:
            procs = "; ".join(f"{x.get('role')}" + (f" pid {x['pid']}" if x.get("pid") else "")
                              + (f" on CPUs {x['affinity']}" if x.get("affinity") else "") +
                              (f" ({x['what']})" if x.get("what") else "") for x in p.get("processes", []))
            L.append(f"- **{name}**: {procs}")
    L.append("")

    wl = [c for c in cells if c["sweep"] == "workloads"]
    if wl:
        L += ["## Latency per workload (1 domain, 1 vCPU)", "",
              "Latency in µs; CPU time in µs per call per process. " + _percentile_rule(wl), ""]
        rows = []
        for c in wl:
            cpu = ", ".join(f"{k} {_us(v)}" for k, v in c["cpu_ns_per_call"].items()) or "–"
            rows.append([c["workload"], c["placement"], str(c["calls"]),
                         *(_pct(c, k) for k in ("p50", "p90", "p99", "p99_9", "max")),
                         _x(c["throughput_per_s"], 0), cpu])
        L += _table(["workload", "placement", "calls", "p50", "p90", "p99", "p99.9", "max", "calls/s",
                     "CPU µs/call"], rows)
    if doc["ratios"]:
        L += ["## Ratios", "",
              "stubdom / el2 at p50 and p99 (p99 only where both cells support it); crossings = guest traps "
              "+ gate hypercalls per call (each one ring round trip); Δp50 per crossing = (placement p50 − el2 "
              "p50) / crossings, beside the p50 of one round trip of the same ring between two C processes "
              "(the floor: floor-sleep for stubdom, floor-poll for stubdom-poll): what a crossing costs here "
              "against what it costs with no Python on either side.", ""]
        by = {(c["sweep"], c["workload"], c["domains"], c["vcpus_per_domain"], c["placement"]): c for c in cells}
        rows = []
        for r in doc["ratios"]:
            if r["sweep"] != "workloads":
                continue
            key = (r["sweep"], r["workload"], r["domains"], r["vcpus_per_domain"])
            both = [by.get((*key, p)) for p in ("el2", r["placement"])]
            p99 = (_x(r["p99_ratio_to_el2"]) if all(c is not None and supported("p99", c["calls"]) for c in both)
                   else f"(n={min(c['calls'] for c in both if c is not None)})" if any(both) else "–")
            rows.append([r["workload"], f"{r['domains']}×{r['vcpus_per_domain']}", r["placement"],
                         _x(r["p50_ratio_to_el2"]), p99, _x(r["crossings_per_call"], 1),
                         _us(r.get("delta_p50_per_crossing_ns")),
                         f"{_us(r.get('floor_p50_ns'))} ({r.get('floor', '?')})"])
        L += _table(["workload", "layout", "placement", "p50 / el2", "p99 / el2", "crossings",
                     "Δp50 per crossing µs", "floor round trip µs"], rows)
    ops_cells = [c for c in wl if c["ops_per_call"]]
    if ops_cells:
        missing = sorted({op for c in ops_cells for op, v in c["ops_per_call"].items() if v is None})
        L += ["## Operations per call (counted in real runs)", ""]
        if missing:
            L += [f"\"{NOT_MEASURED}\": the placement does not observe it — {', '.join(missing)}; its "
                  "projection leaves them out (a lower bound): no other placement's counts stand in.", ""]
        L += _table(["workload", "placement", *OPS],
                    [[c["workload"], c["placement"], *(_x(c["ops_per_call"][op], 2) for op in OPS)]
                     for c in ops_cells])
    if doc["profiles"] and ops_cells:
        names = list(doc["profiles"])
        L += ["## Measured and projected (µs per call)", "",
              "Projected = counted operations × the profile's figures (mediation and transport only; the TA's "
              "own work is excluded), each placement from its own counts. 'est.' = share of the projection "
              "priced by estimated figures; 'lacks' = operations this placement did not measure, left out.",
              ""]
        rows = []
        for c in ops_cells:
            pr = c.get("projected_ns") or {}
            cols = []
            for n in names:
                if n not in pr:
                    cols.append(NOT_MEASURED)
                    continue
                text = f"{_us(pr[n]['total_ns'])} (est. {pr[n]['estimated_share']:.0%}"
                if pr[n].get("unmeasured_ops"):
                    text += f"; lacks {', '.join(pr[n]['unmeasured_ops'])}"
                if pr[n].get("borrowed_ops"):  # a document from before the daemon exported its counts
                    text += f"; el2 counts {pr[n]['borrowed_share']:.0%}"
                cols.append(text + ")")
            rows.append([c["workload"], c["placement"], _us(c["latency_ns"]["p50"]), *cols])
        L += _table(["workload", "placement", "measured p50", *names], rows)
        for n, p in doc["profiles"].items():
            L += [f"### Profile {n}", "", p["description"], ""]
            L += _table(["operation", "ns", "kind", "source"],
                        [[op, f"{f['ns']:.3g}", f["kind"], f["source"].replace("\n", " ")]
                         for op, f in p["figures"].items()])
    vc = [c for c in cells if c["sweep"] == "vcpus"]
    if vc:
        L += ["## vCPU sweep", "", _percentile_rule(vc), ""]
        L += _table(["workload", "domains × vCPUs", "placement", "p50 µs", "p99 µs", "calls/s",
                     "notif./call (to back, to front)", "wake-ups/call"],
                    [[c["workload"], f"{c['domains']}×{c['vcpus_per_domain']}", c["placement"],
                      _pct(c, "p50"), _pct(c, "p99"), _x(c["throughput_per_s"], 0),
                      (f"{_x(c['notifications_per_call']['to_backend'])}, "
                       f"{_x(c['notifications_per_call']['to_frontend'])}") if c["notifications_per_call"] else "–",
                      (f"{_x(c['wakeups_per_call']['frontend'])}, {_x(c['wakeups_per_call']['backend'])}")
                      if c["wakeups_per_call"] else "–"] for c in vc])
    sc = [c for c in cells if c["sweep"] == "scale"]
    if sc:
        L += ["## Domain scale", "", "One issuing thread, each call to the next domain. " + _percentile_rule(sc), ""]
        L += _table(["workload", "domains", "placement", "p50 µs", "p99 µs", "calls/s", "RSS MiB per process"],
                    [[c["workload"], str(c["domains"]), c["placement"], _pct(c, "p50"), _pct(c, "p99"),
                      _x(c["throughput_per_s"], 0),
                      ", ".join(f"{k} {v / 1024:.1f}" for k, v in c["rss_kib"].items())] for c in sc])
    if att is not None:
        L += _attacks_section(att)
    if cells:  # issue 7's targets and the notes are about the placements' cells
        L += ["## Targets (goals, not CI gates)", ""]
        L += _table(["target", "goal", "value", "status"],
                    [[t["target"], t["goal"], _x(t["value"]), t["status"]] for t in doc["targets"]])
        L += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    if plots:
        L += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(L)


def _attacks_section(att: dict) -> list[str]:
    b = att["bound"]
    L = ["## Bystander under attack", "",
         f"A bystander domain runs {', '.join(att['workloads'])} in blocks (chunks of {att['block']} calls until the "
         f"block lasted {att['block_min_s']:g} s and, under attack, the attacker completed an iteration): quiet, under "
         f"attack A, quiet, under attack B, ... over {len(att['attacks'])} attacks, {att['rounds']} round(s), "
         "the order rotating each round; one attacker domain per block, its attack looping on its own thread, "
         "every iteration's outcome checked. Limits of every domain: "
         + ", ".join(f"{k} {v}" for k, v in att["limits"].items()) + "; "
         + ("; ".join(f"{n} attacks from d{o['domid']}, whose policy has "
                      + ", ".join(f"{k} {v}" for k, v in o.items() if k != "domid")
                      for n, o in att.get("own_limits", {}).items()) or "no attack has limits of its own")
         + ". Throughput: the bystander's calls per second of block time, under attack ÷ quiet.", "",
         f"Bound: {b['p50']}; {b['p99']}; allowance = {b['allowance']} (share {b['share']:g}, switch interval "
         f"{b['switch_interval_ns'] / 1e6:g} ms; derivation in docs/performance.md). Latency in µs.", ""]
    for name, pl in att["placements"].items():
        if pl["status"] == "skipped":
            L += [f"- **{name}**: skipped — {pl['reason']}"]
    L.append("")
    L += ["### Quiet blocks", ""]
    L += _table(["placement", "workload", "calls", "p50", "p99", "max", "block p50s (min–max)",
                 "lock takes/call"],
                [[q["placement"], q["workload"], str(q["calls"]), _us(q["latency_ns"]["p50"]),
                  _us(q["latency_ns"]["p99"]), _us(q["latency_ns"]["max"]),
                  (f"{_us(min(q['block_p50_ns']))}–{_us(max(q['block_p50_ns']))}" if q["block_p50_ns"] else "–"),
                  _x(q["lock_takes_per_call"], 1)] for q in att["quiet"]])
    L += ["### Under attack", ""]
    rows = []
    for r in att["rows"]:
        lat = r["latency_ns"]
        verdict = (("**OVER** (" + ", ".join(k for k in ("p50", "p99") if r[f"over_{k}"]) + ")")
                   if r["over"] else "within")
        rows.append([r["placement"], r["attack"], r["workload"], str(r["calls"]), _us(lat["p50"]),
                     _x(r["p50_ratio_to_quiet"]), _us(r["bound_p50_ns"]), _us(lat["p99"]),
                     _x(r["p99_ratio_to_quiet"]), _us(r["bound_p99_ns"]), _us(lat["max"]),
                     _us(r["lock_wait_allowance_ns"]), verdict, _x(r.get("throughput_to_quiet")),
                     _x(r["attacker_iterations_per_s"], 1)])
    L += _table(["placement", "attack", "workload", "calls", "p50", "× quiet", "p50 bound", "p99", "× quiet",
                 "p99 bound", "max", "allowance", "bound", "throughput × quiet", "attacker it/s"], rows)
    over = [r for r in att["rows"] if r["over"]]
    if over:
        L += ["Rows over the bound: " + "; ".join(f"{r['placement']} {r['attack']} {r['workload']}" for r in over)
              + ".", ""]
    return L


def _fs_type(path) -> str:
    """The file system type /proc/mounts gives for ``path`` (longest mount
    point that contains it), or "unknown"."""
    if not path:
        return "unknown"
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind
