"""The build configuration of the modelled OP-TEE (its CFG_* values): the
record of the configuration's ``tee:`` section.

Plain values only; the YAML loader builds one of these, the OP-TEE model
(stubdom.tee) runs as one says. It lives with the configuration, not with
the model, because both processes load the same file and the stub domain
must not load the secure world to validate it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stubdom.optee.smc import (
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SEC_CAP_VIRTUALIZATION,
)

from .errors import BadTeeConfig

__all__ = [
    "TeeConfig",
    "TA_NAMES",
    "TA_KINDS",
    "DEFAULT_REE_TAS",
    "SUPPORTED_SEC_CAPS",
    "REQUIRED_SEC_CAPS",
    "DEFAULT_SEC_CAPS",
    "MAX_THREADS_PER_GUEST",
    "MAX_GUESTS",
]

# Capability bits this model can honour.  ASYNC_NOTIF, RPMB_PROBE and the
# protected-memory bits describe features the model does not implement, so a
# config announcing them is refused rather than lying to the normal world.
SUPPORTED_SEC_CAPS = (
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
    | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM
    | OPTEE_SMC_SEC_CAP_VIRTUALIZATION
    | OPTEE_SMC_SEC_CAP_MEMREF_NULL
    | OPTEE_SMC_SEC_CAP_RPC_ARG
)
# The model is always an NS-virtualization build (CFG_NS_VIRTUALIZATION=y),
# and every OP-TEE that has it also has NULL memrefs (entry_fast.c sets
# MEMREF_NULL unconditionally).
REQUIRED_SEC_CAPS = OPTEE_SMC_SEC_CAP_VIRTUALIZATION | OPTEE_SMC_SEC_CAP_MEMREF_NULL
# What a current OP-TEE on QEMU-v8 built with CFG_NS_VIRTUALIZATION announces
# (entry_fast.c tee_entry_exchange_capabilities, CFG_CORE_RESERVED_SHM=y,
# CFG_CORE_DYN_SHM=y, no async notif, no RPMB probe cap).
DEFAULT_SEC_CAPS = SUPPORTED_SEC_CAPS

# The TAs the model implements (stubdom.tee.tas), by the name a configuration
# gives them; here so that validating a file never loads the secure world.
TA_NAMES = ("increment", "digest", "storage", "wait")

# How OP-TEE finds a TA (ldelf's TA stores, core/kernel/ree_fs_ta.c and
# early_ta.c): "early" is linked into the OP-TEE binary (CFG_EARLY_TA) and
# found without leaving the secure world; "ree" is loaded from the normal
# world with OPTEE_RPC_CMD_LOAD_TA, which tee-supplicant answers from its TA
# directory.
TA_KINDS = ("early", "ree")
# The TAs loaded from the REE unless configured otherwise: the three
# optee_examples-like TAs, installed as tee-supplicant expects user TAs.  The
# wait TA, the model's instrument for RPC tests, is an early TA so that what
# it measures has no load in front of it.
DEFAULT_REE_TAS = frozenset({"increment", "digest", "storage"})

# Bounds that keep a config sane; OP-TEE itself is bounded by its RAM.
MAX_THREADS_PER_GUEST = 64
# Guest ids are 16 bits and 0 is the hypervisor's (HYP_CLNT_ID).
MAX_GUESTS = 0xFFFF
# Pages of one dynamic shared buffer: OP-TEE mallocs the page array, so the
# real limit is its heap; 16384 pages = 64 MiB keeps the model's work bounded.
DEFAULT_MAX_SHM_PAGES = 16384


def _int(field: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise BadTeeConfig(field, value, "must be an int")
    if not lo <= value <= hi:
        raise BadTeeConfig(field, value, f"must be in {lo} .. {hi}")
    return value


@dataclass(frozen=True, slots=True)
class TeeConfig:
    """CFG_* of the modelled OP-TEE.  Every field is validated on creation.

    threads_per_guest   CFG_NUM_THREADS: thread contexts of each guest partition
                        (GET_THREAD_COUNT answers it; ETHREAD_LIMIT beyond).
    guest_count         CFG_VIRT_GUEST_COUNT: partitions that fit; VM_CREATED
                        beyond it answers ENOTAVAIL.
    sec_caps            OPTEE_SMC_SEC_CAP_* announced by EXCHANGE_CAPABILITIES;
                        HAVE_RESERVED_SHM also turns the static region on
                        (CFG_CORE_RESERVED_SHM), DYNAMIC_SHM turns dynamic shm
                        on (CFG_CORE_DYN_SHM), RPC_ARG selects the >= 3.17
                        entry (CALL_WITH_RPC_ARG / CALL_WITH_REGD_ARG).
    os_revision_major/minor, os_build_id
                        GET_OS_REVISION a0/a1/a2 (CFG_OPTEE_REVISION_*,
                        TEE_IMPL_GIT_SHA1; 0 = unspecified build id).
    prealloc_rpc_cache  CFG_PREALLOC_RPC_CACHE: without it ENABLE_SHM_CACHE
                        just answers OK and nothing is ever cached.
    wait_ta_foreign_intr
                        FOREIGN_INTR preemptions the wait TA's BUSY command
                        takes before it completes.
    max_shm_pages       pages one NONCONTIG buffer may span; more fails as
                        OP-TEE's malloc of the page array would (BAD_PARAMETERS).
    ree_tas             names of the TAs (stubdom.tee.tas.TA_NAMES) loaded from
                        the REE with OPTEE_RPC_CMD_LOAD_TA at every OPEN_SESSION;
                        the others are early TAs, found without an RPC.
    """

    threads_per_guest: int = 4
    guest_count: int = 4
    sec_caps: int = DEFAULT_SEC_CAPS
    os_revision_major: int = 4
    os_revision_minor: int = 10
    os_build_id: int = 0
    prealloc_rpc_cache: bool = True
    wait_ta_foreign_intr: int = 3
    max_shm_pages: int = DEFAULT_MAX_SHM_PAGES
    ree_tas: frozenset[str] = DEFAULT_REE_TAS

    def __post_init__(self) -> None:
        _int("threads_per_guest", self.threads_per_guest, 1, MAX_THREADS_PER_GUEST)
        _int("guest_count", self.guest_count, 1, MAX_GUESTS)
        _int("sec_caps", self.sec_caps, 0, 0xFFFFFFFF)
        unsupported = self.sec_caps & ~SUPPORTED_SEC_CAPS
        if unsupported:
            raise BadTeeConfig(
                "sec_caps", hex(self.sec_caps),
                f"bits {unsupported:#x} name features the model does not implement "
                f"(supported: {SUPPORTED_SEC_CAPS:#x})",
            )
        missing = REQUIRED_SEC_CAPS & ~self.sec_caps
        if missing:
            raise BadTeeConfig(
                "sec_caps", hex(self.sec_caps),
                f"bits {missing:#x} are required (the model is an NS-virtualization build "
                f"with NULL memrefs)",
            )
        if not self.sec_caps & (OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM):
            raise BadTeeConfig(
                "sec_caps", hex(self.sec_caps),
                "neither reserved nor dynamic shared memory: no normal world could talk to it",
            )
        _int("os_revision_major", self.os_revision_major, 0, 0xFFFFFFFF)
        _int("os_revision_minor", self.os_revision_minor, 0, 0xFFFFFFFF)
        _int("os_build_id", self.os_build_id, 0, 0xFFFFFFFF)
        if type(self.prealloc_rpc_cache) is not bool:
            raise BadTeeConfig("prealloc_rpc_cache", self.prealloc_rpc_cache, "must be a bool")
        _int("wait_ta_foreign_intr", self.wait_ta_foreign_intr, 0, 1 << 20)
        _int("max_shm_pages", self.max_shm_pages, 1, 1 << 24)
        if type(self.ree_tas) is not frozenset:
            raise BadTeeConfig("ree_tas", self.ree_tas, "must be a frozenset of TA names")
        unknown = sorted(n for n in self.ree_tas if n not in TA_NAMES)
        if unknown:
            raise BadTeeConfig("ree_tas", sorted(self.ree_tas),
                               f"{', '.join(map(repr, unknown))} is no TA of the model ({', '.join(TA_NAMES)})")

    def ta_kind(self, name: str) -> str:
        """"ree" or "early" for the TA called ``name``."""
        return "ree" if name in self.ree_tas else "early"

    @property
    def reserved_shm(self) -> bool:
        """CFG_CORE_RESERVED_SHM: the static region and GET_SHM_CONFIG exist."""
        return bool(self.sec_caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM)

    @property
    def dynamic_shm(self) -> bool:
        """CFG_CORE_DYN_SHM with NS DDR known: REGISTER_SHM, NONCONTIG, args anywhere."""
        return bool(self.sec_caps & OPTEE_SMC_SEC_CAP_DYNAMIC_SHM)

    @property
    def rpc_arg(self) -> bool:
        """OP-TEE >= 3.17: CALL_WITH_RPC_ARG and CALL_WITH_REGD_ARG exist."""
        return bool(self.sec_caps & OPTEE_SMC_SEC_CAP_RPC_ARG)
