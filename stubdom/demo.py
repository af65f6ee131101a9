"""``stubdom-teed demo``: the end-to-end run.

The same guests run the same TA workload under each placement:

* ``passthrough`` — the 2017 RFC (forward, stamp the client ID): only a
  direct-mapped hardware domain, trusted like a native kernel;
* ``el2`` — the mediator core in the hypervisor, as Xen does it: dom0 with
  static shm plus two domUs on scattered memory, dynamic shm only;

Each domain runs every built-in TA from each of its vCPUs at once: value
params, temporary and registered memory up to 512 KiB over scattered pages,
secure storage through the supplicant, a call preempted by foreign
interrupts. The demo prints one table row per domain (calls, errors,
isolation-oracle violations, p50/p99 trap latency) and exits 0 only when
every answer was right and the oracle saw nothing.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from stubdom import workloads
from stubdom.guest import Context, DirectoryStore, OpteeDriver, PageAllocator, Supplicant
from stubdom.platform import DomainSpec, PassThrough, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.tee import TeeConfig

DEMO_FRAMES = 32768  # 128 MiB of machine RAM
BUFFER_SIZES = (1, 4096, 3 * 4096 + 77, 64 * 1024, 512 * 1024)

HWDOM_ONLY = (DomainSpec(0, nr_pages=4096, hwdom=True, direct_mapped=True, static_shm=True, vcpus=2),)
THREE_DOMAINS = HWDOM_ONLY + (
    DomainSpec(1, nr_pages=4096, vcpus=2),
    DomainSpec(2, nr_pages=4096, vcpus=2),
)


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
        if not workloads.digest_temp(ctx, data) == workloads.digest_registered(ctx, data) == hashlib.sha256(data).digest():
            raise workloads.WorkloadFailed("digest", f"{n} bytes")
    workloads.digest_short_buffer(ctx)
    workloads.storage_round_trip(ctx, b"demo-%d" % seed, workloads.random_bytes(10 * 1024 + 3, seed))
    workloads.wait_preempted(ctx)


def run_placement(
    name: str,
    root: Path,
    placement: Callable[[Platform], object],
    specs: Sequence[DomainSpec],
    *,
    require_pins: bool,
    seed: int,
) -> list[DomainResult]:
    """Boot a platform with ``placement``, run the workload in every domain
    from every vCPU at once, tear everything down; one result per domain."""
    results = {s.domid: DomainResult(name, s.domid) for s in specs}
    with Platform(root / "machine", nr_frames=DEMO_FRAMES, tee_config=TeeConfig(),
                  placement=placement, require_pins=require_pins, seed=seed) as platform:
        drivers: dict[int, OpteeDriver] = {}
        for spec in specs:
            domain = platform.create_domain(spec)
            drivers[spec.domid] = OpteeDriver(
                _timed(platform.trap_entry(spec.domid), results[spec.domid].latencies_ns),
                domain,
                nr_vcpus=spec.vcpus,
                allocator=PageAllocator.for_domain(domain, seed=seed + spec.domid),
                supplicant=Supplicant(DirectoryStore(root / f"dom{spec.domid}-tee-store")),
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


def print_table(rows: Sequence[DomainResult], out: TextIO) -> None:
    print(f"{'placement':<12} {'domain':<7} {'calls':>6} {'errors':>6} {'oracle':>6} {'p50 µs':>8} {'p99 µs':>8}",
          file=out)
    for r in rows:
        print(f"{r.placement:<12} d{r.domid:<6} {r.calls:>6} {len(r.failures):>6} {r.violations:>6} "
              f"{r.percentile_us(50):>8.1f} {r.percentile_us(99):>8.1f}", file=out)


def run_demo(*, runtime_dir: str | None = None, seed: int = 1, out: TextIO = sys.stdout) -> int:
    with ExitStack() as stack:
        root = Path(runtime_dir) if runtime_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        plan = [
            ("passthrough", lambda p: PassThrough(p.tee), HWDOM_ONLY, False),
            ("el2", El2Placement, THREE_DOMAINS, True),
        ]
        rows: list[DomainResult] = []
        for name, placement, specs, require_pins in plan:
            print(f"demo: {name}: {len(specs)} domain(s), every TA from every vCPU ...", file=out, flush=True)
            rows += run_placement(name, root / name, placement, specs, require_pins=require_pins, seed=seed)
        print_table(rows, out)
        for r in rows:
            for f in r.failures:
                print(f"demo: FAILED {r.placement} d{r.domid}: {f}", file=out)
        ok = all(not r.failures and not r.violations for r in rows)
        print(f"demo: {'every answer matched, no isolation violation' if ok else 'FAILED'}", file=out)
        return 0 if ok else 1
