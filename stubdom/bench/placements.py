"""Placements as the benchmark drives them: each builds its own platform (one
machine, one secure world) with the layout's domains and one probed guest
driver per domain, and exposes its operation counts, its processes and their
CPU time and memory.

``el2`` runs in this process. ``stubdom`` and ``stubdom-poll`` need the
stub-domain placement, the SMC gate and the daemon process; where those are
not available the placement is skipped with the reason (never faked).
"""

from __future__ import annotations

import abc
import os
import types
from collections.abc import Callable
from pathlib import Path

from stubdom.guest import OpteeDriver, PageAllocator, Supplicant
from stubdom.guest.trace import TraceEvent
from stubdom.measure import proc_rss_kib, self_cpu_ns
from stubdom.mediator.profile import XEN, profile_named
from stubdom.platform import DomainSpec, Platform

from .counters import OPS, CountingTee, OpCounter, counting_trap
from .errors import PlacementUnavailable
from .layout import Layout

__all__ = ["BenchPlacement", "El2Bench", "PLACEMENT_NAMES", "DEFAULT_BENCH_PROFILE", "make_placement"]

PLACEMENT_NAMES = ("el2", "stubdom", "stubdom-poll")
#: The mediator profile the benchmark runs unless told otherwise: upstream
#: Xen's protocol, the one a deployed EL2 mediator speaks (docs/fidelity.md).
DEFAULT_BENCH_PROFILE = XEN.name


class BenchPlacement(abc.ABC):
    """Common part: guests, drivers and counters over a ``Platform``."""

    name = ""

    def __init__(self, root: Path, layout: Layout, *, seed: int, mediator_profile: str = DEFAULT_BENCH_PROFILE,
                 guest_trace: Callable[[TraceEvent], None] | None = None) -> None:
        self.root = Path(root)
        self.layout = layout
        self.seed = seed
        self.mediator_profile = mediator_profile
        # every guest driver's SMCs and RPCs (stubdom.guest.trace), for docs/fidelity.md
        self._guest_trace = guest_trace
        self.counter = OpCounter()
        self.platform: Platform | None = None
        self.drivers: dict[int, OpteeDriver] = {}
        self.trace_scope: str | None = None  # --trace: the scope its calls are sampled under (the runner's)

    # -- subclasses -------------------------------------------------------------
    @abc.abstractmethod
    def _make_platform(self) -> Platform:
        """Boot this placement's platform (and, for stubdom, its daemon)."""

    def extra_counts(self) -> dict[str, int]:
        """Counts read from components' own statistics (rings, gate)."""
        return {}

    def counted_ops(self) -> frozenset[str]:
        """The operations of counters.OPS this placement observes; the
        others are "not measured" in its cells (None, never 0)."""
        return frozenset(OPS)

    def transport(self) -> dict[str, int]:
        """Cumulative transport counters (notifications each way, wake-ups each
        side, entries and batches pushed/popped); empty without a transport."""
        return {}

    def processes(self) -> list[dict]:
        return [{"role": "platform", "pid": os.getpid(),
                 "what": f"platform process: machine, OP-TEE model, guests' vCPU threads, {self.name} mediator",
                 "affinity": sorted(os.sched_getaffinity(0))}]

    def trace_documents(self) -> list[tuple[dict, str | None]]:
        """--trace: other processes' trace documents, each with the scope of
        its calls (after close)."""
        return []

    def cpu_ns(self) -> dict[str, int]:
        return {"platform": self_cpu_ns()}

    def rss_kib(self) -> dict[str, int]:
        return {"platform": proc_rss_kib()}

    # -- common -----------------------------------------------------------------
    def start(self) -> None:
        self.platform = self._make_platform()
        for domid in self.layout.domids:
            dom = self.platform.create_domain(DomainSpec(domid, nr_pages=self.layout.pages_per_domain,
                                                         vcpus=self.layout.vcpus_per_domain))
            drv = OpteeDriver(counting_trap(self.platform.trap_entry(domid), self.counter), dom,
                              nr_vcpus=self.layout.vcpus_per_domain,
                              allocator=PageAllocator.for_domain(dom, seed=self.seed + domid),
                              supplicant=Supplicant(), trace=self._guest_trace)
            drv.probe()
            self.drivers[domid] = drv

    def counts(self) -> dict[str, int]:
        out = self.counter.snapshot()
        for k, v in self.extra_counts().items():
            out[k] = out.get(k, 0) + v
        return out

    def close(self) -> None:
        for drv in self.drivers.values():
            drv.shutdown()
        self.drivers.clear()
        if self.platform is not None:
            self.platform.close()
            self.platform = None


