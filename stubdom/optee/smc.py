"""OP-TEE SMC ABI: function IDs, a0 return codes, RPC encoding, capability
bits, identity values and register helpers.

Values from OP-TEE ``core/arch/arm/include/sm/optee_smc.h`` (kept in sync with
Linux ``drivers/tee/optee/optee_smc.h``) and the SMC-related part of
``core/include/optee_msg.h``.  Upstream OP-TEE only: the Xen mediator's own
numbers (OPTEE_MEDIATOR_SMC_COUNT, its capability mask) belong to the mediator.

All OP-TEE function IDs are SMC32: OEN 63 (Trusted OS end) for the SMCCC
generic queries, OEN 50 (Trusted OS) for OP-TEE's own calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .errors import FieldOutOfRange
from .smccc import (
    ARM_SMCCC_FUNCID_CALL_COUNT,
    SMCCC_RET_UNKNOWN_FUNCTION,
    smccc_call_val,
)

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

# -- Call-type bits as OP-TEE spells them, already shifted (optee_smc.h) -----
OPTEE_SMC_32 = 0
OPTEE_SMC_64 = 0x40000000
OPTEE_SMC_FAST_CALL = 0x80000000
OPTEE_SMC_STD_CALL = 0
OPTEE_SMC_OWNER_MASK = 0x3F
OPTEE_SMC_OWNER_SHIFT = 24
OPTEE_SMC_FUNC_MASK = 0xFFFF

# -- Owners (optee_smc.h) ------------------------------------------------------
OPTEE_SMC_OWNER_ARCH = 0
OPTEE_SMC_OWNER_CPU = 1
OPTEE_SMC_OWNER_SIP = 2
OPTEE_SMC_OWNER_OEM = 3
OPTEE_SMC_OWNER_STANDARD = 4
OPTEE_SMC_OWNER_TRUSTED_APP = 48
OPTEE_SMC_OWNER_TRUSTED_OS = 50
OPTEE_SMC_OWNER_TRUSTED_OS_OPTEED = 62  # OP-TEE <-> TF-A only; never seen by NS
OPTEE_SMC_OWNER_TRUSTED_OS_API = 63

# -- Function numbers (optee_smc.h, optee_msg.h OPTEE_MSG_FUNCID_*) ----------
OPTEE_MSG_FUNCID_CALLS_UID = 0xFF01  # optee_msg.h
OPTEE_MSG_FUNCID_CALLS_REVISION = 0xFF03  # optee_msg.h
OPTEE_MSG_FUNCID_GET_OS_UUID = 0x0000  # optee_msg.h
OPTEE_MSG_FUNCID_GET_OS_REVISION = 0x0001  # optee_msg.h
OPTEE_MSG_FUNCID_CALL_WITH_ARG = 0x0004  # optee_msg.h

OPTEE_SMC_FUNCID_CALLS_COUNT = ARM_SMCCC_FUNCID_CALL_COUNT  # 0xFF00
OPTEE_SMC_FUNCID_CALLS_UID = OPTEE_MSG_FUNCID_CALLS_UID
OPTEE_SMC_FUNCID_CALLS_REVISION = OPTEE_MSG_FUNCID_CALLS_REVISION
OPTEE_SMC_FUNCID_LOAD_IMAGE = 2  # Linux optee_smc.h / TF-A opteed (OEN 63)
OPTEE_SMC_FUNCID_GET_OS_UUID = OPTEE_MSG_FUNCID_GET_OS_UUID
OPTEE_SMC_FUNCID_GET_OS_REVISION = OPTEE_MSG_FUNCID_GET_OS_REVISION
OPTEE_SMC_FUNCID_RETURN_FROM_RPC = 3
OPTEE_SMC_FUNCID_CALL_WITH_ARG = OPTEE_MSG_FUNCID_CALL_WITH_ARG
OPTEE_SMC_FUNCID_GET_SHM_CONFIG = 7
OPTEE_SMC_FUNCID_L2CC_MUTEX = 8
OPTEE_SMC_FUNCID_EXCHANGE_CAPABILITIES = 9
OPTEE_SMC_FUNCID_DISABLE_SHM_CACHE = 10
OPTEE_SMC_FUNCID_ENABLE_SHM_CACHE = 11
OPTEE_SMC_FUNCID_BOOT_SECONDARY = 12
OPTEE_SMC_FUNCID_VM_CREATED = 13
OPTEE_SMC_FUNCID_VM_DESTROYED = 14
OPTEE_SMC_FUNCID_GET_THREAD_COUNT = 15
OPTEE_SMC_FUNCID_ENABLE_ASYNC_NOTIF = 16
OPTEE_SMC_FUNCID_GET_ASYNC_NOTIF_VALUE = 17
OPTEE_SMC_FUNCID_CALL_WITH_RPC_ARG = 18
OPTEE_SMC_FUNCID_CALL_WITH_REGD_ARG = 19
OPTEE_SMC_FUNCID_GET_PROTMEM_CONFIG = 20


def _api(number: int) -> int:
    # SMCCC generic queries answered by OP-TEE: fast SMC32, OEN 63.
    return smccc_call_val(True, False, OPTEE_SMC_OWNER_TRUSTED_OS_API, number)


def _fast(number: int) -> int:
    # OPTEE_SMC_FAST_CALL_VAL: fast SMC32, OEN 50.
    return smccc_call_val(True, False, OPTEE_SMC_OWNER_TRUSTED_OS, number)


def _std(number: int) -> int:
    # OPTEE_SMC_STD_CALL_VAL: yielding SMC32, OEN 50.
    return smccc_call_val(False, False, OPTEE_SMC_OWNER_TRUSTED_OS, number)


# -- Function IDs (optee_smc.h) ------------------------------------------------
OPTEE_SMC_CALLS_COUNT = _api(OPTEE_SMC_FUNCID_CALLS_COUNT)  # 0xBF00FF00
OPTEE_SMC_CALLS_UID = _api(OPTEE_SMC_FUNCID_CALLS_UID)  # 0xBF00FF01
OPTEE_SMC_CALLS_REVISION = _api(OPTEE_SMC_FUNCID_CALLS_REVISION)  # 0xBF00FF03
OPTEE_SMC_CALL_LOAD_IMAGE = _api(OPTEE_SMC_FUNCID_LOAD_IMAGE)  # 0xBF000002 (TF-A)
OPTEE_SMC_CALL_GET_OS_UUID = _fast(OPTEE_SMC_FUNCID_GET_OS_UUID)  # 0xB2000000
OPTEE_SMC_CALL_GET_OS_REVISION = _fast(OPTEE_SMC_FUNCID_GET_OS_REVISION)  # 0xB2000001
OPTEE_SMC_CALL_RETURN_FROM_RPC = _std(OPTEE_SMC_FUNCID_RETURN_FROM_RPC)  # 0x32000003
OPTEE_SMC_CALL_WITH_ARG = _std(OPTEE_SMC_FUNCID_CALL_WITH_ARG)  # 0x32000004
OPTEE_SMC_GET_SHM_CONFIG = _fast(OPTEE_SMC_FUNCID_GET_SHM_CONFIG)  # 0xB2000007
OPTEE_SMC_L2CC_MUTEX = _fast(OPTEE_SMC_FUNCID_L2CC_MUTEX)  # 0xB2000008
OPTEE_SMC_EXCHANGE_CAPABILITIES = _fast(OPTEE_SMC_FUNCID_EXCHANGE_CAPABILITIES)  # 0xB2000009
OPTEE_SMC_DISABLE_SHM_CACHE = _fast(OPTEE_SMC_FUNCID_DISABLE_SHM_CACHE)  # 0xB200000A
OPTEE_SMC_ENABLE_SHM_CACHE = _fast(OPTEE_SMC_FUNCID_ENABLE_SHM_CACHE)  # 0xB200000B
OPTEE_SMC_BOOT_SECONDARY = _fast(OPTEE_SMC_FUNCID_BOOT_SECONDARY)  # 0xB200000C
OPTEE_SMC_VM_CREATED = _fast(OPTEE_SMC_FUNCID_VM_CREATED)  # 0xB200000D
OPTEE_SMC_VM_DESTROYED = _fast(OPTEE_SMC_FUNCID_VM_DESTROYED)  # 0xB200000E
OPTEE_SMC_GET_THREAD_COUNT = _fast(OPTEE_SMC_FUNCID_GET_THREAD_COUNT)  # 0xB200000F
OPTEE_SMC_ENABLE_ASYNC_NOTIF = _fast(OPTEE_SMC_FUNCID_ENABLE_ASYNC_NOTIF)  # 0xB2000010
OPTEE_SMC_GET_ASYNC_NOTIF_VALUE = _fast(OPTEE_SMC_FUNCID_GET_ASYNC_NOTIF_VALUE)  # 0xB2000011
OPTEE_SMC_CALL_WITH_RPC_ARG = _std(OPTEE_SMC_FUNCID_CALL_WITH_RPC_ARG)  # 0x32000012
OPTEE_SMC_CALL_WITH_REGD_ARG = _std(OPTEE_SMC_FUNCID_CALL_WITH_REGD_ARG)  # 0x32000013
OPTEE_SMC_GET_PROTMEM_CONFIG = _fast(OPTEE_SMC_FUNCID_GET_PROTMEM_CONFIG)  # 0xB2000014

# L2CC_MUTEX sub-operations in a1 (optee_smc.h).
OPTEE_SMC_L2CC_MUTEX_GET_ADDR = 0
OPTEE_SMC_L2CC_MUTEX_SET_ADDR = 1
OPTEE_SMC_L2CC_MUTEX_ENABLE = 2
OPTEE_SMC_L2CC_MUTEX_DISABLE = 3

# -- a0 return codes (optee_smc.h) ---------------------------------------------
OPTEE_SMC_RETURN_OK = 0x0
OPTEE_SMC_RETURN_ETHREAD_LIMIT = 0x1
OPTEE_SMC_RETURN_EBUSY = 0x2
OPTEE_SMC_RETURN_ERESUME = 0x3
OPTEE_SMC_RETURN_EBADADDR = 0x4
OPTEE_SMC_RETURN_EBADCMD = 0x5
OPTEE_SMC_RETURN_ENOMEM = 0x6
OPTEE_SMC_RETURN_ENOTAVAIL = 0x7
OPTEE_SMC_RETURN_UNKNOWN_FUNCTION = SMCCC_RET_UNKNOWN_FUNCTION  # 0xFFFFFFFF

# -- RPC returns (optee_smc.h) -------------------------------------------------
OPTEE_SMC_RETURN_RPC_PREFIX_MASK = 0xFFFF0000
OPTEE_SMC_RETURN_RPC_PREFIX = 0xFFFF0000
OPTEE_SMC_RETURN_RPC_FUNC_MASK = 0x0000FFFF

OPTEE_SMC_RPC_FUNC_ALLOC = 0
OPTEE_SMC_RPC_FUNC_FREE = 2
OPTEE_SMC_RPC_FUNC_FOREIGN_INTR = 4  # was RPC_FUNC_IRQ before 2016
OPTEE_SMC_RPC_FUNC_CMD = 5


def rpc_return(func: int) -> int:
    """OPTEE_SMC_RPC_VAL: the a0 OP-TEE returns to request RPC ``func``."""
    if not isinstance(func, int) or not 0 <= func <= OPTEE_SMC_RETURN_RPC_FUNC_MASK:
        raise FieldOutOfRange("RPC function", func, 16)
    return OPTEE_SMC_RETURN_RPC_PREFIX | func


OPTEE_SMC_RETURN_RPC_ALLOC = rpc_return(OPTEE_SMC_RPC_FUNC_ALLOC)  # 0xFFFF0000
OPTEE_SMC_RETURN_RPC_FREE = rpc_return(OPTEE_SMC_RPC_FUNC_FREE)  # 0xFFFF0002
OPTEE_SMC_RETURN_RPC_FOREIGN_INTR = rpc_return(OPTEE_SMC_RPC_FUNC_FOREIGN_INTR)  # 0xFFFF0004
OPTEE_SMC_RETURN_RPC_CMD = rpc_return(OPTEE_SMC_RPC_FUNC_CMD)  # 0xFFFF0005


def _check_reg(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= _U64:
        raise FieldOutOfRange(name, value, 64)
    return value & _U32


def is_rpc_return(a0: int) -> bool:
    """OPTEE_SMC_RETURN_IS_RPC on the low 32 bits of a0: the RPC prefix is set
    and the value is not UNKNOWN_FUNCTION (which shares the prefix)."""
    v = _check_reg("a0", a0)
    return (
        v != OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
        and (v & OPTEE_SMC_RETURN_RPC_PREFIX_MASK) == OPTEE_SMC_RETURN_RPC_PREFIX
    )


def rpc_func(a0: int) -> int:
    """OPTEE_SMC_RETURN_GET_RPC_FUNC: the RPC function of an RPC return."""
    return _check_reg("a0", a0) & OPTEE_SMC_RETURN_RPC_FUNC_MASK


# -- Capabilities (optee_smc.h, EXCHANGE_CAPABILITIES) -------------------------
OPTEE_SMC_NSEC_CAP_UNIPROCESSOR = 1 << 0

OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM = 1 << 0
OPTEE_SMC_SEC_CAP_UNREGISTERED_SHM = 1 << 1
OPTEE_SMC_SEC_CAP_DYNAMIC_SHM = 1 << 2
OPTEE_SMC_SEC_CAP_VIRTUALIZATION = 1 << 3
OPTEE_SMC_SEC_CAP_MEMREF_NULL = 1 << 4
OPTEE_SMC_SEC_CAP_ASYNC_NOTIF = 1 << 5
OPTEE_SMC_SEC_CAP_RPC_ARG = 1 << 6
OPTEE_SMC_SEC_CAP_RPMB_PROBE = 1 << 7
OPTEE_SMC_SEC_CAP_PROTMEM = 1 << 8
OPTEE_SMC_SEC_CAP_DYNAMIC_PROTMEM = 1 << 9

# a3 of the EXCHANGE_CAPABILITIES reply: bits 7:0 = RPC-arg parameter count
# (meaningful with SEC_CAP_RPC_ARG), bits 31:8 MBZ (optee_smc.h).
OPTEE_SMC_SEC_CAP_RPC_ARG_PARAM_COUNT_MASK = 0xFF


def rpc_arg_param_count(a3: int) -> int:
    """Number of params the trailing RPC arg must hold, from EXCHANGE_CAPABILITIES a3."""
    return _check_reg("a3", a3) & OPTEE_SMC_SEC_CAP_RPC_ARG_PARAM_COUNT_MASK


def encode_rpc_arg_param_count(count: int) -> int:
    """The a3 value announcing ``count`` RPC params (bits 31:8 left zero)."""
    if not isinstance(count, int) or not 0 <= count <= OPTEE_SMC_SEC_CAP_RPC_ARG_PARAM_COUNT_MASK:
        raise FieldOutOfRange("RPC arg param count", count, 8)
    return count


# -- Shared-memory cache attribute in a3 / GET_SHM_CONFIG a3 --------------------
OPTEE_SMC_SHM_CACHED = 1  # optee_smc.h
# Historical (2015-era optee_smc.h with REGISTER_SHM fast calls); current
# upstream defines only CACHED.  Kept so a reply can be named, never produced.
OPTEE_SMC_SHM_NONCACHED = 0

# -- GET_ASYNC_NOTIF_VALUE a2 flags ----------------------------------------------
# Linux optee_smc.h names; OP-TEE spells them OPTEE_SMC_ASYNC_NOTIF_VALID/PENDING.
OPTEE_SMC_ASYNC_NOTIF_VALUE_VALID = 1 << 0
OPTEE_SMC_ASYNC_NOTIF_VALUE_PENDING = 1 << 1
OPTEE_SMC_ASYNC_NOTIF_VALID = OPTEE_SMC_ASYNC_NOTIF_VALUE_VALID
OPTEE_SMC_ASYNC_NOTIF_PENDING = OPTEE_SMC_ASYNC_NOTIF_VALUE_PENDING
# Notification value 0: normal world must issue a DO_BOTTOM_HALF yielding call.
OPTEE_SMC_ASYNC_NOTIF_VALUE_DO_BOTTOM_HALF = 0

# -- Identity (optee_msg.h) -------------------------------------------------------
# API UID 384fb3e0-e7f8-11e3-af63-0002a5d5c51b, a0..a3 of CALLS_UID.
OPTEE_MSG_UID_0 = 0x384FB3E0
OPTEE_MSG_UID_1 = 0xE7F811E3
OPTEE_MSG_UID_2 = 0xAF630002
OPTEE_MSG_UID_3 = 0xA5D5C51B
# API revision, a0/a1 of CALLS_REVISION.
OPTEE_MSG_REVISION_MAJOR = 2
OPTEE_MSG_REVISION_MINOR = 0
# OS UUID 486178e0-e7f8-11e3-bc5e-0002a5d5c51b, a0..a3 of GET_OS_UUID.
OPTEE_MSG_OS_OPTEE_UUID_0 = 0x486178E0
OPTEE_MSG_OS_OPTEE_UUID_1 = 0xE7F811E3
OPTEE_MSG_OS_OPTEE_UUID_2 = 0xBC5E0002
OPTEE_MSG_OS_OPTEE_UUID_3 = 0xA5D5C51B


# -- 64-bit values split over two 32-bit registers ------------------------------
def reg_pair_to_u64(hi: int, lo: int) -> int:
    """Join (a1, a2)-style halves: ``hi`` holds bits 63:32, ``lo`` bits 31:0.
    Each half must already be a 32-bit value; nothing is masked."""
    if not isinstance(hi, int) or not 0 <= hi <= _U32:
        raise FieldOutOfRange("high register half", hi, 32)
    if not isinstance(lo, int) or not 0 <= lo <= _U32:
        raise FieldOutOfRange("low register half", lo, 32)
    return (hi << 32) | lo


def u64_to_reg_pair(value: int) -> tuple[int, int]:
    """Split a 64-bit value into (hi, lo) 32-bit register halves."""
    if not isinstance(value, int) or not 0 <= value <= _U64:
        raise FieldOutOfRange("64-bit register pair value", value, 64)
    return value >> 32, value & _U32


# -- Names for logs ---------------------------------------------------------------
SMC_NAMES: Mapping[int, str] = MappingProxyType(
    {
        OPTEE_SMC_CALLS_COUNT: "OPTEE_SMC_CALLS_COUNT",
        OPTEE_SMC_CALLS_UID: "OPTEE_SMC_CALLS_UID",
        OPTEE_SMC_CALLS_REVISION: "OPTEE_SMC_CALLS_REVISION",
        OPTEE_SMC_CALL_LOAD_IMAGE: "OPTEE_SMC_CALL_LOAD_IMAGE",
        OPTEE_SMC_CALL_GET_OS_UUID: "OPTEE_SMC_CALL_GET_OS_UUID",
        OPTEE_SMC_CALL_GET_OS_REVISION: "OPTEE_SMC_CALL_GET_OS_REVISION",
        OPTEE_SMC_CALL_RETURN_FROM_RPC: "OPTEE_SMC_CALL_RETURN_FROM_RPC",
        OPTEE_SMC_CALL_WITH_ARG: "OPTEE_SMC_CALL_WITH_ARG",
        OPTEE_SMC_GET_SHM_CONFIG: "OPTEE_SMC_GET_SHM_CONFIG",
        OPTEE_SMC_L2CC_MUTEX: "OPTEE_SMC_L2CC_MUTEX",
        OPTEE_SMC_EXCHANGE_CAPABILITIES: "OPTEE_SMC_EXCHANGE_CAPABILITIES",
        OPTEE_SMC_DISABLE_SHM_CACHE: "OPTEE_SMC_DISABLE_SHM_CACHE",
        OPTEE_SMC_ENABLE_SHM_CACHE: "OPTEE_SMC_ENABLE_SHM_CACHE",
        OPTEE_SMC_BOOT_SECONDARY: "OPTEE_SMC_BOOT_SECONDARY",
        OPTEE_SMC_VM_CREATED: "OPTEE_SMC_VM_CREATED",
        OPTEE_SMC_VM_DESTROYED: "OPTEE_SMC_VM_DESTROYED",
        OPTEE_SMC_GET_THREAD_COUNT: "OPTEE_SMC_GET_THREAD_COUNT",
        OPTEE_SMC_ENABLE_ASYNC_NOTIF: "OPTEE_SMC_ENABLE_ASYNC_NOTIF",
        OPTEE_SMC_GET_ASYNC_NOTIF_VALUE: "OPTEE_SMC_GET_ASYNC_NOTIF_VALUE",
        OPTEE_SMC_CALL_WITH_RPC_ARG: "OPTEE_SMC_CALL_WITH_RPC_ARG",
        OPTEE_SMC_CALL_WITH_REGD_ARG: "OPTEE_SMC_CALL_WITH_REGD_ARG",
        OPTEE_SMC_GET_PROTMEM_CONFIG: "OPTEE_SMC_GET_PROTMEM_CONFIG",
    }
)

# a0 values on return: plain return codes and RPC requests.
SMC_RETURN_NAMES: Mapping[int, str] = MappingProxyType(
    {
        OPTEE_SMC_RETURN_OK: "OPTEE_SMC_RETURN_OK",
        OPTEE_SMC_RETURN_ETHREAD_LIMIT: "OPTEE_SMC_RETURN_ETHREAD_LIMIT",
        OPTEE_SMC_RETURN_EBUSY: "OPTEE_SMC_RETURN_EBUSY",
        OPTEE_SMC_RETURN_ERESUME: "OPTEE_SMC_RETURN_ERESUME",
        OPTEE_SMC_RETURN_EBADADDR: "OPTEE_SMC_RETURN_EBADADDR",
        OPTEE_SMC_RETURN_EBADCMD: "OPTEE_SMC_RETURN_EBADCMD",
        OPTEE_SMC_RETURN_ENOMEM: "OPTEE_SMC_RETURN_ENOMEM",
        OPTEE_SMC_RETURN_ENOTAVAIL: "OPTEE_SMC_RETURN_ENOTAVAIL",
        OPTEE_SMC_RETURN_UNKNOWN_FUNCTION: "OPTEE_SMC_RETURN_UNKNOWN_FUNCTION",
        OPTEE_SMC_RETURN_RPC_ALLOC: "OPTEE_SMC_RETURN_RPC_ALLOC",
        OPTEE_SMC_RETURN_RPC_FREE: "OPTEE_SMC_RETURN_RPC_FREE",
        OPTEE_SMC_RETURN_RPC_FOREIGN_INTR: "OPTEE_SMC_RETURN_RPC_FOREIGN_INTR",
        OPTEE_SMC_RETURN_RPC_CMD: "OPTEE_SMC_RETURN_RPC_CMD",
    }
)


def smc_name(a0: int) -> str:
    """Name of a function ID (low 32 bits of a0) for logs, or its hex value."""
    v = _check_reg("a0", a0)
    return SMC_NAMES.get(v, f"{v:#010x}")


def smc_return_name(a0: int) -> str:
    """Name of an a0 return value for logs, or its hex value."""
    v = _check_reg("a0", a0)
    if v in SMC_RETURN_NAMES:
        return SMC_RETURN_NAMES[v]
    if is_rpc_return(v):
        return f"OPTEE_SMC_RETURN_RPC({v & OPTEE_SMC_RETURN_RPC_FUNC_MASK:#x})"
    return f"{v:#010x}"


__all__ = [name for name in dir() if name.startswith("OPTEE_")] + [
    "SMC_NAMES",
    "SMC_RETURN_NAMES",
    "encode_rpc_arg_param_count",
    "is_rpc_return",
    "reg_pair_to_u64",
    "rpc_arg_param_count",
    "rpc_func",
    "rpc_return",
    "smc_name",
    "smc_return_name",
    "u64_to_reg_pair",
]
