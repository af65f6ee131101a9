"""Mediator profiles: the guest-visible protocol the mediator core speaks,
each choice written down as data that the core consults (docs/mediator.md,
"Profiles").

``XEN`` is what upstream Xen's OP-TEE mediator does at RELEASE-4.22.0
(xen/arch/arm/tee/optee.c, with xen/arch/arm/vsmc.c for the calls it leaves
unhandled): its function set, capability filter, limits and error codes.
Where that code has a defect that would break one of this project's
invariants (docs/architecture.md) the profile keeps the safe behaviour of
``STRICT``; docs/mediator.md lists each such case.  ``STRICT`` is this
project's own protocol: everything ``XEN`` does, plus the calls, checks and
limits listed in that table.

The placement (el2, stubdom) and the profile are independent: both
placements run either profile, from the same core.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from stubdom.optee.smc import (
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SEC_CAP_UNREGISTERED_SHM,
)
from stubdom.xen import P2mType

from .errors import UnknownProfile
from .limits import DomainLimits

__all__ = [
    "Profile",
    "XEN",
    "STRICT",
    "PROFILES",
    "PROFILE_NAMES",
    "DEFAULT_PROFILE",
    "profile_named",
    "XEN_RELEASE",
    "XEN_FUNCTIONS",
    "XEN_OPTEE_MEDIATOR_SMC_COUNT",
    "XEN_KNOWN_SEC_CAPS",
    "XEN_MAX_SHM_BUFFER_PG",
    "XEN_MAX_TOTAL_SMH_BUF_PG",
    "XEN_MAX_SHM_BUFFER_COUNT",
]

# -- upstream Xen, RELEASE-4.22.0 (xen/arch/arm/tee/optee.c) ----------------

XEN_RELEASE = "RELEASE-4.22.0"
# OPTEE_MEDIATOR_SMC_COUNT: what CALLS_COUNT answers, the number of function
# IDs optee_handle_call handles (XEN_FUNCTIONS below; a test keeps them equal)
XEN_OPTEE_MEDIATOR_SMC_COUNT = 11
# The function IDs optee_handle_call handles; vsmc.c answers any other one
# of the Trusted OS range ARM_SMCCC_ERR_UNKNOWN_FUNCTION.
XEN_FUNCTIONS = frozenset({
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
})
# OPTEE_KNOWN_SEC_CAPS: OP-TEE capabilities a guest may be told of
# (handle_exchange_capabilities then drops HAVE_RESERVED_SHM for everyone).
XEN_KNOWN_SEC_CAPS = (OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_UNREGISTERED_SHM
                      | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_MEMREF_NULL)
# MAX_SHM_BUFFER_PG: pages of one shared buffer (GlobalPlatform's 512 KiB
# plus one page for a buffer that does not start on a page boundary).
XEN_MAX_SHM_BUFFER_PG = 129
# MAX_TOTAL_SMH_BUF_PG: pages of a domain's shared buffers; counted over the
# buffers of optee_shm_buf_list (temporary memrefs, registrations, SHM_ALLOC
# replies), not RPC argument buffers, and refused when the new total
# reaches it (allocate_optee_shm_buf: new >= MAX_TOTAL_SMH_BUF_PG): at most
# 16383 pages are ever pinned through it.
XEN_MAX_TOTAL_SMH_BUF_PG = 16384
# MAX_SHM_BUFFER_COUNT: buffers of optee_shm_buf_list a domain may have.
XEN_MAX_SHM_BUFFER_COUNT = 16

_STRICT_FUNCTIONS = XEN_FUNCTIONS | {OPTEE_SMC_GET_THREAD_COUNT, OPTEE_SMC_CALL_WITH_RPC_ARG,
                                     OPTEE_SMC_CALL_WITH_REGD_ARG}
_STRICT_SEC_CAPS = (OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM
                    | OPTEE_SMC_SEC_CAP_MEMREF_NULL | OPTEE_SMC_SEC_CAP_RPC_ARG)
_LIMIT_FIELDS = frozenset(f.name for f in dataclasses.fields(DomainLimits))


@dataclass(frozen=True, slots=True)
class Profile:
    """One guest-visible protocol of the mediator.  Every field is one
    choice the core consults; docs/mediator.md ("Profiles") gives each
    field's row, upstream's behaviour and the reason."""

    name: str
    # Function IDs (SMC32, W0) the mediator handles; any other one of the
    # Trusted OS range answers UNKNOWN_FUNCTION.  CALLS_COUNT answers how
    # many there are.
    functions: frozenset[int]
    # OPTEE_SMC_SEC_CAP_* bits EXCHANGE_CAPABILITIES may pass to a guest;
    # OP-TEE's other bits are hidden.  HAVE_RESERVED_SHM only reaches a
    # domain that may use the static region (``static_shm``).
    sec_caps: int
    # The hardware domain, direct-mapped and allowed by policy, may use
    # OP-TEE's static shared memory: HAVE_RESERVED_SHM, GET_SHM_CONFIG, a
    # contiguous memref or an argument or RPC buffer inside the region.
    static_shm: bool
    # Registers GET_OS_REVISION returns: 2 (a0 major, a1 minor) or 3 (and a2,
    # the build id).
    os_revision_regs: int
    # Upper bounds on a domain's limits ({DomainLimits field: most}); a
    # policy may lower them, never raise them.  Empty: the policy's alone.
    limit_bounds: Mapping[str, int]
    # An RPC argument buffer's page counts against max_total_pages.
    rpc_pages_count: bool
    # A call OP-TEE refuses for its number of params alone (OPEN_SESSION,
    # INVOKE_COMMAND, CLOSE_SESSION, CANCEL) is refused before anything of
    # it is translated or pinned; otherwise OP-TEE refuses it.
    early_shape_check: bool
    # Unknown attribute bits or types, META outside OPEN_SESSION's value
    # params and NONCONTIG on anything but a tmem are refused by the
    # mediator; otherwise they are passed on for OP-TEE to judge.
    check_attributes: bool
    # An SHM_ALLOC reply of one page by address (TMEM_OUTPUT without
    # NONCONTIG) is translated and pinned; otherwise it is refused (the
    # guest is asked to free it, OP-TEE's allocation fails).
    shm_alloc_plain_page: bool
    # A refused RPC ALLOC resumes OP-TEE with the guest's own cookie (OP-TEE
    # then RPC FREEs it to the guest); otherwise with cookie 0 (no RPC FREE).
    refused_alloc_keeps_cookie: bool
    # An argument whose num_params does not fit its page gets
    # ret = BAD_PARAMETERS, ret_origin = COMMS in the argument with a0 left
    # as the guest's function ID; otherwise a0 = EBADADDR.
    oversized_arg_in_message: bool
    # The low 12 bits of page-list entries (and next pointers) are ignored;
    # otherwise an entry that is not page aligned is refused.
    page_list_offsets_ignored: bool
    # p2m types a standard call's argument page may have to be read (the
    # result is written back only to p2m_ram_rw).
    argument_page_types: frozenset[P2mType]

    def __post_init__(self) -> None:
        unknown = set(self.limit_bounds) - _LIMIT_FIELDS
        if unknown:
            raise ValueError(f"profile {self.name}: limit_bounds names {sorted(unknown)}, "
                             f"not fields of DomainLimits")
        if self.os_revision_regs not in (2, 3):
            raise ValueError(f"profile {self.name}: os_revision_regs must be 2 or 3, "
                             f"got {self.os_revision_regs!r}")
        object.__setattr__(self, "limit_bounds", MappingProxyType(dict(self.limit_bounds)))

    @property
    def calls_count(self) -> int:
        """What CALLS_COUNT answers: the number of functions handled."""
        return len(self.functions)

    def bound(self, limits: DomainLimits) -> DomainLimits:
        """``limits`` (a domain's policy) within this profile's bounds."""
        lowered = {k: min(getattr(limits, k), most) for k, most in self.limit_bounds.items()}
        return dataclasses.replace(limits, **lowered) if lowered else limits

    def exceeded(self, limits: DomainLimits) -> dict[str, tuple[int, int]]:
        """{field: (policy value, profile's most)} for every limit of
        ``limits`` above this profile's bound (the loader refuses those)."""
        return {k: (getattr(limits, k), most) for k, most in self.limit_bounds.items()
                if getattr(limits, k) > most}


XEN = Profile(
    name="xen",
    functions=XEN_FUNCTIONS,
    sec_caps=XEN_KNOWN_SEC_CAPS & ~OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    static_shm=False,
    os_revision_regs=2,
    limit_bounds={"max_shm_buffers": XEN_MAX_SHM_BUFFER_COUNT,
                  "max_pages_per_buffer": XEN_MAX_SHM_BUFFER_PG,
                  "max_total_pages": XEN_MAX_TOTAL_SMH_BUF_PG - 1},
    rpc_pages_count=False,
    early_shape_check=False,
    check_attributes=False,
    shm_alloc_plain_page=False,
    refused_alloc_keeps_cookie=True,
    oversized_arg_in_message=True,
    page_list_offsets_ignored=True,
    argument_page_types=frozenset({P2mType.p2m_ram_rw, P2mType.p2m_ram_ro}),
)

STRICT = Profile(
    name="strict",
    functions=_STRICT_FUNCTIONS,
    sec_caps=_STRICT_SEC_CAPS,
    static_shm=True,
    os_revision_regs=3,
    limit_bounds={},
    rpc_pages_count=True,
    early_shape_check=True,
    check_attributes=True,
    shm_alloc_plain_page=True,
    refused_alloc_keeps_cookie=False,
    oversized_arg_in_message=False,
    page_list_offsets_ignored=False,
    argument_page_types=frozenset({P2mType.p2m_ram_rw}),
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (XEN, STRICT)})
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)
# What a mediator built without naming one speaks (and the configuration's
# default, docs/config.md): the project's own protocol.
DEFAULT_PROFILE = STRICT


def profile_named(name: str) -> Profile:
    """The profile called ``name``; UnknownProfile otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise UnknownProfile(name, PROFILE_NAMES) from None
