"""The platform: the hypervisor side of the simulation (trap path,
placements, the SMC gate's backend, the toolstack).

What it shares with the stub domain — the SMC gate's ABI and client, the
control protocol and its client, their errors — is stubdom.public.

The ``platform`` command (``run_platform``) drives the guest driver and the
workloads; it is imported when it is first asked for, so that a user of the
platform's library (a test, the bench, a hostile guest) does not load them.
"""

from typing import Any

from .errors import BadRegisters as BadRegisters
from .errors import DomainCreationFailed as DomainCreationFailed
from .errors import PlatformError as PlatformError
from .errors import UnknownDomain as UnknownDomain
from .gate import Gate as Gate
from .gate import GateStatistics as GateStatistics
from .passthrough import PassThrough as PassThrough
from .passthrough import client_id as client_id
from .platform import DomainSpec as DomainSpec
from .platform import Platform as Platform
from .platform import domain_spec as domain_spec
from .regs import NR_SMC_REGS as NR_SMC_REGS
from .regs import Regs as Regs
from .regs import check_regs as check_regs
from .stubdom import UNAVAILABLE_REGS as UNAVAILABLE_REGS
from .stubdom import DomainLink as DomainLink
from .stubdom import LinkStatistics as LinkStatistics
from .stubdom import StubdomPlacement as StubdomPlacement
from .stubdom import stubdom_placement as stubdom_placement
from .toolstack import Toolstack as Toolstack
from .vcpuhost import VcpuHost as VcpuHost
from .vcpuhost import vcpu_host_path as vcpu_host_path
from .vsmc import Placement as Placement
from .vsmc import route_smc as route_smc

__all__ = [
    "BadRegisters",
    "DomainCreationFailed",
    "DomainLink",
    "DomainSpec",
    "Gate",
    "GateStatistics",
    "LinkStatistics",
    "NR_SMC_REGS",
    "PassThrough",
    "Placement",
    "Platform",
    "PlatformError",
    "Regs",
    "StubdomPlacement",
    "Toolstack",
    "UNAVAILABLE_REGS",
    "UnknownDomain",
    "VcpuHost",
    "check_regs",
    "client_id",
    "domain_spec",
    "route_smc",
    "run_platform",
    "stubdom_placement",
    "vcpu_host_path",
]


def __getattr__(name: str) -> Any:
    # The command, on first use (PEP 562): ``from stubdom.platform import
    # run_platform`` works, ``import stubdom.platform`` does not load it.
    if name == "run_platform":
        from .run import run_platform

        return run_platform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
