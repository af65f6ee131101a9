"""SMCCC encoding, OPTEE_SMC_* values, RPC/TEEC constants: every value pinned
to the literal in the upstream header it comes from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stubdom.optee as optee
from stubdom.optee import (
    AbiError,
    FieldOutOfRange,
    FunctionId,
    FunctionIdOutOfRange,
    decode_function_id,
    encode_rpc_arg_param_count,
    is_rpc_return,
    reg_pair_to_u64,
    rpc_arg_param_count,
    rpc_func,
    rpc_return,
    smc_name,
    smc_return_name,
    smccc_call_val,
    u64_to_reg_pair,
)
from stubdom.optee import rpc as rpc_mod
from stubdom.optee import smc as smc_mod
from stubdom.optee import teec as teec_mod

U64 = (1 << 64) - 1

# -- SMCCC ---------------------------------------------------------------------------

SMCCC_LITERALS = {
    # linux include/linux/arm-smccc.h, xen asm/smccc.h
    "ARM_SMCCC_STD_CALL": 0,
    "ARM_SMCCC_FAST_CALL": 1,
    "ARM_SMCCC_TYPE_SHIFT": 31,
    "ARM_SMCCC_SMC_32": 0,
    "ARM_SMCCC_SMC_64": 1,
    "ARM_SMCCC_CALL_CONV_SHIFT": 30,
    "ARM_SMCCC_OWNER_MASK": 0x3F,
    "ARM_SMCCC_OWNER_SHIFT": 24,
    "ARM_SMCCC_FUNC_MASK": 0xFFFF,
    "ARM_SMCCC_OWNER_ARCH": 0,
    "ARM_SMCCC_OWNER_CPU": 1,
    "ARM_SMCCC_OWNER_SIP": 2,
    "ARM_SMCCC_OWNER_OEM": 3,
    "ARM_SMCCC_OWNER_STANDARD": 4,
    "ARM_SMCCC_OWNER_STANDARD_HYP": 5,
    "ARM_SMCCC_OWNER_VENDOR_HYP": 6,
    "ARM_SMCCC_OWNER_TRUSTED_APP": 48,
    "ARM_SMCCC_OWNER_TRUSTED_APP_END": 49,
    "ARM_SMCCC_OWNER_TRUSTED_OS": 50,
    "ARM_SMCCC_OWNER_TRUSTED_OS_END": 63,
    "ARM_SMCCC_FUNCID_CALL_COUNT": 0xFF00,
    "ARM_SMCCC_FUNCID_CALL_UID": 0xFF01,
    "ARM_SMCCC_FUNCID_REVISION": 0xFF03,
    "SMCCC_RET_UNKNOWN_FUNCTION": 0xFFFFFFFF,
}


@pytest.mark.parametrize(("name", "value"), sorted(SMCCC_LITERALS.items()))
def test_smccc_constant(name: str, value: int) -> None:
    assert getattr(optee, name) == value


@pytest.mark.parametrize(
    ("fast", "smc64", "owner", "number", "expected"),
    [
        (True, False, 63, 0xFF01, 0xBF00FF01),
        (True, False, 50, 9, 0xB2000009),
        (False, False, 50, 4, 0x32000004),
        (True, True, 4, 0x20, 0xC4000020),  # PSCI-style SMC64 fast call
        (False, True, 0, 0, 0x40000000),
        (True, False, 0, 0, 0x80000000),  # SMCCC_VERSION
        (True, True, 63, 0xFFFF, 0xFF00FFFF),
    ],
)
def test_smccc_call_val(fast: bool, smc64: bool, owner: int, number: int, expected: int) -> None:
    assert smccc_call_val(fast, smc64, owner, number) == expected
    assert decode_function_id(expected) == FunctionId(fast, smc64, owner, number, expected)


@pytest.mark.parametrize(
    ("owner", "number", "bad"),
    [(64, 0, "64"), (-1, 0, "-1"), (50, 0x10000, "65536"), (50, -1, "-1")],
)
def test_smccc_call_val_rejects_out_of_range(owner: int, number: int, bad: str) -> None:
    with pytest.raises(FunctionIdOutOfRange, match=bad):
        smccc_call_val(True, False, owner, number)


def test_decode_uses_low_32_bits_only() -> None:
    fid = decode_function_id(0xDEADBEEF_32000004)
    assert fid == FunctionId(fast=False, smc64=False, owner=50, number=4, value=0x32000004)
    assert fid.yielding and fid.reserved_bits == 0
    assert decode_function_id(0xB2010009).reserved_bits == 0x01  # SVE hint bit 16


@pytest.mark.parametrize("a0", [1 << 64, -1])
def test_decode_rejects_non_register(a0: int) -> None:
    with pytest.raises(FunctionIdOutOfRange, match=str(a0) if a0 < 0 else "18446744073709551616"):
        decode_function_id(a0)


@given(st.booleans(), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_smccc_round_trip(fast: bool, smc64: bool, owner: int, number: int, high: int) -> None:
    v = smccc_call_val(fast, smc64, owner, number)
    assert 0 <= v <= 0xFFFFFFFF
    d = decode_function_id((high << 32) | v)
    assert (d.fast, d.smc64, d.owner, d.number, d.value) == (fast, smc64, owner, number, v)


def test_trusted_os_owner_range() -> None:
    assert [o for o in range(64) if optee.is_trusted_os_owner(o)] == list(range(48, 64))


# -- OPTEE_SMC_* (optee_smc.h) ----------------------------------------------------------

FUNCTION_IDS = {
    "OPTEE_SMC_CALLS_COUNT": 0xBF00FF00,
    "OPTEE_SMC_CALLS_UID": 0xBF00FF01,
    "OPTEE_SMC_CALLS_REVISION": 0xBF00FF03,
    "OPTEE_SMC_CALL_LOAD_IMAGE": 0xBF000002,
    "OPTEE_SMC_CALL_GET_OS_UUID": 0xB2000000,
    "OPTEE_SMC_CALL_GET_OS_REVISION": 0xB2000001,
    "OPTEE_SMC_CALL_RETURN_FROM_RPC": 0x32000003,
    "OPTEE_SMC_CALL_WITH_ARG": 0x32000004,
    "OPTEE_SMC_GET_SHM_CONFIG": 0xB2000007,
    "OPTEE_SMC_L2CC_MUTEX": 0xB2000008,
    "OPTEE_SMC_EXCHANGE_CAPABILITIES": 0xB2000009,
    "OPTEE_SMC_DISABLE_SHM_CACHE": 0xB200000A,
    "OPTEE_SMC_ENABLE_SHM_CACHE": 0xB200000B,
    "OPTEE_SMC_BOOT_SECONDARY": 0xB200000C,
    "OPTEE_SMC_VM_CREATED": 0xB200000D,
    "OPTEE_SMC_VM_DESTROYED": 0xB200000E,
    "OPTEE_SMC_GET_THREAD_COUNT": 0xB200000F,
    "OPTEE_SMC_ENABLE_ASYNC_NOTIF": 0xB2000010,
    "OPTEE_SMC_GET_ASYNC_NOTIF_VALUE": 0xB2000011,
    "OPTEE_SMC_CALL_WITH_RPC_ARG": 0x32000012,
    "OPTEE_SMC_CALL_WITH_REGD_ARG": 0x32000013,
    "OPTEE_SMC_GET_PROTMEM_CONFIG": 0xB2000014,
}


@pytest.mark.parametrize(("name", "value"), sorted(FUNCTION_IDS.items()))
def test_function_id(name: str, value: int) -> None:
    assert getattr(optee, name) == value
    assert smc_mod.SMC_NAMES[value] == name
    assert smc_name(value) == name


def test_smc_names_cover_exactly_the_function_ids() -> None:
    assert dict(smc_mod.SMC_NAMES) == {v: k for k, v in FUNCTION_IDS.items()}
    assert smc_name(0xB2000005) == "0xb2000005"


OTHER_SMC_LITERALS = {
    "OPTEE_SMC_32": 0,
    "OPTEE_SMC_64": 0x40000000,
    "OPTEE_SMC_FAST_CALL": 0x80000000,
    "OPTEE_SMC_STD_CALL": 0,
    "OPTEE_SMC_OWNER_MASK": 0x3F,
    "OPTEE_SMC_OWNER_SHIFT": 24,
    "OPTEE_SMC_FUNC_MASK": 0xFFFF,
    "OPTEE_SMC_OWNER_ARCH": 0,
    "OPTEE_SMC_OWNER_CPU": 1,
    "OPTEE_SMC_OWNER_SIP": 2,
    "OPTEE_SMC_OWNER_OEM": 3,
    "OPTEE_SMC_OWNER_STANDARD": 4,
    "OPTEE_SMC_OWNER_TRUSTED_APP": 48,
    "OPTEE_SMC_OWNER_TRUSTED_OS": 50,
    "OPTEE_SMC_OWNER_TRUSTED_OS_OPTEED": 62,
    "OPTEE_SMC_OWNER_TRUSTED_OS_API": 63,
    "OPTEE_MSG_FUNCID_CALLS_UID": 0xFF01,
    "OPTEE_MSG_FUNCID_CALLS_REVISION": 0xFF03,
    "OPTEE_MSG_FUNCID_GET_OS_UUID": 0x0000,
    "OPTEE_MSG_FUNCID_GET_OS_REVISION": 0x0001,
    "OPTEE_MSG_FUNCID_CALL_WITH_ARG": 0x0004,
    "OPTEE_SMC_FUNCID_CALLS_COUNT": 0xFF00,
    "OPTEE_SMC_FUNCID_LOAD_IMAGE": 2,
    "OPTEE_SMC_FUNCID_CALLS_UID": 0xFF01,
    "OPTEE_SMC_FUNCID_CALLS_REVISION": 0xFF03,
    "OPTEE_SMC_FUNCID_GET_OS_UUID": 0,
    "OPTEE_SMC_FUNCID_GET_OS_REVISION": 1,
    "OPTEE_SMC_FUNCID_RETURN_FROM_RPC": 3,
    "OPTEE_SMC_FUNCID_CALL_WITH_ARG": 4,
    "OPTEE_SMC_FUNCID_GET_SHM_CONFIG": 7,
    "OPTEE_SMC_FUNCID_L2CC_MUTEX": 8,
    "OPTEE_SMC_FUNCID_EXCHANGE_CAPABILITIES": 9,
    "OPTEE_SMC_FUNCID_DISABLE_SHM_CACHE": 10,
    "OPTEE_SMC_FUNCID_ENABLE_SHM_CACHE": 11,
    "OPTEE_SMC_FUNCID_BOOT_SECONDARY": 12,
    "OPTEE_SMC_FUNCID_VM_CREATED": 13,
    "OPTEE_SMC_FUNCID_VM_DESTROYED": 14,
    "OPTEE_SMC_FUNCID_GET_THREAD_COUNT": 15,
    "OPTEE_SMC_FUNCID_ENABLE_ASYNC_NOTIF": 16,
    "OPTEE_SMC_FUNCID_GET_ASYNC_NOTIF_VALUE": 17,
    "OPTEE_SMC_FUNCID_CALL_WITH_RPC_ARG": 18,
    "OPTEE_SMC_FUNCID_CALL_WITH_REGD_ARG": 19,
    "OPTEE_SMC_FUNCID_GET_PROTMEM_CONFIG": 20,
    "OPTEE_SMC_L2CC_MUTEX_GET_ADDR": 0,
    "OPTEE_SMC_L2CC_MUTEX_SET_ADDR": 1,
    "OPTEE_SMC_L2CC_MUTEX_ENABLE": 2,
    "OPTEE_SMC_L2CC_MUTEX_DISABLE": 3,
    # a0 return codes
    "OPTEE_SMC_RETURN_OK": 0x0,
    "OPTEE_SMC_RETURN_ETHREAD_LIMIT": 0x1,
    "OPTEE_SMC_RETURN_EBUSY": 0x2,
    "OPTEE_SMC_RETURN_ERESUME": 0x3,
    "OPTEE_SMC_RETURN_EBADADDR": 0x4,
    "OPTEE_SMC_RETURN_EBADCMD": 0x5,
    "OPTEE_SMC_RETURN_ENOMEM": 0x6,
    "OPTEE_SMC_RETURN_ENOTAVAIL": 0x7,
    "OPTEE_SMC_RETURN_UNKNOWN_FUNCTION": 0xFFFFFFFF,
    # RPC
    "OPTEE_SMC_RETURN_RPC_PREFIX_MASK": 0xFFFF0000,
    "OPTEE_SMC_RETURN_RPC_PREFIX": 0xFFFF0000,
    "OPTEE_SMC_RETURN_RPC_FUNC_MASK": 0x0000FFFF,
    "OPTEE_SMC_RPC_FUNC_ALLOC": 0,
    "OPTEE_SMC_RPC_FUNC_FREE": 2,
    "OPTEE_SMC_RPC_FUNC_FOREIGN_INTR": 4,
    "OPTEE_SMC_RPC_FUNC_CMD": 5,
    "OPTEE_SMC_RETURN_RPC_ALLOC": 0xFFFF0000,
    "OPTEE_SMC_RETURN_RPC_FREE": 0xFFFF0002,
    "OPTEE_SMC_RETURN_RPC_FOREIGN_INTR": 0xFFFF0004,
    "OPTEE_SMC_RETURN_RPC_CMD": 0xFFFF0005,
    # capabilities
    "OPTEE_SMC_NSEC_CAP_UNIPROCESSOR": 0x1,
    "OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM": 0x1,
    "OPTEE_SMC_SEC_CAP_UNREGISTERED_SHM": 0x2,
    "OPTEE_SMC_SEC_CAP_DYNAMIC_SHM": 0x4,
    "OPTEE_SMC_SEC_CAP_VIRTUALIZATION": 0x8,
    "OPTEE_SMC_SEC_CAP_MEMREF_NULL": 0x10,
    "OPTEE_SMC_SEC_CAP_ASYNC_NOTIF": 0x20,
    "OPTEE_SMC_SEC_CAP_RPC_ARG": 0x40,
    "OPTEE_SMC_SEC_CAP_RPMB_PROBE": 0x80,
    "OPTEE_SMC_SEC_CAP_PROTMEM": 0x100,
    "OPTEE_SMC_SEC_CAP_DYNAMIC_PROTMEM": 0x200,
    "OPTEE_SMC_SEC_CAP_RPC_ARG_PARAM_COUNT_MASK": 0xFF,
    "OPTEE_SMC_SHM_CACHED": 1,
    "OPTEE_SMC_SHM_NONCACHED": 0,
    "OPTEE_SMC_ASYNC_NOTIF_VALUE_VALID": 0x1,
    "OPTEE_SMC_ASYNC_NOTIF_VALUE_PENDING": 0x2,
    "OPTEE_SMC_ASYNC_NOTIF_VALID": 0x1,
    "OPTEE_SMC_ASYNC_NOTIF_PENDING": 0x2,
    "OPTEE_SMC_ASYNC_NOTIF_VALUE_DO_BOTTOM_HALF": 0,
    # identity (optee_msg.h)
    "OPTEE_MSG_UID_0": 0x384FB3E0,
    "OPTEE_MSG_UID_1": 0xE7F811E3,
    "OPTEE_MSG_UID_2": 0xAF630002,
    "OPTEE_MSG_UID_3": 0xA5D5C51B,
    "OPTEE_MSG_OS_OPTEE_UUID_0": 0x486178E0,
    "OPTEE_MSG_OS_OPTEE_UUID_1": 0xE7F811E3,
    "OPTEE_MSG_OS_OPTEE_UUID_2": 0xBC5E0002,
    "OPTEE_MSG_OS_OPTEE_UUID_3": 0xA5D5C51B,
    "OPTEE_MSG_REVISION_MAJOR": 2,
    "OPTEE_MSG_REVISION_MINOR": 0,
}


@pytest.mark.parametrize(("name", "value"), sorted(OTHER_SMC_LITERALS.items()))
def test_smc_constant(name: str, value: int) -> None:
    assert getattr(optee, name) == value


def test_every_optee_smc_name_is_pinned() -> None:
    # A constant added to smc.py without a pinned literal fails here.
    names = {n for n in smc_mod.__all__ if n.startswith("OPTEE_")}
    assert names == set(FUNCTION_IDS) | set(OTHER_SMC_LITERALS)


def test_uids_spell_the_uuid_strings() -> None:
    import uuid

    api = uuid.UUID("384fb3e0-e7f8-11e3-af63-0002a5d5c51b").bytes
    os_ = uuid.UUID("486178e0-e7f8-11e3-bc5e-0002a5d5c51b").bytes
    assert [int.from_bytes(api[i : i + 4], "big") for i in range(0, 16, 4)] == [
        optee.OPTEE_MSG_UID_0, optee.OPTEE_MSG_UID_1, optee.OPTEE_MSG_UID_2, optee.OPTEE_MSG_UID_3,
    ]
    assert [int.from_bytes(os_[i : i + 4], "big") for i in range(0, 16, 4)] == [
        optee.OPTEE_MSG_OS_OPTEE_UUID_0, optee.OPTEE_MSG_OS_OPTEE_UUID_1,
        optee.OPTEE_MSG_OS_OPTEE_UUID_2, optee.OPTEE_MSG_OS_OPTEE_UUID_3,
    ]


# -- RPC return helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("a0", "expected"),
    [
        (0xFFFF0000, True),
        (0xFFFF0005, True),
        (0xFFFFFFFE, True),
        (0xFFFFFFFF, False),  # UNKNOWN_FUNCTION shares the prefix
        (0x0, False),
        (0x7, False),
        (0xFFFE0005, False),
        (0x1_FFFF0005, True),  # upper half of x0 ignored
        (0xFFFFFFFF_FFFFFFFF, False),
    ],
)
def test_is_rpc_return(a0: int, expected: bool) -> None:
    assert is_rpc_return(a0) is expected


def test_rpc_func_and_return() -> None:
    assert rpc_func(0xFFFF0005) == 5
    assert rpc_func(0xFFFF0000) == 0
    assert rpc_return(4) == 0xFFFF0004
    assert rpc_return(0xFFFF) == 0xFFFFFFFF
    with pytest.raises(FieldOutOfRange, match="65536"):
        rpc_return(0x10000)
    with pytest.raises(FieldOutOfRange, match="-1"):
        is_rpc_return(-1)


def test_return_names() -> None:
    assert smc_return_name(0) == "OPTEE_SMC_RETURN_OK"
    assert smc_return_name(0xFFFF0005) == "OPTEE_SMC_RETURN_RPC_CMD"
    assert smc_return_name(0xFFFF0001) == "OPTEE_SMC_RETURN_RPC(0x1)"
    assert smc_return_name(0x8) == "0x00000008"
    assert smc_return_name(0xFFFFFFFF) == "OPTEE_SMC_RETURN_UNKNOWN_FUNCTION"


def test_rpc_arg_param_count_field() -> None:
    assert rpc_arg_param_count(0x4) == 4
    assert rpc_arg_param_count(0xABCD04) == 4  # bits 31:8 are not the count
    assert encode_rpc_arg_param_count(4) == 4
    with pytest.raises(FieldOutOfRange, match="256"):
        encode_rpc_arg_param_count(256)


# -- Register pairs ----------------------------------------------------------------------


def test_reg_pair() -> None:
    assert reg_pair_to_u64(0x12345678, 0x9ABCDEF0) == 0x123456789ABCDEF0
    assert u64_to_reg_pair(0x123456789ABCDEF0) == (0x12345678, 0x9ABCDEF0)
    assert u64_to_reg_pair(0) == (0, 0)
    assert reg_pair_to_u64(0xFFFFFFFF, 0xFFFFFFFF) == U64


@pytest.mark.parametrize(("hi", "lo", "bad"), [(1 << 32, 0, "4294967296"), (0, 1 << 32, "4294967296"), (-1, 0, "-1")])
def test_reg_pair_rejects_wide_halves(hi: int, lo: int, bad: str) -> None:
    with pytest.raises(FieldOutOfRange, match=bad):
        reg_pair_to_u64(hi, lo)


def test_u64_to_reg_pair_rejects_wide_value() -> None:
    with pytest.raises(FieldOutOfRange, match="18446744073709551616"):
        u64_to_reg_pair(1 << 64)


@given(st.integers(0, U64))
def test_reg_pair_round_trip(v: int) -> None:
    assert reg_pair_to_u64(*u64_to_reg_pair(v)) == v


# -- RPC commands (optee_rpc_cmd.h) -----------------------------------------------------

RPC_LITERALS = {
    "OPTEE_RPC_CMD_LOAD_TA": 0,
    "OPTEE_RPC_CMD_RPMB": 1,
    "OPTEE_RPC_CMD_FS": 2,
    "OPTEE_RPC_CMD_GET_TIME": 3,
    "OPTEE_RPC_CMD_NOTIFICATION": 4,
    "OPTEE_RPC_CMD_SUSPEND": 5,
    "OPTEE_RPC_CMD_SHM_ALLOC": 6,
    "OPTEE_RPC_CMD_SHM_FREE": 7,
    "OPTEE_RPC_CMD_SQL_FS_RESERVED": 8,
    "OPTEE_RPC_CMD_GPROF": 9,
    "OPTEE_RPC_CMD_SOCKET": 10,
    "OPTEE_RPC_CMD_FTRACE": 11,
    "OPTEE_RPC_CMD_SUPP_PLUGIN": 12,
    "OPTEE_RPC_CMD_BENCH_REG": 20,
    "OPTEE_RPC_CMD_I2C_TRANSFER": 21,
    "OPTEE_RPC_CMD_RPMB_PROBE_RESET": 22,
    "OPTEE_RPC_CMD_RPMB_PROBE_NEXT": 23,
    "OPTEE_RPC_CMD_RPMB_FRAMES": 24,
    "OPTEE_RPC_NOTIFICATION_WAIT": 0,
    "OPTEE_RPC_NOTIFICATION_SEND": 1,
    "OPTEE_RPC_CMD_WAIT_QUEUE": 4,
    "OPTEE_RPC_WAIT_QUEUE_SLEEP": 0,
    "OPTEE_RPC_WAIT_QUEUE_WAKEUP": 1,
    "OPTEE_RPC_SHM_TYPE_APPL": 0,
    "OPTEE_RPC_SHM_TYPE_KERNEL": 1,
    "OPTEE_RPC_SHM_TYPE_GLOBAL": 2,
    "OPTEE_RPC_FS_OPEN": 0,
    "OPTEE_RPC_FS_CREATE": 1,
    "OPTEE_RPC_FS_CLOSE": 2,
    "OPTEE_RPC_FS_READ": 3,
    "OPTEE_RPC_FS_WRITE": 4,
    "OPTEE_RPC_FS_TRUNCATE": 5,
    "OPTEE_RPC_FS_REMOVE": 6,
    "OPTEE_RPC_FS_RENAME": 7,
    "OPTEE_RPC_FS_OPENDIR": 8,
    "OPTEE_RPC_FS_CLOSEDIR": 9,
    "OPTEE_RPC_FS_READDIR": 10,
    "OPTEE_RPC_I2C_TRANSFER_RD": 0,
    "OPTEE_RPC_I2C_TRANSFER_WR": 1,
    "OPTEE_RPC_I2C_FLAGS_TEN_BIT": 1,
    "OPTEE_RPC_RPMB_EMMC": 0,
    "OPTEE_RPC_RPMB_UFS": 1,
    "OPTEE_RPC_RPMB_NVME": 2,
}


@pytest.mark.parametrize(("name", "value"), sorted(RPC_LITERALS.items()))
def test_rpc_constant(name: str, value: int) -> None:
    assert getattr(optee, name) == value


def test_every_rpc_constant_is_pinned() -> None:
    names = {n for n in rpc_mod.__all__ if n.startswith("OPTEE_RPC_") and n != "OPTEE_RPC_CMD_NAMES"}
    assert names == set(RPC_LITERALS)
    assert optee.THREAD_RPC_MAX_NUM_PARAMS == 4


def test_rpc_cmd_names() -> None:
    cmds = {v: k for k, v in RPC_LITERALS.items() if k.startswith("OPTEE_RPC_CMD_") and k != "OPTEE_RPC_CMD_WAIT_QUEUE"}
    assert dict(optee.OPTEE_RPC_CMD_NAMES) == cmds


# -- GlobalPlatform (tee_client_api.h, tee_api_defines.h) ---------------------------------

TEEC_LITERALS = {
    "TEEC_CONFIG_PAYLOAD_REF_COUNT": 4,
    "TEE_NUM_PARAMS": 4,
    "TEEC_SUCCESS": 0x00000000,
    "TEEC_ERROR_GENERIC": 0xFFFF0000,
    "TEEC_ERROR_ACCESS_DENIED": 0xFFFF0001,
    "TEEC_ERROR_CANCEL": 0xFFFF0002,
    "TEEC_ERROR_ACCESS_CONFLICT": 0xFFFF0003,
    "TEEC_ERROR_EXCESS_DATA": 0xFFFF0004,
    "TEEC_ERROR_BAD_FORMAT": 0xFFFF0005,
    "TEEC_ERROR_BAD_PARAMETERS": 0xFFFF0006,
    "TEEC_ERROR_BAD_STATE": 0xFFFF0007,
    "TEEC_ERROR_ITEM_NOT_FOUND": 0xFFFF0008,
    "TEEC_ERROR_NOT_IMPLEMENTED": 0xFFFF0009,
    "TEEC_ERROR_NOT_SUPPORTED": 0xFFFF000A,
    "TEEC_ERROR_NO_DATA": 0xFFFF000B,
    "TEEC_ERROR_OUT_OF_MEMORY": 0xFFFF000C,
    "TEEC_ERROR_BUSY": 0xFFFF000D,
    "TEEC_ERROR_COMMUNICATION": 0xFFFF000E,
    "TEEC_ERROR_SECURITY": 0xFFFF000F,
    "TEEC_ERROR_SHORT_BUFFER": 0xFFFF0010,
    "TEEC_ERROR_EXTERNAL_CANCEL": 0xFFFF0011,
    "TEEC_ERROR_TARGET_DEAD": 0xFFFF3024,
    "TEEC_ERROR_STORAGE_NO_SPACE": 0xFFFF3041,
    "TEEC_ERROR_STORAGE_NOT_AVAILABLE": 0xF0100003,
    "TEE_SUCCESS": 0x00000000,
    "TEE_ERROR_CORRUPT_OBJECT": 0xF0100001,
    "TEE_ERROR_CORRUPT_OBJECT_2": 0xF0100002,
    "TEE_ERROR_STORAGE_NOT_AVAILABLE": 0xF0100003,
    "TEE_ERROR_STORAGE_NOT_AVAILABLE_2": 0xF0100004,
    "TEE_ERROR_GENERIC": 0xFFFF0000,
    "TEE_ERROR_ACCESS_DENIED": 0xFFFF0001,
    "TEE_ERROR_CANCEL": 0xFFFF0002,
    "TEE_ERROR_ACCESS_CONFLICT": 0xFFFF0003,
    "TEE_ERROR_EXCESS_DATA": 0xFFFF0004,
    "TEE_ERROR_BAD_FORMAT": 0xFFFF0005,
    "TEE_ERROR_BAD_PARAMETERS": 0xFFFF0006,
    "TEE_ERROR_BAD_STATE": 0xFFFF0007,
    "TEE_ERROR_ITEM_NOT_FOUND": 0xFFFF0008,
    "TEE_ERROR_NOT_IMPLEMENTED": 0xFFFF0009,
    "TEE_ERROR_NOT_SUPPORTED": 0xFFFF000A,
    "TEE_ERROR_NO_DATA": 0xFFFF000B,
    "TEE_ERROR_OUT_OF_MEMORY": 0xFFFF000C,
    "TEE_ERROR_BUSY": 0xFFFF000D,
    "TEE_ERROR_COMMUNICATION": 0xFFFF000E,
    "TEE_ERROR_SECURITY": 0xFFFF000F,
    "TEE_ERROR_SHORT_BUFFER": 0xFFFF0010,
    "TEE_ERROR_EXTERNAL_CANCEL": 0xFFFF0011,
    "TEE_ERROR_TIMEOUT": 0xFFFF3001,
    "TEE_ERROR_OVERFLOW": 0xFFFF300F,
    "TEE_ERROR_TARGET_DEAD": 0xFFFF3024,
    "TEE_ERROR_STORAGE_NO_SPACE": 0xFFFF3041,
    "TEE_ERROR_MAC_INVALID": 0xFFFF3071,
    "TEE_ERROR_SIGNATURE_INVALID": 0xFFFF3072,
    "TEE_ERROR_TIME_NOT_SET": 0xFFFF5000,
    "TEE_ERROR_TIME_NEEDS_RESET": 0xFFFF5001,
    "TEEC_ORIGIN_API": 1,
    "TEEC_ORIGIN_COMMS": 2,
    "TEEC_ORIGIN_TEE": 3,
    "TEEC_ORIGIN_TRUSTED_APP": 4,
    "TEEC_LOGIN_PUBLIC": 0,
    "TEEC_LOGIN_USER": 1,
    "TEEC_LOGIN_GROUP": 2,
    "TEEC_LOGIN_APPLICATION": 4,
    "TEEC_LOGIN_USER_APPLICATION": 5,
    "TEEC_LOGIN_GROUP_APPLICATION": 6,
    "TEEC_NONE": 0x0,
    "TEEC_VALUE_INPUT": 0x1,
    "TEEC_VALUE_OUTPUT": 0x2,
    "TEEC_VALUE_INOUT": 0x3,
    "TEEC_MEMREF_TEMP_INPUT": 0x5,
    "TEEC_MEMREF_TEMP_OUTPUT": 0x6,
    "TEEC_MEMREF_TEMP_INOUT": 0x7,
    "TEEC_MEMREF_WHOLE": 0xC,
    "TEEC_MEMREF_PARTIAL_INPUT": 0xD,
    "TEEC_MEMREF_PARTIAL_OUTPUT": 0xE,
    "TEEC_MEMREF_PARTIAL_INOUT": 0xF,
    "TEEC_MEM_INPUT": 1,
    "TEEC_MEM_OUTPUT": 2,
}


@pytest.mark.parametrize(("name", "value"), sorted(TEEC_LITERALS.items()))
def test_teec_constant(name: str, value: int) -> None:
    assert getattr(optee, name) == value


def test_every_teec_constant_is_pinned() -> None:
    callables_and_maps = {"TEEC_PARAM_TYPES", "TEEC_PARAM_TYPE_GET", "TEEC_NAMES", "TEEC_ORIGIN_NAMES"}
    names = {n for n in teec_mod.__all__ if n.startswith(("TEEC_", "TEE_"))} - callables_and_maps
    assert names == set(TEEC_LITERALS)


def test_teec_names() -> None:
    assert optee.TEEC_NAMES[0xFFFF0006] == "TEEC_ERROR_BAD_PARAMETERS"
    assert optee.TEEC_NAMES[0xFFFF3001] == "TEE_ERROR_TIMEOUT"
    assert optee.teec_name(0xFFFF000E) == "TEEC_ERROR_COMMUNICATION"
    assert optee.teec_name(0x12345678) == "0x12345678"
    # every result code has a name
    codes = {v for k, v in TEEC_LITERALS.items() if "ERROR" in k or "SUCCESS" in k}
    assert codes == set(optee.TEEC_NAMES)
    assert optee.TEEC_ORIGIN_NAMES[2] == "TEEC_ORIGIN_COMMS"


def test_teec_param_types() -> None:
    t = optee.TEEC_PARAM_TYPES(optee.TEEC_VALUE_INPUT, optee.TEEC_MEMREF_TEMP_OUTPUT, optee.TEEC_NONE,
                               optee.TEEC_MEMREF_PARTIAL_INOUT)
    assert t == 0xF061
    assert [optee.TEEC_PARAM_TYPE_GET(t, i) for i in range(4)] == [0x1, 0x6, 0x0, 0xF]
    with pytest.raises(FieldOutOfRange, match="param type 2 = 16"):
        optee.TEEC_PARAM_TYPES(0, 0, 16, 0)
    with pytest.raises(FieldOutOfRange, match="param index = 4"):
        optee.TEEC_PARAM_TYPE_GET(t, 4)


# -- Package façade --------------------------------------------------------------------------


def test_facade_exports() -> None:
    from stubdom.optee import OPTEE_SMC_CALL_WITH_ARG, MsgArg, MsgParam, read_page_list  # noqa: F401

    for name in optee.__all__:
        assert hasattr(optee, name), name
    for mod in (optee.smccc, optee.smc, optee.msg, optee.pagelist, optee.rpc, optee.teec, optee.errors, optee.uuid):
        assert set(mod.__all__) <= set(optee.__all__)


def test_errors_are_value_errors() -> None:
    for name in optee.errors.__all__:
        assert issubclass(getattr(optee, name), AbiError)
    assert issubclass(AbiError, ValueError)
