"""Measurement helpers shared by the benchmark (stubdom.bench) and the soak
run (stubdom.hostile.soak), owned by neither: latency histograms and their
summaries, and what the machine is and what each process cost.

    hist = new_histogram(); record(hist, samples_ns); summarise(hist)
    machine_description(); proc_cpu_ns(pid); proc_rss_kib(pid)

Needs the bench extra (hdrhistogram).
"""

from . import latency as latency
from . import procinfo as procinfo
from .latency import PERCENTILES as PERCENTILES
from .latency import cdf_points as cdf_points
from .latency import new_histogram as new_histogram
from .latency import record as record
from .latency import summarise as summarise
from .procinfo import PACKAGES as PACKAGES
from .procinfo import machine_description as machine_description
from .procinfo import proc_cpu_ns as proc_cpu_ns
from .procinfo import proc_rss_kib as proc_rss_kib
from .procinfo import self_cpu_ns as self_cpu_ns

__all__ = [
    "PACKAGES",
    "PERCENTILES",
    "cdf_points",
    "latency",
    "machine_description",
    "new_histogram",
    "proc_cpu_ns",
    "proc_rss_kib",
    "procinfo",
    "record",
    "self_cpu_ns",
    "summarise",
]
