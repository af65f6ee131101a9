"""Answers given in C (cffi_build/teeif_fast.c): a backend hands the table
the requests it would answer without judgment of its own, and the table
answers them at the head of each ring, without the interpreter, forwarding
through another ring where a rule says so (docs/protocol.md, "Answering
from C").

The table knows nothing of what the requests mean: a rule is a function
number (the low 32 bits of ``a[0]``) and either fixed registers or "forward
``(function, 0, ...)`` and pass the first ``keep`` registers of the answer
on, each masked to 32 bits". What may be answered so, and for which ring,
is the owner's decision (stub domain: stubdom.daemon.fastpath).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ring._back import BackRing
from ring._entries import check_room
from ring._front import FrontRing
from ring._lib import check, ffi, lib
from ring.errors import RingError

if TYPE_CHECKING:
    from ring._ring import CData

__all__ = ["FastRule", "FastTable", "FastRing", "FastStatistics", "FastTrace", "ForwardTimeout", "MAX_FAST_RULES",
           "FORWARD_TIMEOUT"]

MAX_FAST_RULES: int = lib.TEEIF_FAST_MAX_RULES
# FastStatistics.last_error of a forwarded request that got no answer in time
FORWARD_TIMEOUT: int = lib.TEEIF_ETIMEOUT
_LATENCIES: int = lib.TEEIF_FAST_LATENCIES
_TRACES: int = lib.TEEIF_FAST_TRACES
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class FastRule:
    """Answer requests whose ``a[0] & 0xffffffff`` is ``function``: with
    ``answer`` (eight registers), or, when ``answer`` is None, by forwarding
    ``(function, 0, ..., 0)`` and passing the first ``keep`` registers of
    the forwarded answer on (masked to 32 bits; the others 0)."""

    function: int
    answer: tuple[int, ...] | None = None
    keep: int = 0

    def __post_init__(self) -> None:
        if type(self.function) is not int or not 0 <= self.function <= _U32:
            raise ValueError(f"FastRule.function must be a uint32, got {self.function!r}")
        if self.answer is not None and (len(self.answer) != 8
                                        or any(type(x) is not int or not 0 <= x <= _U64 for x in self.answer)):
            raise ValueError(f"FastRule.answer must be eight uint64 registers, got {self.answer!r}")
        if type(self.keep) is not int or not 0 <= self.keep <= 8:
            raise ValueError(f"FastRule.keep must be 0..8, got {self.keep!r}")


class ForwardTimeout(RingError):
    """FastTable.forward: the forwarding ring gave no answer in time."""


@dataclass(frozen=True, slots=True)
class FastTrace:
    """One sampled answer (its request id had a trace bit): when each stage
    began and ended, in CLOCK_MONOTONIC ns (``time.perf_counter_ns``'s
    clock on Linux); the ``fwd_*`` are 0 for a fixed answer."""

    id: int
    fwd_id: int
    target: int
    function: int
    peek_start: int
    peek_end: int
    fwd_start: int
    fwd_pushed: int
    fwd_popped: int
    push_start: int
    push_end: int


@dataclass(frozen=True, slots=True)
class FastStatistics:
    """What the table's forwarding did since it was made."""

    forwarded: int  # requests pushed on the forwarding ring
    wakeups: int  # sleeps on its channel that ended with a notification
    dropped: int  # forwarded answers whose id was not the one waited for
    failures: int  # forwarded requests that answered nothing: the owner sent them again
    last_error: int  # the last failure: the answer's status (< 0), a TEEIF_E* code, or 0


