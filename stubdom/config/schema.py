"""The schema of the YAML configuration: every key, its converter, default
and meaning, as one table.  The loader walks it; docs/config.md and
configs/reference.yaml describe the same keys (a test checks that every key
here appears in reference.yaml).

Layout::

    tee:        the modelled OP-TEE (stubdom.config.tee.TeeConfig) and its static shm
    mediator:   placement, profile, ring, polling, runtime directory, timeouts, logs
    platform:   the simulated machine
    defaults:   the policy of every domain not listed under domains (and the
                base of every listed one: a key a domain omits comes from here)
    domains:    pre-declared domains, each a domain plus its own policy keys
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stubdom.mediator.limits import (
    DEFAULT_MAX_CALLS,
    DEFAULT_MAX_PAGES_PER_BUFFER,
    DEFAULT_MAX_SHM_BUFFERS,
    DEFAULT_MAX_TOTAL_PAGES,
)
from stubdom.mediator.profile import DEFAULT_PROFILE, PROFILE_NAMES
from stubdom.optee.smc import (
    OPTEE_SMC_SEC_CAP_ASYNC_NOTIF,
    OPTEE_SMC_SEC_CAP_DYNAMIC_PROTMEM,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_PROTMEM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SEC_CAP_RPMB_PROBE,
    OPTEE_SMC_SEC_CAP_UNREGISTERED_SHM,
    OPTEE_SMC_SEC_CAP_VIRTUALIZATION,
)
from stubdom.policy.classes import DEFAULT_ALLOWED_CLASSES, FUNCTION_CLASSES
from stubdom.xen.constants import DOMID_FIRST_RESERVED, GUEST_RAM0_SIZE, OPTEE_SHMEM_SIZE, OPTEE_SHMEM_START

from .datatypes import Boolean, Choice, Converter, Integer, Number, PathValue, Text, UuidValue
from .model import LOG_LEVELS, PLACEMENTS
from .tee import DEFAULT_SEC_CAPS, MAX_GUESTS, MAX_THREADS_PER_GUEST, TA_KINDS, TA_NAMES, TeeConfig

__all__ = [
    "REQUIRED",
    "Key",
    "Section",
    "ListOf",
    "SectionList",
    "CAPABILITY_BITS",
    "SCHEMA",
    "POLICY_KEYS",
    "key_paths",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


# Default of a key that must be given.
REQUIRED = _Required()


@dataclass(frozen=True)
class ListOf:
    """A YAML list of scalars, each converted by ``item``; no repeats."""

    item: Converter

    @property
    def type_name(self) -> str:
        noun = self.item.type_name.removeprefix("a ").removeprefix("an ")
        return f"a list of {noun}{'es' if noun.endswith('s') else 's'}"


@dataclass(frozen=True)
class Key:
    """One key: its converter (or nested section / list), its default
    (REQUIRED, or the converted value), whether null is accepted, and what
    it means."""

    name: str
    kind: Converter | ListOf | Section | SectionList
    default: Any  # REQUIRED, or a value of the type its kind converts to
    doc: str
    nullable: bool = False

    @property
    def section(self) -> Section:
        """The section of a key whose value is a mapping (TypeError for any
        other: a slip in the loader's reading of the schema)."""
        if not isinstance(self.kind, Section):
            raise TypeError(f"key {self.name!r} is {self.kind.type_name}, not a mapping")
        return self.kind

    @property
    def section_list(self) -> SectionList:
        """The list of sections of a key whose value is a list of mappings
        (TypeError for any other)."""
        if not isinstance(self.kind, SectionList):
            raise TypeError(f"key {self.name!r} is {self.kind.type_name}, not a list of mappings")
        return self.kind


@dataclass(frozen=True)
class Section:
    """A YAML mapping with a fixed set of keys."""

    keys: tuple[Key, ...]
    by_name: dict[str, Key] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {k.name: k for k in self.keys})

    type_name = "a mapping"


@dataclass(frozen=True)
class SectionList:
    """A YAML list of mappings, each a ``section``."""

    section: Section
    type_name = "a list of mappings"


