"""Counting the operations whose cost hardware determines.

The wrappers here sit around objects of the platform process without
changing their code: a trap entry, the TEE model's ``smc`` and the machine
the mediator core is given (pins, p2m look-ups, guest copies). Everything
else comes from what components expose (ring and gate ``statistics()``,
event-channel statistics, driver.stats).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence

from stubdom.optee.smc import OPTEE_SMC_RETURN_RPC_PREFIX, OPTEE_SMC_RETURN_RPC_PREFIX_MASK

__all__ = ["OPS", "MEDIATOR_OPS", "OpCounter", "CountingTee", "CountingMachine", "counting_trap", "per_call"]

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

#: What the mediator core does to the machine: counted where the core runs.
#: In the daemon's process they are the daemon's to export (its ``stats``
#: answer's ``mediator_ops``); until it does, a stub-domain cell has them
#: as "not measured" (None), never 0.
MEDIATOR_OPS = ("p2m_lookups", "pages_pinned", "pages_unpinned", "bytes_copied")

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


class _CountingDomain:
    def __init__(self, domain, counter: OpCounter) -> None:
        self._domain = domain
        self._counter = counter

    def lookup(self, gfn: int):
        self._counter.add("p2m_lookups")
        return self._domain.lookup(gfn)

    def translate(self, ipa: int, *, write: bool) -> int:
        self._counter.add("p2m_lookups")
        return self._domain.translate(ipa, write=write)

    def read(self, ipa: int, length: int) -> bytes:
        data = self._domain.read(ipa, length)
        self._counter.add("bytes_copied", len(data))
        return data

    def write(self, ipa: int, data) -> None:
        self._domain.write(ipa, data)
        self._counter.add("bytes_copied", memoryview(data).nbytes)

    def __getattr__(self, name: str):
        return getattr(self._domain, name)


class CountingMachine:
    """The machine as the mediator core sees it, counting pins, p2m look-ups
    and copies. Only the mediator is given this object: the guests' and the
    TEE's own memory accesses are not mediation and are not counted."""

    def __init__(self, machine, counter: OpCounter) -> None:
        self._machine = machine
        self._counter = counter

    def domain(self, domid: int):
        return _CountingDomain(self._machine.domain(domid), self._counter)

    def get_page(self, mfn: int, domid: int) -> None:
        self._machine.get_page(mfn, domid)
        self._counter.add("pages_pinned")

    def get_pages(self, mfns, domid: int) -> None:
        mfns = list(mfns)
        self._machine.get_pages(mfns, domid)
        self._counter.add("pages_pinned", len(mfns))

    def put_page(self, mfn: int) -> None:
        self._machine.put_page(mfn)
        self._counter.add("pages_unpinned")

    def put_pages(self, mfns) -> None:
        mfns = list(mfns)
        self._machine.put_pages(mfns)
        self._counter.add("pages_unpinned", len(mfns))

    def read_machine(self, maddr: int, length: int) -> bytes:
        data = self._machine.read_machine(maddr, length)
        self._counter.add("bytes_copied", len(data))
        return data

    def write_machine(self, maddr: int, data) -> None:
        self._machine.write_machine(maddr, data)
        self._counter.add("bytes_copied", memoryview(data).nbytes)

    def __getattr__(self, name: str):
        return getattr(self._machine, name)
