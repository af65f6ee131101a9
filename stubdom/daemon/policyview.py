"""A domain's policy as the ``policy`` control operation shows it, and what
a reload changed (docs/control-protocol.md, ``policy`` and ``reload``).

Names are the configuration's (docs/config.md): ``calls_in_flight``, not
the mediator's ``max_calls``. What applies when is said once, here:

- ``enabled``, the function classes, the TA lists, ``rate`` and
  ``log_level`` apply to a served domain's calls from the reload on;
- ``limits`` and ``static_shm_allowed`` are given to the mediator at
  ``domain_create``: a running domain keeps those it was created with, a
  reload's apply to the next creation of the domain.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NOW_KEYS", "CREATE_KEYS", "policy_record", "limits_record", "mediator_limits", "policy_changes"]

# What a reload changes for a running domain, and what only its next creation.
NOW_KEYS = ("enabled", "allow_classes", "deny_classes", "ta_allow", "ta_deny", "rate", "log_level")
CREATE_KEYS = ("limits", "static_shm_allowed")


def limits_record(limits) -> dict[str, int]:
    """A DomainLimits under the configuration's names."""
    return {"calls_in_flight": limits.max_calls, "shm_buffers": limits.max_shm_buffers,
            "pages_per_buffer": limits.max_pages_per_buffer, "total_pages": limits.max_total_pages}


def mediator_limits(dump: dict) -> dict[str, Any]:
    """What the mediator holds a created domain to (from its ``dump``): the
    limits it was created with, under the configuration's names (within
    the mediator profile's bounds, ``profile``), and ``calls_in_flight``
    as enforced (capped by OP-TEE's threads)."""
    lim = dump["limits"]
    return {"profile": dump.get("profile"), "calls_in_flight": lim["max_calls"], "shm_buffers": lim["max_shm_buffers"],
            "pages_per_buffer": lim["max_pages_per_buffer"], "total_pages": lim["max_total_pages"],
            "static_shm_allowed": dump["static_shm_allowed"],
            "calls_in_flight_enforced": dump["max_calls"], "rpc_buffers_enforced": dump["max_rpc_buffers"]}


def _rate(rate) -> str | None:
    return None if rate is None else f"{rate.calls_per_second:g}/s, burst {rate.burst}"


def policy_record(policy) -> dict[str, Any]:
    """A DomainPolicy as plain values (UUIDs and classes sorted)."""
    return {
        "enabled": policy.enabled,
        "allow_classes": sorted(policy.allow_classes),
        "deny_classes": sorted(policy.deny_classes),
        "ta_allow": None if policy.ta_allow is None else sorted(str(u) for u in policy.ta_allow),
        "ta_deny": sorted(str(u) for u in policy.ta_deny),
        "rate": None if policy.rate is None else {"calls_per_second": policy.rate.calls_per_second,
                                                   "burst": policy.rate.burst},
        "log_level": policy.log_level,
        "limits": limits_record(policy.limits),
        "static_shm_allowed": policy.static_shm_allowed,
    }


def _set_change(name: str, old, new) -> str | None:
    if old == new:
        return None
    if old is None or new is None:
        show = lambda v: "every TA" if v is None else "[" + ", ".join(sorted(str(x) for x in v)) + "]"  # noqa: E731
        return f"{name}: {show(old)} -> {show(new)}"
    added = sorted(str(x) for x in new - old)
    removed = sorted(str(x) for x in old - new)
    return f"{name}: " + " ".join([*(f"+{x}" for x in added), *(f"-{x}" for x in removed)])


def policy_changes(old, new, *, running: bool) -> list[str]:
    """What differs between two DomainPolicy values, one phrase each; a
    creation-time key says whether it waits for the next creation
    (``running``: the domain is served now)."""
    out: list[str] = []
    if old.enabled != new.enabled:
        out.append(f"enabled: {old.enabled} -> {new.enabled}")
    for name in ("allow_classes", "deny_classes", "ta_allow", "ta_deny"):
        change = _set_change(name, getattr(old, name), getattr(new, name))
        if change:
            out.append(change)
    if old.rate != new.rate:
        out.append(f"rate: {_rate(old.rate) or 'unlimited'} -> {_rate(new.rate) or 'unlimited'}")
    if old.log_level != new.log_level:
        out.append(f"log_level: {old.log_level} -> {new.log_level}")
    later = " (at its next domain_create; the running domain keeps its own)" if running else ""
    a, b = limits_record(old.limits), limits_record(new.limits)
    for key in a:
        if a[key] != b[key]:
            out.append(f"limits.{key}: {a[key]} -> {b[key]}{later}")
    if old.static_shm_allowed != new.static_shm_allowed:
        out.append(f"static_shm_allowed: {old.static_shm_allowed} -> {new.static_shm_allowed}{later}")
    return out
