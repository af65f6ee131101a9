"""The Markdown report of one result document."""

from __future__ import annotations

from .counters import OPS

__all__ = ["render_report"]


def _us(ns) -> str:
    return "–" if ns is None else f"{ns / 1000:.1f}"


def _x(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def render_report(doc: dict, plots: list[str] | None = None) -> str:
    m, o = doc["machine"], doc["options"]
    cells = doc["cells"]
    L = ["# stubdom-teed bench report", ""]
    L += [f"Run {doc['created']}, {doc['elapsed_s']:.1f} s, `{' '.join(['stubdom-teed', 'bench', *doc['argv']])}`"
          f" — schema {doc['schema_version']}.", ""]
    att = doc.get("attacks")
    if att is not None:
        L += [f"**Bystander under attack: {att['rows_over_bound']} of {len(att['rows'])} rows over the bound**"
              " (a measurement, not a gate: see *Bystander under attack* below).", ""]
    L += ["## Machine and process layout", ""]
    L += [f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs (usable {m['usable_cpus']}), {m['machine']}",
          f"- Kernel: {m['kernel']}",
          f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
          f"- Load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg'])}",
          f"- Sweeps: {', '.join(o.get('sweeps', ('workloads', 'vcpus', 'scale')))}. Mode: "
          f"{'open loop at %g calls/s per vCPU (latency from the intended start)' % o['open_loop_rate'] if o['open_loop_rate'] else 'closed loop'}; "
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
        L += ["## Latency per workload (1 domain, 1 vCPU)", "", "Latency in µs; CPU time in µs per call per process.", ""]
        rows = []
        for c in wl:
            lat = c["latency_ns"]
            cpu = ", ".join(f"{k} {_us(v)}" for k, v in c["cpu_ns_per_call"].items()) or "–"
            rows.append([c["workload"], c["placement"], str(c["calls"]), _us(lat["p50"]), _us(lat["p90"]),
                         _us(lat["p99"]), _us(lat["p99_9"]), _us(lat["max"]),
                         _x(c["throughput_per_s"], 0), cpu])
        L += _table(["workload", "placement", "calls", "p50", "p90", "p99", "p99.9", "max", "calls/s",
                     "CPU µs/call"], rows)
    if doc["ratios"]:
        L += ["## Ratios", "",
              "stubdom / el2 at p50 and p99; overhead over the floor = (stubdom p50 − el2 p50) / "
              "(crossings × floor p50), crossings = guest traps + gate hypercalls per call (each one ring "
              "round trip), floor = floor-sleep for stubdom, floor-poll for stubdom-poll.", ""]
        rows = [[r["workload"], f"{r['domains']}×{r['vcpus_per_domain']}", r["placement"],
                 _x(r["p50_ratio_to_el2"]), _x(r["p99_ratio_to_el2"]), _x(r["crossings_per_call"], 1),
                 _x(r["overhead_over_floor"])] for r in doc["ratios"] if r["sweep"] == "workloads"]
        L += _table(["workload", "layout", "placement", "p50 / el2", "p99 / el2", "crossings",
                     "(Δp50) / floor"], rows)
    ops_cells = [c for c in wl if c["ops_per_call"]]
    if ops_cells:
        L += ["## Operations per call (counted in real runs)", ""]
        L += _table(["workload", "placement", *OPS],
                    [[c["workload"], c["placement"], *(_x(c["ops_per_call"][op], 2) for op in OPS)]
                     for c in ops_cells])
    if doc["profiles"] and ops_cells:
        names = list(doc["profiles"])
        L += ["## Measured and projected (µs per call)", "",
              "Projected = counted operations × the profile's figures (mediation and transport only; "
              "the TA's own work is excluded). 'est.' = share of the projection resting on estimates.", ""]
        rows = []
        for c in ops_cells:
            pr = c.get("projected_ns") or {}
            rows.append([c["workload"], c["placement"], _us(c["latency_ns"]["p50"]),
                         *(f"{_us(pr[n]['total_ns'])} (est. {pr[n]['estimated_share']:.0%})" if n in pr else "–"
                           for n in names)])
        L += _table(["workload", "placement", "measured p50", *names], rows)
        for n, p in doc["profiles"].items():
            L += [f"### Profile {n}", "", p["description"], ""]
            L += _table(["operation", "ns", "kind", "source"],
                        [[op, f"{f['ns']:.3g}", f["kind"], f["source"].replace("\n", " ")]
                         for op, f in p["figures"].items()])
    vc = [c for c in cells if c["sweep"] == "vcpus"]
    if vc:
        L += ["## vCPU sweep", ""]
        L += _table(["workload", "domains × vCPUs", "placement", "p50 µs", "p99 µs", "calls/s",
                     "notif./call (to back, to front)", "wake-ups/call"],
                    [[c["workload"], f"{c['domains']}×{c['vcpus_per_domain']}", c["placement"],
                      _us(c["latency_ns"]["p50"]), _us(c["latency_ns"]["p99"]), _x(c["throughput_per_s"], 0),
                      (f"{_x(c['notifications_per_call']['to_backend'])}, "
                       f"{_x(c['notifications_per_call']['to_frontend'])}") if c["notifications_per_call"] else "–",
                      (f"{_x(c['wakeups_per_call']['frontend'])}, {_x(c['wakeups_per_call']['backend'])}")
                      if c["wakeups_per_call"] else "–"] for c in vc])
    sc = [c for c in cells if c["sweep"] == "scale"]
    if sc:
        L += ["## Domain scale", "", "One issuing thread, each call to the next domain.", ""]
        L += _table(["workload", "domains", "placement", "p50 µs", "p99 µs", "calls/s", "RSS MiB per process"],
                    [[c["workload"], str(c["domains"]), c["placement"], _us(c["latency_ns"]["p50"]),
                      _us(c["latency_ns"]["p99"]), _x(c["throughput_per_s"], 0),
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
        verdict = ("**OVER** (" + ", ".join(k for k in ("p50", "p99") if r[f"over_{k}"]) + ")") if r["over"] else "within"
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
