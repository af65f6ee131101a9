"""PNG plots of a result document (matplotlib, Agg backend: no display).

Each plot reads on its own, without the report beside it: a title that says
what was measured and how (layout, calls per cell, closed or open loop), axes
with units, one legend, and a caption saying which way is better. A
placement has one colour and one line style in every plot (the C floors
dashed). Integer axes (vCPUs, domains) have ticks only at the values run,
written as numbers; the vCPU sweep has one tick per layout (domains ×
vCPUs), so that layouts with the same number of vCPUs are not one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.ticker import FixedLocator, NullLocator

if TYPE_CHECKING:
    from matplotlib.lines import Line2D

__all__ = ["write_plots", "STYLE"]

_ORDER = ("el2", "stubdom", "stubdom-poll", "floor-sleep", "floor-poll")


class PlacementStyle(TypedDict):
    color: str
    linestyle: str
    marker: str | None  # None: a line without markers (the C floors)


#: One colour and line style per placement, in every plot.
STYLE: dict[str, PlacementStyle] = {
    "el2": {"color": "#1f77b4", "linestyle": "-", "marker": "o"},
    "stubdom": {"color": "#d62728", "linestyle": "-", "marker": "s"},
    "stubdom-poll": {"color": "#2ca02c", "linestyle": "-", "marker": "^"},
    "floor-sleep": {"color": "#7f7f7f", "linestyle": "--", "marker": None},
    "floor-poll": {"color": "#000000", "linestyle": "--", "marker": None},
}
_LABEL = {
    "el2": "el2 (mediator in the hypervisor)",
    "stubdom": "stubdom (stub domain, sleeping)",
    "stubdom-poll": "stubdom-poll (stub domain, polling)",
    "floor-sleep": "C floor, sleeping (one ring round trip)",
    "floor-poll": "C floor, polling (one ring round trip)",
}


def _order(names) -> list[str]:
    return sorted(names, key=lambda p: _ORDER.index(p) if p in _ORDER else 99)


def _mode(doc: dict) -> str:
    rate = doc["options"].get("open_loop_rate")
    return f"open loop, {rate:g} calls/s per vCPU" if rate else "closed loop"


def _calls(cells: list[dict]) -> str:
    n = sorted({c["calls"] for c in cells if c["calls"]})
    return (f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}") + " calls per cell" if n else "no calls"


def _caption(fig, text: str) -> None:
    fig.text(0.01, 0.005, text, fontsize=8, ha="left", va="bottom", wrap=True)


def _int_axis(axis, values, *, log: bool) -> None:
    """Ticks at exactly ``values``, written as plain integers."""
    values = sorted(set(values))
    axis.set_major_locator(FixedLocator(values))
    axis.set_minor_locator(NullLocator())
    axis.set_ticklabels([str(v) for v in values])
    if log:
        axis.get_major_formatter()  # labels set above; no 2×10⁰


def _cdf(doc: dict, path: Path) -> bool:
    cdf = doc.get("cdf") or {}
    if not cdf:
        return False
    wl_cells = [c for c in doc["cells"] if c["sweep"] == "workloads"]
    floors = {pl: pts for pl, pts in (cdf.get("transport_round_trip") or {}).items() if pts}
    panels = [w for w in cdf if w != "transport_round_trip"]
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows + 1.0), squeeze=False)
    seen: dict[str, Line2D] = {}
    for ax, wl in zip(axes.flat, panels):
        by_pl = dict(cdf[wl])
        by_pl.update(floors)  # the same floors, in the same colours, in every panel
        for pl in _order(by_pl):
            pts = by_pl[pl]
            if not pts:
                continue
            st = STYLE.get(pl)  # a placement without a style: matplotlib's next colour, solid
            color, linestyle = (st["color"], st["linestyle"]) if st is not None else (None, "-")
            line, = ax.plot([p[0] / 1000 for p in pts], [p[1] for p in pts], color=color,
                            linestyle=linestyle, linewidth=1.4, label=_LABEL.get(pl, pl))
            seen.setdefault(_LABEL.get(pl, pl), line)
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_title(wl, fontsize=10)
        ax.set_xlabel("latency of one call (µs, log scale)", fontsize=8)
        ax.set_ylabel("% of calls at most this long", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.legend(list(seen.values()), list(seen), loc="upper center", ncol=min(3, len(seen)), fontsize=8,
               bbox_to_anchor=(0.5, 0.975), frameon=False)
    fig.suptitle(f"Latency distribution per workload and placement (1 domain, 1 vCPU, {_mode(doc)}, "
                 f"{_calls(wl_cells)})", fontsize=11, y=0.995)
    _caption(fig, "Further left is faster; a curve's height at x is the share of calls that took at most x. "
                  "The dashed floors are one round trip of the same ring and event channel between two C "
                  "processes: what a crossing costs with no Python on either side.")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _bars(doc: dict, path: Path) -> bool:
    cells = [c for c in doc["cells"] if c["sweep"] == "workloads" and c["calls"]]
    cells = [c for c in cells if c["placement"] in ("el2", "stubdom", "stubdom-poll")]
    if not cells:
        return False
    wls = list(dict.fromkeys(c["workload"] for c in cells))
    pls = [p for p in _ORDER if any(c["placement"] == p for c in cells)]
    from .report import supported  # the report's rule: a percentile only where the sample supports it

    fewest = min(c["calls"] for c in cells)
    tail = next((k for k in ("p99", "p90") if supported(k, fewest)), None)
    keys = ["p50"] + ([tail] if tail else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 5.2), squeeze=False)
    width = 0.8 / max(len(pls), 1)
    for ax, key in zip(axes[0], keys):
        for i, pl in enumerate(pls):
            vals = []
            for wl in wls:
                c = next((c for c in cells if c["workload"] == wl and c["placement"] == pl), None)
                vals.append(c["latency_ns"][key] / 1000 if c else 0)
            ax.bar([x + i * width for x in range(len(wls))], vals, width, label=_LABEL.get(pl, pl),
                   color=STYLE[pl]["color"])
        ax.set_xticks([x + width * (len(pls) - 1) / 2 for x in range(len(wls))])
        ax.set_xticklabels(wls, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(f"{key} latency of one call (µs, log scale)")
        ax.set_title(f"{key} per workload", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Latency per workload and placement (1 domain, 1 vCPU, {_mode(doc)}, {_calls(cells)})",
                 fontsize=11)
    what = {"p50": "p50: half the calls took at most this long", "p90": "p90: 9 in 10 did",
            "p99": "p99: 99 in 100 did"}
    _caption(fig, "Lower is faster. " + "; ".join(what[k] for k in keys) + ". A tail percentile is shown only "
             f"where every cell has at least {round(5 / (1 - 0.9))} calls (p90) or {round(5 / (1 - 0.99))} (p99).")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _layout_key(c: dict) -> tuple[int, int]:
    return (c["vcpus_total"], c["domains"])


def _scaling(doc: dict, path: Path) -> bool:
    vc = [c for c in doc["cells"] if c["sweep"] == "vcpus" and c["calls"]]
    sc = [c for c in doc["cells"] if c["sweep"] == "scale" and c["calls"]]
    if not vc and not sc:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.8))
    ax = axes[0]
    layouts = sorted({(c["domains"], c["vcpus_per_domain"]) for c in vc},
                     key=lambda dv: (dv[0] * dv[1], dv[0]))
    wls = list(dict.fromkeys(c["workload"] for c in vc))
    styles = ("-", ":", "-.", "--")
    series = [(pl, wl) for pl in _ORDER for wl in wls
              if any(c["placement"] == pl and c["workload"] == wl for c in vc)]
    width = 0.8 / max(len(series), 1)
    hatches = ("", "//", "..", "xx")
    for i, (pl, wl) in enumerate(series):
        vals = [next((c["throughput_per_s"] or 0 for c in vc if c["placement"] == pl and c["workload"] == wl
                      and (c["domains"], c["vcpus_per_domain"]) == dv), 0) for dv in layouts]
        ax.bar([x + i * width for x in range(len(layouts))], vals, width, color=STYLE[pl]["color"],
               hatch=hatches[wls.index(wl) % len(hatches)], edgecolor="white", label=f"{pl}, {wl}")
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(layouts))])
    ax.set_xticklabels([f"{d}×{v}" + ("" if d * v == 1 else f"\n{d * v} vCPUs") for d, v in layouts], fontsize=8)
    if vc:
        ax.set_yscale("log")
    ax.set_xlabel("layout: domains × vCPUs each (every vCPU issuing calls at once)")
    ax.set_ylabel("calls per second, all vCPUs together (log scale)")
    ax.set_title("Throughput per layout (higher is better)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if vc:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax = axes[1]
    domains = sorted({c["domains"] for c in sc})
    from .report import supported

    for pl in _ORDER:
        for k, wl in enumerate(dict.fromkeys(c["workload"] for c in sc)):
            mine = sorted((c for c in sc if c["placement"] == pl and c["workload"] == wl), key=lambda c: c["domains"])
            if not mine:
                continue
            ax.plot([c["domains"] for c in mine], [c["latency_ns"]["p50"] / 1000 for c in mine],
                    color=STYLE[pl]["color"], marker=STYLE[pl]["marker"], linestyle=styles[k % len(styles)],
                    label=f"{pl}, {wl}, p50")
            tail = [c for c in mine if supported("p99", c["calls"])]
            if tail:
                ax.plot([c["domains"] for c in tail], [c["latency_ns"]["p99"] / 1000 for c in tail],
                        color=STYLE[pl]["color"], marker="x", linestyle=styles[k % len(styles)], alpha=0.5,
                        label=f"{pl}, {wl}, p99")
    if sc:
        ax.set_xscale("log")
        ax.set_yscale("log")
        _int_axis(ax.xaxis, domains, log=True)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax.set_xlabel("domains, one call to each in turn (log scale)")
    ax.set_ylabel("latency of one call (µs, log scale)")
    ax.set_title("Latency as domains are added (lower is better)", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"Scaling ({_mode(doc)}; vCPU sweep {_calls(vc)}, domain sweep {_calls(sc)})", fontsize=11)
    _caption(fig, "Left: one group of bars per layout, so that 2 domains × 1 vCPU and 1 domain × 2 vCPUs stay apart. "
                  "Right: p99 (faint, x) only where a cell has at least 500 calls.")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
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
