"""The SMC gate's per-hypercall path in C (cffi_build/teeif_gate.c): the
gate's assignment table, its checks, and the ring work around one
hypercall, so that the gate's thread runs the interpreter only for the TEE
model (docs/smc-gate.md, "The hypercall path in C").

:meth:`GateTable.next` waits for the next request (spinning, then sleeping
on the channel, GIL released), pops it and judges it; an admitted one is
marked in the TEE in the same step and comes back with a7 stamped.
:meth:`GateTable.answer` clears the mark, pushes the answer and notifies.
The gate's ABI values the checks use are C's (teeif.h, ``TEEIF_GATE_*``);
the hypervisor-class allow-lists are the owner's, given to the table.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ring._entries import _REQ, Request, write_request
from ring._lib import check, ffi, lib

if TYPE_CHECKING:
    from ring._back import BackRing

__all__ = [
    "GATE_ADMIT",
    "GATE_REFUSE",
    "GATE_UNASSIGNED",
    "GateCall",
    "GateCounters",
    "GateRegistersInvalid",
    "GateTable",
]

GATE_ADMIT: int = lib.TEEIF_GATE_ADMIT  # checked, in the TEE, a7 stamped: enter the TEE, then answer
GATE_REFUSE: int = lib.TEEIF_GATE_REFUSE  # refused with GateCall.status
GATE_UNASSIGNED: int = lib.TEEIF_GATE_UNASSIGNED  # the domid is not assigned: the owner tells EPERM from ENOENT
_IDLE: int = lib.TEEIF_GATE_IDLE
_WATCHED: int = lib.TEEIF_GATE_WATCHED
_WATCHED_BIT: int = lib.TEEIF_GATE_WATCHED_BIT
_MAX_CALLS: int = lib.TEEIF_GATE_MAX_CALLS
_FIRST_RESERVED: int = lib.TEEIF_GATE_DOMID_FIRST_RESERVED
_U64 = (1 << 64) - 1

_REGS = struct.Struct("<8Q")
_new = tuple.__new__  # a NamedTuple without its Python-level __new__


class GateRegistersInvalid(ValueError):
    """The registers given as an answer are not eight uint64 values."""

    def __init__(self, regs: object) -> None:
        super().__init__(f"an answer has eight uint64 registers, got {regs!r}")
        self.regs = regs


class GateCall(NamedTuple):
    """One hypercall popped and judged."""

    id: int
    domid: int  # teeif_request.vcpu
    op: int  # teeif_request.flags
    a: tuple[int, ...]  # x0..x7; a7 stamped by the gate when admitted
    verdict: int  # GATE_ADMIT, GATE_REFUSE or GATE_UNASSIGNED
    status: int  # GATE_REFUSE: the negative errno; else 0


@dataclass(frozen=True, slots=True)
class GateCounters:
    batches: int  # pops by next() that found a request
    wakeups: int  # next()'s sleeps on the channel that ended with a notification


def _calls(what: str, calls: Collection[int]) -> list[int]:
    if len(calls) > _MAX_CALLS or any(type(c) is not int or not 0 <= c <= _U64 for c in calls):
        raise ValueError(f"{what} must be at most {_MAX_CALLS} uint64 function IDs, got {sorted(calls)!r}")
    return sorted(calls)


class GateTable:
    """The gate's table in C: which domids are assigned, the hypercall in
    the TEE, and the allow-lists of hypervisor-class calls (``probes``:
    always; ``domain_calls``: for an assigned domid named as domid + 1 in
    a1). Thread-safe for one serving thread (next, judge, answer, release)
    beside any number calling assign, in_tee and counters."""

    def __init__(self, *, probes: Collection[int], domain_calls: Collection[int]) -> None:
        policy: Any = ffi.new("struct teeif_gate_policy *")
        for i, c in enumerate(_calls("probes", probes)):
            policy.probes[i] = c
        for i, c in enumerate(_calls("domain_calls", domain_calls)):
            policy.domain_calls[i] = c
        policy.nprobes = len(probes)
        policy.ndomain_calls = len(domain_calls)
        c_gate = lib.teeif_gate_new(policy)
        if c_gate == ffi.NULL:
            raise MemoryError("teeif_gate_new")
        self._c: Any = ffi.gc(c_gate, lib.teeif_gate_free)
        self._req: Any = ffi.new("struct teeif_request *")
        self._req_mem = ffi.buffer(self._req)
        self._status: Any = ffi.new("int32_t *")
        self._regs: Any = ffi.new("uint64_t[8]")
        self._regs_mem = ffi.buffer(self._regs)
        self._times: Any = ffi.new("uint64_t[2]")  # next(timed=True)'s, for the tracer

    # -- the toolstack's side -------------------------------------------------------

    def _domid(self, domid: int) -> int:
        if type(domid) is not int or not 0 <= domid < _FIRST_RESERVED:
            raise ValueError(f"domid must be an int in [0, {_FIRST_RESERVED:#x}), got {domid!r}")
        return domid

    def assign(self, domid: int) -> None:
        lib.teeif_gate_assign(self._c, self._domid(domid), 1)

    def unassign(self, domid: int) -> bool:
        """Take ``domid`` back: nothing for it is admitted from now on.
        Returns whether a hypercall for it admitted before is in the TEE."""
        return bool(lib.teeif_gate_assign(self._c, self._domid(domid), 0))

    def in_tee(self, domid: int) -> bool:
        """Whether an admitted hypercall for ``domid`` is in the TEE."""
        return type(domid) is int and 0 <= domid <= 0xFFFFFFFF and bool(lib.teeif_gate_in_tee(self._c, domid))

    def counters(self) -> GateCounters:
        out: Any = ffi.new("struct teeif_gate_counters *")  # per call: any thread may ask
        lib.teeif_gate_counters(self._c, out)
        return GateCounters(int(out.batches), int(out.wakeups))

    # -- the serving thread ---------------------------------------------------------

    def next(self, ring: BackRing, spin_ns: int, fd: int, wake_fd: int = -1, *,
             timed: bool = False) -> GateCall | None:
        """The next hypercall on ``ring``, judged (GIL released): spin up to
        ``spin_ns``, then sleep on the channel ``fd`` until notified; None
        when ``wake_fd`` became readable, or, with ``fd`` < 0 (no spin, no
        sleep), when the ring is empty. Raises the ring's errors and PeerDied
        at the channel's end-of-file."""
        ring._live()
        rc = lib.teeif_gate_next(self._c, ring._c, spin_ns, fd, wake_fd, self._req, self._status,
                                 self._times if timed else ffi.NULL)
        if rc <= 0:
            if rc == _IDLE:
                return None
            check(rc, ring.path, back=ring._c)
        return self._popped(rc)

    def _popped(self, verdict: int) -> GateCall:
        """The request C popped into the table's buffer, with its verdict."""
        v = _REQ.unpack_from(self._req_mem)
        return _new(GateCall, (v[0], v[1], v[2], v[3:], verdict,
                               self._status[0] if verdict == GATE_REFUSE else 0))

    def next_times(self) -> tuple[int, int]:
        """The last ``next(timed=True)``'s (request seen, popped and judged),
        in ``time.perf_counter_ns`` units (CLOCK_MONOTONIC)."""
        return self._times[0], self._times[1]

    def judge(self, req: Request) -> GateCall:
        """Judge a request popped otherwise, as next() judges the one it pops
        (ring's entry errors for one that is not a teeif request)."""
        write_request(self._req_mem, req)
        return self._popped(lib.teeif_gate_judge(self._c, self._req, self._status))

    def release(self) -> bool:
        """The TEE returned: clear the in-TEE mark (answer() does it too).
        Returns whether an owner watches the mark (``watch``)."""
        return bool(lib.teeif_gate_release(self._c))

    def watch(self, delta: int) -> int:
        """Start (1) or stop (-1) waiting for the in-TEE mark to clear: while
        anyone waits, every clearing is reported (``release``, ``answer``,
        ``answer_next``) so that the waiter can be woken. Returns how many
        wait now."""
        if delta not in (1, -1):
            raise ValueError(f"delta must be 1 or -1, got {delta!r}")
        n = lib.teeif_gate_watch(self._c, delta)
        if n < 0:
            raise ValueError(f"watch({delta}) with {'no' if delta < 0 else 'every'} owner watching")
        return n

    def watching(self) -> int:
        """How many owners wait for the in-TEE mark to clear."""
        return lib.teeif_gate_watch(self._c, 0)

    def _pack_regs(self, regs: Sequence[int]) -> None:
        try:
            _REGS.pack_into(self._regs_mem, 0, *regs)
        except (struct.error, TypeError):
            lib.teeif_gate_release(self._c)
            raise GateRegistersInvalid(regs) from None

    def answer(self, ring: BackRing, fd: int, rid: int, status: int, regs: Sequence[int]) -> bool:
        """Clear the in-TEE mark, push the answer to request ``rid`` and
        notify ``fd`` (if >= 0) when the push says so. Registers that are not
        eight uint64 values are GateRegistersInvalid, nothing pushed (the
        mark is cleared all the same). Returns whether an owner watches the
        mark (``watch``)."""
        self._pack_regs(regs)
        ring._live()
        rc = lib.teeif_gate_answer(self._c, ring._c, fd, rid, status, self._regs)
        if rc < 0:
            check(rc, ring.path, back=ring._c, wanted=1)
        return bool(rc & _WATCHED_BIT)

    def answer_next(self, ring: BackRing, fd: int, rid: int, status: int, regs: Sequence[int], spin_ns: int,
                    wake_fd: int = -1, timed: bool = False) -> GateCall | None:
        """``answer``, then ``next``, in one call into C: the serving thread
        between two hypercalls. None when ``next`` would be None, and also
        when an owner watches the in-TEE mark (nothing popped then: wake it,
        then call ``next``). Raises what either raises; GateRegistersInvalid
        before anything is pushed."""
        # next()'s and answer()'s steps written out: this is the serving
        # thread's whole Python between two hypercalls, on the CPU the vCPU
        # thread waiting for the answer shares
        try:
            _REGS.pack_into(self._regs_mem, 0, *regs)
        except (struct.error, TypeError):
            self._pack_regs(regs)  # raises what was wrong, the mark cleared
        if ring._closed:
            ring._live()
        rc = lib.teeif_gate_answer_next(self._c, ring._c, fd, rid, status, self._regs, spin_ns, wake_fd,
                                        self._req, self._status, self._times if timed else ffi.NULL)
        if rc <= 0 or rc == _WATCHED:
            if rc == _IDLE or rc == _WATCHED:
                return None
            check(rc, ring.path, back=ring._c)
        v = _REQ.unpack_from(self._req_mem)
        return _new(GateCall, (v[0], v[1], v[2], v[3:], rc, self._status[0] if rc == GATE_REFUSE else 0))
