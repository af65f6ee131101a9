"""The soak's load: honest domains running the Linux-like driver's workloads
(every answer checked), hostile domains cycling through the attack
catalogue and churned (destroyed, checked, recreated), and the fleet that
creates and destroys them all under one lock, so the sampler never looks
at a domain half made or half gone and the SMC check knows, as each SMC
reaches the TEE, which client IDs are alive."""

from __future__ import annotations

import abc
import random
import threading
import time
from collections import Counter

from stubdom import workloads
from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant
from stubdom.measure import latency
from stubdom.mediator import client_id
from stubdom.optee import OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED
from stubdom.platform import DomainSpec

from .guest import M32, HostileGuest
from .harness import destroy_and_check
from .platforms import HostilePlatform
from .soak_violations import Violations

__all__ = ["Fleet", "HonestWorker", "HostileWorker", "HONEST_WORKLOADS", "HYP_CALLS"]

HYP_CALLS = frozenset({OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED})
HONEST_WORKLOADS = ("increment", "digest_temp", "digest_registered", "storage")
# An honest call that failed is retried after this pause, so a broken system
# yields a countable trickle of violations, not a hot loop of them.
FAILURE_PAUSE_S = 0.5


class Fleet:
    """The soak's domains on one platform, and the SMC check (``check``)
    the platform's recorder runs on every SMC as it reaches the TEE: its a7
    must be a client ID of a domain between the start of its creation and
    the end of its destruction, or 0 on VM_CREATED / VM_DESTROYED."""

    def __init__(self, platform: HostilePlatform, violations: Violations) -> None:
        self.p = platform
        self.violations = violations
        self.lock = threading.RLock()
        self.roles: dict[int, str] = {}
        self.generation: Counter[int] = Counter()  # incarnations of each domid
        self._live: frozenset[int] = frozenset()  # replaced whole: read without the lock
        self.wrecked: set[int] = set()  # domains a failed teardown left half destroyed
        self.smcs_checked = 0

    def check(self, regs: tuple) -> None:
        self.smcs_checked += 1
        a7 = regs[7]
        if a7 in self._live or (a7 == 0 and regs[0] & M32 in HYP_CALLS):
            return
        self.violations.add("smc_client_id", f"SMC {[hex(r) for r in regs]} reached the TEE with a7={a7:#x}; "
                            f"live client IDs {sorted(self._live)}")

    def domids(self) -> list[int]:
        with self.lock:
            return sorted(self.roles)

    def create(self, domid: int, role: str, nr_pages: int):
        with self.lock:
            self._live = self._live | {client_id(domid)}
            try:
                dom = self.p.create_domain(DomainSpec(domid, nr_pages=nr_pages))
            except BaseException:
                self._live = self._live - {client_id(domid)}
                raise
            self.roles[domid] = role
            self.generation[domid] += 1
            return dom

    def destroy(self, domid: int, what: str) -> bool:
        """destroy_and_check the domain; a failure is a violation ``what``
        (the domain is destroyed all the same when the check failed before
        it; one whose teardown itself failed is left ``wrecked``, out of
        the fleet).  True when every check passed."""
        with self.lock:
            ok = True
            try:
                destroy_and_check(self.p, domid)
            except Exception as e:
                ok = False
                self.violations.add(what, f"d{domid} (incarnation {self.generation[domid]}): {e}", e)
                if domid in self.p.domids():
                    try:
                        self.p.destroy_domain(domid)
                    except Exception as e2:
                        self.violations.add(what, f"d{domid}: destroy failed: {e2!r}", e2)
            if domid not in self.p.domids():
                self._live = self._live - {client_id(domid)}
            else:
                self.wrecked.add(domid)
            self.roles.pop(domid, None)
            return ok


