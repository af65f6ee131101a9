"""The soak's outputs: soak.json (options, machine, the samples' time
series, violations, per-domain figures, verdicts), soak.md (the figures as
tables and the verdicts) and soak-memory.png (RSS over time)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stubdom.measure import latency

from .soak_memory import MAX_SLOPE_KIB_PER_MIN, MAX_SPREAD_KIB, WARMUP_FRACTION, flatness, slope_per_min
from .soak_violations import Violations

__all__ = ["JSON_NAME", "REPORT_NAME", "PLOT_NAME", "LIVE_NAME", "MAX_SAMPLES", "build_document", "dumps",
           "render_report", "write_outputs"]

JSON_NAME = "soak.json"
REPORT_NAME = "soak.md"
PLOT_NAME = "soak-memory.png"
LIVE_NAME = "soak.live.json"
SCHEMA = "stubdom-soak/1"
# Samples kept in soak.json (evenly thinned past it; the verdicts use all).
MAX_SAMPLES = 300
# Judged: each process's own memory (RssAnon).  Its VmRSS also counts the
# touched pages of the machine's RAM file, shared with the other process and
# bounded by the machine's size: reported, not judged.
_MEMORY_SERIES = ("daemon_anon_kib", "platform_anon_kib")
_OTHER_SERIES = ("daemon_rss_kib", "daemon_shared_kib", "platform_rss_kib", "platform_shared_kib", "journal_bytes",
                 "daemon_fds", "daemon_threads", "platform_fds", "platform_threads", "machine_pinned_frames",
                 "tee_partitions", "tee_sessions", "mediator_buffers", "dying_domains")


def _thin(samples: list[dict], keep: int) -> list[dict]:
    if len(samples) <= keep:
        return samples
    step = (len(samples) - 1) / (keep - 1)
    return [samples[round(i * step)] for i in range(keep)]


def _series_figures(samples: list[dict], key: str, duration_s: float) -> dict:
    pts = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if not pts:
        return {}
    warm = [(t, v) for t, v in pts if t >= WARMUP_FRACTION * duration_s]
    return {"start": pts[0][1], "end": pts[-1][1], "min": min(v for _, v in pts), "max": max(v for _, v in pts),
            "slope_per_min_after_warmup": round(slope_per_min(warm), 3) if len(warm) >= 2 else None}


def build_document(result: dict, opts, *, argv: list[str], machine: dict, created: str,
                   violations: Violations, platform: dict) -> dict:
    samples = result["samples"]
    duration = max(result["elapsed_s"], 1e-9)
    domains = []
    for w in result["honest"]:
        domains.append({"domid": w.domid, "role": "honest", "calls": dict(w.calls), "total_calls": w.total_calls,
                        "failures": w.failures, "supplicant_requests": w.supplicant_requests,
                        "calls_per_s": round(w.total_calls / duration, 2),
                        "latency_ns": {k: latency.summarise(h) for k, h in w.hist.items()}})
    for w in result["hostile"]:
        domains.append({"domid": w.domid, "role": "hostile", "victim": w.victim, "iterations": dict(w.iterations),
                        "total_iterations": w.total_iterations, "attack_runs": dict(w.runs),
                        "errors": w.errors, "churns": w.churns, "churn_failures": w.churn_failures})
    last = samples[-1]
    honest_calls = [d["total_calls"] for d in domains if d["role"] == "honest"]
    memory = {k: flatness(samples, k, duration) for k in _MEMORY_SERIES}
    verdicts = [m["verdict"] for m in memory.values() if m["verdict"] != "absent"]
    memory_verdict = "fail" if "fail" in verdicts else "too_short" if "too_short" in verdicts else "pass"
    invariants = "pass" if len(violations) == 0 else "fail"
    load_end = list(os.getloadavg())
    return {
        "schema": SCHEMA,
        "created": created,
        "argv": argv,
        "options": opts.as_json(),
        "platform": platform,
        "machine": {**machine, "loadavg_end": load_end},
        "elapsed_s": result["elapsed_s"],
        "ended": result["ended"],  # why the run stopped: "duration", or "daemon_died" (no point soaking on)
        "attacks": result["catalogue"],
        "totals": {
            "honest_calls": sum(honest_calls),
            "honest_calls_per_domain": {"min": min(honest_calls, default=0), "max": max(honest_calls, default=0)},
            "attack_iterations": sum(d.get("total_iterations", 0) for d in domains),
            "churns": sum(d.get("churns", 0) for d in domains),
            "smcs_at_tee": last["smcs_at_tee"],
            "smcs_checked": last["smcs_checked"],
            "oracle_accesses": last["oracle_accesses"],
            "samples_taken": len(samples),
            "loadavg_1m": {"min": min(s["loadavg_1m"] for s in samples),
                           "max": max(s["loadavg_1m"] for s in samples),
                           "mean": round(sum(s["loadavg_1m"] for s in samples) / len(samples), 2)},
        },
        "domains": domains,
        "memory": {
            "definition": {"warmup_fraction": WARMUP_FRACTION, "max_slope_kib_per_min": MAX_SLOPE_KIB_PER_MIN,
                           "max_spread_kib": MAX_SPREAD_KIB},
            **memory,
            "other": {k: _series_figures(samples, k, duration) for k in _OTHER_SERIES},
        },
        "final": {**result["final"], "daemon_exit": result.get("daemon_exit")},
        "violations": {"count": len(violations), "by_kind": dict(violations.counts),
                       "entries": violations.entries()},
        "verdicts": {"invariants": invariants, "memory": memory_verdict,
                     "overall": "pass" if invariants == "pass" and memory_verdict != "fail" else "fail"},
        "samples": _thin(samples, MAX_SAMPLES),
    }


def _mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def _slope(v) -> str:
    return "—" if v is None else f"{v:+.1f} KiB/min"


def render_report(doc: dict, plot: str | None) -> str:
    o, t, m = doc["options"], doc["totals"], doc["memory"]
    mach = doc["machine"]
    v = doc["verdicts"]
    lines = [
        f"# Soak run: {o['placement']}, {o['domains']} domains ({o['domains'] - o['hostile']} honest, "
        f"{o['hostile']} hostile), {doc['elapsed_s'] / 60:.1f} min",
        "",
        f"`stubdom-teed soak {' '.join(doc['argv'])}` — {doc['created']}; "
        f"{mach['cpu_model']}, {mach['logical_cpus']} CPUs, Python {mach['python']}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in mach['loadavg'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in mach['loadavg_end'])} (1-min samples during the run: min "
        f"{t['loadavg_1m']['min']:.2f}, mean {t['loadavg_1m']['mean']:.2f}, max {t['loadavg_1m']['max']:.2f}).",
        "",
        f"**Verdicts: invariants {v['invariants']} ({doc['violations']['count']} violations), memory "
        f"{v['memory']}, overall {v['overall']}.**",
        "",
        "| figure | value |",
        "|---|---|",
        f"| duration | {doc['elapsed_s']:.1f} s |",
        f"| honest calls (all domains) | {t['honest_calls']} ({t['honest_calls_per_domain']['min']}–"
        f"{t['honest_calls_per_domain']['max']} per domain) |",
        f"| attack iterations | {t['attack_iterations']} |",
        f"| churns (destroy, check, recreate) | {t['churns']} |",
        f"| SMCs at the TEE (each checked for a live client ID) | {t['smcs_at_tee']} ({t['smcs_checked']} checked) |",
        f"| TEE memory accesses checked by the oracle | {t['oracle_accesses']} |",
        f"| samples (invariants checked) | {t['samples_taken']} every {o['sample_every']:g} s |",
        "",
        "## Memory",
        "",
        f"Flat = after the first {m['definition']['warmup_fraction']:.0%} of the run, the least-squares slope "
        f"of the process's own memory (RssAnon) ≤ {m['definition']['max_slope_kib_per_min']:g} KiB/min and "
        f"max − min ≤ {m['definition']['max_spread_kib'] / 1024:g} MiB (docs/soak.md). VmRSS also counts the "
        "touched pages of the machine's RAM file (shared, bounded by the machine's size): shown, not judged.",
        "",
        "| process | RssAnon start | at warm-up end | end | max | slope after warm-up | spread after warm-up "
        "| verdict | VmRSS start → end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, name in (("daemon", "stubdom-teed daemon"), ("platform", "platform (+ guests, TEE)")):
        f = m[f"{key}_anon_kib"]
        if f["verdict"] == "absent":
            lines.append(f"| {name} | — | — | — | — | — | — | no such process | — |")
            continue
        rss = m["other"].get(f"{key}_rss_kib") or {}
        lines.append(f"| {name} | {_mib(f['start'])} | {_mib(f['warm_start'])} | {_mib(f['end'])} | "
                     f"{_mib(f['max'])} | {_slope(f['slope_kib_per_min'])} | "
                     f"{'—' if f['spread_kib'] is None else _mib(f['spread_kib'])} | {f['verdict']} | "
                     f"{_mib(rss.get('start'))} → {_mib(rss.get('end'))} |")
    fds = []
    for key in ("daemon", "platform"):
        f = m["other"].get(f"{key}_fds")
        if f:
            grew = f["end"] - f["start"]
            per = f" ({grew / t['churns']:.1f} per churn)" if t["churns"] else ""
            fds.append(f"{key} {f['start']} → {f['end']}{per}")
    if fds:
        lines += ["", f"Open file descriptors (reported, not judged): {'; '.join(fds)}."]
    lines += ["", "| series | start | end | min | max | slope after warm-up (/min) |", "|---|---|---|---|---|---|"]
    for key, f in m["other"].items():
        if f:
            lines.append(f"| {key} | {f['start']} | {f['end']} | {f['min']} | {f['max']} | "
                         f"{'—' if f['slope_per_min_after_warmup'] is None else f['slope_per_min_after_warmup']} |")
    if plot:
        lines += ["", f"![RSS over time]({plot})"]
    lines += ["", "## Domains", "", "| domain | role | calls / iterations | per workload or attack | p50 / p99 (ms) |",
              "|---|---|---|---|---|"]
    for d in doc["domains"]:
        if d["role"] == "honest":
            per = ", ".join(f"{k} {n}" for k, n in d["calls"].items())
            lat = ", ".join(f"{k} {s['p50'] / 1e6:.2f}/{s['p99'] / 1e6:.2f}" for k, s in d["latency_ns"].items()
                            if s["count"])
            lines.append(f"| d{d['domid']} | honest | {d['total_calls']} calls, {d['failures']} failed | {per} | "
                         f"{lat} |")
        else:
            per = ", ".join(f"{k} {n}" for k, n in sorted(d["iterations"].items()))
            lines.append(f"| d{d['domid']} | hostile (victim d{d['victim']}) | {d['total_iterations']} iterations, "
                         f"{d['churns']} churns | {per} | — |")
    f = doc["final"]
    lines += ["", "## End of run", "",
              f"Every domain destroyed and checked: frames pinned {f['pinned_frames']}, TEE partitions "
              f"{len(f['tee_partitions'])}, dying domains {f['dying_domains'] or 0}, domains left "
              f"{f['domains_left'] or 'none'}, daemon exit status {f['daemon_exit']}.", "",
              "## Violations", ""]
    vs = doc["violations"]
    if not vs["count"]:
        lines.append("None.")
    else:
        lines.append(", ".join(f"{k}: {n}" for k, n in sorted(vs["by_kind"].items())))
        lines.append("")
        for e in vs["entries"][:30]:
            detail = e["detail"].splitlines()[0][:300] if e["detail"] else ""
            lines.append(f"- t={e['t_s']:.1f} s **{e['what']}**: {detail}")
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = doc["samples"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    drawn = False
    for key, label, style in (("daemon_anon_kib", "daemon RssAnon", "-"), ("daemon_rss_kib", "daemon VmRSS", ":"),
                              ("platform_anon_kib", "platform RssAnon", "-"),
                              ("platform_rss_kib", "platform VmRSS", ":")):
        pts = [(s["t_s"] / 60, s[key] / 1024) for s in samples if s.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axvline(WARMUP_FRACTION * doc["elapsed_s"] / 60, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"soak, {doc['options']['placement']}: resident memory")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def dumps(doc: dict) -> str:
    """soak.json's text: indented, but one line per sample (a few hundred
    of them stay readable and small)."""
    head = json.dumps({k: v for k, v in doc.items() if k != "samples"}, indent=1)
    rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in doc["samples"])
    return head[:-2] + ',\n "samples": [\n  ' + rows + "\n ]\n}\n"


def write_outputs(doc: dict, out: Path) -> None:
    out = Path(out)
    (out / JSON_NAME).write_text(dumps(doc))
    plot = PLOT_NAME if _plot(doc, out / PLOT_NAME) else None
    (out / REPORT_NAME).write_text(render_report(doc, plot))