# OPTEE_SMC_SEC_CAP_* by the name a config spells (optee_smc.h, without the
# prefix; HAVE_RESERVED_SHM drops its HAVE_).
CAPABILITY_BITS = {
    "reserved_shm": OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    "unregistered_shm": OPTEE_SMC_SEC_CAP_UNREGISTERED_SHM,
    "dynamic_shm": OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    "virtualization": OPTEE_SMC_SEC_CAP_VIRTUALIZATION,
    "memref_null": OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    "async_notif": OPTEE_SMC_SEC_CAP_ASYNC_NOTIF,
    "rpc_arg": OPTEE_SMC_SEC_CAP_RPC_ARG,
    "rpmb_probe": OPTEE_SMC_SEC_CAP_RPMB_PROBE,
    "protmem": OPTEE_SMC_SEC_CAP_PROTMEM,
    "dynamic_protmem": OPTEE_SMC_SEC_CAP_DYNAMIC_PROTMEM,
}

_TEE = TeeConfig()
_U32_MAX = 0xFFFFFFFF
_U64_MAX = (1 << 64) - 1
# ring.MAX_RING_PAGES (TEEIF_MAX_RING_PAGES); a test keeps them equal without
# making the loader load the ring's compiled module.
MAX_RING_PAGES = 1024
MAX_DOMAIN_PAGES = GUEST_RAM0_SIZE >> 12  # a guest's RAM bank 0 (xen/include/public/arch-arm.h)
MAX_VCPUS = 128  # Xen on Arm with GICv3 (MAX_VIRT_CPUS)

_LOG_LEVEL = Choice(LOG_LEVELS, what="a log level")
_CLASS = Choice(FUNCTION_CLASSES, what="a function class")

_OS_REVISION = Section((
    Key("major", Integer(0, _U32_MAX), _TEE.os_revision_major,
        "GET_OS_REVISION a0 (CFG_OPTEE_REVISION_MAJOR)"),
    Key("minor", Integer(0, _U32_MAX), _TEE.os_revision_minor,
        "GET_OS_REVISION a1 (CFG_OPTEE_REVISION_MINOR)"),
    Key("build_id", Integer(0, _U32_MAX, hex_range=True), _TEE.os_build_id,
        "GET_OS_REVISION a2 (TEE_IMPL_GIT_SHA1; 0 = unspecified)"),
))

_STATIC_SHM = Section((
    Key("base", Integer(0, _U64_MAX, hex_range=True), OPTEE_SHMEM_START,
        "machine address of the region (CFG_SHMEM_START); page aligned, inside RAM"),
    Key("size", Integer(4096, 1 << 32, hex_range=True), OPTEE_SHMEM_SIZE,
        "bytes (CFG_SHMEM_SIZE); a whole number of pages"),
))

_TA_KIND = Choice(TA_KINDS, what="a TA kind")
_TAS = Section(tuple(
    Key(name, _TA_KIND, _TEE.ta_kind(name),
        f"how OP-TEE finds the {name} TA: early (linked into OP-TEE, no RPC) or ree (loaded by "
        f"tee-supplicant with OPTEE_RPC_CMD_LOAD_TA at every OPEN_SESSION)")
    for name in TA_NAMES))

_TEE_SECTION = Section((
    Key("threads", Integer(1, MAX_THREADS_PER_GUEST), _TEE.threads_per_guest,
        "OP-TEE threads per guest partition (CFG_NUM_THREADS)"),
    Key("guest_count", Integer(1, MAX_GUESTS), _TEE.guest_count,
        "guest partitions (CFG_VIRT_GUEST_COUNT); must hold every enabled pre-declared domain"),
    Key("capabilities", ListOf(Choice(CAPABILITY_BITS, what="a capability name")),
        tuple(n for n, bit in CAPABILITY_BITS.items() if DEFAULT_SEC_CAPS & bit),
        "OPTEE_SMC_SEC_CAP_* announced by EXCHANGE_CAPABILITIES; virtualization, memref_null "
        "and dynamic_shm are required"),
    Key("os_revision", _OS_REVISION, {}, "what GET_OS_REVISION answers"),
    Key("prealloc_rpc_cache", Boolean(), _TEE.prealloc_rpc_cache,
        "CFG_PREALLOC_RPC_CACHE: ENABLE_SHM_CACHE really caches RPC argument buffers"),
    Key("wait_ta_foreign_intr", Integer(0, 1 << 20), _TEE.wait_ta_foreign_intr,
        "FOREIGN_INTR preemptions the wait TA's BUSY command takes"),
    Key("max_shm_pages", Integer(1, 1 << 24), _TEE.max_shm_pages,
        "pages one NONCONTIG buffer may span in OP-TEE (more: BAD_PARAMETERS)"),
    Key("static_shm", _STATIC_SHM, {}, "OP-TEE's reserved shared memory carve-out"),
    Key("tas", _TAS, {}, "where OP-TEE finds each TA of the model"),
))

