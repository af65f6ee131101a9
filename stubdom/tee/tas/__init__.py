"""The built-in trusted applications, their UUIDs and command ids.

Client code (guest driver tests, demo, benchmark) uses these constants::

    from stubdom.tee.tas import INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE

See docs/tee-model.md for each TA's params and results.
"""

from __future__ import annotations

from stubdom.config.tee import TA_NAMES as TA_NAMES

from .digest import DIGEST_CMD_SHA256 as DIGEST_CMD_SHA256
from .digest import DIGEST_UUID as DIGEST_UUID
from .digest import SHA256_SIZE as SHA256_SIZE
from .digest import DigestTa as DigestTa
from .increment import INCREMENT_UUID as INCREMENT_UUID
from .increment import TA_INCREMENT_CMD_DEC_VALUE as TA_INCREMENT_CMD_DEC_VALUE
from .increment import TA_INCREMENT_CMD_INC_VALUE as TA_INCREMENT_CMD_INC_VALUE
from .increment import IncrementTa as IncrementTa
from .storage import STORAGE_CMD_DELETE as STORAGE_CMD_DELETE
from .storage import STORAGE_CMD_READ as STORAGE_CMD_READ
from .storage import STORAGE_CMD_WRITE as STORAGE_CMD_WRITE
from .storage import STORAGE_UUID as STORAGE_UUID
from .storage import TEE_OBJECT_ID_MAX_LEN as TEE_OBJECT_ID_MAX_LEN
from .storage import StorageTa as StorageTa
from .ta import TEE_PARAM_TYPE_MEMREF_INOUT as TEE_PARAM_TYPE_MEMREF_INOUT
from .ta import TEE_PARAM_TYPE_MEMREF_INPUT as TEE_PARAM_TYPE_MEMREF_INPUT
from .ta import TEE_PARAM_TYPE_MEMREF_OUTPUT as TEE_PARAM_TYPE_MEMREF_OUTPUT
from .ta import TEE_PARAM_TYPE_NONE as TEE_PARAM_TYPE_NONE
from .ta import TEE_PARAM_TYPE_VALUE_INOUT as TEE_PARAM_TYPE_VALUE_INOUT
from .ta import TEE_PARAM_TYPE_VALUE_INPUT as TEE_PARAM_TYPE_VALUE_INPUT
from .ta import TEE_PARAM_TYPE_VALUE_OUTPUT as TEE_PARAM_TYPE_VALUE_OUTPUT
from .ta import TEE_PARAM_TYPES as TEE_PARAM_TYPES
from .ta import TaContext as TaContext
from .ta import TaParam as TaParam
from .ta import TaSession as TaSession
from .ta import TrustedApp as TrustedApp
from .wait import WAIT_CMD_BUSY as WAIT_CMD_BUSY
from .wait import WAIT_CMD_GET_TIME as WAIT_CMD_GET_TIME
from .wait import WAIT_CMD_SEND as WAIT_CMD_SEND
from .wait import WAIT_CMD_SLEEP as WAIT_CMD_SLEEP
from .wait import WAIT_CMD_WAIT as WAIT_CMD_WAIT
from .wait import WAIT_UUID as WAIT_UUID
from .wait import WaitTa as WaitTa

__all__ = [
    "DIGEST_CMD_SHA256",
    "DIGEST_UUID",
    "DigestTa",
    "INCREMENT_UUID",
    "IncrementTa",
    "SHA256_SIZE",
    "STORAGE_CMD_DELETE",
    "STORAGE_CMD_READ",
    "STORAGE_CMD_WRITE",
    "STORAGE_UUID",
    "StorageTa",
    "TA_INCREMENT_CMD_DEC_VALUE",
    "TA_INCREMENT_CMD_INC_VALUE",
    "TA_NAMES",
    "TEE_OBJECT_ID_MAX_LEN",
    "TEE_PARAM_TYPES",
    "TEE_PARAM_TYPE_MEMREF_INOUT",
    "TEE_PARAM_TYPE_MEMREF_INPUT",
    "TEE_PARAM_TYPE_MEMREF_OUTPUT",
    "TEE_PARAM_TYPE_NONE",
    "TEE_PARAM_TYPE_VALUE_INOUT",
    "TEE_PARAM_TYPE_VALUE_INPUT",
    "TEE_PARAM_TYPE_VALUE_OUTPUT",
    "TaContext",
    "TaParam",
    "TaSession",
    "TrustedApp",
    "WAIT_CMD_BUSY",
    "WAIT_CMD_GET_TIME",
    "WAIT_CMD_SEND",
    "WAIT_CMD_SLEEP",
    "WAIT_CMD_WAIT",
    "WAIT_UUID",
    "WaitTa",
    "builtin_tas",
]


def builtin_tas() -> dict:
    """A fresh uuid -> TA table of every TA the model implements (whether
    each is found early or loaded from the REE is the configuration's say)."""
    tas = (IncrementTa(), DigestTa(), StorageTa(), WaitTa())
    assert tuple(ta.name for ta in tas) == TA_NAMES
    return {ta.uuid: ta for ta in tas}
