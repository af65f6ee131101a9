"""``stubdom-teed bench`` options: parsed once into a frozen record that is
written into the result document as is."""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path

from stubdom.mediator.profile import PROFILE_NAMES, XEN_RELEASE
from stubdom.public.logformat import LOG_LEVEL_HELP, LOG_LEVELS
from stubdom.trace import DEFAULT_EVERY

from .errors import BadOption
from .placements import DEFAULT_BENCH_PROFILE, PLACEMENT_NAMES
from .workloads import workload_names

__all__ = ["BenchOptions", "parse_options", "FULL", "QUICK", "SWEEPS", "DEFAULT_SWEEPS"]


@dataclass(frozen=True)
class Plan:
    """How much to run: the sizes --quick shrinks."""

    warmup: int  # calls per worker dropped before measuring
    block: int  # calls per worker in one interleaved block
    rounds: int  # round-robin rounds of blocks per placement
    vcpu_layouts: tuple[tuple[int, int], ...]  # (domains, vCPUs per domain)
    vcpu_workloads: tuple[str, ...]
    scale_domains: tuple[int, ...]
    scale_workloads: tuple[str, ...]
    scale_pages: int  # pages per domain in the scale sweep
    # calls per block in the scale sweep (one thread cycling over every
    # domain): its p99 is compared across domain counts, so it needs the
    # calls that make a p99 (10 rounds of 1000: the 100th slowest call)
    scale_block: int
    floor_rounds: int  # floor round trips per block
    # calls not recorded at the start of every block, for this long (blocks.settle):
    # with placements interleaved in one process, a block otherwise measures
    # the wake of the one before: after another placement's block the
    # SMC-gate thread has spun its window alone, and the scheduler makes it
    # wait its turn beside the vCPU thread for the next few ms
    settle_ms: float = 10.0
    # the attacks sweep (not a default sweep): bystander calls per chunk, the
    # least a block lasts (chunks are added until it has, and the attacker
    # completed an iteration), rounds over every attack, the workloads
    attack_block: int = 100
    attack_block_min_s: float = 0.25
    attack_rounds: int = 4
    attack_workloads: tuple[str, ...] = ("fast_call", "invoke_value")


FULL = Plan(warmup=50, block=200, rounds=10,
            vcpu_layouts=((1, 1), (1, 2), (2, 1), (1, 4), (4, 1), (2, 4), (4, 2)),
            vcpu_workloads=("fast_call", "invoke_value"),
            scale_domains=(1, 10, 100, 1000), scale_workloads=("fast_call", "invoke_value"),
            scale_pages=64, scale_block=1000, floor_rounds=2000)
QUICK = Plan(warmup=5, block=20, rounds=3,
             vcpu_layouts=((1, 1), (1, 2), (2, 1)),
             vcpu_workloads=("fast_call",),
             scale_domains=(1, 8), scale_workloads=("fast_call",),
             scale_pages=64, scale_block=20, floor_rounds=300,
             attack_block=20, attack_block_min_s=0.02, attack_rounds=1,
             attack_workloads=("fast_call", "invoke_value"))
#: Every sweep; the default is all but ``attacks`` (so the committed full run
#: stays comparable from one version to the next).
SWEEPS = ("workloads", "vcpus", "scale", "attacks")
DEFAULT_SWEEPS = ("workloads", "vcpus", "scale")


