"""The placement-agnostic OP-TEE mediator core.

    mediator = Mediator(machine, DirectTeePort(tee),   # probes the TEE once
                        open_session_filter=policy)    # optional: (domid, ta_uuid, login) -> None | (ret, origin)
    mediator.domain_init(domid, limits=DomainLimits())  # VM_CREATED
    regs = mediator.handle_call(domid, vcpu, regs)      # every trapped SMC
    while not mediator.relinquish_resources(domid): ...
    mediator.domain_teardown(domid)                     # VM_DESTROYED + invariants

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
    BeforeStdCall as BeforeStdCall,
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
)
from .limits import (
    DEFAULT_MAX_CALLS as DEFAULT_MAX_CALLS,
    DEFAULT_MAX_PAGES_PER_BUFFER as DEFAULT_MAX_PAGES_PER_BUFFER,
    DEFAULT_MAX_SHM_BUFFERS as DEFAULT_MAX_SHM_BUFFERS,
    DEFAULT_MAX_TOTAL_PAGES as DEFAULT_MAX_TOTAL_PAGES,
    DomainLimits as DomainLimits,
)
from .port import HYP_CLIENT_ID as HYP_CLIENT_ID, DirectTeePort as DirectTeePort, TeePort as TeePort, client_id as client_id
from .ratelog import RateLimitedLog as RateLimitedLog
from .snapshot import (
    LostCall as LostCall,
    abandon_suspended as abandon_suspended,
    call_intent as call_intent,
    expected_pins as expected_pins,
    restore_domain as restore_domain,
    settle_claims as settle_claims,
    settle_lost_call as settle_lost_call,
    settle_orphans as settle_orphans,
    snapshot_domain as snapshot_domain,
    without_resumed_call as without_resumed_call,
)

__all__ = [
    "BadSnapshot", "LostCall", "abandon_suspended", "call_intent", "expected_pins", "settle_claims",
    "settle_lost_call", "restore_domain", "settle_orphans", "snapshot_domain", "without_resumed_call",
    "ALLOWED_STD_CMDS", "DEFAULT_MAX_CALLS", "DEFAULT_MAX_PAGES_PER_BUFFER", "DEFAULT_MAX_SHM_BUFFERS",
    "DEFAULT_MAX_TOTAL_PAGES", "DirectTeePort", "DomainAlreadyInitialised", "DomainContext",
    "DomainLimits", "DomainNotInitialised", "DomainRefused", "HYP_CLIENT_ID", "KNOWN_NSEC_CAPS",
    "KNOWN_SEC_CAPS", "Mediator", "MediatorError", "OpenSessionFilter", "BeforeStdCall", "RateLimitedLog", "RpcBuffer", "ShadowPage",
    "ShadowPool", "ShmBuffer", "ShmKind", "ShmState", "StdCall", "TeardownInvariantBroken", "TeePort",
    "TeeProbeFailed", "client_id",
]
