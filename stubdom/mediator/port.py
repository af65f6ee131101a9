"""TeePort: the only way the mediator core reaches the secure world.

Contract (every implementation must keep it):

* ``call(domid, regs) -> regs``: issue one SMC on behalf of ``domid``.  The
  port, never the caller, puts client ID = domid + 1 into a7: under ``el2``
  the port does it itself; under ``stubdom`` the SMC gate hypercall makes Xen
  check that the stub domain was given ``domid`` and stamp a7.  Whatever a7
  the caller passes is ignored.
* ``hyp_call(regs) -> regs``: issue one SMC as the hypervisor, a7 = 0
  (HYP_CLNT_ID): probing, VM_CREATED, VM_DESTROYED.
* Both take and return eight ints in 0 .. 2**64-1 and are synchronous.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["TeePort", "DirectTeePort", "HYP_CLIENT_ID", "client_id"]

Regs = tuple[int, int, int, int, int, int, int, int]

HYP_CLIENT_ID = 0  # OP-TEE's HYP_CLNT_ID (core/include/kernel/virtualization.h)


def client_id(domid: int) -> int:
    """OP-TEE client ID of a domain: domid + 1 (0 is the hypervisor's)."""
    return domid + 1


class TeePort(Protocol):
    def call(self, domid: int, regs: Regs) -> Regs: ...

    def hyp_call(self, regs: Regs) -> Regs: ...


class SecureMonitor(Protocol):
    """What an SMC reaches: ``smc(a0..a7) -> a0..a7`` (the TEE model's
    OpteeModel.smc, or the secure monitor of real hardware)."""

    def smc(self, regs: tuple[int, ...]) -> Sequence[int]: ...


class DirectTeePort:
    """The EL2 port: the mediator runs in the hypervisor and issues the SMC
    itself, stamping the client ID."""

    def __init__(self, tee: SecureMonitor) -> None:
        self._tee = tee
        self.smcs = 0  # SMCs issued, for statistics

    def call(self, domid: int, regs: Regs) -> Regs:
        self.smcs += 1
        return _regs(self._tee.smc(tuple(regs[:7]) + (client_id(domid),)))

    def hyp_call(self, regs: Regs) -> Regs:
        self.smcs += 1
        return _regs(self._tee.smc(tuple(regs[:7]) + (HYP_CLIENT_ID,)))


def _regs(r: Sequence[int]) -> Regs:
    a0, a1, a2, a3, a4, a5, a6, a7 = r  # exactly eight, or a ValueError naming the count
    return (a0, a1, a2, a3, a4, a5, a6, a7)
