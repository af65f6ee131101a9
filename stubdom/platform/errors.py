"""Errors of the platform (the hypervisor side: trap path, placements).

The errors of the protocols the platform shares with the stub domain (the
SMC gate, the control socket the toolstack talks over) are defined once in
stubdom.public.errors.
"""

from __future__ import annotations

__all__ = ["PlatformError", "BadRegisters", "DomainCreationFailed", "UnknownDomain"]


class PlatformError(Exception):
    """Base of every error the platform raises."""


class BadRegisters(PlatformError):
    """A trapped register set is not eight 64-bit values.

    Raised by the trap path before anything is dispatched; the vCPU is not
    resumed with a result. Fix the caller: registers are x0..x7 as ints.
    """

    def __init__(self, regs: object) -> None:
        super().__init__(f"trapped registers must be 8 integers in 0..2**64-1, got {regs!r}")
        self.regs = regs


class DomainCreationFailed(PlatformError):
    """The placement refused a new domain (e.g. the TEE answered VM_CREATED
    with an error); the domain was destroyed again and nothing is left of it."""

    def __init__(self, domid: int, reason: str) -> None:
        super().__init__(f"cannot create domain {domid}: {reason}")
        self.domid = domid
        self.reason = reason


class UnknownDomain(PlatformError):
    """An operation named a domain the platform does not have."""

    def __init__(self, domid: int) -> None:
        super().__init__(f"no domain with domid {domid}")
        self.domid = domid
