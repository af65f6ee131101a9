"""The mediator profiles as data (stubdom/mediator/profile.py): every value
pinned against where it comes from — upstream Xen's optee.c at
RELEASE-4.22.0 for ``xen``, the OP-TEE headers (optee_smc.h) for the IDs
and bits — and the mediator's use of the capability filter, with a secure
monitor that announces every capability bit there is."""

from __future__ import annotations

import dataclasses

import pytest

from stubdom.mediator import (
    DEFAULT_PROFILE,
    PROFILE_NAMES,
    PROFILES,
    STRICT,
    XEN,
    DomainLimits,
    Mediator,
    UnknownProfile,
    profile_named,
)
from stubdom.mediator.profile import (
    XEN_FUNCTIONS,
    XEN_KNOWN_SEC_CAPS,
    XEN_MAX_SHM_BUFFER_COUNT,
    XEN_MAX_SHM_BUFFER_PG,
    XEN_MAX_TOTAL_SMH_BUF_PG,
    XEN_OPTEE_MEDIATOR_SMC_COUNT,
    XEN_RELEASE,
    Profile,
)
from stubdom.optee import (
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    function_id,
)
from stubdom.xen import P2mType

# -- the values, from their sources -----------------------------------------------------


def test_xen_constants_are_those_of_optee_c_at_release_4_22_0():
    # xen/arch/arm/tee/optee.c @ RELEASE-4.22.0
    assert XEN_RELEASE == "RELEASE-4.22.0"
    assert XEN_OPTEE_MEDIATOR_SMC_COUNT == 11  # OPTEE_MEDIATOR_SMC_COUNT
    assert XEN_MAX_SHM_BUFFER_PG == 129  # MAX_SHM_BUFFER_PG
    assert XEN_MAX_TOTAL_SMH_BUF_PG == 16384  # MAX_TOTAL_SMH_BUF_PG
    assert XEN_MAX_SHM_BUFFER_COUNT == 16  # MAX_SHM_BUFFER_COUNT
    # OPTEE_KNOWN_SEC_CAPS = HAVE_RESERVED_SHM | UNREGISTERED_SHM | DYNAMIC_SHM |
    # MEMREF_NULL: bits 0, 1, 2, 4 of optee_smc.h
    assert XEN_KNOWN_SEC_CAPS == 0x17


def test_xen_handles_exactly_the_functions_of_optee_handle_call():
    # optee_handle_call's cases, by their optee_smc.h values
    assert XEN_FUNCTIONS == {0xBF00FF00, 0xBF00FF01, 0xBF00FF03, 0xB2000000, 0xB2000001, 0xB200000B,
                             0xB200000A, 0xB2000007, 0xB2000009, 0x32000004, 0x32000003}
    assert len(XEN_FUNCTIONS) == XEN_OPTEE_MEDIATOR_SMC_COUNT == XEN.calls_count


def test_strict_adds_thread_count_rpc_arg_and_regd_arg():
    assert STRICT.functions - XEN.functions == {0xB200000F, 0x32000012, 0x32000013}
    assert XEN.functions < STRICT.functions and STRICT.calls_count == 14


def test_each_profile_s_choices():
    # sec caps: Xen's known set without HAVE_RESERVED_SHM (dropped for
    # everyone); strict: reserved shm (hwdom only, at use), dynamic shm,
    # MEMREF_NULL, RPC_ARG
    assert XEN.sec_caps == 0x16 and STRICT.sec_caps == 0x55
    assert (XEN.static_shm, STRICT.static_shm) == (False, True)
    assert (XEN.os_revision_regs, STRICT.os_revision_regs) == (2, 3)
    assert dict(XEN.limit_bounds) == {"max_shm_buffers": 16, "max_pages_per_buffer": 129,
                                      "max_total_pages": 16383}
    assert dict(STRICT.limit_bounds) == {}
    for flag, xen, strict in (("rpc_pages_count", False, True), ("early_shape_check", False, True),
                              ("check_attributes", False, True), ("shm_alloc_plain_page", False, True),
                              ("refused_alloc_keeps_cookie", True, False),
                              ("oversized_arg_in_message", True, False),
                              ("page_list_offsets_ignored", True, False)):
        assert (getattr(XEN, flag), getattr(STRICT, flag)) == (xen, strict), flag
    assert XEN.argument_page_types == {P2mType.p2m_ram_rw, P2mType.p2m_ram_ro}
    assert STRICT.argument_page_types == {P2mType.p2m_ram_rw}


def test_names_and_default():
    assert PROFILE_NAMES == ("xen", "strict") and set(PROFILES) == set(PROFILE_NAMES)
    assert profile_named("xen") is XEN and profile_named("strict") is STRICT
    assert DEFAULT_PROFILE is STRICT


@pytest.mark.parametrize("name", ["Xen", "", "upstream", None, 1])
def test_an_unknown_profile_is_refused_with_its_name(name):
    with pytest.raises(UnknownProfile) as e:
        profile_named(name)
    assert e.value.name == name
    assert str(e.value) == f"unknown mediator profile {name!r}; one of xen, strict"


# -- limits --------------------------------------------------------------------------------


