"""The stub-domain placements as the benchmark drives them: this process is
the platform (machine, OP-TEE model, SMC gate, guests' vCPU threads) with
the stubdom placement as each domain's trap path, and stubdom-teed runs as
its own process (``python -P -m stubdom.daemon --config X``), pinned as
``--cpus`` says. ``stubdom`` blocks on the event channel at once (polling
window 0 on both sides); ``stubdom-poll`` spins for the polling window first.

Counted here: guest traps (trap entry), SMCs (the TEE the gate calls, seen
through CountingTee), gate hypercalls (gate statistics), teeif ring entries
and notifications (the platform's per-domain link statistics). The gate's own
ring stands in for a synchronous HVC and is priced as a hypercall, not as
ring traffic. The mediator's pins, look-ups and copies happen inside the
daemon, where the mediator core counts them as it does under el2
(stubdom/mediator/opcount.py); they are read from the daemon's ``stats``
answer (``mediator_ops``) around each block, like every other count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from stubdom.guest.trace import TraceEvent
from stubdom.measure import proc_cpu_ns, proc_rss_kib, self_cpu_ns
from stubdom.platform import Platform
from stubdom.public.errors import ControlSocketError
from stubdom.rundir import make_private_dirs
from stubdom.trace import load_trace

from .counters import MEDIATOR_OPS, OPS, CountingTee
from .errors import PlacementUnavailable
from .layout import Layout
from .placements import DEFAULT_BENCH_PROFILE, BenchPlacement

if TYPE_CHECKING:
    from stubdom.platform.stubdom import StubdomPlacement

__all__ = ["StubdomBench", "daemon_config"]

_READY_TIMEOUT = 30.0  # seconds for the daemon's control socket to answer
_STOP_TIMEOUT = 15.0  # seconds for the daemon to drain on SIGTERM


def daemon_config(layout: Layout, runtime_dir: Path, *, poll_window_us: int, seed: int,
                  mediator_profile: str = DEFAULT_BENCH_PROFILE) -> dict:
    """The configuration both processes read: configs/bench.yaml's choices
    (nothing throttles or logs per call), sized for the layout; domains are
    not pre-declared (the benchmark creates them through the toolstack)."""
    tee = layout.tee_config()
    return {
        "tee": {"threads": tee.threads_per_guest, "guest_count": tee.guest_count,
                "capabilities": ["reserved_shm", "dynamic_shm", "virtualization", "memref_null", "rpc_arg"]},
        "mediator": {"placement": "stubdom", "profile": mediator_profile, "ring_pages": 1,
                     "poll_window_us": poll_window_us,
                     "runtime_dir": str(runtime_dir), "call_timeout_ms": 10000, "drain_timeout_ms": 10000,
                     "log_level": "warning"},
        "platform": {"nr_frames": layout.nr_frames, "seed": seed},
        "defaults": {"rate": None, "log_level": "warning"},
        "domains": [],
    }


class StubdomBench(BenchPlacement):
    platform: Platform[StubdomPlacement] | None

    def __init__(self, root: Path, layout: Layout, *, seed: int, poll: bool, daemon_cpu: int | None,
                 poll_window_us: int, mediator_profile: str = DEFAULT_BENCH_PROFILE,
                 guest_trace: Callable[[TraceEvent], None] | None = None, trace: bool = False) -> None:
        super().__init__(root, layout, seed=seed, mediator_profile=mediator_profile, guest_trace=guest_trace)
        self.name = "stubdom-poll" if poll else "stubdom"
        self._poll_us = poll_window_us if poll else 0
        self._daemon_cpu = daemon_cpu
        self._daemon: subprocess.Popen | None = None
        self._log_path = self.root / "daemon.log"
        # --trace: the daemon writes its spans here when it stops (trace_documents)
        self._trace_path = self.root / "daemon-trace.json" if trace else None

    def _make_platform(self) -> Platform[StubdomPlacement]:
        from stubdom.config import load_config
        from stubdom.platform.stubdom import StubdomPlacement

        runtime = self.root / "rt"
        make_private_dirs(runtime)  # a group-writable directory above it would be refused
        cfg_path = self.root / "bench-daemon.yaml"
        cfg_path.write_text(yaml.safe_dump(daemon_config(self.layout, runtime, poll_window_us=self._poll_us,
                                                         seed=self.seed, mediator_profile=self.mediator_profile),
                                     sort_keys=False))
        config = load_config(cfg_path)  # the same file the daemon reads: refuse it here first
        counter = self.counter

        def factory(p: Platform):
            # StubdomPlacement reads .tee (the gate's secure world) and .machine
            view = types.SimpleNamespace(tee=CountingTee(p.tee, counter), machine=p.machine)
            return StubdomPlacement(view, runtime, poll_window_us=self._poll_us,
                                    call_timeout_ms=config.mediator.call_timeout_ms)

        platform = Platform(runtime / "machine", nr_frames=config.platform.nr_frames, tee_config=config.tee,
                            placement=factory, require_pins=True, seed=self.seed)
        try:
            self._start_daemon(cfg_path)
            platform.placement.toolstack.wait_ready(_READY_TIMEOUT)
        except BaseException as e:
            platform.close()
            self._stop_daemon()
            if isinstance(e, Exception):
                raise PlacementUnavailable(self.name, f"stubdom-teed did not come up: {e}; "
                                                      f"see {self._log_path}") from e
            raise
        return platform

    def _start_daemon(self, cfg_path: Path) -> None:
        log = open(self._log_path, "wb")
        try:
            trace = [] if self._trace_path is None else ["--trace", str(self._trace_path)]
            self._daemon = subprocess.Popen([sys.executable, "-P", "-m", "stubdom.daemon", "--config",
                                             str(cfg_path), *trace], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        finally:
            log.close()
        if self._daemon_cpu is not None:
            os.sched_setaffinity(self._daemon.pid, {self._daemon_cpu})

    def _stop_daemon(self) -> None:
        proc, self._daemon = self._daemon, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # drains, as the contract says
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        try:
            super().close()  # drivers, then domains through the daemon, then gate + machine
        finally:
            self._stop_daemon()

    def trace_documents(self) -> list[tuple[dict, str | None]]:
        if self._trace_path is None or not self._trace_path.exists():
            return []
        return [(load_trace(self._trace_path), self.trace_scope)]

    # -- what it exposes -----------------------------------------------------------
    def _links(self):
        pl = self.platform.placement if self.platform is not None else None
        if pl is None:
            return []
        return [pl.statistics(d) for d in self.layout.domids if d in self.drivers]

    def _daemon_ops(self) -> dict[str, int]:
        """The mediator's own operation counts from the daemon's ``stats``
        answer: its top-level ``mediator_ops``, {op: count since the daemon
        started} over every domain (the ops of counters.MEDIATOR_OPS); {}
        from a daemon that does not export them (they are then "not
        measured", never another placement's)."""
        if self.platform is None or not self.drivers:
            return {}
        try:
            # one domain's record keeps the answer small at 1000 domains
            got = self.platform.placement.toolstack.stats(next(iter(self.drivers))).get("mediator_ops")
        except ControlSocketError:
            return {}
        if not isinstance(got, dict):
            return {}
        return {op: n for op, n in got.items() if op in MEDIATOR_OPS and isinstance(n, int)}

    def counted_ops(self) -> frozenset[str]:
        # what the platform observes, and whatever the daemon exports of its own
        return frozenset(op for op in OPS if op not in MEDIATOR_OPS) | frozenset(self._daemon_ops())

    def extra_counts(self) -> dict[str, int]:
        if self.platform is None:
            return {}
        gate = self.platform.placement.gate.statistics()
        links = self._links()
        req = sum(s.requests for s in links)
        rsp = sum(s.responses for s in links)
        return {
            **self._daemon_ops(),
            "gate_hypercalls": sum(gate.calls.values()),
            # teeif only: a request and its response, each pushed once and popped once
            "ring_pushes": req + rsp,
            "ring_pops": req + rsp,
            # sent by the platform (counted); sent by the daemon: seen as the platform's wake-ups
            "notifications": sum(s.notifications_sent + s.wakeups for s in links),
            # the vCPU woken by the daemon's answer, and the daemon woken by a request notification
            "wakeups": sum(s.wakeups + s.notifications_sent for s in links),
        }

    def transport(self) -> dict[str, int]:
        if self.platform is None:
            return {}
        links = self._links()
        gate = self.platform.placement.gate.statistics()
        return {
            "notifications_to_backend": sum(s.notifications_sent for s in links),
            "notifications_suppressed_to_backend": sum(s.notifications_suppressed for s in links),
            "notifications_to_frontend": sum(s.wakeups for s in links),
            "wakeups_frontend": sum(s.wakeups for s in links),
            "wakeups_backend": sum(s.notifications_sent for s in links),
            "entries_pushed": sum(s.requests for s in links),
            "gate_calls": sum(gate.calls.values()),
            "gate_pop_batches": gate.batches,
            "gate_wakeups": gate.wakeups,
            "timeouts": sum(s.timeouts + s.unavailable + s.backend_errors for s in links),
        }

    def processes(self) -> list[dict]:
        out = super().processes()
        out[0]["what"] = ("platform process: machine, OP-TEE model, SMC gate thread, guests' vCPU threads, "
                          "teeif frontends")
        if self._daemon is not None:
            out.append({"role": "daemon", "pid": self._daemon.pid,
                        "what": f"stubdom-teed (python -P -m stubdom.daemon), polling window {self._poll_us} µs",
                        "affinity": sorted(os.sched_getaffinity(self._daemon.pid))})
        return out

    def cpu_ns(self) -> dict[str, int]:
        out = {"platform": self_cpu_ns()}
        if self._daemon is not None:
            out["daemon"] = proc_cpu_ns(self._daemon.pid)
        return out

    def rss_kib(self) -> dict[str, int]:
        out = {"platform": proc_rss_kib()}
        if self._daemon is not None:
            out["daemon"] = proc_rss_kib(self._daemon.pid)
        return out