_MEDIATOR_SECTION = Section((
    Key("placement", Choice(PLACEMENTS, what="a placement"), "stubdom",
        "el2: the mediator runs in the hypervisor; stubdom: in stubdom-teed behind a ring"),
    Key("profile", Choice(PROFILE_NAMES, what="a mediator profile"), DEFAULT_PROFILE.name,
        "the protocol the mediator speaks to guests, under either placement: xen (upstream Xen's "
        "optee.c at RELEASE-4.22.0, its defects made safe) or strict (this project's: RPC_ARG, "
        "REGD_ARG, GET_THREAD_COUNT, static shm for the hwdom, early refusals)"),
    Key("ring_pages", Integer(1, MAX_RING_PAGES), 1,
        "pages of each domain's teeif ring (1 page = 32 entries)"),
    Key("poll_window_us", Integer(0, 1_000_000), 200,
        "how long a waiter spins on a ring before blocking on the event channel (0 = never)"),
    Key("fast_path", Boolean(), True,
        "stubdom-teed answers the identity queries policy allows (CALLS_COUNT, CALLS_UID, "
        "CALLS_REVISION, GET_OS_UUID, GET_OS_REVISION) in C, without its event loop; false: "
        "every call goes through the interpreter"),
    Key("runtime_dir", PathValue(), None,
        "directory of the machine, the gate, the control socket and the domains' rings; null: "
        "/run/stubdom-teed as root, else $XDG_RUNTIME_DIR/stubdom-teed, else "
        "${TMPDIR:-/tmp}/stubdom-teed-<uid> (stubdom.rundir.default_runtime_dir)", nullable=True),
    Key("call_timeout_ms", Integer(1, 3_600_000), 5000,
        "bound on a guest vCPU waiting for the daemon's answer (then a defined error)"),
    Key("drain_timeout_ms", Integer(0, 3_600_000), 10_000,
        "bound on letting calls finish at shutdown"),
    Key("gate_timeout_ms", Integer(1, 3_600_000), 5000,
        "bound on one SMC gate hypercall of the daemon; past it the platform counts as dead"),
    Key("gate_spin_us", Integer(0, 1_000_000), 10_000,
        "how long the daemon spins for the answer to one SMC gate hypercall before it sleeps on the "
        "gate's event channel: a hypercall is synchronous (the stub domain's vCPU stays in Xen until "
        "the SMC returns), whatever poll_window_us says of the guests' rings (0 = sleep at once)"),
    Key("log_level", _LOG_LEVEL, "info", "the daemon's log level (--log-level overrides)"),
    Key("tee_num_params", Integer(1, 125), 4,
        "parameters the OP-TEE behind takes per call (its TEE_NUM_PARAMS; OP-TEE does not report it): "
        "a call with more is refused before anything of it is translated or pinned"),
))

_PLATFORM_SECTION = Section((
    Key("nr_frames", Integer(1, 1 << 24), 32768, "4 KiB frames of machine RAM"),
    Key("seed", Integer(0, _U64_MAX), 0, "seed of every random choice (frame scattering)"),
))

