"""The wait TA: a TA that runs long or waits on the normal world.

* WAIT_CMD_BUSY (VALUE_OUTPUT): is preempted by TeeConfig.wait_ta_foreign_intr
  FOREIGN_INTR returns (a normal-world interrupt taken while it computes);
  value[0].a = preemptions taken.  If the session is cancelled (CANCEL) while
  it is preempted it stops with TEE_ERROR_CANCEL.
* WAIT_CMD_SLEEP (VALUE_INPUT a = milliseconds): OPTEE_RPC_CMD_SUSPEND, as
  ``tee_time_wait`` does.
* WAIT_CMD_GET_TIME (VALUE_OUTPUT): OPTEE_RPC_CMD_GET_TIME, as
  ``tee_time_get_ree_time`` does; value[0].a = seconds, .b = nanoseconds.
* WAIT_CMD_WAIT (VALUE_INPUT a = key, b = timeout ms): OPTEE_RPC_CMD_NOTIFICATION
  WAIT on the key; returns the normal world's result.
* WAIT_CMD_SEND (VALUE_INPUT a = key): OPTEE_RPC_CMD_NOTIFICATION SEND, which
  wakes a waiter of another session.
"""

from __future__ import annotations

import uuid

from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_NOTIFICATION,
    OPTEE_RPC_CMD_SUSPEND,
    OPTEE_RPC_NOTIFICATION_SEND,
    OPTEE_RPC_NOTIFICATION_WAIT,
)
from stubdom.optee.teec import TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_CANCEL, TEE_SUCCESS

from ..thread import RpcParam
from .ta import (
    TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPE_VALUE_INPUT,
    TEE_PARAM_TYPE_VALUE_OUTPUT,
    TEE_PARAM_TYPES,
    StatelessTa,
    TaContext,
    TaGen,
    TaParam,
    param_types,
)

__all__ = [
    "WAIT_UUID",
    "WAIT_CMD_BUSY",
    "WAIT_CMD_SLEEP",
    "WAIT_CMD_GET_TIME",
    "WAIT_CMD_WAIT",
    "WAIT_CMD_SEND",
    "WaitTa",
]

WAIT_UUID = uuid.UUID("40215c4e-28f8-4ab7-91cf-f615633d288e")
WAIT_CMD_BUSY = 0
WAIT_CMD_SLEEP = 1
WAIT_CMD_GET_TIME = 2
WAIT_CMD_WAIT = 3
WAIT_CMD_SEND = 4

_N = TEE_PARAM_TYPE_NONE
_VALUE_OUT = TEE_PARAM_TYPES(TEE_PARAM_TYPE_VALUE_OUTPUT, _N, _N, _N)
_VALUE_IN = TEE_PARAM_TYPES(TEE_PARAM_TYPE_VALUE_INPUT, _N, _N, _N)


class WaitTa(StatelessTa):
    uuid = WAIT_UUID
    name = "wait"

    def invoke(self, ctx: TaContext, cmd: int, params: list[TaParam]) -> TaGen:
        types = param_types(params)
        if cmd == WAIT_CMD_BUSY and types == _VALUE_OUT:
            taken = 0
            for _ in range(ctx.config.wait_ta_foreign_intr):
                yield from ctx.thread.foreign_intr()
                taken += 1
                if ctx.session.cancel:
                    params[0].a = taken
                    return TEE_ERROR_CANCEL
            params[0].a = taken
            return TEE_SUCCESS
        if cmd == WAIT_CMD_SLEEP and types == _VALUE_IN:
            res, _ = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_SUSPEND, [RpcParam.value_in(params[0].a)])
            return res
        if cmd == WAIT_CMD_GET_TIME and types == _VALUE_OUT:
            res, out = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_GET_TIME, [RpcParam.value_out()])
            if res == TEE_SUCCESS:
                params[0].a = out[0].a & 0xFFFFFFFF
                params[0].b = out[0].b & 0xFFFFFFFF
            return res
        if cmd == WAIT_CMD_WAIT and types == _VALUE_IN:
            res, _ = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_NOTIFICATION, [
                RpcParam.value_in(OPTEE_RPC_NOTIFICATION_WAIT, params[0].a, params[0].b)])
            return res
        if cmd == WAIT_CMD_SEND and types == _VALUE_IN:
            res, _ = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_NOTIFICATION, [
                RpcParam.value_in(OPTEE_RPC_NOTIFICATION_SEND, params[0].a, 0)])
            return res
        return TEE_ERROR_BAD_PARAMETERS

