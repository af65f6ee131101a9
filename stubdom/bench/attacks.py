"""The ``attacks`` sweep: how much a hostile domain slows an honest one.

Issue 8 asks that under every attack no other domain's calls fail *or slow
past a bound*.  The hostile tests assert the "fail" half; latency is never
asserted in tests, so the bound is evaluated here, as a measurement.

Per placement the hostile harness supports (``stubdom.hostile.make_platform``:
``el2``, and ``stubdom`` with a real stubdom-teed process), a bystander
domain runs the Linux-like driver's workloads in interleaved blocks: quiet,
under attack A, quiet, under attack B, ... for every attack in
``stubdom.hostile.ATTACKS`` (one attacker domain, the attack looping on its
own thread through ``AttackLoop``, every iteration's outcome checked; the
attacker is created fresh for each block and destroyed and checked after
it).  The order of the attacks rotates every round, so drift hits them all.
The bystander's latencies go into HdrHistograms per (placement, workload)
for the quiet blocks and per (placement, attack, workload) under attack;
the attacker's iterations per second are counted over the measured window.

The bound (docs/performance.md derives it), per call and so for p50 and
p99 alike:

    latency under attack <= SHARE * quiet latency + takes * contenders * switch interval

SHARE = 2: two domains fairly sharing each serialized resource (the
platform's interpreter lock and core; under stubdom also the daemon's one
event loop and the SMC gate).  CPython hands its lock to a waiting thread
within ``sys.getswitchinterval()`` of asking, once per thread that holds it
CPU-bound ahead of it: a bystander call takes the lock ``takes`` times (once,
plus under stubdom once per trap answered over the ring and once per SMC-gate
hypercall made for it, counted in the quiet blocks), and each take may find
``contenders`` threads ahead of it (the attack's vCPU threads, plus under
stubdom the gate thread serving the attacker).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.guest import OpteeDriver, PageAllocator, Supplicant
from stubdom.hostile import (
    ATTACKS,
    BASE_CAPS,
    AttackLoop,
    HostileGuest,
    destroy_and_check,
    make_platform,
)
from stubdom.hostile import PLACEMENTS as HOSTILE_PLACEMENTS
from stubdom.measure import latency
from stubdom.mediator import DomainLimits
from stubdom.optee import OPTEE_SMC_SEC_CAP_RPC_ARG
from stubdom.platform import DomainSpec
from stubdom.rundir import make_private_dirs

from .blocks import drive_block
from .counters import OpCounter, counting_trap
from .workloads import WORKLOADS, Worker

__all__ = ["AttackSweep", "BOUND_SHARE", "ATTACK_LIMITS", "evaluate_bound", "lock_wait_allowance_ns",
           "attack_placements", "attacker_domids"]

#: Two domains (the bystander, the attacker) sharing every serialized resource.
BOUND_SHARE = 2.0
#: The policy every domain of the sweep gets: tight, so each flood reaches
#: every limit within one iteration (the same limits as the hostile tests).
ATTACK_LIMITS = DomainLimits(max_calls=3, max_shm_buffers=6, max_pages_per_buffer=8, max_total_pages=24)
BYSTANDER = 1
ATTACKER = 2
# An attack that needs limits of its own (``Attack.limits``: heavy_calls runs
# with the default policy, 4 x 129-page memrefs per call) attacks from a
# domain with that policy: the first such attack from this domid, the next
# from the one after it.
OWN_LIMITS_ATTACKER = 3
_BYSTANDER_PAGES = 1024
_ATTACKER_PAGES = 768
_OWN_LIMITS_ATTACKER_PAGES = 2048
# SMC registers the platform keeps (for the attacks' a7 check): enough for
# any one attack iteration, flat over a long run.
_SMC_HISTORY = 1 << 16
# An attacked block waits at most this long for the attacker to complete an
# iteration (a stalled attacker is then measured as it is, not waited for).
_OVERLAP_CAP_S = 60.0


def attacker_domids() -> dict[str, int]:
    """attack name -> the domid it attacks from (an attack with limits of
    its own gets a domain of its own, whose policy has those limits)."""
    out, nxt = {}, OWN_LIMITS_ATTACKER
    for name, attack in ATTACKS.items():
        if attack.limits is None:
            out[name] = ATTACKER
        else:
            out[name], nxt = nxt, nxt + 1
    return out


def attack_placements(requested: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """(placements to run, placement -> why not) for the bench's --placements."""
    run, skipped = [], {}
    for name in requested:
        if name in HOSTILE_PLACEMENTS:
            run.append(name)
        else:
            skipped[name] = ("the hostile harness has no such placement (it runs el2 and stubdom, the latter "
                             "with its own daemon configuration: poll window 20 µs)")
    return run, skipped


