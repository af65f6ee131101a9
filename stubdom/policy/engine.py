"""The policy engine: per-domain policy decisions for the mediator's
embedder (the daemon under ``stubdom``, the trap path under ``el2``).

    engine = PolicyEngine(config)
    view = engine.snapshot(domid)            # when a call starts
    refusal = engine.check_call(domid, a0, now, view=view)
    refusal = engine.check_open_session(domid, ta_uuid, view=view)
    engine.swap(new_config)                  # SIGHUP, after load_config succeeded

A call runs to completion under the policy it started with: the embedder
keeps the view it took when the standard call arrived and passes it to the
checks of that call.  RETURN_FROM_RPC is never refused (not by a disabled
domain, a class list or the rate limit): it continues a call that was
admitted, and refusing it would strand the OP-TEE thread suspended in it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from .bucket import TokenBucket
from .classes import CLASS_RPC_RETURN, CLASS_STD_CALL, function_class
from .refusal import (
    REASON_CLASS_DENIED,
    REASON_DOMAIN_DISABLED,
    Refusal,
    refuse_function,
    refuse_rate,
    refuse_ta,
)

if TYPE_CHECKING:  # stubdom.config imports stubdom.policy.classes
    from stubdom.config import Config, DomainPolicy

__all__ = ["PolicyEngine", "DomainPolicyView", "PolicyStatistics"]


@dataclass(frozen=True, slots=True)
class DomainPolicyView:
    """The policy of one domain as it was at one moment (``generation``
    counts the swaps).  Immutable: a reload never changes a view."""

    domid: int
    generation: int
    policy: DomainPolicy

    def class_refusal(self, a0: int) -> Refusal | None:
        """Refusal by the enabled flag and the class lists (no rate limit)."""
        return self._class_refusal(a0, function_class(a0))

    def _class_refusal(self, a0: int, cls: str) -> Refusal | None:
        """:meth:`class_refusal`, ``cls`` being ``function_class(a0)``."""
        if cls == CLASS_RPC_RETURN:
            return None
        if not self.policy.enabled:
            return refuse_function(REASON_DOMAIN_DISABLED, a0, cls,
                                   f"d{self.domid} is disabled by policy")
        if cls not in self.policy.allowed_classes:
            return refuse_function(REASON_CLASS_DENIED, a0, cls,
                                   f"class {cls!r} is not allowed to d{self.domid}")
        return None

    def open_session_refusal(self, ta_uuid: uuid.UUID) -> Refusal | None:
        if not isinstance(ta_uuid, uuid.UUID):
            raise TypeError(f"ta_uuid must be a uuid.UUID, got {ta_uuid!r}")
        p = self.policy
        if not p.enabled:
            return refuse_ta(str(ta_uuid), f"d{self.domid} is disabled by policy")
        if ta_uuid in p.ta_deny:
            return refuse_ta(str(ta_uuid), f"denied to d{self.domid} (ta_deny)")
        if p.ta_allow is not None and ta_uuid not in p.ta_allow:
            return refuse_ta(str(ta_uuid), f"not in d{self.domid}'s ta_allow")
        return None


@dataclass(frozen=True, slots=True)
class PolicyStatistics:
    """Refusals so far: {domid: {reason: count}}, and the current generation."""

    generation: int
    refusals: Mapping[int, Mapping[str, int]]


class PolicyEngine:
    """Decisions for every domain of one configuration, swappable as a whole.

    Thread-safe (the el2 placement calls it from every vCPU thread); the
    token buckets are the only mutable per-domain state."""

    def __init__(self, config: Config) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._generation = 0
        self._buckets: dict[int, TokenBucket] = {}
        self._refusals: dict[int, dict[str, int]] = {}
        # each domain's view of the current generation: a view is immutable,
        # so every call of one generation shares it (dropped by swap, forget)
        self._views: dict[int, DomainPolicyView] = {}

    @property
    def config(self) -> Config:
        return self._config

    @property
    def generation(self) -> int:
        return self._generation

    def swap(self, config: Config) -> None:
        """Install a new, already validated configuration, atomically: a
        check sees the old one or the new one, never a mix.  Views taken
        before keep the old policy.  A domain whose rate limit is unchanged
        keeps its bucket; a changed one starts with the tokens it had
        (capped at the new burst); a removed one loses it."""
        with self._lock:
            old = self._config
            self._config = config
            self._generation += 1
            self._views.clear()
            for domid in list(self._buckets):
                before = old.policy_for(domid).rate
                after = config.policy_for(domid).rate
                if after is None:
                    del self._buckets[domid]
                elif after != before:
                    self._buckets[domid] = self._buckets[domid].reconfigured(
                        after.calls_per_second, after.burst)

    def policy_for(self, domid: int) -> DomainPolicy:
        return self._config.policy_for(domid)

    def snapshot(self, domid: int) -> DomainPolicyView:
        """The domain's policy now, for a call that starts now."""
        with self._lock:
            view = self._views.get(domid)
            if view is None:
                view = DomainPolicyView(domid, self._generation, self._config.policy_for(domid))
                self._views[domid] = view
            return view

    def check_call(self, domid: int, a0: int, now: float, *,
                   view: DomainPolicyView | None = None) -> Refusal | None:
        """May ``domid`` issue the SMC ``a0`` at time ``now`` (seconds, the
        caller's monotonic clock)?  None, or the refusal to answer with.
        Only standard calls take a token: they start work that holds an
        OP-TEE thread, while fast calls are bounded by the domain's vCPUs
        (one trap outstanding per vCPU) and some cannot be refused without
        breaking the guest's driver for good."""
        cls = function_class(a0)
        if cls == CLASS_RPC_RETURN:
            return None
        view = view if view is not None else self.snapshot(domid)
        refusal = view._class_refusal(a0, cls)
        if refusal is None and cls == CLASS_STD_CALL and view.policy.rate is not None:
            rate = view.policy.rate
            with self._lock:
                bucket = self._buckets.get(domid)
                if bucket is None:
                    bucket = TokenBucket(rate.calls_per_second, rate.burst, now)
                    self._buckets[domid] = bucket
                admitted = bucket.take(now)
            if not admitted:
                refusal = refuse_rate(a0, f"d{domid} is over {rate.calls_per_second:g} calls/s "
                                          f"(burst {rate.burst})")
        if refusal is not None:
            self._count(domid, refusal)
        return refusal

    def check_open_session(self, domid: int, ta_uuid: uuid.UUID, *,
                           view: DomainPolicyView | None = None) -> Refusal | None:
        """May ``domid`` open a session to TA ``ta_uuid``?  The mediator asks
        once it has copied the OPEN_SESSION argument (params[0] meta)."""
        view = view if view is not None else self.snapshot(domid)
        refusal = view.open_session_refusal(ta_uuid)
        if refusal is not None:
            self._count(domid, refusal)
        return refusal

    def forget(self, domid: int) -> None:
        """Drop the domain's bucket and counters (after domain_destroy)."""
        with self._lock:
            self._buckets.pop(domid, None)
            self._refusals.pop(domid, None)
            self._views.pop(domid, None)

    def statistics(self) -> PolicyStatistics:
        with self._lock:
            return PolicyStatistics(
                self._generation,
                MappingProxyType({d: MappingProxyType(dict(r)) for d, r in self._refusals.items()}))

    def _count(self, domid: int, refusal: Refusal) -> None:
        with self._lock:
            per = self._refusals.setdefault(domid, {})
            per[refusal.reason] = per.get(refusal.reason, 0) + 1

