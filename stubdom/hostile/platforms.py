"""The platform a hostile-guest test runs on, under either placement.

``el2``: the mediator core inside the platform process, as Xen does it.
``stubdom``: the same core in a real ``stubdom-teed`` process started beside
the platform from a configuration written next to it, reached over each
domain's teeif ring, reaching OP-TEE only through the SMC gate.  Either runs
either mediator profile (``profile``: ``xen`` or ``strict``,
stubdom/mediator/profile.py).

Tests see both through the same surface, none of it the mediator's insides:
the machine (pins, owners), the TEE model (partitions, the isolation oracle,
every SMC it received) and :meth:`HostilePlatform.mediator_state` — the
daemon's ``dump`` control operation under ``stubdom``, the same map built
from the in-process context under ``el2``.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from stubdom.config import load_config
from stubdom.config.schema import CAPABILITY_BITS
from stubdom.mediator import DEFAULT_PROFILE, PROFILE_NAMES, DomainLimits, OpenSessionFilter, client_id, profile_named
from stubdom.optee import OPTEE_SMC_SEC_CAP_DYNAMIC_SHM, OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
from stubdom.platform import Placement, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.platform.launch import DaemonProcess
from stubdom.platform.stubdom import stubdom_placement
from stubdom.rundir import make_private_dirs
from stubdom.tee import REQUIRED_SEC_CAPS, TeeConfig

from .errors import DaemonDied

__all__ = ["PLACEMENTS", "PROFILES", "BASE_CAPS", "HostilePlatform", "SmcRecord", "make_platform", "tee_smcs",
           "tee_smcs_of"]

PLACEMENTS = ("el2", "stubdom")
PROFILES = PROFILE_NAMES  # the mediator profiles a platform can run
BASE_CAPS = REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM

# Bounds that only keep a wedged daemon from hanging the suite; never timing
# assertions.  A guest call waits this long for the daemon before ENOTAVAIL:
# far above any honest call, so a loaded CI box never turns into a verdict.
CALL_TIMEOUT_MS = 120_000
DAEMON_READY_S = 60.0
# Short: the vCPU threads of attacker, victim and honest load share 2 cores.
POLL_WINDOW_US = 20


class SmcRecord:
    """Every SMC the TEE model received, in arrival order, as a read-only
    sequence indexed from the first (``len`` is the total so far).

    Unbounded by default; with ``keep`` only the last ``keep`` registers are
    held (an older index raises IndexError) while the total and the count
    per client ID (a7) still cover every SMC: a long run stays flat in
    memory.  ``check``, when set, sees each SMC's registers as it arrives,
    before the TEE does (it must not raise)."""

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be positive or None, got {keep}")
        self.keep = keep
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple] = collections.deque(maxlen=keep)
        self._total = 0
        self._per_client: collections.Counter[int] = collections.Counter()
        self.check: Callable[[tuple], None] | None = None

    def append(self, regs: tuple) -> None:
        with self._lock:
            self._recent.append(regs)
            self._total += 1
            self._per_client[regs[7]] += 1

    def of_client(self, cid: int) -> int:
        """How many SMCs arrived with a7 == ``cid``."""
        with self._lock:
            return self._per_client[cid]

    def __len__(self) -> int:
        return self._total

    def counts(self) -> tuple[int, dict[int, int]]:
        """(total, {client ID: count}) taken together, atomically."""
        with self._lock:
            return self._total, dict(self._per_client)

    def __getitem__(self, index):
        # Under the lock, without copying the record: a long run indexes it
        # every step, and a copy per access would hold the interpreter lock
        # long enough to slow the very domains being measured.
        with self._lock:
            total = self._total
            first = total - len(self._recent)
            if isinstance(index, slice):
                wanted = range(total)[index]
                if wanted and min(wanted[0], wanted[-1]) < first:
                    raise IndexError(f"SMC #{min(wanted[0], wanted[-1])} was dropped: "
                                     f"only the last {self.keep} are kept")
                if wanted.step == 1:
                    return list(itertools.islice(self._recent, wanted.start - first, wanted.stop - first))
                return [self._recent[i - first] for i in wanted]
            i = index + total if index < 0 else index
            if not 0 <= i < total:
                raise IndexError(f"SMC #{index} out of range ({total} received)")
            if i < first:
                raise IndexError(f"SMC #{index} was dropped: only the last {self.keep} are kept")
            return self._recent[i - first]

    def __iter__(self) -> Iterator[tuple]:
        """The SMCs held (all of them unless bounded), as of now."""
        with self._lock:
            return iter(list(self._recent))


class HostilePlatform(Platform[Placement]):
    """A Platform recording every SMC that reaches the TEE (``tee_smcs``,
    an :class:`SmcRecord`) and, under ``stubdom``, owning the daemon process
    (``daemon``)."""

    placement_name: str
    profile_name: str
    daemon: DaemonProcess | None
    tee_smcs: SmcRecord
    daemon_exit: int | None

    def mediator_state(self, domid: int) -> dict:
        """The mediator's state of one domain, as the ``dump`` control
        operation answers it (docs/control-protocol.md).  Keys common to both
        placements: ``internal_errors``, ``calls_in_flight``, ``buffers``,
        ``pinned_pages``, ``limits``, ``suspended`` ({"tid": seq}),
        ``shm_buffers`` / ``rpc_buffers`` (lists of {"cookie", ...}),
        ``nr_shm_buffers``, ``nr_rpc_buffers``."""
        if self.daemon is not None:
            return self.as_stubdom().toolstack.request("dump", domid=domid)
        assert isinstance(self.placement, El2Placement)  # no daemon: make_platform made it under el2
        return self.placement.mediator.dump(domid, 1 << 30)

    def daemon_stats(self, domid: int) -> dict | None:
        """The daemon's ``stats`` record of ``domid`` (None under el2)."""
        if self.daemon is None:
            return None
        return self.as_stubdom().toolstack.stats(domid)["domains"][str(domid)]

    def check_daemon_alive(self) -> None:
        """Invariant 8: whatever a guest did, the daemon is still up."""
        if self.daemon is not None and self.daemon.proc.poll() is not None:
            raise DaemonDied(self.daemon.proc.returncode, self.daemon.log_path)

    def daemon_log(self) -> str:
        return self.daemon.log_path.read_text(errors="replace") if self.daemon is not None else ""

    def restart_daemon(self) -> None:
        """SIGKILL the daemon and start another on the same configuration
        (its journal and runtime directory as the dead one left them):
        crash recovery, as docs/faults.md describes it. Returns once the new
        one answers; the trap path reconnects by itself."""
        if self.daemon is None:
            raise ValueError("restart_daemon: no daemon under el2")
        old = self.daemon
        old.proc.kill()
        old.proc.wait()
        n = getattr(self, "_restarts", 0) + 1
        self._restarts = n
        self.daemon = DaemonProcess(old.config_path, old.log_path.with_name(f"{old.log_path.stem}.{n}.log"))
        self.daemon.wait_ready(self.as_stubdom().toolstack, DAEMON_READY_S)

    def close(self) -> None:
        """Destroy every domain (through the daemon while it runs), stop the
        daemon (SIGTERM: it drains and removes its files), then the rest."""
        try:
            for domid in self.domids():
                self.destroy_domain(domid)
        finally:
            if self.daemon is not None:
                self.daemon_exit = self.daemon.stop()
            super().close()