_LIMITS = Section((
    Key("calls_in_flight", Integer(1, 1024), DEFAULT_MAX_CALLS,
        "standard calls in flight (also capped by tee.threads)"),
    Key("shm_buffers", Integer(1, 65536), DEFAULT_MAX_SHM_BUFFERS,
        "shared buffers pinned at once (registered + temporary + RPC)"),
    Key("pages_per_buffer", Integer(1, 16384), DEFAULT_MAX_PAGES_PER_BUFFER,
        "pages of one shared buffer (129 = GP's 512 KiB + 1 for misalignment)"),
    Key("total_pages", Integer(1, 1 << 20), DEFAULT_MAX_TOTAL_PAGES,
        "pages pinned at once on the domain's behalf; at least pages_per_buffer"),
))

_RATE = Section((
    Key("calls_per_second", Number(1e6), REQUIRED, "token refill rate"),
    Key("burst", Integer(1, 1_000_000), REQUIRED, "bucket size: calls that may come back to back"),
))

# The policy keys, accepted under defaults: and in every domain.
POLICY_KEYS: tuple[Key, ...] = (
    Key("enabled", Boolean(), True,
        "false: the domain gets no TEE (domain_create is refused; after a reload, every call is)"),
    Key("static_shm_allowed", Boolean(), False,
        "may use the static shm region (only a direct-mapped hardware domain can)"),
    Key("allow_classes", ListOf(_CLASS), tuple(c for c in FUNCTION_CLASSES if c in DEFAULT_ALLOWED_CLASSES),
        "function classes the domain may issue (hypervisor is never allowed)"),
    Key("deny_classes", ListOf(_CLASS), (),
        "function classes refused even if allowed (rpc_return cannot be denied)"),
    Key("ta_allow", ListOf(UuidValue()), None,
        "TA UUIDs OPEN_SESSION may name; null = every TA", nullable=True),
    Key("ta_deny", ListOf(UuidValue()), (), "TA UUIDs OPEN_SESSION may never name (wins over ta_allow)"),
    Key("limits", _LIMITS, {}, "what the domain may hold through the mediator at once"),
    Key("rate", _RATE, None, "token bucket of standard calls; null = unlimited", nullable=True),
    Key("log_level", _LOG_LEVEL, "info", "level of the domain's guest-triggered log lines, whatever the daemon's level "
        "(Xen's guest_loglvl); a reload applies it to running domains"),
)

_DOMAIN_SECTION = Section((
    Key("domid", Integer(0, DOMID_FIRST_RESERVED - 1, hex_range=False), REQUIRED, "domain id; unique"),
    Key("name", Text(64), None, "name for logs (default d<domid>)"),
    Key("nr_pages", Integer(1, MAX_DOMAIN_PAGES), 4096, "4 KiB pages of RAM"),
    Key("vcpus", Integer(1, MAX_VCPUS), 1, "virtual CPUs"),
    Key("hwdom", Boolean(), False, "the hardware domain (at most one)"),
    Key("direct_mapped", Boolean(), False, "RAM mapped 1:1 (gfn == mfn)"),
    Key("static_shm", Boolean(), False,
        "map the static shm region into the domain at creation (hwdom, direct-mapped, "
        "tee.capabilities has reserved_shm)"),
    *POLICY_KEYS,
))

SCHEMA = Section((
    Key("tee", _TEE_SECTION, {}, "the modelled OP-TEE"),
    Key("mediator", _MEDIATOR_SECTION, {}, "the mediator and the daemon"),
    Key("platform", _PLATFORM_SECTION, {}, "the simulated machine"),
    Key("defaults", Section(POLICY_KEYS), {}, "policy of domains not listed; base of listed ones"),
    Key("domains", SectionList(_DOMAIN_SECTION), (), "pre-declared domains"),
))


def key_paths(section: Section = SCHEMA, prefix: str = "") -> list[tuple[str, Key]]:
    """Every key of the schema as (path, key): ``tee.threads``,
    ``domains[].limits.total_pages``..."""
    out: list[tuple[str, Key]] = []
    for key in section.keys:
        path = f"{prefix}.{key.name}" if prefix else key.name
        out.append((path, key))
        if isinstance(key.kind, Section):
            out.extend(key_paths(key.kind, path))
        elif isinstance(key.kind, SectionList):
            out.extend(key_paths(key.kind.section, path + "[]"))
    return out
