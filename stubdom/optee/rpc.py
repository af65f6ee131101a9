"""RPC commands carried in an RPC ``optee_msg_arg`` (OPTEE_SMC_RPC_FUNC_CMD).

Values from OP-TEE ``core/include/optee_rpc_cmd.h`` (Linux
``drivers/tee/optee/optee_rpc_cmd.h`` has the subset the kernel handles).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# -- Commands (optee_rpc_cmd.h) ---------------------------------------------------
OPTEE_RPC_CMD_LOAD_TA = 0
OPTEE_RPC_CMD_RPMB = 1
OPTEE_RPC_CMD_FS = 2
OPTEE_RPC_CMD_GET_TIME = 3
OPTEE_RPC_CMD_NOTIFICATION = 4
OPTEE_RPC_CMD_SUSPEND = 5
OPTEE_RPC_CMD_SHM_ALLOC = 6
OPTEE_RPC_CMD_SHM_FREE = 7
OPTEE_RPC_CMD_SQL_FS_RESERVED = 8  # was OPTEE_RPC_CMD_SQL_FS, no longer supported
OPTEE_RPC_CMD_GPROF = 9
OPTEE_RPC_CMD_SOCKET = 10
OPTEE_RPC_CMD_FTRACE = 11
OPTEE_RPC_CMD_SUPP_PLUGIN = 12
OPTEE_RPC_CMD_BENCH_REG = 20
OPTEE_RPC_CMD_I2C_TRANSFER = 21
OPTEE_RPC_CMD_RPMB_PROBE_RESET = 22
OPTEE_RPC_CMD_RPMB_PROBE_NEXT = 23
OPTEE_RPC_CMD_RPMB_FRAMES = 24

# NOTIFICATION sub-operations in params[0].a (optee_rpc_cmd.h, OP-TEE >= 3.16).
OPTEE_RPC_NOTIFICATION_WAIT = 0
OPTEE_RPC_NOTIFICATION_SEND = 1
# Older names for the same command and numbers, still used by Xen's copy of
# optee_rpc_cmd.h (xen/arch/arm/include/asm/tee/optee_rpc_cmd.h).
OPTEE_RPC_CMD_WAIT_QUEUE = OPTEE_RPC_CMD_NOTIFICATION
OPTEE_RPC_WAIT_QUEUE_SLEEP = OPTEE_RPC_NOTIFICATION_WAIT
OPTEE_RPC_WAIT_QUEUE_WAKEUP = OPTEE_RPC_NOTIFICATION_SEND

# SHM_ALLOC / SHM_FREE memory types in params[0].a (optee_rpc_cmd.h).
OPTEE_RPC_SHM_TYPE_APPL = 0  # shareable with NS user space (tee-supplicant)
OPTEE_RPC_SHM_TYPE_KERNEL = 1  # NS kernel only
OPTEE_RPC_SHM_TYPE_GLOBAL = 2  # NS kernel memory exported to user space

# FS sub-operations in params[0].a (optee_rpc_cmd.h).
OPTEE_RPC_FS_OPEN = 0
OPTEE_RPC_FS_CREATE = 1
OPTEE_RPC_FS_CLOSE = 2
OPTEE_RPC_FS_READ = 3
OPTEE_RPC_FS_WRITE = 4
OPTEE_RPC_FS_TRUNCATE = 5
OPTEE_RPC_FS_REMOVE = 6
OPTEE_RPC_FS_RENAME = 7
OPTEE_RPC_FS_OPENDIR = 8
OPTEE_RPC_FS_CLOSEDIR = 9
OPTEE_RPC_FS_READDIR = 10

# I2C_TRANSFER modes and flags (optee_rpc_cmd.h).
OPTEE_RPC_I2C_TRANSFER_RD = 0
OPTEE_RPC_I2C_TRANSFER_WR = 1
OPTEE_RPC_I2C_FLAGS_TEN_BIT = 1 << 0

# RPMB_PROBE_NEXT device types (optee_rpc_cmd.h).
OPTEE_RPC_RPMB_EMMC = 0
OPTEE_RPC_RPMB_UFS = 1
OPTEE_RPC_RPMB_NVME = 2

# Most params an RPC arg carries: OP-TEE THREAD_RPC_MAX_NUM_PARAMS
# (core/include/kernel/thread.h, used by thread_optee_smc.c), announced in a3
# of EXCHANGE_CAPABILITIES when SEC_CAP_RPC_ARG is set.
THREAD_RPC_MAX_NUM_PARAMS = 4

OPTEE_RPC_CMD_NAMES: Mapping[int, str] = MappingProxyType(
    {
        OPTEE_RPC_CMD_LOAD_TA: "OPTEE_RPC_CMD_LOAD_TA",
        OPTEE_RPC_CMD_RPMB: "OPTEE_RPC_CMD_RPMB",
        OPTEE_RPC_CMD_FS: "OPTEE_RPC_CMD_FS",
        OPTEE_RPC_CMD_GET_TIME: "OPTEE_RPC_CMD_GET_TIME",
        OPTEE_RPC_CMD_NOTIFICATION: "OPTEE_RPC_CMD_NOTIFICATION",
        OPTEE_RPC_CMD_SUSPEND: "OPTEE_RPC_CMD_SUSPEND",
        OPTEE_RPC_CMD_SHM_ALLOC: "OPTEE_RPC_CMD_SHM_ALLOC",
        OPTEE_RPC_CMD_SHM_FREE: "OPTEE_RPC_CMD_SHM_FREE",
        OPTEE_RPC_CMD_SQL_FS_RESERVED: "OPTEE_RPC_CMD_SQL_FS_RESERVED",
        OPTEE_RPC_CMD_GPROF: "OPTEE_RPC_CMD_GPROF",
        OPTEE_RPC_CMD_SOCKET: "OPTEE_RPC_CMD_SOCKET",
        OPTEE_RPC_CMD_FTRACE: "OPTEE_RPC_CMD_FTRACE",
        OPTEE_RPC_CMD_SUPP_PLUGIN: "OPTEE_RPC_CMD_SUPP_PLUGIN",
        OPTEE_RPC_CMD_BENCH_REG: "OPTEE_RPC_CMD_BENCH_REG",
        OPTEE_RPC_CMD_I2C_TRANSFER: "OPTEE_RPC_CMD_I2C_TRANSFER",
        OPTEE_RPC_CMD_RPMB_PROBE_RESET: "OPTEE_RPC_CMD_RPMB_PROBE_RESET",
        OPTEE_RPC_CMD_RPMB_PROBE_NEXT: "OPTEE_RPC_CMD_RPMB_PROBE_NEXT",
        OPTEE_RPC_CMD_RPMB_FRAMES: "OPTEE_RPC_CMD_RPMB_FRAMES",
    }
)

__all__ = [name for name in dir() if name.startswith("OPTEE_RPC_")] + [
    "THREAD_RPC_MAX_NUM_PARAMS",
]
