"""What every hostile-guest test needs around the attacker: an honest
domain running the Linux-like driver concurrently, and the checks after the
attacker (or every domain) is destroyed.  The platforms, under each
placement, are in :mod:`stubdom.hostile.platforms`.
"""

from __future__ import annotations

import threading

from stubdom import workloads
from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant
from stubdom.mediator import client_id
from stubdom.platform import DomainSpec

from .errors import HonestLoadFailed
from .guest import HostileGuest
from .platforms import HostilePlatform

__all__ = ["HonestLoad", "destroy_and_check", "destroy_all_and_check"]


class HonestLoad:
    """An honest domain running the Linux-like driver's workloads in a loop,
    on its own thread, while an attack goes on.  ``with HonestLoad(...)``
    returns once the first round completed (so the load overlaps the attack)
    and, on exit, raises :class:`HonestLoadFailed` if any call failed."""

    def __init__(self, platform: HostilePlatform, domid: int, *, nr_pages: int = 1024) -> None:
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


def destroy_and_check(platform: HostilePlatform, guest: HostileGuest | int) -> None:
    """Destroy the attacker; then nothing of it may be left: no frame of it
    pinned, no TEE partition, no isolation violation, no mediator bug hit on
    its behalf (``internal_errors``, the daemon's ``backend_failures``) and,
    under stubdom, the daemon still up and no longer serving it."""
    domid = guest if isinstance(guest, int) else guest.domid
    platform.check_daemon_alive()
    state = platform.mediator_state(domid)
    assert state["internal_errors"] == 0, f"d{domid}: mediator internal errors: {state}"
    stats = platform.daemon_stats(domid)
    assert stats is None or stats["backend_failures"] == 0, f"d{domid}: daemon backend failures: {stats}"
    platform.destroy_domain(domid)
    pinned = platform.machine.pinned_frames(domid)
    assert pinned == {}, f"d{domid} frames still pinned: {pinned}"
    partition = platform.tee.partition_stats(client_id(domid))
    assert partition is None, f"d{domid} TEE partition left: {partition}"
    platform.oracle.assert_clean()
    platform.check_daemon_alive()
    if platform.daemon is not None:
        served = [d["domid"] for d in platform.as_stubdom().toolstack.list()["domains"]]
        assert domid not in served, f"d{domid} still served by the daemon: {served}"


def destroy_all_and_check(platform: HostilePlatform) -> None:
    """:func:`destroy_and_check` every domain still alive (a test's end on a
    platform shared by the tests of a module)."""
    for domid in platform.domids():
        destroy_and_check(platform, domid)
