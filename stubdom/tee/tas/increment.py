"""The increment TA: optee_examples' hello_world (ta/hello_world_ta.c and
ta/include/hello_world_ta.h), same UUID and command ids.

Open session takes no params.  INC_VALUE / DEC_VALUE take exactly
(VALUE_INOUT, NONE, NONE, NONE) and add / subtract one from value[0].a
(u32, wrapping); anything else is TEE_ERROR_BAD_PARAMETERS.
"""

from __future__ import annotations

import uuid

from stubdom.optee.teec import TEE_ERROR_BAD_PARAMETERS, TEE_SUCCESS

from .ta import (
    TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPE_VALUE_INOUT,
    TEE_PARAM_TYPES,
    StatelessTa,
    TaContext,
    TaGen,
    TaParam,
    param_types,
)

__all__ = ["INCREMENT_UUID", "TA_INCREMENT_CMD_INC_VALUE", "TA_INCREMENT_CMD_DEC_VALUE", "IncrementTa"]

# hello_world_ta.h TA_HELLO_WORLD_UUID
INCREMENT_UUID = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")
TA_INCREMENT_CMD_INC_VALUE = 0  # TA_HELLO_WORLD_CMD_INC_VALUE
TA_INCREMENT_CMD_DEC_VALUE = 1  # TA_HELLO_WORLD_CMD_DEC_VALUE

_VALUE_INOUT = TEE_PARAM_TYPES(TEE_PARAM_TYPE_VALUE_INOUT, TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_NONE,
                               TEE_PARAM_TYPE_NONE)


class IncrementTa(StatelessTa):
    uuid = INCREMENT_UUID
    name = "increment"

    def invoke(self, ctx: TaContext, cmd: int, params: list[TaParam]) -> TaGen:
        if cmd == TA_INCREMENT_CMD_INC_VALUE:
            delta = 1
        elif cmd == TA_INCREMENT_CMD_DEC_VALUE:
            delta = -1
        else:
            return TEE_ERROR_BAD_PARAMETERS
        if param_types(params) != _VALUE_INOUT:
            return TEE_ERROR_BAD_PARAMETERS
        params[0].a = (params[0].a + delta) & 0xFFFFFFFF
        return TEE_SUCCESS
        yield

