""""Memory flat", defined and evaluated.

Judged on each process's own memory, RssAnon (heap, stacks): VmRSS also
counts the touched pages of the machine's RAM file, shared by both
processes and bounded by the machine's size, which widen as guests touch
new frames and say nothing about a leak.

After a warm-up (the first :data:`WARMUP_FRACTION` of the run: imports,
caches, pools and the allocator's arenas filling), a process's memory is
flat when, over the rest of the run,

* the least-squares slope of RssAnon over time is at most
  :data:`MAX_SLOPE_KIB_PER_MIN` (a leak of a few hundred bytes per call at
  the soak's call rate is well above it), and
* the spread (max - min) is at most :data:`MAX_SPREAD_KIB` (no step that a
  trend would average away).

A window shorter than :data:`MIN_WINDOW_S` or with fewer than
:data:`MIN_SAMPLES` samples cannot tell a leak from the warm-up's tail: the
verdict is then ``too_short``, which is reported and does not fail a run.
"""

from __future__ import annotations

__all__ = ["WARMUP_FRACTION", "MAX_SLOPE_KIB_PER_MIN", "MAX_SPREAD_KIB", "MIN_WINDOW_S", "MIN_SAMPLES",
           "slope_per_min", "flatness"]

WARMUP_FRACTION = 0.2
MAX_SLOPE_KIB_PER_MIN = 128.0  # 7.5 MiB per hour
MAX_SPREAD_KIB = 16 * 1024
MIN_WINDOW_S = 120.0
MIN_SAMPLES = 10


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``[(t_s, value), ...]`` in value per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return 0.0
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den


def flatness(samples: list[dict], key: str, duration_s: float, *,
             warmup_fraction: float = WARMUP_FRACTION) -> dict:
    """The figures and verdict of series ``key`` (KiB) of ``samples``:
    ``{"start", "end", "min", "max", "warm_start", "slope_kib_per_min",
    "spread_kib", "window_s", "samples", "verdict"}`` with verdict
    ``pass`` / ``fail`` / ``too_short`` / ``absent`` (no such series)."""
    series = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if not series:
        return {"verdict": "absent"}
    warm = warmup_fraction * duration_s
    window = [(t, v) for t, v in series if t >= warm]
    out = {"start": series[0][1], "end": series[-1][1], "min": min(v for _, v in series),
           "max": max(v for _, v in series), "warm_start": window[0][1] if window else None,
           "samples": len(window), "window_s": round(window[-1][0] - window[0][0], 1) if window else 0.0,
           "slope_kib_per_min": None, "spread_kib": None,
           "max_slope_kib_per_min": MAX_SLOPE_KIB_PER_MIN, "max_spread_kib": MAX_SPREAD_KIB}
    if len(window) < MIN_SAMPLES or out["window_s"] < MIN_WINDOW_S:
        if len(window) >= 2:
            out["slope_kib_per_min"] = round(slope_per_min(window), 2)
            out["spread_kib"] = max(v for _, v in window) - min(v for _, v in window)
        out["verdict"] = "too_short"
        return out
    slope = slope_per_min(window)
    spread = max(v for _, v in window) - min(v for _, v in window)
    out["slope_kib_per_min"] = round(slope, 2)
    out["spread_kib"] = spread
    out["verdict"] = "pass" if slope <= MAX_SLOPE_KIB_PER_MIN and spread <= MAX_SPREAD_KIB else "fail"
    return out
