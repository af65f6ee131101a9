"""The guest is Linux-shaped: for every libteec-level operation it issues
the SMCs, message commands and RPCs Linux 6.x's OP-TEE driver and libteec
issue (stubdom.operations.expected_sequence), against both protocols (with
and without OPTEE_SMC_SEC_CAP_RPC_ARG), natively and behind the mediator."""

from __future__ import annotations

import pytest

from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant, TraceRecorder
from stubdom.guest.trace import compact, rpc_commands, smc_count
from stubdom.operations import OPERATIONS, expected_sequence, record_operations
from stubdom.optee import (
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
)
from stubdom.platform import DomainSpec, PassThrough, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.tee import REQUIRED_SEC_CAPS, TeeConfig
from stubdom.tee.tas import INCREMENT_UUID

BASE = REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
PLACEMENTS = {
    "native": dict(placement=lambda p: PassThrough(p.tee), require_pins=False,
                   spec=DomainSpec(0, nr_pages=2048, hwdom=True, direct_mapped=True)),
    "el2": dict(placement=El2Placement, require_pins=True, spec=DomainSpec(1, nr_pages=2048)),
}


@pytest.fixture(params=[(pl, rpc) for pl in PLACEMENTS for rpc in (True, False)],
                ids=lambda v: f"{v[0]}-{'rpc_arg' if v[1] else 'call_with_arg'}")
def guest(request, tmp_path):
    name, rpc_arg = request.param
    how = PLACEMENTS[name]
    caps = BASE | (OPTEE_SMC_SEC_CAP_RPC_ARG if rpc_arg else 0)
    with Platform(tmp_path / "machine", nr_frames=16384, tee_config=TeeConfig(sec_caps=caps),
                  placement=how["placement"], require_pins=how["require_pins"], seed=5) as p:
        spec = how["spec"]
        dom = p.create_domain(spec)
        recorder = TraceRecorder()
        driver = OpteeDriver(p.trap_entry(spec.domid), dom, allocator=PageAllocator.for_domain(dom, seed=3),
                             supplicant=Supplicant(), trace=recorder)
        driver.probe()
        yield driver, recorder, rpc_arg
        driver.shutdown()
        p.oracle.assert_clean()


def test_every_operation_issues_linuxs_sequence(guest) -> None:
    driver, recorder, rpc_arg = guest
    seen = record_operations(Context(driver), recorder)
    assert set(seen) == set(OPERATIONS)
    for name, events in seen.items():
        assert compact(events) == expected_sequence(name, rpc_arg=rpc_arg), name


def test_a_temporary_memref_costs_a_registration_each(guest) -> None:
    driver, recorder, rpc_arg = guest
    seen = record_operations(Context(driver), recorder)
    # libteec: REGISTER_SHM + UNREGISTER_SHM per temporary memref around the invoke
    assert smc_count(seen["invoke_temp_memref"]) == 5
    assert smc_count(seen["invoke_shared_memref"]) == 1
    # an REE TA: four RPCs and their four resumes on top of the OPEN_SESSION
    assert smc_count(seen["open_session"]) == 5
    assert rpc_commands(seen["open_session"]) == {"CMD LOAD_TA size": 1, "CMD SHM_ALLOC APPL": 1,
                                                  "CMD LOAD_TA load": 1, "CMD SHM_FREE APPL": 1}


def test_the_first_calls_set_up_what_the_steady_state_reuses(guest) -> None:
    """Before the steady state: with RPC_ARG the argument cache page is
    registered first (optee_get_msg_arg -> tee_shm_alloc_kernel_buf ->
    optee_shm_register); without it OP-TEE asks for its RPC argument buffer
    (RPC ALLOC) on the first call that needs one, and keeps it (the driver
    enabled the SHM cache at probe)."""
    driver, recorder, rpc_arg = guest
    recorder.take()
    ctx = Context(driver)
    s = ctx.open_session(INCREMENT_UUID)
    first = compact(recorder.take())
    if rpc_arg:
        assert first[:3] == ["CALL_WITH_RPC_ARG REGISTER_SHM", "<- OK", "CALL_WITH_REGD_ARG OPEN_SESSION"]
        assert "<- RPC ALLOC" not in first
    else:
        assert first[:3] == ["CALL_WITH_ARG OPEN_SESSION", "<- RPC ALLOC", "CALL_RETURN_FROM_RPC"]
        assert "<- RPC FREE" not in first
    s.close()
    ctx.close()
