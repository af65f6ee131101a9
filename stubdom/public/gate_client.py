"""The stub domain's end of the SMC gate (docs/smc-gate.md): one
synchronous hypercall at a time, bounded by a timeout. The daemon builds
its ``TeePort`` on it (stubdom.daemon.gateport); the platform's end is
stubdom.platform.gate.Gate.

Before anything crosses, the client checks who listens at the gate's event
channel (SO_PEERCRED): only a gate of its own user (or root) is attached.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ring import (
    EVTCHN_FILE,
    FORWARD_TIMEOUT,
    RING_FILE,
    EventChannel,
    FastRule,
    FastStatistics,
    FastTable,
    ForwardTimeout,
    FrontRing,
    PeerDied,
    Request,
    RingClosed,
    RingError,
)
from stubdom.rundir import PeerRefused, check_peer
from stubdom.trace import TRACE_ID_BIT, TRACER, now_ns

from .errors import GateClosed, GateNotRunning, GateNotWelcomed, GatePeerRefused, GateTimeout
from .gate import GATE_OP_SMC, gate_dir

__all__ = ["GateClient", "GateClientStatistics"]

_U64 = (1 << 64) - 1
# Hypercall ids count in the low 63 bits; the top one marks a sampled call's
# (stubdom.trace.TRACE_ID_BIT), which the gate traces too.
_ID_MASK = _U64 >> 1


@dataclass(frozen=True, slots=True)
class GateClientStatistics:
    """Counters of one GateClient."""

    calls: int  # hypercalls issued
    notifications_sent: int  # pushes after which the gate had to be notified
    notifications_suppressed: int  # pushes the gate's event index said need no notify
    wakeups: int  # sleeps on the event channel that ended with a notification
    timeouts: int  # calls that got no answer within the bound
    dropped: int  # responses whose id no call waited for (late, or a predecessor's)


class GateClient:
    """The stub domain's end of the gate: ``call(op, domid, regs)`` pushes one
    request, notifies if the ring says so, spins for ``poll_window_ns``, then
    sleeps on the event channel; no answer within ``timeout`` seconds is
    :class:`GateTimeout`, the platform going away is :class:`GateClosed`.

    Thread-safe: calls are serialised (the stub domain's vCPU is in the
    hypervisor for the whole hypercall). Connecting waits, bounded by
    ``timeout``, for the gate's welcome notification before it attaches the
    ring, so that only the stub domain the gate serves ever touches it.
    """

    def __init__(self, runtime_dir: str | os.PathLike[str], poll_window_ns: int = 0,
                 timeout: float = 5.0) -> None:
        if type(poll_window_ns) is not int or poll_window_ns < 0:
            raise ValueError(f"poll_window_ns must be a non-negative int, got {poll_window_ns!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        d = gate_dir(runtime_dir)
        self.path = str(d / EVTCHN_FILE)
        self._poll_ns = poll_window_ns
        self._timeout = timeout
        try:
            self._chan = EventChannel.connect(d / EVTCHN_FILE)
        except FileNotFoundError:
            raise GateNotRunning(self.path, "no such socket") from None
        except ConnectionRefusedError:
            raise GateNotRunning(self.path, "connection refused") from None
        try:
            try:
                # the listener's user, as recorded when it called listen():
                # another user's socket here is not the platform
                check_peer(self._chan.fileno(), self.path, "SMC gate")
            except PeerRefused as e:
                raise GatePeerRefused(e) from None
            try:
                welcomed = self._chan.wait(timeout)
            except PeerDied:
                raise GateClosed(self.path, "closed before it accepted us") from None
            if not welcomed:
                raise GateNotWelcomed(self.path, timeout)
            self._ring = FrontRing.attach(d / RING_FILE)
        except BaseException:
            self._chan.close()
            raise
        self._lock = threading.Lock()
        # Ids start at a random point so that a restarted daemon never takes a
        # predecessor's late response for its own.
        self._next_id = int.from_bytes(os.urandom(8), "little") & (_U64 >> 1)
        self._calls = self._wakeups = self._timeouts = self._dropped = 0
        # fast tables on this ring (fast_table) -> their counters as last added to ours
        self._tables: dict[FastTable, FastStatistics] = {}
        # our own hypercalls made in C (_call_in_c); its wake-ups and dropped
        # answers count as ours (statistics)
        self._forwarder = FastTable((), forward=self._ring, forward_fd=self._chan.fileno(), id_mask=_ID_MASK,
                                    spin_ns=poll_window_ns, timeout_ns=int(timeout * 1e9))

    def call(self, op: int, domid: int, regs: Sequence[int], *, _mark: int = 0,
             _times: list[int] | None = None) -> tuple[int, tuple[int, ...]]:
        """One hypercall: returns (status, a0..a7) as the gate answered.
        (``_mark``, ``_times``: the tracer's, from _traced_call.)"""
        if TRACER.on and _times is None and (tcall := TRACER.current()) is not None:
            return self._traced_call(tcall, op, domid, regs)
        if _times is None:
            return self._call_in_c(op, domid, regs)
        mark, times = _mark, _times
        with self._lock:
            if self._ring.closed:
                raise GateClosed(self.path, "client closed")
            rid = self._next_id | mark
            self._next_id = (rid + 1) & _ID_MASK
            self._calls += 1
            deadline = time.monotonic() + self._timeout
            try:
                if self._ring.push(Request(rid, domid, op, tuple(regs))):
                    self._chan.notify()
                if times is not None:
                    times += (rid, now_ns())
                while True:
                    for rsp in self._ring.pop_batch():
                        if rsp.id == rid:
                            if times is not None:
                                times.append(now_ns())
                            return rsp.status, tuple(rsp.a)
                        self._dropped += 1
                    if self._ring.poll(self._poll_ns):
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._timeouts += 1
                        raise GateTimeout(op, domid, self._timeout)
                    if self._chan.wait(remaining):
                        self._wakeups += 1
            except PeerDied:
                raise GateClosed(self.path, "the platform closed the event channel") from None
            except RingClosed:
                raise GateClosed(self.path, "client closed") from None
            except RingError as e:
                raise GateClosed(self.path, str(e)) from e

    def _call_in_c(self, op: int, domid: int, regs: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        """call() without a sampled call: push, spin, sleep and pop in one
        call into C (ring.FastTable.forward, GIL released), the same steps
        and bounds as the interpreter's loop in call()."""
        with self._lock:
            if self._ring.closed:
                raise GateClosed(self.path, "client closed")
            fwd = self._forwarder
            fwd.next_id = self._next_id
            self._calls += 1
            try:
                return fwd.forward(domid, op, regs)
            except ForwardTimeout:
                self._timeouts += 1
                raise GateTimeout(op, domid, self._timeout) from None
            except PeerDied:
                raise GateClosed(self.path, "the platform closed the event channel") from None
            except RingClosed:
                raise GateClosed(self.path, "client closed") from None
            except (RingError, OSError) as e:
                raise GateClosed(self.path, str(e)) from e
            finally:
                self._next_id = fwd.next_id

    def _traced_call(self, tcall, op: int, domid: int, regs: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        """A hypercall for a sampled call: its id marked (stubdom.trace), so
        that the gate traces its side too, and its spans here."""
        times: list[int] = []
        t0 = now_ns()
        out = self.call(op, domid, regs, _mark=TRACE_ID_BIT, _times=times)
        t2 = now_ns()
        if len(times) == 3:
            rid, t1, popped = times
            TRACER.span(tcall, "gate push", "daemon", t0, t1, {"gate_id": f"{rid:#x}"})
            TRACER.flow(tcall, "s", f"gate/{rid:x}/req", "gate request", t1 - 1)
            TRACER.span(tcall, "gate wait", "daemon", t1, popped)
            TRACER.flow(tcall, "f", f"gate/{rid:x}/rsp", "gate response", popped - 1)
        TRACER.span(tcall, "gate hypercall", "daemon", t0, t2, {"op": op, "fn": f"{regs[0] & 0xFFFFFFFF:#x}",
                                                                 "ret": f"{out[1][0] & 0xFFFFFFFF:#x}"})
        return out

    def fast_table(self, rules: Sequence[FastRule], *, skip_id_bits: int = 0, trace_bits: int = 0) -> FastTable:
        """A :class:`ring.FastTable` whose forwarding rules are GATE_OP_SMC
        hypercalls on this client's ring, for the domain each ring's
        ``target`` names (the gate checks and stamps it as for any other),
        spinning and timing out as this client does. Use it only inside
        :meth:`lend`."""
        table = FastTable(rules, forward=self._ring, forward_fd=self._chan.fileno(), forward_flags=GATE_OP_SMC,
                          id_mask=_ID_MASK, spin_ns=self._poll_ns, timeout_ns=int(self._timeout * 1e9),
                          skip_id_bits=skip_id_bits, trace_bits=trace_bits)
        self._tables[table] = table.statistics()
        return table

    @contextlib.contextmanager
    def lend(self, table: FastTable) -> Iterator[FastTable | None]:
        """Let ``table`` make hypercalls in C for the ``with`` block: the
        client's lock is held (None is given instead when another thread
        holds it: nothing is lent), the ids carry on from this client's and
        what the table did is counted as this client's calls."""
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._ring.closed:
                yield None
                return
            table.next_id = start = self._next_id
            try:
                yield table
            finally:
                if table.next_id != start:  # something was forwarded: count it as ours
                    before = self._tables[table]
                    after = self._tables[table] = table.statistics()
                    self._next_id = table.next_id
                    self._calls += after.forwarded - before.forwarded
                    self._wakeups += after.wakeups - before.wakeups
                    self._dropped += after.dropped - before.dropped
                    if after.failures != before.failures and after.last_error == FORWARD_TIMEOUT:
                        self._timeouts += 1
        finally:
            self._lock.release()

    def fileno(self) -> int:
        """The event channel's descriptor: readable when the gate notified
        or closed (the daemon watches it between hypercalls)."""
        return self._chan.fileno()

    def platform_gone(self) -> bool:
        """Drain the event channel without waiting; True if the gate closed
        it (the platform stopped or died). Call it between hypercalls only:
        a notification it drains is one no call waits for."""
        with self._lock:
            try:
                self._chan.drain()
            except PeerDied:
                return True
            except RingError:
                return True  # closed under us
        return False

    def statistics(self) -> GateClientStatistics:
        rs = self._ring.statistics()
        fwd = self._forwarder.statistics()
        return GateClientStatistics(self._calls, rs.notifications_sent, rs.notifications_suppressed,
                                    self._wakeups + fwd.wakeups, self._timeouts, self._dropped + fwd.dropped)

    def close(self) -> None:
        """Detach from the ring and close the channel (the gate sees EOF)."""
        self._chan.close()
        if not self._ring.closed:
            self._ring.close()

    def __enter__(self) -> GateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
