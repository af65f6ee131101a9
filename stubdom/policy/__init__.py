"""Per-domain policy: function classes, the checks a call goes through
before it reaches the mediator, and what a refused guest is told.

    from stubdom.policy import PolicyEngine, Refusal, function_class

See docs/config.md (function classes, the refusal table, reload semantics).
"""

from .bucket import TokenBucket as TokenBucket
from .classes import ALWAYS_ALLOWED_CLASSES as ALWAYS_ALLOWED_CLASSES
from .classes import CLASS_MEMBERS as CLASS_MEMBERS
from .classes import DEFAULT_ALLOWED_CLASSES as DEFAULT_ALLOWED_CLASSES
from .classes import FUNCTION_CLASSES as FUNCTION_CLASSES
from .classes import NEVER_ALLOWED_CLASSES as NEVER_ALLOWED_CLASSES
from .classes import function_class as function_class
from .engine import DomainPolicyView as DomainPolicyView
from .engine import PolicyEngine as PolicyEngine
from .engine import PolicyStatistics as PolicyStatistics
from .refusal import REASON_CLASS_DENIED as REASON_CLASS_DENIED
from .refusal import REASON_DOMAIN_DISABLED as REASON_DOMAIN_DISABLED
from .refusal import REASON_RATE_LIMITED as REASON_RATE_LIMITED
from .refusal import REASON_TA_DENIED as REASON_TA_DENIED
from .refusal import REASONS as REASONS
from .refusal import Refusal as Refusal

__all__ = [
    "ALWAYS_ALLOWED_CLASSES",
    "CLASS_MEMBERS",
    "DEFAULT_ALLOWED_CLASSES",
    "DomainPolicyView",
    "FUNCTION_CLASSES",
    "NEVER_ALLOWED_CLASSES",
    "PolicyEngine",
    "PolicyStatistics",
    "REASONS",
    "REASON_CLASS_DENIED",
    "REASON_DOMAIN_DISABLED",
    "REASON_RATE_LIMITED",
    "REASON_TA_DENIED",
    "Refusal",
    "TokenBucket",
    "function_class",
]
