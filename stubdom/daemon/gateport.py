"""GatePort: the mediator's TeePort in the stub domain, over the platform's
SMC gate (docs/daemon.md, "The SMC gate").

A stub domain cannot execute an SMC for another domain: every SMC the
mediator issues becomes a gate hypercall. ``call(domid, regs)`` is
GATE_OP_SMC: the gate checks that ``domid`` was assigned to this stub domain
and stamps a7 = domid + 1 itself, so whatever a7 the mediator passes is
irrelevant (it is sent as 0). ``hyp_call(regs)`` is GATE_OP_HYP, a7 = 0:
probing, and VM_CREATED / VM_DESTROYED, for which the request's ``vcpu``
field names the domain (a1 - 1) so that the gate can check the assignment.

A gate status other than 0 raises :class:`GateRefused`. The mediator catches
exceptions at its dispatch boundary and answers the guest
OPTEE_SMC_RETURN_ENOMEM (its documented internal-error code); from
domain_init / domain_teardown the error reaches the daemon, which turns it
into TEE_REFUSED for the toolstack.
"""

from __future__ import annotations

from stubdom.mediator.port import Regs
from stubdom.optee.smc import OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED
from stubdom.public.errors import GateRefused
from stubdom.public.gate import GATE_OP_HYP, GATE_OP_SMC

__all__ = ["GatePort"]

_U32 = 0xFFFFFFFF


class GatePort:
    """TeePort (stubdom/mediator/port.py) over a gate client with
    ``call(op, domid, regs) -> (status, regs)``
    (stubdom.public.gate_client.GateClient). Counts what it issued, for
    ``stats``.
    """

    def __init__(self, client) -> None:
        self._client = client
        self.smc_calls = 0
        self.hyp_calls = 0
        self.failures = 0

    def call(self, domid: int, regs: Regs) -> Regs:
        self.smc_calls += 1
        # a7 is the gate's to stamp: send 0, never a value of our choosing
        return self._issue(GATE_OP_SMC, "SMC", domid, tuple(regs[:7]) + (0,))

    def hyp_call(self, regs: Regs) -> Regs:
        self.hyp_calls += 1
        function = regs[0] & _U32
        domid = 0
        if function in (OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED):
            # a1 is the client ID (domid + 1); the gate checks the two agree
            domid = ((regs[1] & _U32) - 1) & _U32
        return self._issue(GATE_OP_HYP, "HYP", domid, tuple(regs[:7]) + (0,))

    def _issue(self, op: int, name: str, domid: int, regs: tuple) -> Regs:
        status, out = self._client.call(op, domid, regs)
        if status != 0:
            self.failures += 1
            raise GateRefused(name, domid, status, regs[0])
        return tuple(out)

    def statistics(self) -> dict:
        return {"smc_calls": self.smc_calls, "hyp_calls": self.hyp_calls, "failures": self.failures}
