"""Counting the operations whose cost hardware determines.

The wrappers here sit around objects of the platform process without
changing their code: a trap entry and the TEE model's ``smc``. What the
mediator core does to the machine (p2m look-ups, pins, unpins, copies) is
counted by the core itself, wherever it runs (stubdom/mediator/opcount.py):
read from the mediator under ``el2``, from the daemon's ``stats`` answer
under ``stubdom``. Everything else comes from what components expose (ring
and gate ``statistics()``, event-channel statistics, driver.stats).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence

from stubdom.mediator import MEDIATOR_OPS
from stubdom.optee.smc import OPTEE_SMC_RETURN_RPC_PREFIX, OPTEE_SMC_RETURN_RPC_PREFIX_MASK

__all__ = ["OPS", "MEDIATOR_OPS", "OpCounter", "CountingTee", "counting_trap", "per_call"]

#: Operation names, in report order. docs/bench-schema.md defines each one.
OPS = (
    "guest_traps",            # SMCs trapped from a guest vCPU to the hypervisor
    "smc_world_switches",     # entries into the secure world (an SMC and its return)
    "rpc_round_trips",        # SMC returns that were an RPC (the guest resumes OP-TEE later)
    "gate_hypercalls",        # stub domain -> hypervisor SMC-gate hypercalls
    "ring_pushes",            # teeif entries produced, both directions, all rings
    "ring_pops",              # teeif entries consumed, both directions, all rings
    "notifications",          # event-channel notifications actually sent (after suppression)
    "wakeups",                # a blocked vCPU woken by an event: one domain switch each
    "p2m_lookups",            # IPA -> machine address translations by the mediator
    "pages_pinned",           # get_page by the mediator
    "pages_unpinned",         # put_page by the mediator
    "bytes_copied",           # bytes the mediator copied from/to guest or machine memory
)

# MEDIATOR_OPS (stubdom.mediator): what the mediator core does to the
# machine, counted by the core where it runs (``Mediator.op_counts``). In
# the daemon's process they are the daemon's to export (its ``stats``
# answer's ``mediator_ops``); a placement that cannot read them has them
# "not measured" (None), never 0, and never another placement's.
assert set(MEDIATOR_OPS) <= set(OPS)

_U32 = 0xFFFFFFFF


class OpCounter:
    """Thread-safe counts by operation name (vCPU threads count at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, op: str, n: int = 1) -> None:
        with self._lock:
            self._counts[op] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def per_call(before: Mapping[str, int], after: Mapping[str, int], calls: int) -> dict[str, float]:
    """Operations per call between two snapshots, every name in OPS present."""
    if calls <= 0:
        raise ValueError(f"calls {calls} must be positive")
    return {op: (after.get(op, 0) - before.get(op, 0)) / calls for op in OPS}


def counting_trap(trap: Callable[[int, Sequence[int]], tuple], counter: OpCounter):
    """A guest's trap entry that counts each trapped SMC."""

    def entry(vcpu: int, regs: Sequence[int]):
        counter.add("guest_traps")
        return trap(vcpu, regs)

    return entry


class CountingTee:
    """The TEE model seen through a counter: one world switch per ``smc``,
    and an RPC round trip when OP-TEE returns with an RPC request."""

    def __init__(self, tee, counter: OpCounter) -> None:
        self._tee = tee
        self._counter = counter

    def smc(self, regs: Sequence[int]):
        self._counter.add("smc_world_switches")
        out = self._tee.smc(regs)
        if (out[0] & _U32) & OPTEE_SMC_RETURN_RPC_PREFIX_MASK == OPTEE_SMC_RETURN_RPC_PREFIX:
            self._counter.add("rpc_round_trips")
        return out

    def __getattr__(self, name: str):
        return getattr(self._tee, name)
