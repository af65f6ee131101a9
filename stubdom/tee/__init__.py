"""The secure world: an OP-TEE model with NS-virtualization, its built-in
TAs and the isolation oracle.  See docs/tee-model.md.

    from stubdom.tee import OpteeModel, TeeConfig, IsolationOracle
    from stubdom.tee.tas import INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE

Its build configuration (``TeeConfig``, ``BadTeeConfig`` and the capability
sets) is defined with the rest of the configuration, in stubdom.config.tee,
and named here too.
"""

from stubdom.config.errors import BadTeeConfig as BadTeeConfig
from stubdom.config.tee import DEFAULT_SEC_CAPS as DEFAULT_SEC_CAPS
from stubdom.config.tee import REQUIRED_SEC_CAPS as REQUIRED_SEC_CAPS
from stubdom.config.tee import SUPPORTED_SEC_CAPS as SUPPORTED_SEC_CAPS
from stubdom.config.tee import TeeConfig as TeeConfig

from . import tas as tas
from .errors import BadRegisters as BadRegisters
from .errors import IsolationViolation as IsolationViolation
from .errors import TaProtocolError as TaProtocolError
from .errors import TeeError as TeeError
from .model import HYP_CLNT_ID as HYP_CLNT_ID
from .model import OPTEE_CALLS_COUNT_NS_VIRT as OPTEE_CALLS_COUNT_NS_VIRT
from .model import OpteeModel as OpteeModel
from .model import PartitionStats as PartitionStats
from .oracle import REASON_FOREIGN as REASON_FOREIGN
from .oracle import REASON_UNPINNED as REASON_UNPINNED
from .oracle import IsolationOracle as IsolationOracle
from .oracle import Violation as Violation
from .thread import RPC_ARG_SIZE as RPC_ARG_SIZE

__all__ = [
    "BadRegisters",
    "BadTeeConfig",
    "DEFAULT_SEC_CAPS",
    "HYP_CLNT_ID",
    "IsolationOracle",
    "IsolationViolation",
    "OPTEE_CALLS_COUNT_NS_VIRT",
    "OpteeModel",
    "PartitionStats",
    "REASON_FOREIGN",
    "REASON_UNPINNED",
    "REQUIRED_SEC_CAPS",
    "RPC_ARG_SIZE",
    "SUPPORTED_SEC_CAPS",
    "TaProtocolError",
    "TeeConfig",
    "TeeError",
    "Violation",
    "tas",
]