@dataclass
class _Hist:
    """One histogram plus the per-block summaries it was built from."""

    hist: object = field(default_factory=latency.new_histogram)
    calls: int = 0
    block_p50: list[int] = field(default_factory=list)
    traps: int = 0
    gate: int = 0
    attacker_iterations: int = 0
    attacker_window_ns: int = 0
    wall_ns: int = 0  # the blocks' wall time: the bystander's throughput is calls / wall

    def add(self, samples: list[int], block_p50: int, wall_ns: int) -> None:
        latency.record(self.hist, samples)
        self.calls += len(samples)
        self.block_p50.append(block_p50)
        self.wall_ns += wall_ns

    @property
    def calls_per_s(self) -> float | None:
        return self.calls / (self.wall_ns / 1e9) if self.wall_ns else None


def lock_wait_allowance_ns(takes: float, contenders: int, switch_interval_ns: int) -> float:
    """The most a call can wait for the platform's interpreter lock:
    ``takes`` times, behind ``contenders`` threads, one switch interval each."""
    return takes * contenders * switch_interval_ns


def evaluate_bound(quiet: dict, attacked: dict, *, share: float, allowance_ns: float) -> dict:
    """The bound of one (placement, attack, workload) row from the recorded
    numbers (``quiet``/``attacked``: ``latency.summarise`` records)."""
    b50 = share * quiet["p50"] + allowance_ns
    b99 = share * quiet["p99"] + allowance_ns
    over50, over99 = attacked["p50"] > b50, attacked["p99"] > b99
    return {
        "bound_p50_ns": b50, "bound_p99_ns": b99,
        "p50_ratio_to_quiet": attacked["p50"] / quiet["p50"] if quiet["p50"] else None,
        "p99_ratio_to_quiet": attacked["p99"] / quiet["p99"] if quiet["p99"] else None,
        "over_p50": over50, "over_p99": over99, "over": over50 or over99,
    }


