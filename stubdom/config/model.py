"""The validated configuration: frozen records the loader builds and the
daemon, the platform and the policy engine read.  Plain values only; every
check lives in the loader, which reports file and line."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.mediator.limits import DomainLimits
from stubdom.policy.classes import ALWAYS_ALLOWED_CLASSES, DEFAULT_ALLOWED_CLASSES

from .tee import TeeConfig

__all__ = [
    "Config",
    "DomainConfig",
    "DomainPolicy",
    "MediatorConfig",
    "PlatformConfig",
    "RateLimit",
    "StaticShmConfig",
    "LOG_LEVELS",
    "PLACEMENTS",
]

# The daemon's log levels (stubdom.daemon.logs.LEVELS has the same names).
LOG_LEVELS = ("debug", "info", "warning", "error")
PLACEMENTS = ("el2", "stubdom")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token bucket of standard calls: ``burst`` tokens, refilled at
    ``calls_per_second``; each new standard call takes one."""

    calls_per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """What one domain may do through the mediator.

    enabled             False: the daemon refuses to create the domain, and a
                        running one (after a reload) gets every call refused
    static_shm_allowed  may use the static shm carve-out (it must also be the
                        hardware domain and direct-mapped: checked at use)
    allow_classes       function classes the domain may issue
    deny_classes        function classes refused even if allowed
    ta_allow            TA UUIDs OPEN_SESSION may name; None = every TA
    ta_deny             TA UUIDs OPEN_SESSION may never name
    limits              what the domain may hold at once (mediator)
    rate                token bucket for standard calls; None = unlimited
    log_level           level of this domain's guest-triggered log lines
    """

    enabled: bool = True
    static_shm_allowed: bool = False
    allow_classes: frozenset[str] = DEFAULT_ALLOWED_CLASSES
    deny_classes: frozenset[str] = frozenset()
    ta_allow: frozenset[uuid.UUID] | None = None
    ta_deny: frozenset[uuid.UUID] = frozenset()
    limits: DomainLimits = DomainLimits()
    rate: RateLimit | None = None
    log_level: str = "info"

    @property
    def allowed_classes(self) -> frozenset[str]:
        """The classes that pass: allowed, not denied, plus rpc_return always."""
        return (self.allow_classes - self.deny_classes) | ALWAYS_ALLOWED_CLASSES

    def ta_allowed(self, ta_uuid: uuid.UUID) -> bool:
        """May OPEN_SESSION name this TA?  The deny list wins."""
        if ta_uuid in self.ta_deny:
            return False
        return self.ta_allow is None or ta_uuid in self.ta_allow


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """A pre-declared domain: what the toolstack builds and its policy.

    static_shm  map the static shm region into the domain at creation (only
                for the hardware domain, direct-mapped)
    """

    domid: int
    name: str
    nr_pages: int
    vcpus: int
    hwdom: bool
    direct_mapped: bool
    static_shm: bool
    policy: DomainPolicy


@dataclass(frozen=True, slots=True)
class MediatorConfig:
    """The mediator and, under ``stubdom``, the daemon hosting it; ``profile``
    names the protocol it speaks to guests (stubdom.mediator.profile)."""

    placement: str
    ring_pages: int
    poll_window_us: int
    runtime_dir: Path
    log_level: str
    call_timeout_ms: int
    drain_timeout_ms: int
    gate_timeout_ms: int
    tee_num_params: int = 4  # TEE_NUM_PARAMS of the OP-TEE behind (tee_api_defines.h)
    profile: str = "strict"  # the mediator profile (stubdom.mediator.profile.PROFILE_NAMES)
    fast_path: bool = True  # identity queries answered in C (stubdom.daemon.fastpath)
    gate_spin_us: int = 10_000  # the daemon spins this long for a gate hypercall's answer, then sleeps


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """The simulated machine."""

    nr_frames: int
    seed: int


@dataclass(frozen=True, slots=True)
class StaticShmConfig:
    """OP-TEE's reserved shared memory (CFG_SHMEM_START / CFG_SHMEM_SIZE),
    a carve-out of machine RAM that the machine reserves to Xen."""

    base: int
    size: int


@dataclass(frozen=True, slots=True)
class Config:
    """One whole, validated configuration.  ``source`` (where it came from)
    does not take part in comparisons."""

    tee: TeeConfig
    static_shm: StaticShmConfig
    mediator: MediatorConfig
    platform: PlatformConfig
    domains: tuple[DomainConfig, ...]
    default_policy: DomainPolicy
    source: str = field(default="", compare=False)

    def domain(self, domid: int) -> DomainConfig | None:
        """The pre-declared domain ``domid``, or None."""
        for d in self.domains:
            if d.domid == domid:
                return d
        return None

    def policy_for(self, domid: int) -> DomainPolicy:
        """The policy of ``domid``: its own if pre-declared, else ``defaults``."""
        d = self.domain(domid)
        return d.policy if d is not None else self.default_policy
