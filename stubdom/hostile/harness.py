"""What every hostile-guest test needs around the attacker: a platform under
a named placement with the SMCs reaching the TEE recorded, an honest domain
running the Linux-like driver concurrently, and the checks after the
attacker is destroyed.

The same test runs under each placement: tests parametrise over
``PLACEMENTS`` and build their platform with :func:`make_platform`.  Only
``el2`` exists today; the stub-domain placement joins the tuple when it lands.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from stubdom import workloads
from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant
from stubdom.mediator import DomainLimits, OpenSessionFilter, client_id
from stubdom.optee import OPTEE_SMC_SEC_CAP_DYNAMIC_SHM, OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
from stubdom.platform import DomainSpec, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.tee import REQUIRED_SEC_CAPS, TeeConfig

from .errors import HonestLoadFailed
from .guest import HostileGuest, Regs

__all__ = ["PLACEMENTS", "BASE_CAPS", "make_platform", "HonestLoad", "destroy_and_check",
           "tee_smcs"]

PLACEMENTS = ("el2",)
BASE_CAPS = REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM


def _el2(limits: DomainLimits | None, open_session_filter: OpenSessionFilter | None):
    return lambda p: El2Placement(p, limits=limits, open_session_filter=open_session_filter)


_FACTORIES: dict[str, Callable] = {"el2": _el2}


def make_platform(path: Path, placement: str, *, caps: int = BASE_CAPS,
                  limits: DomainLimits | None = None, threads: int = 4, guest_count: int = 8,
                  nr_frames: int = 32768, seed: int = 5,
                  open_session_filter: OpenSessionFilter | None = None) -> Platform:
    """A platform under ``placement`` with the isolation oracle requiring
    pins; every SMC that reaches the TEE is appended to ``tee_smcs(p)``."""
    factory = _FACTORIES[placement](limits, open_session_filter)
    seen: list[Regs] = []

    def placement_with_recording(p: Platform):
        real = p.tee.smc

        def smc(regs):
            seen.append(tuple(regs))
            return real(regs)

        p.tee.smc = smc
        p.tee_smcs = seen  # type: ignore[attr-defined]
        return factory(p)

    return Platform(Path(path), nr_frames=nr_frames,
                    tee_config=TeeConfig(sec_caps=caps, threads_per_guest=threads,
                                         guest_count=guest_count),
                    placement=placement_with_recording, require_pins=True, seed=seed)


def tee_smcs(p: Platform) -> list[Regs]:
    """Every SMC the TEE model received so far (a live list)."""
    return p.tee_smcs  # type: ignore[attr-defined]


class HonestLoad:
    """An honest domain running the Linux-like driver's workloads in a loop,
    on its own thread, while an attack goes on.  ``with HonestLoad(...)``
    returns once the first round completed (so the load overlaps the attack)
    and, on exit, raises :class:`HonestLoadFailed` if any call failed."""

    def __init__(self, platform: Platform, domid: int, *, nr_pages: int = 1024) -> None:
        self.domid = domid
        dom = platform.create_domain(DomainSpec(domid, nr_pages=nr_pages))
        self.driver = OpteeDriver(platform.trap_entry(domid), dom,
                                  allocator=PageAllocator.for_domain(dom, seed=domid),
                                  supplicant=Supplicant())
        self.driver.probe()
        self.rounds = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"honest-d{domid}", daemon=True)

    def _run(self) -> None:
        try:
            with Context(self.driver) as ctx:
                i = 0
                while not self._stop.is_set():
                    workloads.increment(ctx, i)
                    data = workloads.random_bytes(3 * 4096 + 5, i)
                    workloads.digest_temp(ctx, data)
                    self.rounds += 1
                    i += 1
                    self._first.set()
        except BaseException as e:  # reported by __exit__ in the test's thread
            self.errors.append(e)
        finally:
            self._first.set()

    def __enter__(self) -> HonestLoad:
        self._thread.start()
        # Not a timing assertion: only keeps a wedged load from hanging the suite.
        if not self._first.wait(timeout=120):
            self._stop.set()
            raise HonestLoadFailed(self.domid, [TimeoutError("no honest round completed in 120 s")])
        if self.errors:
            self._thread.join()
            raise HonestLoadFailed(self.domid, self.errors)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.errors:
            raise HonestLoadFailed(self.domid, self.errors)


def destroy_and_check(platform: Platform, guest: HostileGuest) -> None:
    """Destroy the attacker; then nothing of it may be left: no frame of it
    pinned, no TEE partition, no isolation violation."""
    platform.destroy_domain(guest.domid)
    pinned = platform.machine.pinned_frames(guest.domid)
    assert pinned == {}, f"d{guest.domid} frames still pinned: {pinned}"
    stats = platform.tee.partition_stats(client_id(guest.domid))
    assert stats is None, f"d{guest.domid} TEE partition left: {stats}"
    platform.oracle.assert_clean()
