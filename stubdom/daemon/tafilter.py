"""TA allow/deny at OPEN_SESSION, enforced where the SMC leaves the stub domain.

The mediator has no policy hook of its own. Every standard call it issues
enters OP-TEE with CALL_WITH_ARG / CALL_WITH_RPC_ARG and the machine address
of its *shadow* argument in a1/a2: the copy it made once and validated,
in a page the guest cannot map. :class:`TaFilterPort` sits between the
mediator and the gate: for an OPEN_SESSION it reads the TA UUID from that
shadow copy (params[0], VALUE_INPUT|META, optee_msg.h) and asks the policy;
a refused session never reaches the TEE: the filter writes the refusal's
ret / ret_origin (TEEC_ERROR_ACCESS_DENIED from TEEC_ORIGIN_COMMS,
stubdom.policy.refuse_ta) into the shadow argument and returns
OPTEE_SMC_RETURN_OK, as OP-TEE returns a failed open, so the mediator
copies ret / ret_origin back to the guest as usual.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

from stubdom.mediator.port import Regs
from stubdom.optee.msg import (
    MSG_ARG_HEADER_SIZE,
    MSG_PARAM_SIZE,
    OFFSET_RET,
    OFFSET_RET_ORIGIN,
    OPTEE_MSG_CMD_OPEN_SESSION,
    MsgParam,
    param_offset,
    unpack_header,
)
from stubdom.optee.smc import OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG, OPTEE_SMC_RETURN_OK
from stubdom.optee.uuid import META_PARAM_ATTR, value_words_to_uuid

__all__ = ["TaFilterPort"]

_U32 = 0xFFFFFFFF
_U32S = struct.Struct("<I")


class TaFilterPort:
    """TeePort wrapping ``port``; ``check(domid, ta_uuid)`` returns None to
    let the open through, or (ret, ret_origin) for the guest, and counts
    and logs its refusals itself."""

    def __init__(self, port, machine, check: Callable[[int, uuid.UUID], tuple[int, int] | None]) -> None:
        self._port = port
        self._machine = machine
        self._check = check
        self.refused = 0

    def call(self, domid: int, regs: Regs) -> Regs:
        if regs[0] & _U32 in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG):
            maddr = ((regs[1] & _U32) << 32) | (regs[2] & _U32)
            ta = self._open_session_ta(maddr)
            if ta is not None:
                refused = self._check(domid, ta)
                if refused is not None:
                    ret, origin = refused
                    self.refused += 1
                    self._machine.write_machine(maddr + OFFSET_RET, _U32S.pack(ret))
                    self._machine.write_machine(maddr + OFFSET_RET_ORIGIN, _U32S.pack(origin))
                    return (OPTEE_SMC_RETURN_OK, 0, 0, 0, 0, 0, 0, 0)
        return self._port.call(domid, regs)

    def hyp_call(self, regs: Regs) -> Regs:
        return self._port.hyp_call(regs)

    def _open_session_ta(self, maddr: int) -> uuid.UUID | None:
        """The TA UUID of an OPEN_SESSION argument at ``maddr``, else None.
        A malformed meta param is left for OP-TEE to refuse (it answers
        BAD_PARAMETERS; the mediator already checked the shape)."""
        data = self._machine.read_machine(maddr, MSG_ARG_HEADER_SIZE + MSG_PARAM_SIZE)
        cmd, _func, _session, _cancel, _pad, _ret, _origin, num_params = unpack_header(data)
        if cmd != OPTEE_MSG_CMD_OPEN_SESSION or num_params < 2:
            return None
        meta = MsgParam.unpack(data, param_offset(0))
        if meta.attr != META_PARAM_ATTR:
            return None
        return value_words_to_uuid(meta.a, meta.b)