def test_xen_bounds_a_policy_and_never_raises_it():
    assert XEN.bound(DomainLimits()) == DomainLimits(max_calls=64, max_shm_buffers=16, max_pages_per_buffer=129,
                                                     max_total_pages=16383)
    small = DomainLimits(max_calls=3, max_shm_buffers=8, max_pages_per_buffer=16, max_total_pages=48)
    assert XEN.bound(small) == small
    assert STRICT.bound(DomainLimits(max_pages_per_buffer=513)) == DomainLimits(max_pages_per_buffer=513)
    assert XEN.exceeded(DomainLimits(max_shm_buffers=17, max_pages_per_buffer=513, max_total_pages=16384)) == {
        "max_shm_buffers": (17, 16), "max_pages_per_buffer": (513, 129), "max_total_pages": (16384, 16383)}
    assert XEN.exceeded(small) == {} and STRICT.exceeded(DomainLimits(max_shm_buffers=10**4)) == {}


def test_a_profile_is_checked_when_made():
    with pytest.raises(ValueError, match=r"limit_bounds names \['max_buffers'\]"):
        dataclasses.replace(XEN, limit_bounds={"max_buffers": 1})
    with pytest.raises(ValueError, match="os_revision_regs must be 2 or 3, got 4"):
        dataclasses.replace(XEN, os_revision_regs=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        XEN.name = "other"  # type: ignore[misc]  # frozen: the refusal under test
    with pytest.raises(TypeError):
        XEN.limit_bounds["max_shm_buffers"] = 17  # type: ignore[index]  # read-only: under test


# -- the mediator consults it ---------------------------------------------------------------


class EveryCapabilityMonitor:
    """A secure monitor answering the mediator's probe and announcing every
    capability bit optee_smc.h defines (0x3FF), some no real OP-TEE of the
    TEE model can announce (UNREGISTERED_SHM, ASYNC_NOTIF, RPMB_PROBE,
    PROTMEM...)."""

    ALL_CAPS = (1 << 10) - 1

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def smc(self, regs):
        self.seen.append(tuple(regs))
        f = regs[0]
        if f == OPTEE_SMC_CALLS_UID:
            return (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3, 0, 0, 0, 0)
        if f == OPTEE_SMC_GET_THREAD_COUNT:
            return (OPTEE_SMC_RETURN_OK, 4, 0, 0, 0, 0, 0, 0)
        if f == OPTEE_SMC_EXCHANGE_CAPABILITIES:
            return (OPTEE_SMC_RETURN_OK, self.ALL_CAPS, 255, 4, 0, 0, 0, 0)
        if f in (OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED):
            return (OPTEE_SMC_RETURN_OK,) + (0,) * 7
        return (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7


@pytest.fixture
def machine(tmp_path):
    from stubdom.xen import Machine

    m = Machine.create(tmp_path / "m", nr_frames=16384)
    m.create_domain(1, nr_pages=64)
    yield m
    m.close()


@pytest.mark.parametrize("profile,caps,rpc_count", [
    (XEN, 0x16, 0),  # UNREGISTERED_SHM | DYNAMIC_SHM | MEMREF_NULL: Xen's filter
    (STRICT, 0x54, 4),  # DYNAMIC_SHM | MEMREF_NULL | RPC_ARG (a domU: no reserved shm)
])
def test_exchange_capabilities_passes_the_profile_s_bits_only(machine, profile, caps, rpc_count):
    from stubdom.mediator import DirectTeePort

    monitor = EveryCapabilityMonitor()
    med = Mediator(machine, DirectTeePort(monitor), profile=profile)
    med.domain_init(1)
    r = med.handle_call(1, 0, (OPTEE_SMC_EXCHANGE_CAPABILITIES, 0xFFFF_FFFF, 0, 0, 0, 0, 0, 0))
    assert r == (OPTEE_SMC_RETURN_OK, caps, 0, rpc_count, 0, 0, 0, 0)
    assert monitor.seen[-1][:2] == (OPTEE_SMC_EXCHANGE_CAPABILITIES, 1)  # NS caps: UNIPROCESSOR only
    med.domain_teardown(1)


def test_a_mediator_takes_a_profile_or_its_name(machine):
    from stubdom.mediator import DirectTeePort

    port = DirectTeePort(EveryCapabilityMonitor())
    assert Mediator(machine, port, profile="xen").profile is XEN
    assert Mediator(machine, port).profile is STRICT
    with pytest.raises(UnknownProfile):
        Mediator(machine, port, profile="xne")
    with pytest.raises(TypeError, match="profile must be a mediator Profile or its name"):
        Mediator(machine, port, profile=3)  # type: ignore[arg-type]  # the wrong type under test
    bogus = dataclasses.replace(XEN, name="bogus", functions=XEN.functions | {0xB2000010})
    with pytest.raises(ValueError, match=r"no handler serves: \['0xb2000010'\]"):
        Mediator(machine, port, profile=bogus)


@pytest.mark.parametrize("a0", [0x32000004, 1 << 32 | 0x32000004, 0xFFFFFFFF_32000004])
def test_function_id_is_w0(a0):
    assert function_id(a0) == 0x32000004


def test_profile_is_a_public_name():
    assert isinstance(XEN, Profile)
