"""A timeline PNG of sampled calls: one panel per call, one row per thread
(the vCPU thread, the daemon, the SMC-gate thread), each span a bar at its
nesting depth, the four handoffs as arrows. Needs matplotlib (the bench
extra); the daemon never loads this module."""

from __future__ import annotations

from pathlib import Path

from .summary import HANDOFFS, CallTrace

__all__ = ["plot_timelines"]

_ROWS = ("vCPU", "daemon", "gate")
_ROW_LABEL = {"vCPU": "vCPU thread\n(platform)", "daemon": "stubdom-teed\n(daemon)",
              "gate": "SMC-gate thread\n(platform)"}
_COLOURS = {"trap": "#bbbbbb", "mediate": "#9ecae1", "serve": "#9ecae1", "OP-TEE": "#d62728",
            "hypercall": "#fdae6b", "gate hypercall": "#fdae6b", "wait": "#eeeeee", "gate wait": "#eeeeee",
            "sleep": "#c7c7c7", "ring push": "#2ca02c", "reply push": "#2ca02c", "gate push": "#2ca02c",
            "ring pop": "#1f77b4", "gate pop": "#1f77b4", "policy": "#9467bd", "translate": "#8c564b",
            "copy back": "#8c564b", "stats": "#e377c2", "journal": "#7f7f7f", "resume": "#17becf",
            "RPC": "#bcbd22", "RPC reply": "#bcbd22", "guest RPC": "#dbdb8d"}


def _depths(spans):
    """Nesting depth of each span within its row (a span inside another is one deeper)."""
    out = []
    open_: list = []
    for s in sorted(spans, key=lambda s: (s.t0, -s.t1)):
        while open_ and open_[-1].t1 <= s.t0 + 1e-9:
            open_.pop()
        out.append((s, len(open_)))
        open_.append(s)
    return out


def plot_timelines(calls: dict[str, CallTrace], out: Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(calls)
    fig, axes = plt.subplots(n, 1, figsize=(13, 2.6 * n + 0.8), squeeze=False)
    for ax, (label, call) in zip(axes[:, 0], calls.items()):
        t0 = call.start
        rows = [r for r in _ROWS if any(s.where == r for s in call.spans)]
        ypos = {r: len(rows) - 1 - i for i, r in enumerate(rows)}
        extent = max(s.t1 for s in call.spans) - t0
        for r in rows:
            placed = _depths([s for s in call.spans if s.where == r])
            deepest = max(d for _, d in placed)
            for s, depth in placed:
                h = 0.8 * (1 - depth / (deepest + 1.5))
                y = ypos[r] - h / 2
                ax.broken_barh([(s.t0 - t0, max(s.dur, 0.05))], (y, h), facecolors=_COLOURS.get(s.name, "#aaaaaa"),
                               edgecolors="black", linewidth=0.3)
                parent = any(o is not s and o.t0 >= s.t0 and o.t1 <= s.t1 and od > depth for o, od in placed)
                if s.dur >= 0.04 * extent:
                    text = f"{s.name} {s.dur:.1f}"
                    if parent:  # its label above its children, at its left edge
                        ax.text(s.t0 - t0 + 0.005 * extent, y + h - 0.01, text, ha="left", va="top", fontsize=6)
                    else:
                        ax.text(s.t0 - t0 + s.dur / 2, ypos[r], text.replace(" ", "\n", 1) if s.dur < 0.12 * extent
                                else text, ha="center", va="center", fontsize=6)
        for _name, send, recv in HANDOFFS:
            a = call.first(*send)
            if a is None:
                continue
            after = [s for s in call.spans if (s.where, s.name) == recv and s.t1 >= a.t0]
            if not after:
                continue
            b = min(after, key=lambda s: s.t1)
            ax.annotate("", xy=(b.t1 - t0, ypos[b.where]), xytext=(a.t0 - t0, ypos[a.where]),
                        arrowprops={"arrowstyle": "->", "color": "#444444", "lw": 0.8})
        ax.set_yticks([ypos[r] for r in rows], [_ROW_LABEL[r] for r in rows], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        total = call.stages().get(("vCPU", "trap"), 0.0)
        ax.set_title(f"{label}: {call.fn}, trap to resume {total:.1f} µs", fontsize=9, loc="left")
        ax.set_xlim(0, extent)
        ax.grid(axis="x", linewidth=0.3)
    from matplotlib.patches import Patch

    keys = (("push", "ring push"), ("pop", "ring pop"), ("policy", "policy"), ("mediator", "mediate"),
            ("hypercall", "hypercall"), ("OP-TEE", "OP-TEE"), ("stats", "stats"), ("wait", "wait"),
            ("asleep", "sleep"), ("resume", "resume"))
    fig.legend(handles=[Patch(facecolor=_COLOURS[k], edgecolor="black", linewidth=0.3, label=label)
                        for label, k in keys], loc="lower center", ncol=len(keys), fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("µs since the guest trapped (CLOCK_MONOTONIC, both processes)")
    fig.suptitle(title + " — bars are spans (nested ones thinner), arrows the handoffs between threads",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