class FastRing:
    """One ring's state in a :class:`FastTable`: which rules apply to it,
    its frontend's channel, what was answered. The owner writes ``allow``
    and ``evtchn_fd`` between calls into C (one thread)."""

    def __init__(self, table: FastTable, target: int, evtchn_fd: int = -1) -> None:
        if type(target) is not int or not 0 <= target <= _U32:
            raise ValueError(f"FastRing target must be a uint32, got {target!r}")
        self.table = table
        c: Any = ffi.new("struct teeif_fast_ring *")  # cdata: its fields by name (teeif.h)
        c.target = target
        c.evtchn_fd = evtchn_fd
        self._c: Any = c
        self._taken = 0  # latencies handed out by take_latencies
        self._counted = [0] * MAX_FAST_RULES  # answered, as last reported by take_answered

    @property
    def target(self) -> int:
        return int(self._c.target)

    @property
    def allow(self) -> int:
        return int(self._c.allow)

    @allow.setter
    def allow(self, mask: int) -> None:
        if type(mask) is not int or not 0 <= mask < 1 << MAX_FAST_RULES:
            raise ValueError(f"FastRing.allow must be a mask of {MAX_FAST_RULES} rules, got {mask!r}")
        self._c.allow = mask

    @property
    def evtchn_fd(self) -> int:
        return int(self._c.evtchn_fd)

    @evtchn_fd.setter
    def evtchn_fd(self, fd: int) -> None:
        self._c.evtchn_fd = fd

    @property
    def paused(self) -> bool:
        """A forwarding failure or a dead frontend stopped answering here:
        the request at the head is the owner's. ``resume()`` once popped."""
        return bool(self._c.paused)

    @property
    def peer_gone(self) -> bool:
        """Notifying the frontend after an answer met end-of-file."""
        return bool(self._c.peer_gone)

    def resume(self) -> None:
        self._c.paused = 0

    def answered(self) -> tuple[int, ...]:
        """Requests answered here per rule (the table's order), since made."""
        return tuple(int(self._c.answered[i]) for i in range(len(self.table.rules)))

    def take_answered(self) -> list[tuple[FastRule, int]]:
        """(rule, answered since the last take) for the rules that answered."""
        out = []
        for i, rule in enumerate(self.table.rules):
            n = int(self._c.answered[i])
            if n != self._counted[i]:
                out.append((rule, n - self._counted[i]))
                self._counted[i] = n
        return out

    def take_latencies(self) -> list[int]:
        """Latencies (ns, peek to push) of the answers given since the last
        take; only the last TEEIF_FAST_LATENCIES of them are kept."""
        written = int(self._c.latency_next)
        first = max(self._taken, written - _LATENCIES)
        out = [int(self._c.latency_ns[i % _LATENCIES]) for i in range(first, written)]
        self._taken = written
        return out


