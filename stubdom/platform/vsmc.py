"""The SMC trap path: route a trapped SMC by its SMCCC owner, as Xen's
xen/arch/arm/vsmc.c does.

Calls owned by Trusted Applications (48-49) or Trusted OSes (50-63) go to the
TEE mediator of the domain's placement; anything else, or a call the
placement does not handle, resumes the vCPU with x0 =
ARM_SMCCC_ERR_UNKNOWN_FUNCTION and the other registers as they were (Xen's
vsmccc_handle_call leaves x1..x7 untouched on that path).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Protocol

from stubdom.optee.smc import OPTEE_SMC_CALL_RETURN_FROM_RPC, is_rpc_return, smc_name
from stubdom.optee.smccc import (
    ARM_SMCCC_OWNER_TRUSTED_APP,
    ARM_SMCCC_OWNER_TRUSTED_OS_END,
    SMCCC_RET_UNKNOWN_FUNCTION,
    decode_function_id,
)
from stubdom.trace import TRACER, TracedCall, now_ns

from .regs import Regs, check_regs


class Placement(Protocol):
    """Where the OP-TEE mediator of a domain runs (Xen's tee_mediator_ops).

    ``handle_call`` returns the registers to resume the vCPU with, or ``None``
    when the call is not one the mediator handles.
    """

    name: str

    def domain_init(self, domid: int) -> None: ...

    def handle_call(self, domid: int, vcpu: int, regs: Regs) -> Regs | None: ...

    def relinquish_resources(self, domid: int) -> bool: ...

    def domain_teardown(self, domid: int) -> None: ...


def route_smc(placement: Placement, domid: int, vcpu: int, regs: Sequence[int]) -> Regs:
    """Handle one trapped SMC of ``domid``'s vCPU ``vcpu``."""
    if TRACER.on:
        return _traced_route(placement, domid, vcpu, regs)
    checked = check_regs(regs)
    owner = decode_function_id(checked[0]).owner
    if ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
        result = placement.handle_call(domid, vcpu, checked)
        if result is not None:
            return check_regs(result)
    return (SMCCC_RET_UNKNOWN_FUNCTION,) + checked[1:]


_U32 = 0xFFFFFFFF


def _traced_route(placement: Placement, domid: int, vcpu: int, regs: Sequence[int]) -> Regs:
    """route_smc with tracing on: sample the call (or follow the sampled
    call this RETURN_FROM_RPC resumes), make it the thread's current call,
    and record the trap's span and, for a resume, the guest's RPC before it."""
    t0 = now_ns()
    local = TRACER.local
    pending = getattr(local, "rpc", None)  # (sampled call, when its RPC went to the guest)
    local.rpc = None
    fid = regs[0] & _U32 if regs else 0
    rpc_done = None
    if fid == OPTEE_SMC_CALL_RETURN_FROM_RPC:
        call = None
        if pending is not None:
            call = pending[0]
            if call is not None:
                rpc_done = pending[1]
    else:
        seq = TRACER.sample()
        call = None
        if seq is not None:
            call = TracedCall(("trap", domid, vcpu, seq), seq=seq, scope=TRACER.scope,
                              args={"call": seq, "domid": domid, "vcpu": vcpu, **TRACER.labels})
    if call is None:
        return _route(placement, domid, vcpu, regs)
    if rpc_done is not None:
        TRACER.span(call, "guest RPC", "vcpu", rpc_done, t0)
    prev = TRACER.set_current(call)
    try:
        out = _route(placement, domid, vcpu, regs)
    finally:
        TRACER.set_current(prev)
    t1 = now_ns()
    a0 = out[0] & _U32
    TRACER.span(call, "trap", "vcpu", t0, t1, {"fn": partial(smc_name, fid), "a0": fid, "ret": a0})
    if is_rpc_return(a0):
        local.rpc = (call, t1)
    return out


def _route(placement: Placement, domid: int, vcpu: int, regs: Sequence[int]) -> Regs:
    """route_smc's body, for the traced path (route_smc keeps its own copy,
    so that tracing off costs it one attribute check and no extra call)."""
    checked = check_regs(regs)
    owner = decode_function_id(checked[0]).owner
    if ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
        result = placement.handle_call(domid, vcpu, checked)
        if result is not None:
            return check_regs(result)
    return (SMCCC_RET_UNKNOWN_FUNCTION,) + checked[1:]
