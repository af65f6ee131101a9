"""The secure world: an OP-TEE model with NS-virtualization, its built-in
TAs and the isolation oracle.  See docs/tee-model.md.

    from stubdom.tee import OpteeModel, TeeConfig, IsolationOracle
    from stubdom.tee.tas import INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE
"""

from . import tas
from stubdom.config.errors import BadTeeConfig
from stubdom.config.tee import DEFAULT_SEC_CAPS, REQUIRED_SEC_CAPS, SUPPORTED_SEC_CAPS, TeeConfig

from .errors import BadRegisters, IsolationViolation, TaProtocolError, TeeError
from .model import HYP_CLNT_ID, OPTEE_CALLS_COUNT_NS_VIRT, OpteeModel, PartitionStats
from .oracle import REASON_FOREIGN, REASON_UNPINNED, IsolationOracle, Violation
from .thread import RPC_ARG_SIZE

__all__ = [
    "OpteeModel",
    "PartitionStats",
    "TeeConfig",
    "IsolationOracle",
    "Violation",
    "REASON_FOREIGN",
    "REASON_UNPINNED",
    "HYP_CLNT_ID",
    "OPTEE_CALLS_COUNT_NS_VIRT",
    "RPC_ARG_SIZE",
    "DEFAULT_SEC_CAPS",
    "REQUIRED_SEC_CAPS",
    "SUPPORTED_SEC_CAPS",
    "TeeError",
    "BadTeeConfig",
    "BadRegisters",
    "IsolationViolation",
    "TaProtocolError",
    "tas",
]
