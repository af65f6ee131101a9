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
from typing import Protocol

from stubdom.optee.smccc import (
    ARM_SMCCC_OWNER_TRUSTED_APP,
    ARM_SMCCC_OWNER_TRUSTED_OS_END,
    SMCCC_RET_UNKNOWN_FUNCTION,
    decode_function_id,
)

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
    checked = check_regs(regs)
    owner = decode_function_id(checked[0]).owner
    if ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
        result = placement.handle_call(domid, vcpu, checked)
        if result is not None:
            return check_regs(result)
    return (SMCCC_RET_UNKNOWN_FUNCTION,) + checked[1:]
