"""Fast calls of the OP-TEE model: exact registers, NS-virt partition rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from stubdom.optee import (
    OPTEE_SMC_BOOT_SECONDARY,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_ASYNC_NOTIF,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_L2CC_MUTEX,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SEC_CAP_VIRTUALIZATION,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
)
from stubdom.tee import BadRegisters, BadTeeConfig, TeeConfig
from stubdom.xen import OPTEE_SHMEM_SIZE, OPTEE_SHMEM_START
from tee_support import make_machine, make_tee, regs

OK, EBUSY, ENOTAVAIL, UNKNOWN = 0, 2, 7, 0xFFFFFFFF
# Caller's junk in every register a handler must not touch.
JUNK = (0x1111_1111_AAAA_0001, 0x2222_2222_AAAA_0002, 0x3333_3333_AAAA_0003,
        0x4444_4444_AAAA_0004, 0x5555_5555_AAAA_0005, 0x6666_6666_AAAA_0006)


@pytest.fixture
def tee(tmp_path: Path):
    machine = make_machine(tmp_path)
    model, oracle = make_tee(machine)
    yield model
    oracle.assert_clean()
    machine.close()


def call(tee, fid: int, a7: int = 0, *, a1: int | None = None) -> tuple[int, ...]:
    r = (fid, JUNK[0] if a1 is None else a1) + JUNK[1:] + (a7,)
    return tee.smc(r)


def test_calls_count_is_fourteen_with_ns_virt(tee) -> None:
    assert call(tee, OPTEE_SMC_CALLS_COUNT) == (14,) + JUNK + (0,)


def test_calls_uid(tee) -> None:
    assert call(tee, OPTEE_SMC_CALLS_UID) == (
        0x384FB3E0, 0xE7F811E3, 0xAF630002, 0xA5D5C51B) + JUNK[3:] + (0,)


def test_calls_revision(tee) -> None:
    assert call(tee, OPTEE_SMC_CALLS_REVISION) == (2, 0) + JUNK[1:] + (0,)


def test_os_uuid(tee) -> None:
    assert call(tee, OPTEE_SMC_CALL_GET_OS_UUID) == (
        0x486178E0, 0xE7F811E3, 0xBC5E0002, 0xA5D5C51B) + JUNK[3:] + (0,)


def test_os_revision_is_configurable(tmp_path: Path) -> None:
    machine = make_machine(tmp_path)
    model, _ = make_tee(machine, TeeConfig(os_revision_major=3, os_revision_minor=22, os_build_id=0xDEADBEEF))
    assert call(model, OPTEE_SMC_CALL_GET_OS_REVISION) == (3, 22, 0xDEADBEEF) + JUNK[2:] + (0,)
    machine.close()


def test_default_os_revision(tee) -> None:
    assert call(tee, OPTEE_SMC_CALL_GET_OS_REVISION)[:3] == (4, 10, 0)


def test_shm_config_is_the_static_region(tee) -> None:
    assert call(tee, OPTEE_SMC_GET_SHM_CONFIG) == (
        OK, OPTEE_SHMEM_START, OPTEE_SHMEM_SIZE, 1) + JUNK[3:] + (0,)


def test_shm_config_unknown_without_reserved_shm(tmp_path: Path) -> None:
    machine = make_machine(tmp_path)
    caps = OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_VIRTUALIZATION | OPTEE_SMC_SEC_CAP_MEMREF_NULL
    model, _ = make_tee(machine, TeeConfig(sec_caps=caps))
    assert call(model, OPTEE_SMC_GET_SHM_CONFIG) == (UNKNOWN,) + JUNK + (0,)
    r = call(model, OPTEE_SMC_EXCHANGE_CAPABILITIES, a1=0)
    # Without RPC_ARG (OP-TEE < 3.17) a3 is not written.
    assert r == (OK, caps) + JUNK[1:] + (0,)
    machine.close()


def test_exchange_capabilities(tee) -> None:
    caps = (OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM
            | OPTEE_SMC_SEC_CAP_VIRTUALIZATION | OPTEE_SMC_SEC_CAP_MEMREF_NULL | OPTEE_SMC_SEC_CAP_RPC_ARG)
    for ns_caps in (0, 1):
        r = call(tee, OPTEE_SMC_EXCHANGE_CAPABILITIES, a1=ns_caps)
        # a2 (max notif value) is only written with ASYNC_NOTIF; a3 = 4 RPC params.
        assert r == (OK, caps, JUNK[1], 4) + JUNK[3:] + (0,)


@pytest.mark.parametrize("ns_caps", [2, 0x80000000, 3, 1 << 40])
def test_exchange_capabilities_refuses_unknown_ns_bits(tee, ns_caps: int) -> None:
    assert call(tee, OPTEE_SMC_EXCHANGE_CAPABILITIES, a1=ns_caps) == (ENOTAVAIL, ns_caps) + JUNK[1:] + (0,)


def test_thread_count(tee) -> None:
    assert call(tee, OPTEE_SMC_GET_THREAD_COUNT) == (OK, 4) + JUNK[1:] + (0,)
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 5)) [0] == OK
    assert call(tee, OPTEE_SMC_GET_THREAD_COUNT, a7=5)[:2] == (OK, 4)


@pytest.mark.parametrize("fid", [OPTEE_SMC_L2CC_MUTEX, OPTEE_SMC_ENABLE_ASYNC_NOTIF, 0xB2000011, 0xB2000014,
                                 0xB2000002, 0xB20000FF, 0xBF00FF02, 0xC2000000, 0x8400_0000])
def test_unknown_fast_functions(tee, fid: int) -> None:
    assert call(tee, fid) == (UNKNOWN,) + JUNK + (0,)


def test_function_id_is_low_32_bits_of_a0(tee) -> None:
    assert tee.smc(regs((0xABCD << 32) | OPTEE_SMC_CALLS_COUNT))[0] == 14


def test_boot_secondary_not_built(tee) -> None:
    assert call(tee, OPTEE_SMC_BOOT_SECONDARY)[0] == ENOTAVAIL


# -- NS virtualization ---------------------------------------------------------


def test_vm_created_rules(tmp_path: Path) -> None:
    machine = make_machine(tmp_path)
    tee, _ = make_tee(machine, TeeConfig(guest_count=2))
    # Only the hypervisor (a7 = 0) may create, and never client id 0.
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 2, 0, 0, 0, 0, 0, 1))[0] == ENOTAVAIL
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 0))[0] == ENOTAVAIL
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 0x10000))[0] == ENOTAVAIL  # guest id is 16 bits: 0
    assert tee.guest_ids() == []
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 2, 9, 9, 9, 9, 9, 0)) == (OK, 2, 9, 9, 9, 9, 9, 0)
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 3))[0] == OK
    # Configured guest count reached.
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 4))[0] == ENOTAVAIL
    assert tee.guest_ids() == [2, 3]
    machine.close()


def test_vm_destroyed_rules(tmp_path: Path) -> None:
    machine = make_machine(tmp_path)
    tee, _ = make_tee(machine, TeeConfig(guest_count=1))
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 2))[0] == OK
    assert tee.smc(regs(OPTEE_SMC_VM_DESTROYED, 2, 0, 0, 0, 0, 0, 2))[0] == ENOTAVAIL
    assert tee.guest_ids() == [2]
    # Unknown ids (and 0, as Xen's probe sends) are OK.
    assert tee.smc(regs(OPTEE_SMC_VM_DESTROYED, 0))[0] == OK
    assert tee.smc(regs(OPTEE_SMC_VM_DESTROYED, 77))[0] == OK
    assert tee.smc(regs(OPTEE_SMC_VM_DESTROYED, 2))[0] == OK
    assert tee.guest_ids() == []
    # The freed slot is reusable.
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 3))[0] == OK
    machine.close()


def test_fast_call_from_unknown_client_refused(tee) -> None:
    assert call(tee, OPTEE_SMC_CALLS_UID, a7=9) == (ENOTAVAIL,) + JUNK + (9,)
    assert call(tee, OPTEE_SMC_GET_THREAD_COUNT, a7=9)[0] == ENOTAVAIL
    # a7 = 0x10000 is not the hypervisor, and guest 0 does not exist.
    assert call(tee, OPTEE_SMC_CALLS_UID, a7=0x10000)[0] == ENOTAVAIL


def test_shm_cache_enable_disable_without_threads(tee) -> None:
    assert tee.smc(regs(OPTEE_SMC_VM_CREATED, 2))[0] == OK
    assert call(tee, OPTEE_SMC_ENABLE_SHM_CACHE, a7=2) == (OK,) + JUNK + (2,)
    assert tee.partition_stats(2).prealloc_rpc_cache
    assert call(tee, OPTEE_SMC_DISABLE_SHM_CACHE, a7=2) == (ENOTAVAIL,) + JUNK + (2,)
    assert not tee.partition_stats(2).prealloc_rpc_cache
    # The hypervisor itself has no threads: enable OK, disable empty.
    assert call(tee, OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OK
    assert call(tee, OPTEE_SMC_DISABLE_SHM_CACHE)[0] == ENOTAVAIL


# -- configuration and register checks ------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"threads_per_guest": 0}, "threads_per_guest"),
    ({"threads_per_guest": True}, "threads_per_guest"),
    ({"guest_count": 0}, "guest_count"),
    ({"guest_count": 0x10000}, "guest_count"),
    ({"sec_caps": 0x20 | 0x18 | 4}, "sec_caps"),
    ({"sec_caps": 0x4}, "sec_caps"),
    ({"sec_caps": 0x18}, "sec_caps"),
    ({"os_revision_major": -1}, "os_revision_major"),
    ({"os_build_id": 1 << 32}, "os_build_id"),
    ({"prealloc_rpc_cache": 1}, "prealloc_rpc_cache"),
    ({"wait_ta_foreign_intr": -1}, "wait_ta_foreign_intr"),
    ({"max_shm_pages": 0}, "max_shm_pages"),
])
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(BadTeeConfig) as info:
        TeeConfig(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"TeeConfig.{field} = ")


@pytest.mark.parametrize("bad", [(0,) * 7, (0,) * 9, (-1,) + (0,) * 7, (1 << 64,) + (0,) * 7,
                                 (0.0,) + (0,) * 7, None])
def test_bad_registers_are_a_caller_bug(tee, bad) -> None:
    with pytest.raises(BadRegisters):
        tee.smc(bad)


def test_facade_exports() -> None:
    import stubdom.tee
    import stubdom.tee.tas

    for module in (stubdom.tee, stubdom.tee.tas):
        for name in module.__all__:
            assert hasattr(module, name), name