@dataclass(frozen=True)
class BenchOptions:
    out: Path
    quick: bool = False
    seed: int = 1
    placements: tuple[str, ...] = PLACEMENT_NAMES
    workloads: tuple[str, ...] = tuple(workload_names())
    sweeps: tuple[str, ...] = DEFAULT_SWEEPS
    cpus: str = "different"  # same | different | none
    open_loop_rate: float | None = None  # calls/s per worker; None = closed loop
    poll_window_us: int = 200
    hw_profiles: tuple[Path, ...] = ()
    progress: bool = True
    plan: Plan = field(default=FULL)
    # where the placements' runtime directories go (machine files, rings, the
    # daemon's journal); default: a tmpfs as a host's /run would be
    workdir: Path | None = None
    log_level: str = "warning"  # of this process's log lines (the daemons' go to their own files)
    # the guest-visible protocol of every placement's mediator (docs/mediator.md, "Profiles")
    mediator_profile: str = DEFAULT_BENCH_PROFILE
    # a previous run's bench.json whose answer the report compares with
    baseline: Path | None = None
    # --trace: sample 1 call in trace_every and write every process's spans there
    trace: Path | None = None
    trace_every: int = DEFAULT_EVERY

    def to_json(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["hw_profiles"] = [str(p) for p in self.hw_profiles]
        d["workdir"] = str(self.work_base())
        d["baseline"] = None if self.baseline is None else str(self.baseline)
        d["trace"] = None if self.trace is None else str(self.trace)
        return d

    def work_base(self) -> Path:
        """--workdir, else /dev/shm (tmpfs, like the /run a daemon's runtime
        directory lives in on a host), else the system temporary directory."""
        if self.workdir is not None:
            return self.workdir
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
            return shm
        return Path(tempfile.gettempdir())

    def cpu_pair(self) -> tuple[int, int] | None:
        """(platform CPU, daemon CPU) for --cpus, or None (unpinned)."""
        cpus = sorted(os.sched_getaffinity(0))
        if self.cpus == "none":
            return None
        if self.cpus == "same":
            return cpus[0], cpus[0]
        if len(cpus) < 2:
            raise BadOption("--cpus", self.cpus, f"needs two usable CPUs, this process may use {cpus}")
        return cpus[0], cpus[1]


def _csv(value: str, known: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for v in items:
        if v not in known:
            raise BadOption(option, v, f"not one of {', '.join(known)}")
    if not items:
        raise BadOption(option, value, "empty list")
    return items


def default_profiles() -> tuple[Path, ...]:
    """configs/hw-*.yaml, as embedded in the package (stubdom/config/hw-*.yaml
    are links to them in the source tree)."""
    root = Path(str(files("stubdom.config")))
    return tuple(sorted(root.glob("hw-*.yaml")))


def parse_options(argv: list[str]) -> BenchOptions:
    p = argparse.ArgumentParser(prog="stubdom-teed bench",
                                description="EL2 vs stub-domain OP-TEE mediation: latency, operation "
                                            "counts and a hardware projection (docs/performance.md)")
    p.add_argument("--out", default="bench-out", help="directory for bench.json, report.md and plots")
    p.add_argument("--quick", action="store_true", help="small sizes: under a minute, same schema")
    p.add_argument("--seed", type=int, default=1, help="seed of machines, allocators and data")
    p.add_argument("--placements", default=",".join(PLACEMENT_NAMES),
                   help=f"comma-separated subset of {','.join(PLACEMENT_NAMES)}")
    p.add_argument("--workloads", default=",".join(workload_names()),
                   help=f"comma-separated subset of {','.join(workload_names())}")
    p.add_argument("--sweeps", default=",".join(DEFAULT_SWEEPS),
                   help="comma-separated subset of " + ",".join(SWEEPS) + " (default: all but attacks: the "
                        "bystander under every hostile-guest attack, docs/performance.md)")
    p.add_argument("--cpus", choices=("same", "different", "none"), default="different",
                   help="pin the platform process and the daemon (and the floor's two ends) to the same "
                        "core, to different cores, or not at all")
    p.add_argument("--open-loop", type=float, default=None, metavar="RATE",
                   help="open-loop mode: RATE calls/s per vCPU, latency from the intended start")
    p.add_argument("--poll-window-us", type=int, default=200,
                   help="adaptive polling window of stubdom-poll and of the polling floor")
    p.add_argument("--mediator-profile", choices=PROFILE_NAMES, default=DEFAULT_BENCH_PROFILE,
                   help="the mediator's guest-visible protocol in every placement: xen, upstream Xen's "
                        f"optee.c ({XEN_RELEASE}), or strict, this project's (default {DEFAULT_BENCH_PROFILE}; "
                        "docs/mediator.md, docs/fidelity.md)")
    p.add_argument("--baseline", default=None, metavar="BENCH_JSON",
                   help="a previous run's bench.json: the report shows how each ratio to el2, measured and "
                        "projected, moved against it")
    p.add_argument("--hw-profile", action="append", default=None, metavar="YAML",
                   help="hardware profile(s) to project with (default: configs/hw-*.yaml)")
    p.add_argument("--rounds", type=int, default=None, help="override the interleaved rounds (every sweep)")
    p.add_argument("--block", type=int, default=None, help="override the calls per block (every sweep)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where runtime directories go (machine files, rings, the daemon's journal); "
                        "default /dev/shm: a tmpfs, as /run on a host")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                   help=LOG_LEVEL_HELP + " (default warning; each daemon's log is a file in its runtime directory)")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="sample calls and write each stage's span, per process and thread, to FILE (Trace Event "
                        "JSON: Perfetto, chrome://tracing; docs/performance.md, \"Tracing a call\")")
    p.add_argument("--trace-every", type=int, default=DEFAULT_EVERY, metavar="N",
                   help=f"with --trace, sample 1 call in N (default {DEFAULT_EVERY})")
    a = p.parse_args(argv)
    if a.trace_every < 1:
        raise BadOption("--trace-every", a.trace_every, "must be at least 1")
    plan = QUICK if a.quick else FULL
    if a.rounds is not None or a.block is not None:
        if (a.rounds is not None and a.rounds < 1) or (a.block is not None and a.block < 1):
            raise BadOption("--rounds/--block", (a.rounds, a.block), "must be at least 1")
        plan = replace(plan, rounds=a.rounds or plan.rounds, block=a.block or plan.block,
                       scale_block=a.block or plan.scale_block,
                       attack_rounds=a.rounds or plan.attack_rounds, attack_block=a.block or plan.attack_block)
    if a.open_loop is not None and not a.open_loop > 0:
        raise BadOption("--open-loop", a.open_loop, "rate must be positive")
    if a.poll_window_us < 0:
        raise BadOption("--poll-window-us", a.poll_window_us, "must not be negative")
    profiles = tuple(Path(x) for x in a.hw_profile) if a.hw_profile else default_profiles()
    workloads = _csv(a.workloads, tuple(workload_names()), "--workloads")
    if "attacks" in a.sweeps.split(","):
        kept = tuple(w for w in plan.attack_workloads if w in workloads)
        if not kept:
            raise BadOption("--workloads", a.workloads, "the attacks sweep runs "
                            + ",".join(plan.attack_workloads) + ": name at least one")
        plan = replace(plan, attack_workloads=kept)
    return BenchOptions(out=Path(a.out), quick=a.quick, seed=a.seed,
                        placements=_csv(a.placements, PLACEMENT_NAMES, "--placements"),
                        workloads=workloads,
                        sweeps=_csv(a.sweeps, SWEEPS, "--sweeps"),
                        cpus=a.cpus, open_loop_rate=a.open_loop, poll_window_us=a.poll_window_us,
                        hw_profiles=profiles, progress=not a.no_progress, plan=plan,
                        workdir=Path(a.workdir) if a.workdir else None, log_level=a.log_level,
                        mediator_profile=a.mediator_profile,
                        baseline=Path(a.baseline) if a.baseline else None,
                        trace=Path(a.trace) if a.trace else None, trace_every=a.trace_every)
