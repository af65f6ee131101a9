"""The built-in trusted applications, their UUIDs and command ids.

Client code (guest driver tests, demo, benchmark) uses these constants::

    from stubdom.tee.tas import INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE

See docs/tee-model.md for each TA's params and results.
"""

from __future__ import annotations

from stubdom.config.tee import TA_NAMES

from .digest import DIGEST_CMD_SHA256, DIGEST_UUID, SHA256_SIZE, DigestTa
from .increment import INCREMENT_UUID, TA_INCREMENT_CMD_DEC_VALUE, TA_INCREMENT_CMD_INC_VALUE, IncrementTa
from .storage import (
    STORAGE_CMD_DELETE,
    STORAGE_CMD_READ,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    TEE_OBJECT_ID_MAX_LEN,
    StorageTa,
)
from .ta import (
    TEE_PARAM_TYPE_MEMREF_INOUT,
    TEE_PARAM_TYPE_MEMREF_INPUT,
    TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPE_VALUE_INOUT,
    TEE_PARAM_TYPE_VALUE_INPUT,
    TEE_PARAM_TYPE_VALUE_OUTPUT,
    TEE_PARAM_TYPES,
    TaContext,
    TaParam,
    TaSession,
    TrustedApp,
)
from .wait import WAIT_CMD_BUSY, WAIT_CMD_GET_TIME, WAIT_CMD_SEND, WAIT_CMD_SLEEP, WAIT_CMD_WAIT, WAIT_UUID, WaitTa

__all__ = [
    "INCREMENT_UUID",
    "TA_INCREMENT_CMD_INC_VALUE",
    "TA_INCREMENT_CMD_DEC_VALUE",
    "DIGEST_UUID",
    "DIGEST_CMD_SHA256",
    "SHA256_SIZE",
    "STORAGE_UUID",
    "STORAGE_CMD_WRITE",
    "STORAGE_CMD_READ",
    "STORAGE_CMD_DELETE",
    "TEE_OBJECT_ID_MAX_LEN",
    "WAIT_UUID",
    "WAIT_CMD_BUSY",
    "WAIT_CMD_SLEEP",
    "WAIT_CMD_GET_TIME",
    "WAIT_CMD_WAIT",
    "WAIT_CMD_SEND",
    "TEE_PARAM_TYPE_NONE",
    "TEE_PARAM_TYPE_VALUE_INPUT",
    "TEE_PARAM_TYPE_VALUE_OUTPUT",
    "TEE_PARAM_TYPE_VALUE_INOUT",
    "TEE_PARAM_TYPE_MEMREF_INPUT",
    "TEE_PARAM_TYPE_MEMREF_OUTPUT",
    "TEE_PARAM_TYPE_MEMREF_INOUT",
    "TEE_PARAM_TYPES",
    "TaContext",
    "TaParam",
    "TaSession",
    "TrustedApp",
    "IncrementTa",
    "DigestTa",
    "StorageTa",
    "WaitTa",
    "builtin_tas",
    "TA_NAMES",
]



def builtin_tas() -> dict:
    """A fresh uuid -> TA table of every TA the model implements (whether
    each is found early or loaded from the REE is the configuration's say)."""
    tas = (IncrementTa(), DigestTa(), StorageTa(), WaitTa())
    assert tuple(ta.name for ta in tas) == TA_NAMES
    return {ta.uuid: ta for ta in tas}
