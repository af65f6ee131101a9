"""The measurement loop: placements interleaved in round-robin blocks so that
drift (frequency scaling, other load, page cache) hits all of them alike.

For each sweep cell (a layout and a workload) every available placement gets
its own platform and workers; after a warm-up, each round runs one block of
calls per placement (and, in the workloads sweep, one block of each C floor),
the order rotating by one every round. Counters, CPU time and transport
statistics are read around each block, so what one placement did is never
charged to another.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ring
from stubdom.measure import latency, proc_rss_kib
from stubdom.trace import TRACER

from .attacks import AttackSweep, attack_placements
from .blocks import drive_block, settle
from .counters import OPS
from .errors import PlacementUnavailable
from .layout import Layout
from .options import BenchOptions
from .placements import BenchPlacement, make_placement
from .workloads import WORKLOADS, Worker

__all__ = ["Runner", "Cell", "FLOOR_NAMES"]

FLOOR_NAMES = ("floor-sleep", "floor-poll")


@dataclass
class Cell:
    """What one (sweep, layout, workload, placement) accumulated."""

    sweep: str
    layout: Layout
    workload: str
    placement: str
    mode: str  # "per_vcpu" | "round_robin"
    hist: object = field(default_factory=latency.new_histogram)
    calls: int = 0  # timed: the latencies, the throughput
    counted_calls: int = 0  # what ops, CPU time and transport counts cover: the timed and the settling calls
    wall_ns: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    cpu_ns: dict[str, int] = field(default_factory=dict)
    transport: dict[str, int] = field(default_factory=dict)
    rss_kib: dict[str, int] = field(default_factory=dict)
    samples_for_plot: list[int] = field(default_factory=list)
    # the operations the placement observed in every block (the rest: not measured)
    counted: frozenset[str] | None = None

    def _add(self, into: dict, before: dict, after: dict) -> None:
        for k in set(before) | set(after):
            into[k] = into.get(k, 0) + after.get(k, 0) - before.get(k, 0)

    def to_json(self, projection: Callable[[Cell], dict] | None = None) -> dict:
        n, counted = self.calls, self.counted_calls or self.calls
        per = (lambda v: v / counted) if counted else (lambda v: None)
        tr = self.transport
        out = {
            "sweep": self.sweep, **self.layout.describe(), "workload": self.workload,
            "placement": self.placement, "issue": self.mode, "calls": n, "counted_calls": counted,
            "latency_ns": latency.summarise(self.hist),
            "throughput_per_s": (n / (self.wall_ns / 1e9)) if self.wall_ns else None,
            "cpu_ns_per_call": {role: per(v) for role, v in sorted(self.cpu_ns.items())},
            "ops_per_call": {op: per(self.ops.get(op, 0)) if self.counted is None or op in self.counted else None
                             for op in OPS} if self.placement not in FLOOR_NAMES else None,
            "notifications_per_call": ({"to_backend": per(tr.get("notifications_to_backend", 0)),
                                        "to_frontend": per(tr.get("notifications_to_frontend", 0))}
                                       if tr else None),
            "wakeups_per_call": ({"frontend": per(tr.get("wakeups_frontend", 0)),
                                  "backend": per(tr.get("wakeups_backend", 0))} if tr else None),
            "ring_batch": ({"entries_per_push_batch": (tr.get("entries_pushed", 0) / tr["push_batches"])
                            if tr.get("push_batches") else None,
                            "entries_per_pop_batch": (tr.get("entries_popped", 0) / tr["pop_batches"])
                            if tr.get("pop_batches") else None} if tr else None),
            "rss_kib": dict(self.rss_kib),
        }
        if projection is not None:
            out["projected_ns"] = projection(self)
        return out


@contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    """This thread (and the threads it starts afterwards) on ``cpu``."""
    if cpu is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


class Runner:
    """Runs the sweeps of one invocation and keeps every cell."""

    def __init__(self, opts: BenchOptions, progress=None) -> None:
        self.opts = opts
        self.cells: list[Cell] = []
        self.skipped: dict[str, str] = {}
        self.layouts_seen: list[dict] = []
        self.processes: dict[str, list[dict]] = {}
        self._progress = progress
        self._cpus = opts.cpu_pair()
        self.attack_sweep: AttackSweep | None = None
        # --trace: the other processes' documents, each with its calls' scope
        self.trace_documents: list[tuple[dict, str | None]] = []

    # -- bookkeeping ---------------------------------------------------------------
    def _tick(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(n)

    def total_blocks(self) -> int:
        """Blocks the whole run will execute (for the progress bar)."""
        p, o = self.opts.plan, self.opts
        n_pl = len(o.placements)
        total = 0
        if "workloads" in o.sweeps:
            total += len(o.workloads) * p.rounds * (n_pl + len(FLOOR_NAMES))
        if "vcpus" in o.sweeps:
            total += len(p.vcpu_layouts) * len(p.vcpu_workloads) * p.rounds * n_pl
        if "scale" in o.sweeps:
            total += len(p.scale_domains) * len(p.scale_workloads) * p.rounds * n_pl
        if "attacks" in o.sweeps:
            total += len(attack_placements(o.placements)[0]) * AttackSweep.blocks_per_placement(
                len(p.attack_workloads), p.attack_rounds)
        return total

    def _start_placements(self, stack: ExitStack, root: Path, layout: Layout) -> dict[str, BenchPlacement]:
        started: dict[str, BenchPlacement] = {}
        daemon_cpu = self._cpus[1] if self._cpus else None
        tracing = self.opts.trace is not None
        for name in self.opts.placements:
            try:
                pl = make_placement(name, root / name, layout, seed=self.opts.seed, daemon_cpu=daemon_cpu,
                                    poll_window_us=self.opts.poll_window_us,
                                    mediator_profile=self.opts.mediator_profile, trace=tracing)
                if tracing:
                    pl.trace_scope = f"{name} · {root.name}"
                    stack.callback(self._collect_trace, pl)  # after close: the daemon wrote its file
                    TRACER.scope, TRACER.labels = pl.trace_scope, {"workload": "probe"}
                stack.callback(pl.close)
                pl.start()
            except PlacementUnavailable as e:
                self.skipped[name] = e.reason
                continue
            started[name] = pl
            self.processes.setdefault(name, pl.processes())
        return started

    # -- one group of cells: a layout and a workload, every placement interleaved ----
    def _run_group(self, sweep: str, layout: Layout, workload: str, placements: dict[str, BenchPlacement],
                   *, round_robin: bool, floor_cells: dict[str, Cell] | None = None) -> None:
        plan, rate = self.opts.plan, self.opts.open_loop_rate
        block = plan.scale_block if sweep == "scale" else plan.block
        mode = "round_robin" if round_robin else "per_vcpu"
        cells = {name: Cell(sweep, layout, workload, name, mode) for name in placements}
        with ExitStack() as stack:
            calls: dict[str, list[Callable[[], None]]] = {}
            for name, pl in placements.items():
                TRACER.scope, TRACER.labels = pl.trace_scope, {"workload": workload}
                fns = []
                for domid, drv in pl.drivers.items():
                    for vcpu in range(layout.vcpus_per_domain):
                        w = Worker(drv, domid, vcpu, seed=self.opts.seed * 7919 + domid * 31 + vcpu)
                        stack.callback(w.close)
                        fns.append(WORKLOADS[workload].prepare(w))
                calls[name] = fns
                # warm-up: page faults, TA sessions, allocator, caches; not measured
                drive_block(fns, plan.warmup if not round_robin else plan.warmup * len(fns),
                       rate=None, round_robin=round_robin)
            floor_cells = floor_cells or {}
            order = list(placements) + list(floor_cells)
            for r in range(plan.rounds):
                rot = order[r % len(order):] + order[:r % len(order)]
                for name in rot:
                    if name in FLOOR_NAMES:
                        self._floor_block(floor_cells[name], name)
                    else:
                        TRACER.scope = placements[name].trace_scope
                        self._block(cells[name], placements[name], calls[name], block, rate, round_robin)
                    self._tick()
            for name, pl in placements.items():
                cells[name].rss_kib = pl.rss_kib()
        self.cells.extend(cells.values())

    def _block(self, cell: Cell, pl: BenchPlacement, fns, n: int, rate, round_robin: bool) -> None:
        # the counters are read around the settling calls and the block (reading
        # them asks the daemon: the platform's threads wait meanwhile, and the
        # block must not start in the wake of that wait), so they count both
        c0, u0, t0 = pl.counts(), pl.cpu_ns(), pl.transport()
        settled = settle(fns, int(self.opts.plan.settle_ms * 1e6), round_robin=round_robin)
        samples, wall = drive_block(fns, n, rate=rate, round_robin=round_robin)
        c1, u1, t1 = pl.counts(), pl.cpu_ns(), pl.transport()
        latency.record(cell.hist, samples)
        cell.calls += len(samples)
        cell.counted_calls += settled + len(samples)
        cell.wall_ns += wall
        cell._add(cell.ops, c0, c1)
        counted = pl.counted_ops()
        cell.counted = counted if cell.counted is None else cell.counted & counted
        cell._add(cell.cpu_ns, u0, u1)
        cell._add(cell.transport, t0, t1)

    def _collect_trace(self, pl: BenchPlacement) -> None:
        self.trace_documents.extend(pl.trace_documents())

    def _floor_block(self, cell: Cell, name: str) -> None:
        plan = self.opts.plan
        rounds = max(1, plan.floor_rounds // plan.rounds)
        spin = 0 if name == "floor-sleep" else self.opts.poll_window_us * 1000
        with tempfile.TemporaryDirectory(prefix="floor-", dir=self._root) as d:
            samples = ring.run_floor(d, rounds, batch=1, spin_ns=spin, cpus=self._cpus)
        latency.record(cell.hist, samples)
        cell.calls += len(samples)
        cell.wall_ns += sum(samples)

    # -- sweeps --------------------------------------------------------------------
    def run(self, root: Path) -> None:
        self._root = root
        o, p = self.opts, self.opts.plan
        if o.trace is not None:
            TRACER.enable(o.trace_every, process_name="bench platform process")
        with _pinned(self._cpus[0] if self._cpus else None):
            if "workloads" in o.sweeps:
                self._sweep_workloads(root)
            if "vcpus" in o.sweeps:
                for doms, vcpus in p.vcpu_layouts:
                    self._layout_group(root, "vcpus", Layout(doms, vcpus), p.vcpu_workloads, round_robin=False)
            if "scale" in o.sweeps:
                for n in p.scale_domains:
                    self._layout_group(root, "scale", Layout(n, 1, p.scale_pages), p.scale_workloads,
                                       round_robin=True)
            TRACER.disable()  # the attacks sweep is not traced (its platforms are the hostile harness's)
            if "attacks" in o.sweeps:
                self.attack_sweep = AttackSweep(workloads=p.attack_workloads, rounds=p.attack_rounds,
                                                block=p.attack_block, block_min_s=p.attack_block_min_s,
                                                warmup=p.warmup, seed=o.seed,
                                                daemon_cpu=self._cpus[1] if self._cpus else None,
                                                tick=self._tick)
                self.attack_sweep.run(root / "attacks", o.placements)

    def _sweep_workloads(self, root: Path) -> None:
        layout = Layout(1, 1)
        with ExitStack() as stack:
            placements = self._start_placements(stack, root / "workloads", layout)
            # one floor cell each, its blocks interleaved with every workload's rounds
            floors = {f: Cell("workloads", layout, "transport_round_trip", f, "floor") for f in FLOOR_NAMES}
            for wl in self.opts.workloads:
                self._run_group("workloads", layout, wl, placements, round_robin=False, floor_cells=floors)
            self.cells.extend(floors.values())

    def _layout_group(self, root: Path, sweep: str, layout: Layout, workloads, *, round_robin: bool) -> None:
        tag = f"{sweep}-{layout.domains}x{layout.vcpus_per_domain}"
        with ExitStack() as stack:
            placements = self._start_placements(stack, root / tag, layout)
            for wl in workloads:
                self._run_group(sweep, layout, wl, placements, round_robin=round_robin)

    def self_rss_kib(self) -> int:
        return proc_rss_kib()