def _recording(factory, keep: int | None):
    """Wrap a placement factory so every SMC entering the TEE model (from
    the el2 mediator, or from the SMC gate's thread) is recorded in
    ``p.tee_smcs`` (and checked, once a check is set) before the placement
    exists."""

    def make(p: HostilePlatform):
        real = p.tee.smc
        record = SmcRecord(keep)

        def smc(regs):
            regs = tuple(regs)
            record.append(regs)
            check = record.check
            if check is not None:
                check(regs)
            return real(regs)

        p.tee.smc = smc  # type: ignore[method-assign]  # this model's entry, wrapped before the placement calls it
        p.tee_smcs = record
        return factory(p)

    return make


def _capability_names(caps: int) -> list[str]:
    names = [name for name, bit in CAPABILITY_BITS.items() if caps & bit]
    rest = caps & ~sum(CAPABILITY_BITS[n] for n in names)
    if rest:
        raise ValueError(f"capabilities {rest:#x} cannot be written in a configuration")
    return names


def _limits_doc(limits: DomainLimits) -> dict:
    return {"calls_in_flight": limits.max_calls, "shm_buffers": limits.max_shm_buffers,
            "pages_per_buffer": limits.max_pages_per_buffer, "total_pages": limits.max_total_pages}


def stubdom_config(root: Path, *, caps: int, limits: DomainLimits, threads: int, guest_count: int,
                   nr_frames: int, seed: int, call_timeout_ms: int = CALL_TIMEOUT_MS,
                   domain_limits: dict[int, DomainLimits] | None = None,
                   profile: str = DEFAULT_PROFILE.name) -> Path:
    """Write the configuration both processes read (the mediator ``profile``;
    every domain gets the ``defaults`` policy: every class but the
    hypervisor's, no rate limit, no TA list, ``limits``; a domain
    ``domain_limits`` names gets its own limits) and return its path."""
    doc = {
        "tee": {"threads": threads, "guest_count": guest_count, "capabilities": _capability_names(caps)},
        "mediator": {"placement": "stubdom", "profile": profile, "runtime_dir": str(root / "run"),
                     "poll_window_us": POLL_WINDOW_US, "call_timeout_ms": call_timeout_ms,
                     "drain_timeout_ms": 5000},
        "platform": {"nr_frames": nr_frames, "seed": seed},
        # within the profile's bounds (what the el2 mediator makes of them):
        # the configuration refuses a limit above them
        "defaults": {"limits": _limits_doc(profile_named(profile).bound(limits))},
    }
    if domain_limits:
        doc["domains"] = [{"domid": d, "limits": _limits_doc(profile_named(profile).bound(lim))}
                          for d, lim in sorted(domain_limits.items())]
    path = root / "xen.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_platform(path: Path, placement: str, *, caps: int = BASE_CAPS,
                  limits: DomainLimits | None = None, threads: int = 4, guest_count: int = 8,
                  nr_frames: int = 32768, seed: int = 5,
                  open_session_filter: OpenSessionFilter | None = None,
                  smc_history: int | None = None,
                  call_timeout_ms: int = CALL_TIMEOUT_MS,
                  domain_limits: dict[int, DomainLimits] | None = None,
                  profile: str = DEFAULT_PROFILE.name) -> HostilePlatform:
    """A platform under ``placement`` whose mediator speaks ``profile``
    (``xen`` or ``strict``), with the isolation oracle requiring pins;
    everything lives under the directory ``path``.  Under ``stubdom``
    the daemon is running and answering before this returns.
    ``limits`` are the policy's: under ``xen`` the mediator bounds them by
    Xen's (stubdom/mediator/profile.py); limits above those bounds are for
    ``strict`` only (the configuration refuses them under ``xen``).
    ``smc_history``: keep only the last that many SMCs' registers
    (:class:`SmcRecord`; a long run's memory stays flat).
    ``call_timeout_ms``: how long a guest call waits for the daemon (stubdom).
    ``domain_limits``: domains whose policy has limits of their own."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {PROFILES}")
    root = make_private_dirs(path)  # the runtime directory goes in it: 0700, whatever the umask
    limits = limits or DomainLimits()
    if placement == "el2":
        factory = _recording(lambda p: El2Placement(p, limits=limits, domain_limits=domain_limits,
                                                    open_session_filter=open_session_filter,
                                                    profile=profile_named(profile)),
                             smc_history)
        p = HostilePlatform(root / "machine", nr_frames=nr_frames,
                            tee_config=TeeConfig(sec_caps=caps, threads_per_guest=threads,
                                                 guest_count=guest_count),
                            placement=factory, require_pins=True, seed=seed)
        p.daemon = None
    elif placement == "stubdom":
        if open_session_filter is not None:
            raise ValueError("under stubdom the TA filter is the daemon's policy (ta_allow/ta_deny)")
        config_path = stubdom_config(root, caps=caps, limits=limits, threads=threads,
                                     guest_count=guest_count, nr_frames=nr_frames, seed=seed,
                                     call_timeout_ms=call_timeout_ms, domain_limits=domain_limits,
                                     profile=profile)
        config = load_config(config_path)
        med = config.mediator
        factory = _recording(stubdom_placement(med.runtime_dir, poll_window_us=med.poll_window_us,
                                               call_timeout_ms=med.call_timeout_ms, control_timeout=60.0),
                             smc_history)
        p = HostilePlatform.for_config(config, placement=factory)
        try:
            p.daemon = DaemonProcess(config_path, root / "daemon.log")
            p.daemon.wait_ready(p.as_stubdom().toolstack, DAEMON_READY_S)
        except BaseException:
            started: DaemonProcess | None = getattr(p, "daemon", None)  # unset if DaemonProcess() raised
            if started is not None:
                started.stop()
            p.daemon = None
            Platform.close(p)
            raise
    else:
        raise ValueError(f"unknown placement {placement!r}; one of {PLACEMENTS}")
    p.placement_name = placement
    p.profile_name = profile
    p.daemon_exit = None
    return p


def tee_smcs(p: HostilePlatform) -> SmcRecord:
    """Every SMC the TEE model received so far (a live sequence)."""
    return p.tee_smcs


def tee_smcs_of(p: HostilePlatform, domid: int) -> int:
    """How many SMCs reached the TEE stamped with ``domid``'s client ID
    (other domains' calls, running concurrently, do not count)."""
    return p.tee_smcs.of_client(client_id(domid))
