"""The platform: the hypervisor side of the simulation (trap path,
placements, toolstack)."""

from .errors import BadRegisters, DomainCreationFailed, PlatformError, UnknownDomain
from .passthrough import PassThrough, client_id
from .platform import DomainSpec, Platform
from .regs import NR_SMC_REGS, Regs, check_regs
from .vsmc import Placement, route_smc

__all__ = [
    "BadRegisters",
    "DomainCreationFailed",
    "DomainSpec",
    "NR_SMC_REGS",
    "PassThrough",
    "Placement",
    "Platform",
    "PlatformError",
    "Regs",
    "UnknownDomain",
    "check_regs",
    "client_id",
    "route_smc",
]