class FastTable:
    """The rules, the forwarding ring and its protocol (see the module).

    ``forward``: the ring forwarded requests go through (the stub domain's
    gate) and ``forward_fd`` its event channel; forwarded requests carry
    ``forward_flags`` in ``flags`` and the ring's ``target`` in ``vcpu``,
    and ids from :attr:`next_id` within ``id_mask``. The caller owns the
    forwarding ring and keeps the table's use of it exclusive (one thread,
    or the ring's owner's lock held around each call into C).
    ``skip_id_bits``: requests whose id has any of them are the owner's;
    ``trace_bits``: requests whose id has any of them are answered and
    their stage times kept (:meth:`take_traces`), and the requests they
    forward carry the same bits in their ids.
    """

    def __init__(self, rules: Sequence[FastRule], *, forward: FrontRing | None = None, forward_fd: int = -1,
                 forward_flags: int = 0, id_mask: int = _U64 >> 1, spin_ns: int = 0,
                 timeout_ns: int = 5_000_000_000, skip_id_bits: int = 0, trace_bits: int = 0) -> None:
        rules = tuple(rules)
        if len(rules) > MAX_FAST_RULES:
            raise ValueError(f"a FastTable takes at most {MAX_FAST_RULES} rules, got {len(rules)}")
        if len({r.function for r in rules}) != len(rules):
            raise ValueError(f"FastTable rules name a function twice: {[hex(r.function) for r in rules]}")
        if any(r.answer is None for r in rules) and forward is None:
            raise ValueError("a FastTable with forwarding rules needs a forward ring")
        if timeout_ns <= 0 or spin_ns < 0:
            raise ValueError(f"FastTable needs timeout_ns > 0 and spin_ns >= 0, got {timeout_ns}, {spin_ns}")
        self.rules = rules
        self._forward = forward
        c: Any = ffi.new("struct teeif_fast_table *")
        self._c = c
        c.nrules = len(rules)
        for i, r in enumerate(rules):
            c.rules[i].function = r.function
            c.rules[i].forward = int(r.answer is None)
            c.rules[i].keep = r.keep
            for j, x in enumerate(r.answer or ()):
                c.rules[i].answer[j] = x
        c.fwd = forward._c if forward is not None else ffi.NULL
        c.fwd_fd = forward_fd
        c.fwd_flags = forward_flags
        c.fwd_id_mask = id_mask
        c.fwd_spin_ns = spin_ns
        c.fwd_timeout_ns = timeout_ns
        c.skip_id_bits = skip_id_bits
        c.trace_bits = trace_bits
        c.enabled = 1
        self._traced = 0  # trace records handed out by take_traces
        self._fwd_a: Any = ffi.new("uint64_t[8]")
        self._fwd_out: Any = ffi.new("struct teeif_response *")
        self._answered = ffi.new("uint32_t *")

    @property
    def enabled(self) -> bool:
        """False: nothing is answered in C. The table turns itself off when
        its forwarding ring fails (or is closed)."""
        return bool(self._c.enabled) and not (self._forward is not None and self._forward.closed)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._c.enabled = int(bool(on))

    @property
    def skip_id_bits(self) -> int:
        return int(self._c.skip_id_bits)

    @skip_id_bits.setter
    def skip_id_bits(self, bits: int) -> None:
        self._c.skip_id_bits = bits

    @property
    def next_id(self) -> int:
        """The next forwarded request's id (the forwarding ring's owner keeps
        its own counter in step with it around each call into C)."""
        return int(self._c.fwd_next_id)

    @next_id.setter
    def next_id(self, value: int) -> None:
        self._c.fwd_next_id = value

    def statistics(self) -> FastStatistics:
        c = self._c
        return FastStatistics(int(c.fwd_calls), int(c.fwd_wakeups), int(c.fwd_dropped),
                              int(c.fwd_failures), int(c.fwd_error))

    def forward(self, target: int, flags: int, regs: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        """One request of the owner's own through the forwarding ring, in C
        (GIL released): ``(status, a0..a7)`` of the answer. Raises
        :class:`ForwardTimeout` when no answer came within the table's
        timeout, PeerDied when the channel reached end-of-file, and the
        forwarding ring's own errors."""
        fwd = self._forward
        if fwd is None:
            raise ValueError("this FastTable has no forward ring")
        fwd._live()
        if len(regs) != 8:
            raise ValueError(f"a request has 8 registers, got {len(regs)}")
        a = self._fwd_a
        for i in range(8):
            a[i] = regs[i]
        rc = lib.teeif_fast_forward(self._c, target, flags, a, self._fwd_out)
        if rc == FORWARD_TIMEOUT:
            raise ForwardTimeout(f"{fwd.path}: no answer within {self._c.fwd_timeout_ns / 1e9:g} s")
        check(rc, fwd.path, front=fwd._c)
        out = self._fwd_out
        return int(out.status), tuple(out.a)

    def take_traces(self) -> list[FastTrace]:
        """The sampled answers recorded since the last take (only the last
        TEEIF_FAST_TRACES of them are kept)."""
        written = int(self._c.traces_next)
        first = max(self._traced, written - _TRACES)
        self._traced = written
        out = []
        for i in range(first, written):
            t = self._c.traces[i % _TRACES]
            out.append(FastTrace(int(t.id), int(t.fwd_id), int(t.target), int(t.function), int(t.peek_start),
                                 int(t.peek_end), int(t.fwd_start), int(t.fwd_pushed), int(t.fwd_popped),
                                 int(t.push_start), int(t.push_end)))
        return out

    def ring(self, target: int, evtchn_fd: int = -1) -> FastRing:
        """A new ring's state (nothing allowed until ``allow`` is set)."""
        return FastRing(self, target, evtchn_fd)

    def _usable(self) -> Any:
        if self._forward is not None and self._forward.closed:
            self._c.enabled = 0  # never touch an unmapped ring
        return self._c

    def serve(self, ring: BackRing, state: FastRing) -> int:
        """Answer what the table may at the head of ``ring`` (GIL released);
        returns how many. Raises the errors of ``ring`` itself, as its pop
        would."""
        ring._live()
        c = self._usable()
        return check(lib.teeif_fast_serve(c, ring._c, state._c), ring.path, back=ring._c)

    def serve_pop(self, ring: BackRing, state: FastRing, buf: CData, max_entries: int) -> tuple[int, int]:
        """``serve``, then pop what it left into ``buf`` (a request_buffer)
        in the same call into C: (answered in C, popped). A request that
        lands after C emptied the ring is not popped (C's next look takes
        it), so the owner never overtakes C on the head."""
        ring._live()
        check_room(buf, max_entries)
        c = self._usable()
        n = check(lib.teeif_fast_serve_pop(c, ring._c, state._c, buf, max_entries, self._answered), ring.path,
                  back=ring._c)
        return int(self._answered[0]), n

    def c_table(self) -> CData:
        """The C table (for a spin set)."""
        return cast("CData", self._usable())