class _Worker(abc.ABC):
    """One domain's load on a thread of its own: ``_run`` loops until stop()."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @abc.abstractmethod
    def _run(self) -> None: ...

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


class HonestWorker(_Worker):
    """One honest domain: the Linux-like driver with its supplicant, on its
    own thread, running increment, digest over temporary and registered
    memory, and a secure-storage round trip (REE FS RPCs, SHM_ALLOC) in
    turn.  Every failure is a violation with its traceback."""

    def __init__(self, fleet: Fleet, domid: int, *, nr_pages: int, seed: int) -> None:
        self.fleet = fleet
        self.domid = domid
        self.seed = seed
        dom = fleet.create(domid, "honest", nr_pages)
        self.supplicant = Supplicant()
        self.driver = OpteeDriver(fleet.p.trap_entry(domid), dom,
                                  allocator=PageAllocator.for_domain(dom, seed=seed + domid),
                                  supplicant=self.supplicant)
        self.driver.probe()
        self.calls: Counter[str] = Counter()
        self.failures = 0
        self.supplicant_requests = 0
        self.hist = {w: latency.new_histogram() for w in HONEST_WORKLOADS}
        _Worker.__init__(self, f"soak-honest-d{domid}")

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def _one(self, ctx: Context, workload: str, i: int) -> None:
        if workload == "increment":
            workloads.increment(ctx, i)
        elif workload == "digest_temp":
            workloads.digest_temp(ctx, workloads.random_bytes(3 * 4096 + 5, i))
        elif workload == "digest_registered":
            workloads.digest_registered(ctx, workloads.random_bytes(2 * 4096 + 17, i))
        else:
            workloads.storage_round_trip(ctx, b"soak-%d-%d" % (self.domid, i % 7),
                                         workloads.random_bytes(5 * 1024 + 3, i))

    def _run(self) -> None:
        i = self.seed
        ctx = Context(self.driver)
        try:
            while not self._stop.is_set():
                workload = HONEST_WORKLOADS[i % len(HONEST_WORKLOADS)]
                t = time.perf_counter_ns()
                try:
                    self._one(ctx, workload, i)
                except Exception as e:
                    self.failures += 1
                    self.fleet.violations.add("honest_call_failed", f"d{self.domid} {workload} #{i}: {e!r}", e)
                    self._stop.wait(FAILURE_PAUSE_S)
                else:
                    latency.record(self.hist[workload], (time.perf_counter_ns() - t,))
                    self.calls[workload] += 1
                # The supplicant logs every request it served in a list: the
                # soak counts and drops them (the list is the harness's, not
                # the system's, memory).
                n = len(self.supplicant.requests)
                del self.supplicant.requests[:n]
                self.supplicant_requests += n
                i += 1
        finally:
            try:
                ctx.close()
            except Exception as e:
                self.fleet.violations.add("honest_call_failed", f"d{self.domid} context close: {e!r}", e)


class HostileWorker(_Worker):
    """One hostile domain on its own thread: runs the catalogue's attacks in
    a seeded order, each for ``attack_s`` seconds (an AttackLoop), against
    ``victim``; every ``churn_s`` seconds the domain is destroyed and checked
    (:func:`destroy_and_check`), then created again with a fresh kernel."""

    def __init__(self, fleet: Fleet, domid: int, *, victim: int, nr_pages: int, seed: int,
                 attack_s: float, churn_s: float, catalogue) -> None:
        self.fleet = fleet
        self.domid = domid
        self.victim = victim
        self.nr_pages = nr_pages
        self.attack_s = attack_s
        self.churn_s = churn_s
        self.cat = catalogue
        self.rng = random.Random(f"soak-hostile:{seed}:{domid}")
        self.iterations: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        self.churns = 0
        self.churn_failures = 0
        self.errors = 0
        self.guest = self._boot()
        _Worker.__init__(self, f"soak-hostile-d{domid}")

    def _boot(self) -> HostileGuest:
        self.fleet.create(self.domid, "hostile", self.nr_pages)
        return HostileGuest(self.fleet.p, self.domid, seed=self.rng.randrange(1 << 30))

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations.values())

    def _attack(self, attack, until: float) -> None:
        loop = None
        try:
            loop = self.cat.AttackLoop(self.fleet.p, self.guest, attack, seed=self.rng.randrange(1 << 30),
                                       victim=self.victim)
            with loop:
                self._stop.wait(max(0.0, until - time.monotonic()))
        except self.cat.AttackOutcomeWrong as e:
            self.errors += 1
            self.fleet.violations.add("attack_outcome_wrong", f"d{self.domid} {attack.name}: {e}", e)
        except Exception as e:
            self.errors += 1
            self.fleet.violations.add("attack_failed", f"d{self.domid} {attack.name}: {e!r}", e)
        finally:
            self.runs[attack.name] += 1
            if loop is not None:
                self.iterations[attack.name] += loop.iterations

    def churn(self) -> bool:
        """Destroy and check the domain, then boot it again."""
        ok = self.fleet.destroy(self.domid, "churn_destroy_check")
        self.churns += 1
        if not ok:
            self.churn_failures += 1
        try:
            self.guest = self._boot()
        except Exception as e:
            self.fleet.violations.add("churn_recreate_failed", f"d{self.domid}: {e!r}", e)
            return False
        return True

    def _run(self) -> None:
        names = sorted(self.cat.ATTACKS)
        order: list[str] = []
        next_churn = time.monotonic() + self.churn_s
        while not self._stop.is_set():
            if not order:
                order = names[:]
                self.rng.shuffle(order)
            attack = self.cat.ATTACKS[order.pop()]
            self._attack(attack, min(time.monotonic() + self.attack_s, next_churn))
            if not self._stop.is_set() and time.monotonic() >= next_churn:
                if not self.churn():
                    return  # no domain left to attack from
                next_churn = time.monotonic() + self.churn_s
