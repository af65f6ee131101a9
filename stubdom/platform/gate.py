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
counts every hypercall. The ABI (ops, allow-lists, statuses) is
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
    RING_FILE,
    BackRing,
    EventChannel,
    EventChannelListener,
    PeerDied,
    Request,
    Response,
    RingCorrupted,
    RingTruncated,
)
from stubdom.mediator.ratelog import RateLimitedLog
from stubdom.optee.smccc import (
    ARM_SMCCC_OWNER_MASK,
    ARM_SMCCC_OWNER_SHIFT,
    ARM_SMCCC_OWNER_TRUSTED_APP,
    ARM_SMCCC_OWNER_TRUSTED_OS_END,
)
from stubdom.public.errors import GateBusy
from stubdom.public.gate import (
    GATE_EINVAL,
    GATE_ENOENT,
    GATE_EPERM,
    GATE_OP_HYP,
    GATE_OP_SMC,
    HYP_CLIENT_ID,
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
# Response(...) without the NamedTuple's Python-level __new__ (the TEE's
# registers are checked when the ring packs them)
_new_entry = tuple.__new__

_UNASSIGNED = 1  # _check's answer for a domid not assigned: -EPERM or -ENOENT, decided outside the lock


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

        self._lock = threading.Lock()  # the assignment table and the counters
        self._assigned: set[int] = set()
        # the domid of the admitted hypercall now in the TEE (None: none), so
        # that unassign can wait for it (the serving thread runs one at a time)
        self._in_tee: int | None = None
        self._tee_done = threading.Condition(self._lock)
        self._unassigning = 0  # unassign calls waiting on _tee_done
        self._calls: Counter[tuple[int, int]] = Counter()
        self._refusals: Counter[tuple[int, str]] = Counter()
        self._connections = self._tee_errors = self._refused = 0
        # written by the serving thread alone, hence without the lock (an int
        # is read whole): the hot path's counters
        self._wakeups = self._batches = 0
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
            self._assigned.discard(domid)
            self._domain_logs.pop(domid, None)
            self._unassigning += 1
            try:
                done = self._tee_done.wait_for(lambda: self._in_tee != domid, timeout)
            finally:
                self._unassigning -= 1
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
        with self._lock:
            return GateStatistics(
                calls=MappingProxyType(dict(self._calls)),
                refusals=MappingProxyType(dict(self._refusals)),
                assigned=frozenset(self._assigned),
                connections=self._connections,
                refused_peers=self._refused,
                wakeups=self._wakeups,
                batches=self._batches,
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
                self._answer_pending(None)
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

    def _answer_pending(self, chan: EventChannel | None) -> bool:
        """Pop every pending request, answer them all, one notify decision.
        Returns whether anything was answered."""
        if TRACER.on:
            return self._answer_traced(chan)
        reqs = self._ring.pop_batch()
        if not reqs:
            return False
        rsps = [self._handle(req) for req in reqs]
        self._batches += 1  # only this thread writes it: no lock
        if self._push(rsps) and chan is not None:
            chan.notify()
        return True

    def _push(self, rsps: list[Response]) -> bool:
        """Push every answer with one notify decision (the common single
        answer without push_batch's extra layers)."""
        return self._ring.push(rsps[0]) if len(rsps) == 1 else self._ring.push_batch(rsps)

    def _answer_traced(self, chan: EventChannel | None) -> bool:
        """_answer_pending with tracing on: the spans of the hypercalls the
        stub domain marked as made for a sampled call."""
        t0 = now_ns()
        reqs = self._ring.pop_batch()
        if not reqs:
            return False
        t1 = now_ns()
        rsps = []
        traced = []
        for req in reqs:
            if not req.id & TRACE_ID_BIT:
                rsps.append(self._handle(req))
                continue
            call = TracedCall(("gate", req.id), scope=TRACER.scope, args={"domid": req.vcpu, "gate_id": f"{req.id:#x}"})
            traced.append(call)
            TRACER.span(call, "gate pop", "gate", t0, t1, {"batch": len(reqs)})
            TRACER.flow(call, "f", f"gate/{req.id:x}/req", "gate request", t0 + 1)
            prev = TRACER.set_current(call)
            try:
                h0 = now_ns()
                rsps.append(self._handle(req))
                TRACER.span(call, "hypercall", "gate", h0, now_ns(),
                            {"op": req.flags, "fn": f"{req.a[0] & 0xFFFFFFFF:#x}", "status": rsps[-1].status})
            finally:
                TRACER.set_current(prev)
        self._batches += 1
        p0 = now_ns()
        if self._push(rsps) and chan is not None:
            chan.notify()
        p1 = now_ns()
        for call in traced:
            TRACER.span(call, "gate push", "gate", p0, p1, {"batch": len(rsps)})
            TRACER.flow(call, "s", f"gate/{call.key[1]:x}/rsp", "gate response", p1 - 1)
        return True

    def _serve_channel(self, chan: EventChannel) -> None:
        while not self._stopping:
            if self._answer_pending(chan):
                continue
            if self._ring.poll(self._poll_ns):  # spin, then the final check
                continue
            if not self._wait(chan.fileno()):
                return
            if chan.drain():  # PeerDied on end-of-file
                self._wakeups += 1

    # -- one hypercall -----------------------------------------------------------

    def _handle(self, req: Request) -> Response:
        rid, domid, op, a = req  # id, vcpu (the target domid), flags (the op), a
        with self._lock:  # one acquisition per hypercall: the check and the counter
            status = self._check(op, domid, a)
            self._calls[(domid, op)] += 1
            if not status:
                self._in_tee = domid
        if status:
            if status == _UNASSIGNED:  # outside the lock: asks the machine
                status = GATE_EPERM if self._domain_exists(domid) else GATE_ENOENT
            with self._lock:
                self._refusals[(domid, _errno_name(status))] += 1
            if log.isEnabledFor(logging.DEBUG):  # a line nobody reads must not take a token
                self._log_for(domid).log(logging.DEBUG, "gate refused op %d for d%d a0=%#x: %s",
                                         op, domid, a[0], _errno_name(status))
            return _new_entry(Response, (rid, status, 0, _ZERO_REGS))
        # The gate, never the stub domain, chooses a7.
        a7 = domid + 1 if op == GATE_OP_SMC else HYP_CLIENT_ID
        try:
            regs = tuple(self._tee.smc(a[:7] + (a7,)))
        except Exception:
            self._log_for(domid).error("the TEE model raised on op %d for d%d a0=%#x", op, domid, a[0],
                                       exc_info=True)
            with self._lock:
                self._tee_errors += 1
                self._refusals[(domid, "EINVAL")] += 1
            return _new_entry(Response, (rid, GATE_EINVAL, 0, _ZERO_REGS))
        finally:
            with self._lock:
                self._in_tee = None
                if self._unassigning:  # nobody else waits for it
                    self._tee_done.notify_all()
        return _new_entry(Response, (rid, 0, 0, regs))

    def _log_for(self, domid: int) -> RateLimitedLog:
        """The rate limit of lines about a hypercall for ``domid``: that
        domain's while it is assigned, else the stub domain's (naming a
        domain it was not given is its own doing)."""
        with self._lock:
            return self._domain_logs.get(domid, self._peer_log)

    def _check(self, op: int, domid: int, a: Sequence[int]) -> int:
        """0 if the hypercall may go to the TEE, else the negative errno
        (lock held)."""
        if op == GATE_OP_SMC:
            if domid >= DOMID_FIRST_RESERVED:
                return GATE_EINVAL
            if domid not in self._assigned:
                return _UNASSIGNED
            # SMCCC owner of the function ID in the low 32 bits of a0
            # (the fields decode_function_id reads; inline on the hot path)
            owner = (a[0] >> ARM_SMCCC_OWNER_SHIFT) & ARM_SMCCC_OWNER_MASK
            if not ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
                return GATE_EPERM  # the gate reaches the secure world's OS, nothing else
            return 0
        if op == GATE_OP_HYP:
            if a[0] in HYP_PROBE_CALLS:
                return 0
            if a[0] not in HYP_DOMAIN_CALLS:
                return GATE_EPERM
            if domid >= DOMID_FIRST_RESERVED:
                return GATE_EINVAL
            if domid not in self._assigned:
                return _UNASSIGNED
            return 0 if a[1] == domid + 1 else GATE_EPERM
        return GATE_EINVAL
