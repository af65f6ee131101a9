"""Latency summaries from an HdrHistogram (hdrh): p50, p90, p99, p99.9, max.

The benchmark's cells and the soak run's honest load record into these and
report them in the same JSON shape (docs/bench-schema.md, docs/soak.md)."""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

__all__ = ["PERCENTILES", "new_histogram", "record", "summarise", "cdf_points"]

#: Reported percentiles: key in the JSON -> percentile.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
_LOWEST_NS = 1
_HIGHEST_NS = 60 * 10**9  # one minute: nothing a call does takes longer
_DIGITS = 3  # 0.1 % value precision


def new_histogram() -> HdrHistogram:
    return HdrHistogram(_LOWEST_NS, _HIGHEST_NS, _DIGITS)


def record(hist: HdrHistogram, samples: Iterable[int]) -> None:
    for v in samples:
        hist.record_value(min(max(int(v), _LOWEST_NS), _HIGHEST_NS))


def summarise(hist: HdrHistogram) -> dict[str, float | int]:
    """The JSON ``latency_ns`` object of one cell."""
    n = hist.get_total_count()
    out: dict[str, float | int] = {"count": n}
    for key, p in PERCENTILES.items():
        out[key] = hist.get_value_at_percentile(p) if n else 0
    out["max"] = hist.get_max_value() if n else 0
    out["min"] = hist.get_min_value() if n else 0
    out["mean"] = round(hist.get_mean_value(), 1) if n else 0.0
    return out


def cdf_points(hist: HdrHistogram, ticks_per_half_distance: int = 5) -> list[list[float]]:
    """[[latency_ns, cumulative percentile], ...] for a CDF plot."""
    if not hist.get_total_count():
        return []
    return [[it.value_iterated_to, it.percentile_level_iterated_to]
            for it in hist.get_percentile_iterator(ticks_per_half_distance)]
