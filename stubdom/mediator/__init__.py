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

from .context import (
    DomainContext as DomainContext,
    RpcBuffer as RpcBuffer,
    ShadowPage as ShadowPage,
    ShadowPool as ShadowPool,
    ShmBuffer as ShmBuffer,
    ShmKind as ShmKind,
    ShmState as ShmState,
    StdCall as StdCall,
)
from .core import (
    ALLOWED_STD_CMDS as ALLOWED_STD_CMDS,
    KNOWN_NSEC_CAPS as KNOWN_NSEC_CAPS,
    KNOWN_SEC_CAPS as KNOWN_SEC_CAPS,
    Mediator as Mediator,
)
from .hooks import (
    BeforeStdCall as BeforeStdCall,
    CallHooks as CallHooks,
    FunctionHooks as FunctionHooks,
    OpenSessionFilter as OpenSessionFilter,
)
from .errors import (
    BadSnapshot as BadSnapshot,
    DomainAlreadyInitialised as DomainAlreadyInitialised,
    DomainNotInitialised as DomainNotInitialised,
    DomainRefused as DomainRefused,
    MediatorError as MediatorError,
    TeardownInvariantBroken as TeardownInvariantBroken,
    TeeProbeFailed as TeeProbeFailed,
    UnknownProfile as UnknownProfile,
)
from .limits import (
    DEFAULT_MAX_CALLS as DEFAULT_MAX_CALLS,
    DEFAULT_MAX_PAGES_PER_BUFFER as DEFAULT_MAX_PAGES_PER_BUFFER,
    DEFAULT_MAX_SHM_BUFFERS as DEFAULT_MAX_SHM_BUFFERS,
    DEFAULT_MAX_TOTAL_PAGES as DEFAULT_MAX_TOTAL_PAGES,
    DomainLimits as DomainLimits,
)
from .opcount import MEDIATOR_OPS as MEDIATOR_OPS, CountedMachine as CountedMachine, MediatorOps as MediatorOps
from .profile import (
    DEFAULT_PROFILE as DEFAULT_PROFILE,
    PROFILE_NAMES as PROFILE_NAMES,
    PROFILES as PROFILES,
    STRICT as STRICT,
    XEN as XEN,
    Profile as Profile,
    profile_named as profile_named,
)
from .port import HYP_CLIENT_ID as HYP_CLIENT_ID, DirectTeePort as DirectTeePort, TeePort as TeePort, client_id as client_id
from .ratelog import RateLimitedLog as RateLimitedLog
from .recovery import ABANDON_MAX_STEPS as ABANDON_MAX_STEPS, LostCall as LostCall
from .snapshot import (
    SNAPSHOT_VERSION as SNAPSHOT_VERSION,
    Intent as Intent,
    Snapshot as Snapshot,
    call_intent as call_intent,
    expected_pins as expected_pins,
    without_resumed_call as without_resumed_call,
)

__all__ = [
    "ABANDON_MAX_STEPS", "BadSnapshot", "Intent", "LostCall", "SNAPSHOT_VERSION", "Snapshot", "call_intent", "expected_pins",
    "without_resumed_call",
    "ALLOWED_STD_CMDS", "DEFAULT_MAX_CALLS", "DEFAULT_MAX_PAGES_PER_BUFFER", "DEFAULT_MAX_SHM_BUFFERS",
    "DEFAULT_MAX_TOTAL_PAGES", "DirectTeePort", "DomainAlreadyInitialised", "DomainContext",
    "DomainLimits", "DomainNotInitialised", "DomainRefused", "HYP_CLIENT_ID", "KNOWN_NSEC_CAPS",
    "KNOWN_SEC_CAPS", "Mediator", "MediatorError", "OpenSessionFilter", "BeforeStdCall", "CallHooks", "FunctionHooks", "RateLimitedLog", "RpcBuffer", "ShadowPage",
    "ShadowPool", "ShmBuffer", "ShmKind", "ShmState", "StdCall", "TeardownInvariantBroken", "TeePort",
    "TeeProbeFailed", "client_id", "MEDIATOR_OPS", "CountedMachine", "MediatorOps",
    "DEFAULT_PROFILE", "PROFILES", "PROFILE_NAMES", "Profile", "STRICT", "XEN", "UnknownProfile", "profile_named",
]
