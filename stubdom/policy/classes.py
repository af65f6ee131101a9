"""Function classes: every OP-TEE SMC function ID a guest can issue, grouped
by what it does, so a policy can allow or deny a whole kind of call.

A class is named after what the calls in it touch:

    info          identity queries a driver probes with: CALLS_COUNT, CALLS_UID,
                  CALLS_REVISION, GET_OS_UUID, GET_OS_REVISION
    capabilities  EXCHANGE_CAPABILITIES
    shm_config    GET_SHM_CONFIG (the static shared-memory carve-out)
    shm_cache     ENABLE_SHM_CACHE, DISABLE_SHM_CACHE (RPC-argument caching)
    thread_count  GET_THREAD_COUNT
    std_call      CALL_WITH_ARG, CALL_WITH_RPC_ARG, CALL_WITH_REGD_ARG: new
                  work that takes an OP-TEE thread
    rpc_return    CALL_RETURN_FROM_RPC: continues a call already admitted
    async_notif   ENABLE_ASYNC_NOTIF, GET_ASYNC_NOTIF_VALUE
    protmem       GET_PROTMEM_CONFIG
    platform      boot-time firmware plumbing: CALL_LOAD_IMAGE (TF-A's opteed),
                  BOOT_SECONDARY, L2CC_MUTEX
    hypervisor    VM_CREATED, VM_DESTROYED: the hypervisor's own (a7 = 0),
                  never a domain's
    unknown       any other function ID (the mediator answers
                  UNKNOWN_FUNCTION)

Only the low 32 bits of a0 name the function (W0: every OP-TEE function is
SMC32, DEN0028; Xen's dispatcher reads the same); bits 63:32 do not change
its class.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from stubdom.optee.smc import (
    OPTEE_SMC_BOOT_SECONDARY,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_LOAD_IMAGE,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_ASYNC_NOTIF,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_ASYNC_NOTIF_VALUE,
    OPTEE_SMC_GET_PROTMEM_CONFIG,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_L2CC_MUTEX,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
)

__all__ = [
    "CLASS_INFO",
    "CLASS_CAPABILITIES",
    "CLASS_SHM_CONFIG",
    "CLASS_SHM_CACHE",
    "CLASS_THREAD_COUNT",
    "CLASS_STD_CALL",
    "CLASS_RPC_RETURN",
    "CLASS_ASYNC_NOTIF",
    "CLASS_PROTMEM",
    "CLASS_PLATFORM",
    "CLASS_HYPERVISOR",
    "CLASS_UNKNOWN",
    "FUNCTION_CLASSES",
    "CLASS_MEMBERS",
    "ALWAYS_ALLOWED_CLASSES",
    "NEVER_ALLOWED_CLASSES",
    "DEFAULT_ALLOWED_CLASSES",
    "function_class",
]

CLASS_INFO = "info"
CLASS_CAPABILITIES = "capabilities"
CLASS_SHM_CONFIG = "shm_config"
CLASS_SHM_CACHE = "shm_cache"
CLASS_THREAD_COUNT = "thread_count"
CLASS_STD_CALL = "std_call"
CLASS_RPC_RETURN = "rpc_return"
CLASS_ASYNC_NOTIF = "async_notif"
CLASS_PROTMEM = "protmem"
CLASS_PLATFORM = "platform"
CLASS_HYPERVISOR = "hypervisor"
CLASS_UNKNOWN = "unknown"

# Which function IDs (optee_smc.h) make up each class.
CLASS_MEMBERS: Mapping[str, frozenset[int]] = MappingProxyType({
    CLASS_INFO: frozenset({OPTEE_SMC_CALLS_COUNT, OPTEE_SMC_CALLS_UID, OPTEE_SMC_CALLS_REVISION,
                           OPTEE_SMC_CALL_GET_OS_UUID, OPTEE_SMC_CALL_GET_OS_REVISION}),
    CLASS_CAPABILITIES: frozenset({OPTEE_SMC_EXCHANGE_CAPABILITIES}),
    CLASS_SHM_CONFIG: frozenset({OPTEE_SMC_GET_SHM_CONFIG}),
    CLASS_SHM_CACHE: frozenset({OPTEE_SMC_ENABLE_SHM_CACHE, OPTEE_SMC_DISABLE_SHM_CACHE}),
    CLASS_THREAD_COUNT: frozenset({OPTEE_SMC_GET_THREAD_COUNT}),
    CLASS_STD_CALL: frozenset({OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG,
                               OPTEE_SMC_CALL_WITH_REGD_ARG}),
    CLASS_RPC_RETURN: frozenset({OPTEE_SMC_CALL_RETURN_FROM_RPC}),
    CLASS_ASYNC_NOTIF: frozenset({OPTEE_SMC_ENABLE_ASYNC_NOTIF, OPTEE_SMC_GET_ASYNC_NOTIF_VALUE}),
    CLASS_PROTMEM: frozenset({OPTEE_SMC_GET_PROTMEM_CONFIG}),
    CLASS_PLATFORM: frozenset({OPTEE_SMC_CALL_LOAD_IMAGE, OPTEE_SMC_BOOT_SECONDARY,
                               OPTEE_SMC_L2CC_MUTEX}),
    CLASS_HYPERVISOR: frozenset({OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED}),
    CLASS_UNKNOWN: frozenset(),
})

# Every class name, in documentation order.
FUNCTION_CLASSES: tuple[str, ...] = tuple(CLASS_MEMBERS)

_CLASS_OF: Mapping[int, str] = MappingProxyType(
    {fid: name for name, members in CLASS_MEMBERS.items() for fid in members})

# RETURN_FROM_RPC only continues a call that was admitted under some policy;
# refusing it would strand the OP-TEE thread suspended in that call.
ALWAYS_ALLOWED_CLASSES = frozenset({CLASS_RPC_RETURN})
# VM_CREATED / VM_DESTROYED are the hypervisor's (client ID 0): a domain can
# never be allowed to announce or destroy partitions.
NEVER_ALLOWED_CLASSES = frozenset({CLASS_HYPERVISOR})
# What a domain may issue when its policy names no allow list.
DEFAULT_ALLOWED_CLASSES = frozenset(FUNCTION_CLASSES) - NEVER_ALLOWED_CLASSES

_U64 = (1 << 64) - 1
_U32 = 0xFFFFFFFF


def function_class(a0: int) -> str:
    """The class of the function a0 names (see the module docstring)."""
    if type(a0) is not int or not 0 <= a0 <= _U64:
        raise ValueError(f"a0 = {a0!r} is not a 64-bit register value")
    # function_id(a0), without building its FunctionId: a0 is a register value
    return _CLASS_OF.get(a0 & _U32, CLASS_UNKNOWN)
