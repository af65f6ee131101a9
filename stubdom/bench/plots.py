"""PNG plots of a result document (matplotlib, Agg backend: no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

__all__ = ["write_plots"]

_ORDER = ("el2", "stubdom", "stubdom-poll", "floor-sleep", "floor-poll")


def _cdf(doc: dict, path: Path) -> bool:
    cdf = doc.get("cdf") or {}
    if not cdf:
        return False
    n = len(cdf)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (wl, by_pl) in zip(axes.flat, cdf.items()):
        for pl in sorted(by_pl, key=lambda p: _ORDER.index(p) if p in _ORDER else 99):
            pts = by_pl[pl]
            if pts:
                ax.plot([p[0] / 1000 for p in pts], [p[1] for p in pts], label=pl)
        ax.set_xscale("log")
        ax.set_title(wl, fontsize=9)
        ax.set_xlabel("latency (µs)")
        ax.set_ylabel("percentile")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Latency CDF per placement")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _bars(doc: dict, path: Path) -> bool:
    cells = [c for c in doc["cells"] if c["sweep"] == "workloads" and c["calls"]]
    if not cells:
        return False
    wls = list(dict.fromkeys(c["workload"] for c in cells))
    pls = [p for p in _ORDER if any(c["placement"] == p for c in cells)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(len(pls), 1)
    for ax, key in zip(axes, ("p50", "p99")):
        for i, pl in enumerate(pls):
            vals = []
            for wl in wls:
                c = next((c for c in cells if c["workload"] == wl and c["placement"] == pl), None)
                vals.append(c["latency_ns"][key] / 1000 if c else 0)
            ax.bar([x + i * width for x in range(len(wls))], vals, width, label=pl)
        ax.set_xticks([x + width * (len(pls) - 1) / 2 for x in range(len(wls))])
        ax.set_xticklabels(wls, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{key} latency (µs)")
        ax.set_title(f"{key} per workload")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _scaling(doc: dict, path: Path) -> bool:
    vc = [c for c in doc["cells"] if c["sweep"] == "vcpus" and c["calls"]]
    sc = [c for c in doc["cells"] if c["sweep"] == "scale" and c["calls"]]
    if not vc and not sc:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for pl in _ORDER:
        for wl in dict.fromkeys(c["workload"] for c in vc):
            pts = sorted((c["vcpus_total"], c["throughput_per_s"], c["domains"]) for c in vc
                         if c["placement"] == pl and c["workload"] == wl)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{pl} {wl}")
    ax.set_xlabel("vCPUs issuing calls (over 1-4 domains)")
    ax.set_ylabel("calls/s")
    ax.set_title("Throughput vs vCPUs")
    ax.grid(True, alpha=0.3)
    if vc:
        ax.legend(fontsize=7)
    ax = axes[1]
    for pl in _ORDER:
        for wl in dict.fromkeys(c["workload"] for c in sc):
            pts = sorted((c["domains"], c["latency_ns"]["p50"], c["latency_ns"]["p99"]) for c in sc
                         if c["placement"] == pl and c["workload"] == wl)
            if pts:
                line, = ax.plot([p[0] for p in pts], [p[1] / 1000 for p in pts], marker="o", label=f"{pl} {wl} p50")
                ax.plot([p[0] for p in pts], [p[2] / 1000 for p in pts], marker="x", linestyle="--",
                        color=line.get_color(), label=f"{pl} {wl} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("domains")
    ax.set_ylabel("latency (µs)")
    ax.set_title("Latency vs domains")
    ax.grid(True, alpha=0.3)
    if sc:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _attacks(doc: dict, path: Path) -> bool:
    """Per placement: the bystander's p50 and p99 under each attack as a
    multiple of quiet (grey line: the fair-share factor), and as a fraction
    of the bound (red line: 1; above it, over the bound)."""
    att = doc.get("attacks")
    if not att or not att["rows"]:
        return False
    pls = list(dict.fromkeys(r["placement"] for r in att["rows"]))
    names = list(att["attacks"])
    wls = list(dict.fromkeys(r["workload"] for r in att["rows"]))
    series = [(wl, k) for wl in wls for k in ("p50", "p99")]
    width = 0.8 / max(len(series), 1)
    fig, axes = plt.subplots(len(pls), 2, figsize=(15, 3.9 * len(pls)), squeeze=False)
    for row, pl in enumerate(pls):
        by = {(r["attack"], r["workload"]): r for r in att["rows"] if r["placement"] == pl}
        for col, (title, value, line, colour) in enumerate((
                ("× quiet", lambda r, k: r[f"{k}_ratio_to_quiet"] or 0, att["bound"]["share"], "grey"),
                ("÷ bound", lambda r, k: r["latency_ns"][k] / r[f"bound_{k}_ns"], 1.0, "red"))):
            ax = axes[row][col]
            for i, (wl, k) in enumerate(series):
                vals = [value(by[(a, wl)], k) if (a, wl) in by else 0 for a in names]
                ax.bar([x + i * width for x in range(len(names))], vals, width, label=f"{wl} {k}")
            ax.axhline(line, color=colour, linewidth=1)
            ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))])
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_title(f"{pl}: bystander latency under attack {title}", fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(doc: dict, out: Path) -> list[str]:
    """Write the PNGs into ``out``; the file names written, for the report."""
    written = []
    for name, fn in (("latency-cdf.png", _cdf), ("latency-bars.png", _bars), ("scaling.png", _scaling),
                     ("attacks.png", _attacks)):
        if fn(doc, out / name):
            written.append(name)
    return written
