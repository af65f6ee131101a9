"""What the machine is and what each process cost: the machine's description,
CPU time per process (getrusage for this process, /proc/<pid>/stat for
others) and resident memory (/proc/<pid>/status VmRSS)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys
import time

__all__ = ["machine_description", "self_cpu_ns", "proc_cpu_ns", "proc_rss_kib", "PACKAGES"]

#: Packages whose versions a result depends on.
PACKAGES = ("stubdom-teed", "cffi", "trio", "msgpack", "PyYAML", "hdrhistogram", "matplotlib", "tqdm")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def self_cpu_ns() -> int:
    """User + system CPU time of this process (all its threads), in ns."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int((ru.ru_utime + ru.ru_stime) * 1e9)


def proc_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid``: the sum of
    /proc/<pid>/task/*/schedstat (ns), or, without schedstats, user + system
    from /proc/<pid>/stat (fields 14 and 15, in 1/SC_CLK_TCK s ticks)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * 1_000_000_000 // _CLK_TCK


def proc_rss_kib(pid: int | None = None) -> int:
    """VmRSS of ``pid`` (this process when None) in KiB."""
    with open(f"/proc/{'self' if pid is None else pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no VmRSS line")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "CPU part"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description() -> dict:
    """CPU model, cores, kernel, Python and package versions, and the load
    when the run started (what else was running shows there)."""
    uname = platform.uname()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "machine": uname.machine,
        "kernel": f"{uname.system} {uname.release} {uname.version}",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {p: _version(p) for p in PACKAGES},
        "loadavg": list(os.getloadavg()),
        "clock": "time.perf_counter_ns",
        "clock_resolution_ns": int(time.get_clock_info("perf_counter").resolution * 1e9) or 1,
    }
