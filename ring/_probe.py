"""Machine probes: what this machine charges for the steps a polled
crossing is made of, measured in C (teeif_probe.c). The benchmark records
them beside its figures: the polled placement's ratio to el2 moves with
them from one machine to the next, the code unchanged."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ring._floor import pinned
from ring._lib import check, ffi, lib

__all__ = ["MachineProbes", "probe_machine"]


@dataclass(frozen=True, slots=True)
class MachineProbes:
    """Medians and means in nanoseconds (see probe_machine)."""

    syscall_ns: int  # mean getppid(2)
    yield_alone_ns: int  # mean sched_yield() with the CPU to itself
    turn_p50_ns: int  # median turn between two threads on one CPU, there and back
    turn_p90_ns: int
    turns: int  # how many turns were timed
    cpu: int | None  # where both threads ran (None: where the scheduler put them)

    def to_json(self) -> dict[str, int | None]:
        return asdict(self)


def probe_machine(cpu: int | None = None, *, calls: int = 100_000, turns: int = 20_000) -> MachineProbes:
    """Measure: ``calls`` system calls and as many lone yields (means), and
    ``turns`` turns between this thread and a second one of this process,
    both on ``cpu``, each waiting with the rings' spin step (median and p90).
    The platform's vCPU and SMC-gate threads share one CPU like that: a
    polled fast call under the stub domain takes one such turn."""
    if calls < 1 or turns < 1:
        raise ValueError(f"probe_machine needs calls >= 1 and turns >= 1, got {calls} and {turns}")
    if cpu is not None and cpu not in os.sched_getaffinity(0):
        raise ValueError(f"probe_machine: CPU {cpu} is not one this process may run on "
                         f"({sorted(os.sched_getaffinity(0))})")
    samples = ffi.new("uint64_t[]", turns)
    with pinned(cpu):  # this thread, and the peer C starts, which inherits it
        syscall_ns = int(lib.teeif_probe_syscall_ns(calls))
        yield_ns = int(lib.teeif_probe_yield_ns(calls))
        check(lib.teeif_probe_turn_run(turns, samples), "machine probe (turn)")
    ordered = sorted(samples)
    return MachineProbes(
        syscall_ns=syscall_ns,
        yield_alone_ns=yield_ns,
        turn_p50_ns=int(ordered[len(ordered) // 2]),
        turn_p90_ns=int(ordered[min(len(ordered) - 1, len(ordered) * 9 // 10)]),
        turns=turns,
        cpu=cpu,
    )