class El2Bench(BenchPlacement):
    """Xen's placement: the mediator core in the trapping vCPU's thread, SMCs
    issued directly. Its TEE is seen through a counter; what the mediator
    does to the machine the core counts itself (``Mediator.op_counts``, the
    same code that counts in the daemon under stubdom)."""

    name = "el2"

    def _make_platform(self) -> Platform:
        from stubdom.platform.el2 import El2Placement

        counter = self.counter

        def factory(p: Platform):
            # El2Placement reads only .tee and .machine of the platform it is given
            view = types.SimpleNamespace(tee=CountingTee(p.tee, counter), machine=p.machine)
            return El2Placement(view, profile=profile_named(self.mediator_profile))

        return Platform(self.root / "el2" / "machine", nr_frames=self.layout.nr_frames,
                        tee_config=self.layout.tee_config(), placement=factory,
                        require_pins=True, seed=self.seed)

    def extra_counts(self) -> dict[str, int]:
        if self.platform is None:
            return {}
        from stubdom.platform.el2 import El2Placement

        placement = self.platform.placement
        assert isinstance(placement, El2Placement)
        # every domain's together, since the mediator was made (deltas are taken around blocks)
        return placement.mediator.op_counts()


def _stubdom_missing() -> str | None:
    """Why the stub-domain placement cannot run here yet, or None."""
    import importlib.util

    for mod, what in (("stubdom.platform.stubdom", "the stubdom placement (PLATFORM engineer)"),
                      ("stubdom.platform.gate", "the SMC gate (PLATFORM engineer)"),
                      ("stubdom.daemon.__main__", "the daemon process (DAEMON engineer)")):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not in this checkout yet: {what}"
        except ModuleNotFoundError:
            return f"{mod} is not in this checkout yet: {what}"
    return None


def make_placement(name: str, root: Path, layout: Layout, *, seed: int,
                   daemon_cpu: int | None = None, poll_window_us: int = 0,
                   mediator_profile: str = DEFAULT_BENCH_PROFILE,
                   guest_trace: Callable[[TraceEvent], None] | None = None,
                   trace: bool = False) -> BenchPlacement:
    """The placement ``name`` for one layout, its mediator speaking
    ``mediator_profile``, or PlacementUnavailable. ``guest_trace`` records
    the guest drivers' SMCs and RPCs (docs/fidelity.md); ``trace`` samples
    calls' spans (``--trace``)."""
    if name == "el2":
        return El2Bench(root, layout, seed=seed, mediator_profile=mediator_profile, guest_trace=guest_trace)
    if name in ("stubdom", "stubdom-poll"):
        why = _stubdom_missing()
        if why:
            raise PlacementUnavailable(name, why)
        from .stubdom_run import StubdomBench

        return StubdomBench(root, layout, seed=seed, poll=name == "stubdom-poll",
                            daemon_cpu=daemon_cpu, poll_window_us=poll_window_us,
                            mediator_profile=mediator_profile, guest_trace=guest_trace, trace=trace)
    raise PlacementUnavailable(name, f"unknown placement (known: {', '.join(PLACEMENT_NAMES)})")
