"""The SMC gate, the platform's end: the stub domain's narrow hypercall
(docs/smc-gate.md).

A real stub domain cannot execute SMCs for other domains: it asks Xen, and
Xen checks that the toolstack gave it the domain it names, stamps the client
ID itself and makes the SMC. :class:`Gate` is that hypercall, in the
platform process beside the TEE model: a teeif ``BackRing`` at
``<runtime_dir>/xen/gate/ring`` and an event channel listening at
``<runtime_dir>/xen/gate/evtchn``, served by one thread. It keeps the
assignment table (``assign``/``unassign``, the toolstack's decision),
refuses everything else with a negative errno and zeroed registers, and
counts every hypercall. The table, the checks and the ring work around one
hypercall are C (``ring.GateTable``, cffi_build/teeif_gate.c): per admitted
hypercall the thread makes one call into C (wait for the request, pop it,
check it, mark it in the TEE, stamp a7), runs the TEE model, and makes one
call into C that answers. Refusals come back to Python, which tells -ENOENT
from -EPERM, counts, logs and answers them. The ABI (ops, allow-lists,
statuses) is
stubdom.public.gate; the stub domain's end is
stubdom.public.gate_client.GateClient.

The gate serves only a stub domain of its own user (or root): SO_PEERCRED
is checked before anything crosses.

The gate is the platform's (the hypervisor's) and the stub domain is less
trusted: a stub domain that corrupts the ring or truncates its file is
disconnected and the ring replaced; the platform goes on. What the stub
domain can make the gate log over and over goes through a rate limit:
per target domain for one hypercall's lines (the domain's guest may be
behind them), and one for the stub domain's own (connections, a broken
ring, hypercalls naming no domain it was given).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ring import (
    EVTCHN_FILE,
    GATE_ADMIT,
    GATE_UNASSIGNED,
    RING_FILE,
    BackRing,
    EventChannel,
    EventChannelListener,
    GateCall,
    GateRegistersInvalid,
    GateTable,
    PeerDied,
    RingCorrupted,
    RingTruncated,
)
from stubdom.mediator.ratelog import RateLimitedLog
from stubdom.public.errors import GateBusy
from stubdom.public.gate import (
    GATE_EINVAL,
    GATE_ENOENT,
    GATE_EPERM,
    HYP_DOMAIN_CALLS,
    HYP_PROBE_CALLS,
    gate_dir,
)
from stubdom.rundir import FILE_MODE, SOCKET_MODE, PeerRefused, check_peer, ensure_runtime_dir, make_private_dir
from stubdom.trace import TRACE_ID_BIT, TRACER, TracedCall, now_ns
from stubdom.xen.constants import DOMID_FIRST_RESERVED

__all__ = ["Gate", "GateStatistics", "UNASSIGN_WAIT_S"]

log = logging.getLogger("stubdom.platform.gate")

_ZERO_REGS = (0,) * 8

# How long unassign waits for a hypercall of that domain still in the TEE.
UNASSIGN_WAIT_S = 30.0


def _errno_name(status: int) -> str:
    return errno.errorcode.get(-status, str(status))


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """Counters of the gate since it started (``Gate.statistics()``)."""

    calls: Mapping[tuple[int, int], int]  # (domid, op) -> hypercalls received, refused ones included
    refusals: Mapping[tuple[int, str], int]  # (domid, "EPERM"/"EINVAL"/"ENOENT") -> refused hypercalls
    assigned: frozenset[int]  # domids the toolstack gave the stub domain
    connections: int  # stub domains that connected (a restarted daemon counts again)
    refused_peers: int  # connections refused for their user (SO_PEERCRED), never served
    wakeups: int  # sleeps on the event channel that ended with a notification
    batches: int  # pops that found at least one request
    notifications_sent: int  # response pushes after which the stub domain was notified
    notifications_suppressed: int  # response pushes that needed no notification
    tee_errors: int  # the TEE model raised (a bug in the model): answered -EINVAL

    def as_dict(self) -> dict:
        """The counters as plain, msgpack-friendly values."""
        return {
            "calls": {f"d{d}/op{op}": n for (d, op), n in sorted(self.calls.items())},
            "refusals": {f"d{d}/{name}": n for (d, name), n in sorted(self.refusals.items())},
            "assigned": sorted(self.assigned),
            "connections": self.connections,
            "refused_peers": self.refused_peers,
            "wakeups": self.wakeups,
            "batches": self.batches,
            "notifications_sent": self.notifications_sent,
            "notifications_suppressed": self.notifications_suppressed,
            "tee_errors": self.tee_errors,
        }


class Gate:
    """The platform's end of the SMC gate: owns the ring and the listener,
    serves one stub domain at a time in a thread, and survives it: when the
    daemon dies (end-of-file) the gate answers whatever it left on the ring
    and waits for the next one, which re-attaches the same ring.

    ``tee`` is anything with a thread-safe ``smc(regs) -> regs`` (the OP-TEE
    model). ``domain_exists(domid)`` tells -ENOENT from -EPERM.
    ``poll_window_ns`` is how long the gate spins on the ring for the next
    request before it sleeps on the event channel.
    """

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str],
        tee,
        *,
        domain_exists: Callable[[int], bool],
        poll_window_ns: int = 0,
        ring_pages: int = 1,
        log_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if type(poll_window_ns) is not int or poll_window_ns < 0:
            raise ValueError(f"poll_window_ns must be a non-negative int, got {poll_window_ns!r}")
        self.dir = gate_dir(runtime_dir)
        self.ring_path = self.dir / RING_FILE
        self.evtchn_path = self.dir / EVTCHN_FILE
        self._tee = tee
        self._domain_exists = domain_exists
        self._poll_ns = poll_window_ns
        self._ring_pages = ring_pages

        self._lock = threading.Lock()  # assign/unassign, the rate limits, the counters of the rare paths
        # The assignment table and the checks are C's: a check and the
        # in-TEE mark of the hypercall it admits are one step under the
        # table's mutex, so unassign sees either no admission or the mark.
        self._table = GateTable(probes=HYP_PROBE_CALLS, domain_calls=HYP_DOMAIN_CALLS)
        self._assigned: set[int] = set()  # the table's assigned domids, for assigned() and statistics()
        self._tee_done = threading.Condition(self._lock)  # notified when a hypercall leaves the TEE
        self._refusals: Counter[tuple[int, str]] = Counter()
        self._connections = self._tee_errors = self._refused = 0
        # written by the serving thread alone, hence without the lock (an int
        # is read whole, a Counter copied whole under the interpreter lock):
        # the hot path's counters (batches and wakeups are C's: GateTable.counters)
        self._calls: Counter[tuple[int, int]] = Counter()
        self._sent = self._suppressed = 0  # of rings already replaced
        # rate limits: the stub domain's own lines, and one per assigned domain
        # (created by assign, dropped by unassign: bounded by the toolstack)
        self._log_clock = log_clock
        self._peer_log = RateLimitedLog(log, "", clock=log_clock)
        self._domain_logs: dict[int, RateLimitedLog] = {}

        # the gate is the platform's first socket in the runtime directory:
        # nobody else may control it (docs/config.md, "The runtime directory")
        ensure_runtime_dir(runtime_dir)
        make_private_dir(self.dir.parent)
        make_private_dir(self.dir)
        self._clear_stale()
        self._ring = self._create_ring()
        try:
            self._listener = EventChannelListener(self.evtchn_path, mode=SOCKET_MODE)
        except BaseException:
            self._ring.close()
            self.ring_path.unlink(missing_ok=True)
            raise
        # A pipe that wakes the serving thread for close().
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._thread: threading.Thread | None = None
        # called (in the gate's thread) with the pid of each stub domain
        # welcomed: the toolstack's cue that a daemon started (or restarted)
        self.on_welcome: Callable[[int | None], None] | None = None
        self._pollers: dict[int, select.poll] = {}  # _wait's poll objects by fd

    def _create_ring(self) -> BackRing:
        ring = BackRing.create(self.ring_path, self._ring_pages)
        os.chmod(self.ring_path, FILE_MODE)  # created 0600 less the umask: exactly 0600
        return ring

    def _clear_stale(self) -> None:
        """Remove a dead platform's gate files; refuse if a live one serves here."""
        if self.evtchn_path.exists():
            try:
                probe = EventChannel.connect(self.evtchn_path)
            except OSError:
                pass  # nobody listens: a platform died without cleaning up
            else:
                probe.close()
                raise GateBusy(str(self.evtchn_path))
            self.evtchn_path.unlink(missing_ok=True)
        self.ring_path.unlink(missing_ok=True)

    # -- the toolstack's assignment table ----------------------------------------

    def assign(self, domid: int) -> None:
        """Give ``domid`` to the stub domain (before the daemon is asked to
        create its backend)."""
        if type(domid) is not int or not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"domid must be an int in [0, {DOMID_FIRST_RESERVED:#x}), got {domid!r}")
        with self._lock:
            self._table.assign(domid)
            self._assigned.add(domid)
            if domid not in self._domain_logs:
                self._domain_logs[domid] = RateLimitedLog(log, "", clock=self._log_clock)

    def unassign(self, domid: int, *, timeout: float = UNASSIGN_WAIT_S) -> None:
        """Take ``domid`` back (after domain_destroy completed). Idempotent.
        Returns once no hypercall admitted for ``domid`` is still in the TEE
        (bounded by ``timeout``): from then on nothing the stub domain sent
        for it reaches the TEE, so the platform's own VM_DESTROYED is the
        last word on its partition."""
        with self._lock:
            if type(domid) is int and 0 <= domid < DOMID_FIRST_RESERVED:
                self._table.unassign(domid)  # from now on nothing for it is admitted
            self._assigned.discard(domid)
            self._domain_logs.pop(domid, None)
            # watched before the first look: a clearing after it is reported
            # to the serving thread, which wakes us (under this lock, which
            # wait_for holds from its look to its wait)
            self._table.watch(1)
            try:
                done = self._tee_done.wait_for(lambda: not self._table.in_tee(domid), timeout)
            finally:
                self._table.watch(-1)
            if not done:
                log.warning("d%d: a hypercall for it is still in the TEE after %.0f s", domid, timeout)

    def assigned(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._assigned)

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        """Start serving in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="smc-gate", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread, close the ring and the listener, remove the files."""
        if self._wake_w < 0:
            return  # closed already
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._listener.close()
        if not self._ring.closed:
            self._ring.close()
            self.ring_path.unlink(missing_ok=True)

    def __enter__(self) -> Gate:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> GateStatistics:
        rs = self._ring.statistics() if not self._ring.closed else None
        c = self._table.counters()
        with self._lock:
            return GateStatistics(
                calls=MappingProxyType(dict(self._calls)),
                refusals=MappingProxyType(dict(self._refusals)),
                assigned=frozenset(self._assigned),
                connections=self._connections,
                refused_peers=self._refused,
                wakeups=c.wakeups,
                batches=c.batches,
                notifications_sent=self._sent + (rs.notifications_sent if rs else 0),
                notifications_suppressed=self._suppressed + (rs.notifications_suppressed if rs else 0),
                tee_errors=self._tee_errors,
            )

    # -- the serving thread ------------------------------------------------------

    def _wait(self, fd: int) -> bool:
        """Block until ``fd`` is readable (True) or close() was called (False)."""
        poller = self._pollers.get(fd)
        if poller is None:  # one per fd, kept: the serving thread sleeps per hypercall when not polling
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            # keep the listener's and this fd's, drop a closed channel's
            kept = {fd: poller}
            listening = self._pollers.get(self._listener.fileno())
            if listening is not None:
                kept.setdefault(self._listener.fileno(), listening)
            self._pollers = kept
        while not self._stopping:
            for ready, _ in poller.poll():
                if ready == self._wake_r:
                    return False
            return True
        return False

    def _serve(self) -> None:
        while not self._stopping:
            if not self._wait(self._listener.fileno()):
                return
            try:
                chan = self._listener.accept(timeout=0)
            except (BlockingIOError, TimeoutError, InterruptedError):
                continue
            try:
                # before the welcome, before anything on the ring is answered
                peer = check_peer(chan.fileno(), self.evtchn_path, "stub domain")
            except PeerRefused as e:
                self._peer_log.warning("%s", e)  # a refused peer may retry in a loop
                with self._lock:
                    self._refused += 1
                chan.close()
                continue
            with self._lock:
                self._connections += 1
            # a stub domain may connect and hang up in a loop: its rate limit
            self._peer_log.log(logging.INFO, "stub domain connected to the SMC gate")
            try:
                # Answer what a dead predecessor left, so that the newcomer
                # attaches to a ring with nothing in flight; then welcome it.
                self._answer_left()
                chan.notify()
                if self.on_welcome is not None:
                    self.on_welcome(getattr(peer, "pid", None))
                self._serve_channel(chan)
            except PeerDied:
                self._peer_log.log(logging.INFO, "stub domain closed the SMC gate channel; "
                                                 "waiting for it to come back")
            except (RingCorrupted, RingTruncated) as e:
                what = "truncated" if isinstance(e, RingTruncated) else "corrupted"
                self._peer_log.error("stub domain %s the SMC gate ring (%s): disconnected, ring reset",
                                     what, e)
                self._reset_ring()
            except Exception:  # never let the gate die with the platform still up
                self._peer_log.error("SMC gate: unexpected error; dropping the stub domain's connection",
                                     exc_info=True)
            finally:
                chan.close()

    def _reset_ring(self) -> None:
        rs = self._ring.statistics()
        with self._lock:
            self._sent += rs.notifications_sent
            self._suppressed += rs.notifications_suppressed
        self._ring.close()
        self.ring_path.unlink(missing_ok=True)
        self._ring = self._create_ring()

    def _answer_left(self) -> None:
        """Answer every request a dead predecessor left, before the welcome
        (nobody to notify)."""
        self._serve_c(-1, 0, -1)

    def _serve_channel(self, chan: EventChannel) -> None:
        fd = chan.fileno()
        while not self._stopping:
            self._serve_c(fd, self._poll_ns, self._wake_r)  # until close()

    def _serve_c(self, fd: int, spin_ns: int, wake_fd: int) -> None:
        """The only path, sampled hypercalls included: C waits (spin for
        ``spin_ns``, then sleep on ``fd`` until notified), pops one request
        and judges it; the TEE model runs here; then one call into C answers
        and waits for the next request. Returns when ``wake_fd`` fires
        (close()) or, with ``fd`` < 0 (no waiting), when the ring is empty."""
        ring, table = self._ring, self._table
        call = None
        while not self._stopping:
            timed = TRACER.on  # C notes when it saw and popped the request
            if call is None:
                call = table.next(ring, spin_ns, fd, wake_fd, timed=timed)
                if call is None:
                    return
            if call.id & TRACE_ID_BIT and TRACER.on:
                self._traced(fd, call, table.next_times() if timed else None)
                call = None
                continue
            done = call
            status, regs = self._hypercall(done)
            try:
                call = table.answer_next(ring, fd, done.id, status, regs, spin_ns, wake_fd, timed)
            except GateRegistersInvalid as e:  # a bug in the model, as if it had raised
                self._tee_failed(done.domid, done.op, done.a, e)
                table.answer(ring, fd, done.id, GATE_EINVAL, _ZERO_REGS)
                call = None
            if call is None:
                # idle, closing, or an unassign waits for the hypercall just
                # answered: wake it (answer_next popped nothing), then next()
                self._wake_unassign()

    def _traced(self, fd: int, call: GateCall, times: tuple[int, int] | None) -> None:
        """A hypercall the stub domain marked as made for a sampled call:
        served as any other, with its spans. ``times``: C's (request seen,
        popped and judged); None when tracing started while C waited."""
        seen, popped = times if times is not None else (now_ns(),) * 2
        traced = TracedCall(("gate", call.id), scope=TRACER.scope,
                            args={"domid": call.domid, "gate_id": f"{call.id:#x}"})
        TRACER.span(traced, "gate pop", "gate", seen, popped, {"in": "C"})
        TRACER.flow(traced, "f", f"gate/{call.id:x}/req", "gate request", seen + 1)
        prev = TRACER.set_current(traced)
        try:
            h0 = now_ns()
            status, regs = self._hypercall(call)
            TRACER.span(traced, "hypercall", "gate", h0, now_ns(),
                        {"op": call.op, "fn": f"{call.a[0] & 0xFFFFFFFF:#x}", "status": status})
        finally:
            TRACER.set_current(prev)
        p0 = now_ns()
        self._answer(fd, call, status, regs)
        p1 = now_ns()
        TRACER.span(traced, "gate push", "gate", p0, p1, {"in": "C"})
        TRACER.flow(traced, "s", f"gate/{call.id:x}/rsp", "gate response", p1 - 1)

    # -- one hypercall -----------------------------------------------------------

    def _hypercall(self, call: GateCall) -> tuple[int, Sequence[int]]:
        """(status, registers) of a hypercall C judged: a refusal's, or, for
        one it admitted (a7 stamped, marked in the TEE), the TEE model's."""
        rid, domid, op, a, verdict, status = call
        self._calls[(domid, op)] += 1
        if verdict != GATE_ADMIT:
            return self._refusal(call), _ZERO_REGS
        try:
            return 0, self._tee.smc(a)
        except Exception:
            self._tee_failed(domid, op, a)
            return GATE_EINVAL, _ZERO_REGS
        except BaseException:
            if self._table.release():  # never leave unassign waiting on a hypercall gone
                self._wake_unassign()
            raise

    def _answer(self, fd: int, call: GateCall, status: int, regs: Sequence[int]) -> None:
        """Push the answer (C: the in-TEE mark cleared, the channel notified
        if the push says so), then wake an unassign waiting for it."""
        try:
            watched = self._table.answer(self._ring, fd, call.id, status, regs)
        except GateRegistersInvalid as e:  # a bug in the model, as if it had raised
            self._tee_failed(call.domid, call.op, call.a, e)
            watched = self._table.answer(self._ring, fd, call.id, GATE_EINVAL, _ZERO_REGS)
        if watched:
            self._wake_unassign()

    def _wake_unassign(self) -> None:
        """The in-TEE mark was cleared: wake any unassign waiting for it (C
        reports a watcher in the same step as the clearing: see unassign)."""
        with self._lock:
            self._tee_done.notify_all()

    def _refusal(self, call: GateCall) -> int:
        """The status of a hypercall C refused: counted and logged."""
        rid, domid, op, a, verdict, status = call
        if verdict == GATE_UNASSIGNED:  # outside any lock: asks the machine
            status = GATE_EPERM if self._domain_exists(domid) else GATE_ENOENT
        with self._lock:
            self._refusals[(domid, _errno_name(status))] += 1
        if log.isEnabledFor(logging.DEBUG):  # a line nobody reads must not take a token
            self._log_for(domid).log(logging.DEBUG, "gate refused op %d for d%d a0=%#x: %s",
                                     op, domid, a[0], _errno_name(status))
        return status

    def _tee_failed(self, domid: int, op: int, a: Sequence[int], invalid: GateRegistersInvalid | None = None) -> None:
        """The TEE model raised (call within the except block), or answered
        registers that are not registers: counted as an -EINVAL refusal."""
        if invalid is None:
            self._log_for(domid).error("the TEE model raised on op %d for d%d a0=%#x", op, domid, a[0],
                                       exc_info=True)
        else:
            self._log_for(domid).error("the TEE model answered op %d for d%d a0=%#x: %s", op, domid, a[0], invalid)
        with self._lock:
            self._tee_errors += 1
            self._refusals[(domid, "EINVAL")] += 1

    def _log_for(self, domid: int) -> RateLimitedLog:
        """The rate limit of lines about a hypercall for ``domid``: that
        domain's while it is assigned, else the stub domain's (naming a
        domain it was not given is its own doing)."""
        with self._lock:
            return self._domain_logs.get(domid, self._peer_log)