class AttackSweep:
    """Runs the sweep for the runner; results in ``quiet``, ``attacked``,
    ``blocks``, ``skipped``."""

    def __init__(self, *, workloads: tuple[str, ...], rounds: int, block: int, block_min_s: float, warmup: int,
                 seed: int, daemon_cpu: int | None, tick: Callable[[], None] = lambda: None) -> None:
        self.workloads = workloads
        self.rounds = rounds
        self.block = block
        self.block_min_s = block_min_s
        self.warmup = warmup
        self.seed = seed
        self.daemon_cpu = daemon_cpu
        self._tick = tick
        self.quiet: dict[tuple[str, str], _Hist] = {}
        self.attacked: dict[tuple[str, str, str], _Hist] = {}
        self.blocks: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.ran: list[str] = []
        self.processes: dict[str, list[dict]] = {}

    @staticmethod
    def blocks_per_placement(workloads: int, rounds: int) -> int:
        return rounds * len(ATTACKS) * 2 * workloads

    def run(self, root: Path, placements: tuple[str, ...]) -> None:
        run, self.skipped = attack_placements(placements)
        for name in run:
            self._placement(root / name, name)
            self.ran.append(name)

    # -- one placement ------------------------------------------------------------------
    def _placement(self, root: Path, name: str) -> None:
        with ExitStack() as stack:
            make_private_dirs(root)  # the runtime directory goes in it: 0700, whatever the umask
            stack.enter_context(_mediator_log_to(root / "el2-mediator.log"))
            p = stack.enter_context(make_platform(root, name, limits=ATTACK_LIMITS,
                                                  caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG, seed=self.seed,
                                                  smc_history=_SMC_HISTORY,
                                                  # the attacks with limits of their own, each from its domain
                                                  domain_limits={d: limits
                                                                 for a, d in attacker_domids().items()
                                                                 if (limits := ATTACKS[a].limits) is not None}))
            procs = [{"role": "platform", "pid": os.getpid(),
                      "what": "platform process: machine, OP-TEE model, bystander and attacker vCPU threads"
                              + (", SMC gate thread" if name == "stubdom" else ", el2 mediator"),
                      "affinity": sorted(os.sched_getaffinity(0))}]
            if p.daemon is not None:
                if self.daemon_cpu is not None:
                    os.sched_setaffinity(p.daemon.proc.pid, {self.daemon_cpu})
                procs.append({"role": "daemon", "pid": p.daemon.proc.pid,
                              "what": "stubdom-teed as the hostile harness starts it (poll window 20 µs)",
                              "affinity": sorted(os.sched_getaffinity(p.daemon.proc.pid))})
            self.processes[name] = procs
            counter = OpCounter()
            dom = p.create_domain(DomainSpec(BYSTANDER, nr_pages=_BYSTANDER_PAGES))
            drv = OpteeDriver(counting_trap(p.trap_entry(BYSTANDER), counter), dom,
                              allocator=PageAllocator.for_domain(dom, seed=self.seed),
                              supplicant=Supplicant())
            drv.probe()
            stack.callback(drv.shutdown)
            calls = {}
            for wl in self.workloads:
                w = Worker(drv, BYSTANDER, 0, seed=self.seed * 7919 + 31)
                stack.callback(w.close)
                calls[wl] = WORKLOADS[wl].prepare(w)
                drive_block([calls[wl]], self.warmup, rate=None, round_robin=False)
            gate = p.as_stubdom().gate if name == "stubdom" else None

            def gate_calls() -> int:
                if gate is None:
                    return 0
                return sum(n for (d, _op), n in gate.statistics().calls.items() if d == BYSTANDER)

            names = list(ATTACKS)
            for r in range(self.rounds):
                for attack in names[r % len(names):] + names[:r % len(names)]:
                    self._quiet_block(name, r, calls, counter, gate_calls)
                    self._attack_block(p, name, r, attack, calls)

    def _run_block(self, fn, loop: AttackLoop | None) -> tuple[list[int], int]:
        """Chunks of ``block`` calls until the block lasted ``block_min_s``
        and, under attack, the attacker completed an iteration meanwhile (a
        block shorter than the interpreter's switch interval could run with
        the attacker's thread never scheduled); an attack that failed ends
        it at once (its error is raised when the loop exits). Returns the
        samples and the block's wall time (ns)."""
        samples: list[int] = []
        t0, i0 = time.perf_counter(), loop.iterations if loop else 0
        while True:
            s, _wall = drive_block([fn], self.block, rate=None, round_robin=False)
            samples += s
            t = time.perf_counter() - t0
            if loop is not None and loop.errors:
                return samples, int(t * 1e9)
            if t >= self.block_min_s and (loop is None or loop.iterations > i0 or t >= _OVERLAP_CAP_S):
                return samples, int(t * 1e9)

    def _quiet_block(self, name, r, calls, counter, gate_calls) -> None:
        for wl, fn in calls.items():
            t0, g0 = counter.snapshot().get("guest_traps", 0), gate_calls()
            samples, wall = self._run_block(fn, None)
            rec = _block_record(name, r, None, wl, samples)
            h = self.quiet.setdefault((name, wl), _Hist())
            h.add(samples, rec["p50_ns"], wall)
            h.traps += counter.snapshot().get("guest_traps", 0) - t0
            h.gate += gate_calls() - g0
            self.blocks.append(rec)
            self._tick()

    def _attack_block(self, p, name, r, attack, calls) -> None:
        domid = attacker_domids()[attack]
        p.create_domain(DomainSpec(domid, nr_pages=_ATTACKER_PAGES if domid == ATTACKER
                                   else _OWN_LIMITS_ATTACKER_PAGES))
        try:
            guest = HostileGuest(p, domid, seed=r)
            with AttackLoop(p, guest, ATTACKS[attack], seed=self.seed + r, victim=BYSTANDER) as loop:
                for wl, fn in calls.items():
                    i0, t0 = loop.iterations, time.perf_counter_ns()
                    samples, wall = self._run_block(fn, loop)
                    rec = _block_record(name, r, attack, wl, samples)
                    h = self.attacked.setdefault((name, attack, wl), _Hist())
                    h.add(samples, rec["p50_ns"], wall)
                    h.attacker_iterations += loop.iterations - i0
                    h.attacker_window_ns += time.perf_counter_ns() - t0
                    self.blocks.append(rec)
                    self._tick()
        finally:
            if domid in p.domids():
                destroy_and_check(p, domid)

    # -- the document's section -----------------------------------------------------------
    def to_json(self) -> dict:
        switch_ns = int(sys.getswitchinterval() * 1e9)
        quiet = []
        qsum: dict[tuple[str, str], dict] = {}
        for (pl, wl), h in self.quiet.items():
            s = latency.summarise(h.hist)
            traps = h.traps / h.calls if h.calls else 0.0
            gate = h.gate / h.calls if h.calls else 0.0
            # the lock is taken once per call, plus once per blocking wait (stubdom)
            takes = 1.0 + (traps + gate if pl == "stubdom" else 0.0)
            qsum[(pl, wl)] = {"latency": s, "takes": takes, "calls_per_s": h.calls_per_s}
            quiet.append({"placement": pl, "workload": wl, "calls": h.calls, "latency_ns": s,
                          "calls_per_s": h.calls_per_s,
                          "block_p50_ns": list(h.block_p50), "traps_per_call": traps,
                          "gate_hypercalls_per_call": gate, "lock_takes_per_call": takes})
        rows = []
        for (pl, attack, wl), h in self.attacked.items():
            s = latency.summarise(h.hist)
            q = qsum[(pl, wl)]
            contenders = ATTACKS[attack].threads + (1 if pl == "stubdom" else 0)
            allowance = lock_wait_allowance_ns(q["takes"], contenders, switch_ns)
            ev = evaluate_bound(q["latency"], s, share=BOUND_SHARE, allowance_ns=allowance)
            tput = (h.calls_per_s / q["calls_per_s"]) if h.calls_per_s and q["calls_per_s"] else None
            rows.append({"placement": pl, "attack": attack, "workload": wl, "calls": h.calls, "latency_ns": s,
                         "calls_per_s": h.calls_per_s, "throughput_to_quiet": tput,
                         "quiet_p50_ns": q["latency"]["p50"], "quiet_p99_ns": q["latency"]["p99"],
                         "lock_takes_per_call": q["takes"], "contenders": contenders,
                         "lock_wait_allowance_ns": allowance, **ev,
                         "attacker_iterations": h.attacker_iterations,
                         "attacker_iterations_per_s": (h.attacker_iterations / (h.attacker_window_ns / 1e9)
                                                       if h.attacker_window_ns else None)})
        return {
            "bound": {
                "share": BOUND_SHARE,
                "switch_interval_ns": switch_ns,
                "p50": "p50 under attack <= share x quiet p50 + lock wait allowance",
                "p99": "p99 under attack <= share x quiet p99 + lock wait allowance",
                "allowance": "lock takes per call x contenders x switch interval",
            },
            "limits": {"calls_in_flight": ATTACK_LIMITS.max_calls, "shm_buffers": ATTACK_LIMITS.max_shm_buffers,
                       "pages_per_buffer": ATTACK_LIMITS.max_pages_per_buffer,
                       "total_pages": ATTACK_LIMITS.max_total_pages},
            "own_limits": {n: {"domid": attacker_domids()[n], "calls_in_flight": a.limits.max_calls,
                               "shm_buffers": a.limits.max_shm_buffers,
                               "pages_per_buffer": a.limits.max_pages_per_buffer,
                               "total_pages": a.limits.max_total_pages}
                           for n, a in ATTACKS.items() if a.limits is not None},
            "attacks": {n: a.outcome for n, a in ATTACKS.items()},
            "workloads": list(self.workloads),
            "rounds": self.rounds,
            "block": self.block,
            "block_min_s": self.block_min_s,
            "placements": {**{n: {"status": "ran", "processes": self.processes.get(n, [])} for n in self.ran},
                           **{n: {"status": "skipped", "reason": why} for n, why in self.skipped.items()}},
            "quiet": quiet,
            "rows": rows,
            "rows_over_bound": sum(1 for r in rows if r["over"]),
            "blocks": self.blocks,
        }


@contextmanager
def _mediator_log_to(path: Path) -> Iterator[None]:
    """The in-process (el2) mediator's per-guest log lines go to ``path``,
    as the daemon's go to its log file, not to the benchmark's console."""
    log = logging.getLogger("stubdom.mediator")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    saved = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.propagate = saved
        log.removeHandler(handler)
        handler.close()


def _block_record(placement: str, r: int, attack: str | None, workload: str, samples: list[int]) -> dict:
    """One block's own summary, by nearest rank on its samples (cheap: the
    HdrHistograms of the rows are built from the same samples)."""
    v = sorted(samples)
    n = len(v)

    def rank(p: float) -> int:
        return v[min(n - 1, max(0, -(-int(p * n) // 100) - 1))] if n else 0

    return {"placement": placement, "round": r, "attack": attack, "workload": workload, "calls": n,
            "p50_ns": rank(50), "p99_ns": rank(99), "max_ns": v[-1] if n else 0}
