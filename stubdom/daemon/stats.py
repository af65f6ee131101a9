"""Per-domain counters for the ``stats`` control operation (trio's
``statistics()`` idea: the backend counts, a snapshot is a plain record)."""

from __future__ import annotations

import collections
import math

from stubdom.optee.smc import (
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_ALLOC,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_RPC_FREE,
    SMC_NAMES,
)
from stubdom.optee.smccc import function_id

__all__ = ["DomainStats", "LATENCY_SAMPLE", "function_key", "percentiles"]

# Latency percentiles come from the most recent calls only: a bounded sample,
# so a long-lived domain costs constant memory and the figures stay current.
LATENCY_SAMPLE = 4096

# Calls whose a0 answer says whether the guest's request failed: standard
# calls and their resumption. A fast call's answer is information (a UID, a
# count, ENOTAVAIL from GET_SHM_CONFIG to a guest without static shm) and is
# never counted as an error.
_A0_IS_STATUS = frozenset({OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG,
                           OPTEE_SMC_CALL_WITH_REGD_ARG, OPTEE_SMC_CALL_RETURN_FROM_RPC})
_NOT_ERRORS = frozenset({OPTEE_SMC_RETURN_OK, OPTEE_SMC_RETURN_RPC_ALLOC, OPTEE_SMC_RETURN_RPC_FREE,
                         OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, OPTEE_SMC_RETURN_RPC_CMD})


_U64 = (1 << 64) - 1
_U32 = 0xFFFFFFFF
# each known function ID's stats key, computed once
_KEYS = {fid: name.removeprefix("OPTEE_SMC_") for fid, name in SMC_NAMES.items() if name}


def _function_id(a0: int) -> int:
    """function_id(a0) (W0) without building its FunctionId; anything but a
    64-bit register value goes to function_id, which refuses it."""
    if type(a0) is int and 0 <= a0 <= _U64:
        return a0 & _U32
    return function_id(a0)


def function_key(a0: int) -> str:
    """The stats key of the function ID a0 names (W0): its optee_smc.h name
    without the OPTEE_SMC_ prefix, or "unknown" (a guest must not be able to
    grow the table with made-up IDs)."""
    return _KEYS.get(_function_id(a0), "unknown")


def percentiles(sample, points=(50, 90, 99)) -> dict[str, int]:
    """Nearest-rank percentiles (and max) of ``sample``; zeros when empty."""
    data = sorted(sample)
    out = {}
    for p in points:
        out[f"p{p}"] = data[max(0, math.ceil(p / 100 * len(data)) - 1)] if data else 0
    out["max"] = data[-1] if data else 0
    return out


class DomainStats:
    """What one domain's backend counted since domain_create."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.errors = 0  # standard calls answered with an error a0, and backend failures
        self.backend_failures = 0  # responses with a negative status
        self.refusals: collections.Counter[str] = collections.Counter()
        self.in_flight = 0  # requests popped and not yet answered
        self.yields = 0  # times one of its calls let other domains run mid-way (docs/daemon.md)
        self._latency_us: collections.deque[int] = collections.deque(maxlen=LATENCY_SAMPLE)

    def record(self, a0: int, ret_a0: int, elapsed_ns: int) -> None:
        fid = _function_id(a0)
        self.calls[_KEYS.get(fid, "unknown")] += 1
        if fid in _A0_IS_STATUS and ret_a0 not in _NOT_ERRORS:
            self.errors += 1
        self._latency_us.append(elapsed_ns // 1000)

    def record_answered_in_c(self, a0: int, n: int) -> None:
        """``n`` calls of ``a0`` answered by the fast path (fastpath.py):
        identity queries, never errors."""
        self.calls[function_key(a0)] += n

    def record_latencies(self, elapsed_ns: list[int]) -> None:
        self._latency_us.extend(ns // 1000 for ns in elapsed_ns)

    def record_failure(self, a0: int) -> None:
        self.calls[function_key(a0)] += 1
        self.errors += 1
        self.backend_failures += 1

    def record_refusal(self, a0: int, reason: str) -> None:
        self.calls[function_key(a0)] += 1
        self.refusals[reason] += 1

    def snapshot(self, pinned_pages: int, mediator_calls: int) -> dict:
        return {
            "calls": dict(self.calls),
            "errors": self.errors,
            "backend_failures": self.backend_failures,
            "refusals": dict(self.refusals),
            "pinned_pages": pinned_pages,
            "in_flight": self.in_flight + mediator_calls,
            "yields": self.yields,
            "latency_us": percentiles(self._latency_us),
        }
