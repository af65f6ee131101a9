"""The placement-agnostic OP-TEE mediator core.

    mediator = Mediator(machine, DirectTeePort(tee),   # probes the TEE once
                        profile=XEN,                   # or STRICT (the default), or the name
                        open_session_filter=policy)    # optional: (domid, ta_uuid, login) -> None | (ret, origin)
    mediator.domain_init(domid, limits=DomainLimits())  # VM_CREATED
    regs = mediator.handle_call(domid, vcpu, regs)      # every trapped SMC
    while not mediator.relinquish_resources(domid): ...
    mediator.domain_teardown(domid)                     # VM_DESTROYED + invariants
    mediator.op_counts(domid)                           # its p2m look-ups, pins, unpins, bytes copied

See docs/mediator.md.
"""

from .context import DomainContext as DomainContext
from .context import RpcBuffer as RpcBuffer
from .context import ShadowPage as ShadowPage
from .context import ShadowPool as ShadowPool
from .context import ShmBuffer as ShmBuffer
from .context import ShmKind as ShmKind
from .context import ShmState as ShmState
from .context import StdCall as StdCall
from .core import ALLOWED_STD_CMDS as ALLOWED_STD_CMDS
from .core import KNOWN_NSEC_CAPS as KNOWN_NSEC_CAPS
from .core import KNOWN_SEC_CAPS as KNOWN_SEC_CAPS
from .core import Mediator as Mediator
from .errors import BadSnapshot as BadSnapshot
from .errors import DomainAlreadyInitialised as DomainAlreadyInitialised
from .errors import DomainNotInitialised as DomainNotInitialised
from .errors import DomainRefused as DomainRefused
from .errors import MediatorError as MediatorError
from .errors import TeardownInvariantBroken as TeardownInvariantBroken
from .errors import TeeProbeFailed as TeeProbeFailed
from .errors import UnknownProfile as UnknownProfile
from .hooks import BeforeStdCall as BeforeStdCall
from .hooks import CallHooks as CallHooks
from .hooks import FunctionHooks as FunctionHooks
from .hooks import OpenSessionFilter as OpenSessionFilter
from .limits import DEFAULT_MAX_CALLS as DEFAULT_MAX_CALLS
from .limits import DEFAULT_MAX_PAGES_PER_BUFFER as DEFAULT_MAX_PAGES_PER_BUFFER
from .limits import DEFAULT_MAX_SHM_BUFFERS as DEFAULT_MAX_SHM_BUFFERS
from .limits import DEFAULT_MAX_TOTAL_PAGES as DEFAULT_MAX_TOTAL_PAGES
from .limits import DomainLimits as DomainLimits
from .opcount import MEDIATOR_OPS as MEDIATOR_OPS
from .opcount import CountedMachine as CountedMachine
from .opcount import MediatorOps as MediatorOps
from .port import HYP_CLIENT_ID as HYP_CLIENT_ID
from .port import DirectTeePort as DirectTeePort
from .port import TeePort as TeePort
from .port import client_id as client_id
from .profile import DEFAULT_PROFILE as DEFAULT_PROFILE
from .profile import PROFILE_NAMES as PROFILE_NAMES
from .profile import PROFILES as PROFILES
from .profile import STRICT as STRICT
from .profile import XEN as XEN
from .profile import Profile as Profile
from .profile import profile_named as profile_named
from .ratelog import RateLimitedLog as RateLimitedLog
from .recovery import ABANDON_MAX_STEPS as ABANDON_MAX_STEPS
from .recovery import LostCall as LostCall
from .snapshot import SNAPSHOT_VERSION as SNAPSHOT_VERSION
from .snapshot import Intent as Intent
from .snapshot import Snapshot as Snapshot
from .snapshot import call_intent as call_intent
from .snapshot import expected_pins as expected_pins
from .snapshot import without_resumed_call as without_resumed_call

__all__ = [
    "ABANDON_MAX_STEPS",
    "ALLOWED_STD_CMDS",
    "BadSnapshot",
    "BeforeStdCall",
    "CallHooks",
    "CountedMachine",
    "DEFAULT_MAX_CALLS",
    "DEFAULT_MAX_PAGES_PER_BUFFER",
    "DEFAULT_MAX_SHM_BUFFERS",
    "DEFAULT_MAX_TOTAL_PAGES",
    "DEFAULT_PROFILE",
    "DirectTeePort",
    "DomainAlreadyInitialised",
    "DomainContext",
    "DomainLimits",
    "DomainNotInitialised",
    "DomainRefused",
    "FunctionHooks",
    "HYP_CLIENT_ID",
    "Intent",
    "KNOWN_NSEC_CAPS",
    "KNOWN_SEC_CAPS",
    "LostCall",
    "MEDIATOR_OPS",
    "Mediator",
    "MediatorError",
    "MediatorOps",
    "OpenSessionFilter",
    "PROFILES",
    "PROFILE_NAMES",
    "Profile",
    "RateLimitedLog",
    "RpcBuffer",
    "SNAPSHOT_VERSION",
    "STRICT",
    "ShadowPage",
    "ShadowPool",
    "ShmBuffer",
    "ShmKind",
    "ShmState",
    "Snapshot",
    "StdCall",
    "TeardownInvariantBroken",
    "TeePort",
    "TeeProbeFailed",
    "UnknownProfile",
    "XEN",
    "call_intent",
    "client_id",
    "expected_pins",
    "profile_named",
    "without_resumed_call",
]
