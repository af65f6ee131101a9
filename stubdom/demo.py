"""``stubdom-teed demo``: the end-to-end run.

The same guests run the same TA workload under each placement:

* ``passthrough`` — the 2017 RFC (forward, stamp the client ID): only a
  direct-mapped hardware domain, trusted like a native kernel;
* ``el2`` — the mediator core in the hypervisor, as Xen does it;
* ``stubdom`` — the same mediator core in stubdom-teed, a separate daemon
  process reached over each domain's teeif ring and event channel, which
  reaches the TEE only through the platform's SMC gate.

Under ``el2`` and ``stubdom`` the domains are the configuration's (the
embedded configs/xen.yaml by default: dom0 with static shm plus two domUs on
scattered memory, dynamic shm only).

Each domain runs every built-in TA from each of its vCPUs at once: value
params, temporary and registered memory up to 512 KiB over scattered pages,
secure storage through the supplicant, a call preempted by foreign
interrupts. The demo prints one table row per domain (calls, errors,
isolation-oracle violations, p50/p99 trap latency) and exits 0 only when
every answer was right and the oracle saw nothing.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TextIO

import yaml

from stubdom import workloads
from stubdom.config import ConfigError, load_config
from stubdom.guest import Context, DirectoryStore, OpteeDriver, PageAllocator, Supplicant
from stubdom.platform import DomainSpec, PassThrough, Placement, Platform
from stubdom.platform.launch import DaemonProcess
from stubdom.platform.platform import domain_spec
from stubdom.public.logformat import log_to
from stubdom.rundir import make_private_dirs
from stubdom.tee import TeeConfig

DEMO_FRAMES = 32768  # 128 MiB of machine RAM
BUFFER_SIZES = (1, 4096, 3 * 4096 + 77, 64 * 1024, 512 * 1024)

DAEMON_READY_S = 30.0
HWDOM_ONLY = (DomainSpec(0, nr_pages=4096, hwdom=True, direct_mapped=True, static_shm=True, vcpus=2),)


@dataclass
class DomainResult:
    """What one domain did under one placement."""

    placement: str
    domid: int
    latencies_ns: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    violations: int = 0

    @property
    def calls(self) -> int:
        return len(self.latencies_ns)

    def percentile_us(self, p: int) -> float:
        if len(self.latencies_ns) < 2:
            return self.latencies_ns[0] / 1000 if self.latencies_ns else 0.0
        return statistics.quantiles(self.latencies_ns, n=100, method="inclusive")[p - 1] / 1000


def _timed(trap: Callable, sink: list[int]) -> Callable:
    """Wrap a trap entry so every SMC's round trip is recorded (list.append
    is atomic under the GIL, so vCPU threads may share the sink)."""

    def entry(vcpu: int, regs: Sequence[int]):
        t0 = time.perf_counter_ns()
        out = trap(vcpu, regs)
        sink.append(time.perf_counter_ns() - t0)
        return out

    return entry


def _workload(ctx: Context, seed: int) -> None:
    workloads.increment(ctx, seed)
    for n in BUFFER_SIZES:
        data = workloads.random_bytes(n, seed + n)
        expected = hashlib.sha256(data).digest()
        if not workloads.digest_temp(ctx, data) == workloads.digest_registered(ctx, data) == expected:
            raise workloads.WorkloadFailed("digest", f"{n} bytes")
    workloads.digest_short_buffer(ctx)
    workloads.storage_round_trip(ctx, b"demo-%d" % seed, workloads.random_bytes(10 * 1024 + 3, seed))
    workloads.wait_preempted(ctx)


def run_placement(
    name: str,
    platform: Platform,
    specs: Sequence[DomainSpec],
    store: Path,
    *,
    seed: int,
) -> list[DomainResult]:
    """Run the workload in every domain from every vCPU at once on a booted
    ``platform``, then destroy the domains; one result per domain."""
    results = {s.domid: DomainResult(name, s.domid) for s in specs}
    drivers: dict[int, OpteeDriver] = {}
    for spec in specs:
        domain = platform.create_domain(spec)
        drivers[spec.domid] = OpteeDriver(
            _timed(platform.trap_entry(spec.domid), results[spec.domid].latencies_ns),
            domain,
            nr_vcpus=spec.vcpus,
            allocator=PageAllocator.for_domain(domain, seed=seed + spec.domid),
            supplicant=Supplicant(DirectoryStore(store / f"dom{spec.domid}-tee-store")),
        )
        drivers[spec.domid].probe()

    def vcpu_thread(domid: int, vcpu: int) -> None:
        try:
            with Context(drivers[domid], vcpu=vcpu) as ctx:
                _workload(ctx, seed * 100 + domid * 10 + vcpu)
        except Exception as e:  # reported in the table, never swallowed
            results[domid].failures.append(f"vcpu{vcpu}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=vcpu_thread, args=(s.domid, v)) for s in specs for v in range(s.vcpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for spec in specs:
        drivers[spec.domid].shutdown()
        platform.destroy_domain(spec.domid)
        leaked = platform.machine.pinned_frames(spec.domid)
        if leaked:
            results[spec.domid].failures.append(f"{len(leaked)} frames still pinned after destroy")
    for v in platform.oracle.violations:
        row = results.get(v.domid) or next(iter(results.values()))
        row.violations += 1
        row.failures.append(f"oracle: {v.describe()}")
    return list(results.values())


def _config_for(base: dict, root: Path, placement: str) -> Path:
    """Write the configuration both processes read: ``base`` with its
    runtime directory under ``root`` and the placement set."""
    doc = copy.deepcopy(base)
    doc.setdefault("mediator", {})
    doc["mediator"]["runtime_dir"] = str(root / "rt")
    doc["mediator"]["placement"] = placement
    path = root / "xen.yaml"
    make_private_dirs(root)  # the runtime directory goes in it: 0700, whatever the umask
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run_config_placement(name: str, base: dict, root: Path, seed: int, say,
                          log_level: str = "warning") -> list[DomainResult]:
    path = _config_for(base, root, name)
    config = load_config(path)
    specs = [domain_spec(d) for d in config.domains]
    with ExitStack() as stack:
        platform: Platform[Placement] = stack.enter_context(Platform.for_config(config))
        if name == "stubdom":
            daemon = stack.enter_context(DaemonProcess(path, root / "daemon.log", log_level=log_level))
            hello = daemon.wait_ready(platform.as_stubdom().toolstack, DAEMON_READY_S)
            say(f"stubdom-teed pid {hello['pid']} serving {config.mediator.runtime_dir}")
        return run_placement(name, platform, specs, root, seed=seed)


def print_table(rows: Sequence[DomainResult], out: TextIO) -> None:
    print(f"{'placement':<12} {'domain':<7} {'calls':>6} {'errors':>6} {'oracle':>6} {'p50 µs':>8} {'p99 µs':>8}",
          file=out)
    for r in rows:
        print(f"{r.placement:<12} d{r.domid:<6} {r.calls:>6} {len(r.failures):>6} {r.violations:>6} "
              f"{r.percentile_us(50):>8.1f} {r.percentile_us(99):>8.1f}", file=out)


EXIT_CONFIG = 2  # the configuration does not validate: every problem printed, nothing started


def run_demo(*, runtime_dir: str | None = None, seed: int = 1, config_path: str | None = None,
             log_level: str = "warning", out: TextIO = sys.stdout, err: TextIO | None = None) -> int:
    def say(text: str) -> None:
        print(f"demo: {text}", file=out, flush=True)

    err = err or sys.stderr
    # the user's file as it is, before anything is written or started: the
    # daemon's errors (file:line: key: message), the daemon's exit status
    try:
        load_config(config_path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=err)
        print(f"stubdom-teed demo: {len(e.problems)} problem(s) in the configuration; nothing started",
              file=err, flush=True)
        return EXIT_CONFIG
    log_to(logging.getLogger("stubdom"), log_level, err)
    base = yaml.safe_load(Path(config_path).read_text() if config_path else
                          (files("stubdom.config") / "xen.yaml").read_text())
    with ExitStack() as stack:
        root = Path(runtime_dir) if runtime_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        make_private_dirs(root)
        rows: list[DomainResult] = []

        say("passthrough: dom0 only (the 2017 RFC), every TA from every vCPU ...")
        with Platform(root / "passthrough" / "machine", nr_frames=DEMO_FRAMES, tee_config=TeeConfig(),
                      placement=lambda p: PassThrough(p.tee), require_pins=False, seed=seed) as platform:
            rows += run_placement("passthrough", platform, HWDOM_ONLY, root / "passthrough", seed=seed)

        for name in ("el2", "stubdom"):
            say(f"{name}: {len(base.get('domains') or [])} domain(s) from the configuration, every TA from "
                f"every vCPU ...")
            rows += _run_config_placement(name, base, root / name, seed, say, log_level)

        print_table(rows, out)
        for r in rows:
            for f in r.failures:
                say(f"FAILED {r.placement} d{r.domid}: {f}")
        ok = all(not r.failures and not r.violations for r in rows)
        say("every answer matched, no isolation violation" if ok else "FAILED")
        return 0 if ok else 1
