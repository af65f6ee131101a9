"""The built-in trusted applications, their UUIDs and command ids.

Client code (guest driver tests, demo, benchmark) uses these constants::

    from stubdom.tee.tas import INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE

See docs/tee-model.md for each TA's params and results.
"""

from __future__ import annotations

from .digest import DIGEST_CMD_SHA256, DIGEST_UUID, SHA256_SIZE, DigestTa
from .increment import INCREMENT_UUID, TA_INCREMENT_CMD_DEC_VALUE, TA_INCREMENT_CMD_INC_VALUE, IncrementTa
from .storage import (
    STORAGE_CMD_DELETE,
    STORAGE_CMD_READ,
    STORAGE_CMD_WRITE,
    STORAGE_READ_CHUNK,
    STORAGE_UUID,
    TEE_FS_NAME_MAX,
    TEE_OBJECT_ID_MAX_LEN,
    StorageTa,
    object_file_name,
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
    "STORAGE_READ_CHUNK",
    "TEE_OBJECT_ID_MAX_LEN",
    "TEE_FS_NAME_MAX",
    "object_file_name",
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
]


def builtin_tas() -> dict:
    """A fresh uuid -> TA table of every built-in TA."""
    tas = (IncrementTa(), DigestTa(), StorageTa(), WaitTa())
    return {ta.uuid: ta for ta in tas}
