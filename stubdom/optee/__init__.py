"""The OP-TEE SMC ABI as the normal world, a hypervisor mediator and a
simulated secure world all speak it: SMCCC function-ID encoding, every
OPTEE_SMC_* value, ``optee_msg_arg``/``optee_msg_param`` at their real byte
offsets, non-contiguous page lists, OPEN_SESSION meta parameters, RPC commands
and GlobalPlatform client values.  See docs/abi.md for sources and choices.

Everything public is re-exported here::

    from stubdom.optee import OPTEE_SMC_CALL_WITH_ARG, MsgArg, MsgParam, read_page_list
"""

from . import errors, msg, pagelist, rpc, smc, smccc, taimage, teec
from . import uuid as uuid_meta
from .errors import *  # noqa: F401,F403
from .msg import *  # noqa: F401,F403
from .pagelist import *  # noqa: F401,F403
from .rpc import *  # noqa: F401,F403
from .smc import *  # noqa: F401,F403
from .smccc import *  # noqa: F401,F403
from .taimage import *  # noqa: F401,F403
from .teec import *  # noqa: F401,F403
from .uuid import *  # noqa: F401,F403

__all__ = sorted(
    {
        *errors.__all__,
        *msg.__all__,
        *pagelist.__all__,
        *rpc.__all__,
        *smc.__all__,
        *smccc.__all__,
        *taimage.__all__,
        *teec.__all__,
        *uuid_meta.__all__,
    }
)
