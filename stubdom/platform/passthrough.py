"""The pass-through placement: what the 2017 OP-TEE mediator RFC did.

Forward every Trusted-OS SMC to the TEE with the caller's client ID
(domid + 1) stamped into a7, and return whatever the TEE returned. Nothing is
translated, pinned or copied, so it is only sound for a direct-mapped
hardware domain (IPA == PA) that is trusted like a native kernel; the
isolation oracle runs with ``require_pins=False`` under it.
"""

from __future__ import annotations

from stubdom.optee.smc import OPTEE_SMC_RETURN_OK, OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED

from .errors import DomainCreationFailed
from .regs import Regs

HYP_CLIENT_ID = 0  # OP-TEE's HYP_CLNT_ID: a7 = 0 is the hypervisor itself


def client_id(domid: int) -> int:
    """The OP-TEE client ID of a domain: domid + 1, as Xen's mediator uses."""
    return domid + 1


class PassThrough:
    """Forward and stamp the client ID; nothing more."""

    name = "passthrough"

    def __init__(self, tee) -> None:
        self._tee = tee

    def domain_init(self, domid: int) -> None:
        a0 = self._tee.smc((OPTEE_SMC_VM_CREATED, client_id(domid), 0, 0, 0, 0, 0, HYP_CLIENT_ID))[0]
        if a0 != OPTEE_SMC_RETURN_OK:
            raise DomainCreationFailed(domid, f"OP-TEE answered VM_CREATED with a0={a0:#x}")

    def handle_call(self, domid: int, vcpu: int, regs: Regs) -> Regs:
        return self._tee.smc(regs[:7] + (client_id(domid),))

    def relinquish_resources(self, domid: int) -> bool:
        return True

    def domain_teardown(self, domid: int) -> None:
        self._tee.smc((OPTEE_SMC_VM_DESTROYED, client_id(domid), 0, 0, 0, 0, 0, HYP_CLIENT_ID))
