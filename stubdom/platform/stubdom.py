"""The stubdom placement: the platform's trap path forwards each trapped SMC
over the domain's teeif ring to stubdom-teed and blocks the vCPU until the
answer comes back (docs/smc-gate.md, docs/protocol.md).

The platform is the ring's frontend. Per domain, one :class:`DomainLink`
owns the ring end: pushes and pops happen under its lock, and among the
vCPU threads waiting for answers exactly one at a time is the *receiver*: it
spins on the ring for the polling window, then sleeps on the event channel,
and hands every response it pops to the vCPU waiting for that id. A call
with no other call of its domain in flight first tries the fast path: push,
notify and the window's first slice in one C call that takes only its own
answer (FrontRing.call; docs/protocol.md, "One round trip in one call");
whatever else it meets is the receiver's, as after a plain push.

A daemon that is dead, silent, or answers with status != 0 gives the guest
:data:`UNAVAILABLE_REGS` — a0 = OPTEE_SMC_RETURN_ENOTAVAIL, a1..a7 = 0 —
within ``call_timeout_ms``, never a hang. Linux's OP-TEE driver fails a
yielding call whose a0 is neither RPC nor ETHREAD_LIMIT with
TEEC_ERROR_COMMUNICATION (origin COMMS), and a fast call with ENOTAVAIL is
refused like any other error; the UID probe sees a mismatch and the driver
does not bind.

Every line the trap path logs about a domain, once per call at most (a
full ring, a call timing out, a failed answer, the daemon going away or
coming back, a failed re-attach), goes through that domain's rate limit
(:class:`~stubdom.mediator.ratelog.RateLimitedLog`): the review of Xen's
mediator RFC asked that a guest never be able to flood the hypervisor's log.
Only the line that cuts a domain off for good (a broken ring) is not
limited: it comes once per domain.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ring import (
    EVTCHN_FILE,
    RING_FILE,
    CallStatus,
    EventChannel,
    FrontRing,
    PeerDied,
    Request,
    RingCorrupted,
    RingError,
    RingFull,
    RingTruncated,
)
from stubdom.mediator.ratelog import RateLimitedLog
from stubdom.optee.smc import OPTEE_SMC_RETURN_ENOTAVAIL, OPTEE_SMC_VM_DESTROYED
from stubdom.public.control import control_socket_path
from stubdom.public.errors import (
    ControlDomainExists,
    ControlError,
    ControlNoSuchDomain,
    ControlProtocolError,
    ControlSocketError,
    DaemonUnavailable,
)
from stubdom.public.gate import HYP_CLIENT_ID
from stubdom.public.logformat import event
from stubdom.trace import TRACE_ID_BIT, TRACER, now_ns

from .errors import DomainCreationFailed, UnknownDomain
from .gate import Gate
from .regs import Regs
from .toolstack import Toolstack

__all__ = [
    "UNAVAILABLE_REGS",
    "DEFAULT_CALL_TIMEOUT_MS",
    "DaemonWatcher",
    "DomainLink",
    "LinkStatistics",
    "StubdomPlacement",
    "stubdom_placement",
]

log = logging.getLogger("stubdom.platform.stubdom")

# What a guest resumes with when its stub domain cannot answer (optee_smc.h:
# OPTEE_SMC_RETURN_ENOTAVAIL); every other register zero (invariant 2).
UNAVAILABLE_REGS: Regs = (OPTEE_SMC_RETURN_ENOTAVAIL, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_CALL_TIMEOUT_MS = 5000
# The receiver spins with the ring lock held in slices this long, so that a
# vCPU pushing a request waits at most one slice.
_SPIN_SLICE_NS = 20_000
_U64 = (1 << 64) - 1
# Request ids count in the low 63 bits; the top one marks a sampled call
# (stubdom.trace.TRACE_ID_BIT), which the daemon traces too.
_ID_MASK = _U64 >> 1
# What the daemon can do to a domain's ring: write impossible indices, or
# shrink the file under our mapping. Either way that domain is cut off.
_RING_BROKEN = (RingCorrupted, RingTruncated)
# Request(...) without the NamedTuple's Python-level __new__ (regs are
# checked already: route_smc)
_new_entry = tuple.__new__
# What a vCPU waiting on a ring the daemon will never answer again finds
# instead of a response (the domain was re-created on a new ring).
_GONE = object()


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """Counters of one domain's trap path under stubdom (for the benchmark)."""

    requests: int  # trapped SMCs pushed to the daemon
    responses: int  # answers handed to the vCPU that waited for them
    notifications_sent: int  # pushes after which the daemon was notified
    notifications_suppressed: int  # pushes the daemon's req_event said need no notify
    wakeups: int  # sleeps on the event channel that ended with a notification
    timeouts: int  # calls answered UNAVAILABLE_REGS after call_timeout_ms
    backend_errors: int  # responses with status != 0
    unavailable: int  # calls answered UNAVAILABLE_REGS at once: daemon gone, ring full
    dropped: int  # responses no vCPU waited for (timed out, or before a restart)
    reconnects: int  # event channels re-established after the daemon restarted


class DomainLink:
    """The frontend of one domain's teeif ring and event channel. ``call`` is
    thread-safe: several vCPUs of the domain may be in flight at once."""

    def __init__(self, domid: int, ring_path: Path, evtchn_path: Path, ring_pages: int, *,
                 poll_window_ns: int, timeout_s: float,
                 log_clock: Callable[[], float] = time.monotonic) -> None:
        self.domid = domid
        # lines the domain's guest can cause, once per call: its rate limit
        self._glog = RateLimitedLog(log, f"d{domid}: ", clock=log_clock)
        self.ring_path = Path(ring_path)
        self.evtchn_path = Path(evtchn_path)
        self._poll_ns = poll_window_ns
        # the fast path spins the window with the lock held, in slices
        self._slice0 = min(poll_window_ns, _SPIN_SLICE_NS)
        self._timeout = timeout_s
        self._ring = FrontRing.attach(self.ring_path, ring_pages)
        self._ring_ino = os.stat(self.ring_path).st_ino
        try:
            self._chan: EventChannel | None = EventChannel.connect(self.evtchn_path)
        except BaseException:
            self._ring.close()
            raise
        # guards the ring and everything below; taken as the bare lock (one C
        # call) where nobody waits on the condition
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._sleepers = 0  # vCPUs in _cond.wait: notify only when there are some
        self._waiting: dict[int, object] = {}  # request id -> its Response once popped, else None
        self._receiving = False  # a vCPU thread is the receiver
        self._dead: str | None = None  # why the daemon is unreachable
        self._broken = False  # the ring itself is unusable (corrupted by the peer)
        self._next_id = 1
        self._closed = False
        self._n = dict.fromkeys(("requests", "responses", "wakeups", "timeouts", "backend_errors",
                                 "unavailable", "dropped", "reconnects"), 0)
        self._sent = self._suppressed = 0  # of rings replaced on reconnect
        self._poller: select.poll | None = None  # the receiver's poll object on the channel (_poller_for)
        self._poll_fd = -1
        # sampled calls in flight (tracing on): request id -> [call, push end, response popped]
        self._traced: dict[int, list] = {}

    # -- the trap path -----------------------------------------------------------

    def call(self, vcpu: int, regs: Regs) -> Regs:
        """Forward one trapped SMC and wait for its answer (bounded)."""
        deadline = time.monotonic() + self._timeout
        with self._lock:
            if self._closed:
                raise UnknownDomain(self.domid)
            if self._dead is not None and not self._reconnect():
                self._n["unavailable"] += 1
                return UNAVAILABLE_REGS
            rid = self._next_id
            self._next_id = (rid + 1) & _ID_MASK
            traced = None
            if TRACER.on and (tcall := TRACER.current()) is not None:
                rid |= TRACE_ID_BIT
                traced = [tcall, now_ns(), 0]
            chan = self._chan
            # The fast path (its channel, else None): no other call of the
            # domain in flight (so nobody receives, and no answer on the ring
            # is anyone else's). One C call pushes, notifies if the daemon's
            # req_event says so and spins the first slice of the polling
            # window for the answer; then slice after slice, the rest of it,
            # the lock held: another vCPU of the domain waits for this call
            # (measured: two or four vCPUs making polled fast calls wait
            # 15-16 us this way, 50-120 when the holder let them in after a
            # slice and the receiver took over). Whatever else it meets is
            # the receiver's (_await) to handle, as after a plain push. A
            # sampled call takes it too, C noting when it pushed and when it
            # saw the answer.
            fast = chan if not self._waiting and not self._receiving else None
            try:
                if fast is not None:
                    got = self._ring.call_entry(rid, vcpu, regs, self._slice0, fast, traced is not None)
                else:
                    notify = self._ring.push(_new_entry(Request, (rid, vcpu, 0, regs)))
            except RingFull:
                # more vCPUs in flight than the ring has slots: the guest's doing
                self._glog.warning("teeif ring full (daemon not answering): ENOTAVAIL")
                self._n["unavailable"] += 1
                return UNAVAILABLE_REGS
            except RingTruncated as e:
                self._break(e)
                self._n["unavailable"] += 1
                return UNAVAILABLE_REGS
            self._n["requests"] += 1
            if fast is not None:
                spun = self._slice0
                while got is CallStatus.WAITING and spun < self._poll_ns:
                    # the next slice: back in C after the interpreter lock
                    # was ours again, which parks this thread while the gate
                    # thread runs the TEE model on the CPU they share
                    step = min(self._poll_ns - spun, _SPIN_SLICE_NS)
                    try:
                        got = self._ring.await_entry(rid, step, traced is not None)
                    except RingTruncated:
                        got = CallStatus.FAILED  # the receiver meets it again
                    spun += step
                if type(got) is tuple:  # the answer, as the response entry's fields
                    out = self._resume(got[1], got[3:])
                    if traced is not None:
                        self._trace_answered_in_c(rid, traced, self._ring.call_times())
                    return out
                times = self._ring.call_times() if traced is not None else None
            self._waiting[rid] = None
            if traced is not None:
                self._traced[rid] = traced
        if fast is not None:
            if got is CallStatus.NOTIFY_FAILED:
                self._mark_dead("the daemon closed the event channel")
            # the window spun counts, unless the receiver must look at the
            # ring at once (an answer of another id, a failure)
            if got is not CallStatus.WAITING:
                spun = 0
            if traced is not None and times is not None:
                return self._traced_await(rid, deadline, traced, times[0] or now_ns(), {"in": "C"}, spun)
            return self._await(rid, deadline, spun)
        if notify and chan is not None:
            try:
                chan.notify()
            except (PeerDied, RingError):
                self._mark_dead("the daemon closed the event channel")
        if traced is not None:
            return self._traced_await(rid, deadline, traced, now_ns(), {"notified": bool(notify)})
        return self._await(rid, deadline)

    def _trace_answered_in_c(self, rid: int, traced: list, times: tuple[int, int]) -> None:
        """(lock held) The spans of a sampled call whose round trip was one
        C call: its push, the wait, C's take of the answer, its resume."""
        call, t0 = traced[0], traced[1]
        pushed, seen = times
        TRACER.span(call, "ring push", "vcpu", t0, pushed, {"id": f"{rid:#x}", "in": "C"})
        TRACER.flow(call, "s", f"teeif/d{self.domid}/{rid:x}/req", "teeif request", pushed - 1)
        TRACER.span(call, "wait", "vcpu", pushed, seen, {"in": "C"})
        TRACER.span(call, "ring pop", "vcpu", seen, seen, {"batch": 1, "in": "C"})
        TRACER.flow(call, "f", f"teeif/d{self.domid}/{rid:x}/rsp", "teeif response", seen + 1)
        TRACER.span(call, "resume", "vcpu", seen, now_ns())

    def _traced_await(self, rid: int, deadline: float, traced: list, pushed: int, push_args: dict,
                      spun_ns: int = 0) -> Regs:
        """_await for a sampled call: its push (ended at ``pushed``), its
        wait and its resume."""
        call, t0 = traced[0], traced[1]
        t1 = traced[1] = pushed
        TRACER.span(call, "ring push", "vcpu", t0, t1, {"id": f"{rid:#x}", **push_args})
        TRACER.flow(call, "s", f"teeif/d{self.domid}/{rid:x}/req", "teeif request", t1 - 1)
        try:
            out = self._await(rid, deadline, spun_ns)
        finally:
            with self._lock:
                self._traced.pop(rid, None)
        popped = traced[2] or now_ns()
        TRACER.span(call, "wait", "vcpu", t1, popped)
        TRACER.span(call, "resume", "vcpu", popped, now_ns())
        return out

    def _await(self, rid: int, deadline: float, spun_ns: int = 0) -> Regs:
        """Wait for the answer to ``rid``, as the receiver or asleep; ``spun_ns``:
        the polling window already spun for it (the fast path's slice)."""
        lock = self._lock
        with lock:
            while True:
                rsp = self._waiting.get(rid)
                if rsp is not None:
                    del self._waiting[rid]
                    return self._resume_regs(rsp)
                if self._dead is not None:
                    del self._waiting[rid]
                    self._n["unavailable"] += 1
                    return UNAVAILABLE_REGS
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    del self._waiting[rid]
                    self._n["timeouts"] += 1
                    self._glog.warning("no answer from stubdom-teed within %g s: ENOTAVAIL",
                                       self._timeout)
                    return UNAVAILABLE_REGS
                if self._receiving:
                    self._sleepers += 1
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._sleepers -= 1
                    continue
                # The receiver: _receive takes the lock itself, slice by
                # slice; it is ours again, once, for the look above.
                self._receiving = True
                lock.release()
                try:
                    self._receive(deadline, spun_ns)
                    spun_ns = 0
                finally:
                    lock.acquire()
                    self._receiving = False
                    self._wake()

    def _wake(self) -> None:
        """(lock held) Wake every vCPU waiting on the condition: for its
        answer, or to become the receiver. Most calls have none to wake."""
        if self._sleepers:
            self._cond.notify_all()

    def _resume_regs(self, rsp) -> Regs:
        if rsp is _GONE:
            self._n["unavailable"] += 1
            return UNAVAILABLE_REGS
        return self._resume(rsp.status, tuple(rsp.a))

    def _resume(self, status: int, regs: tuple[int, ...]) -> Regs:
        """What the vCPU resumes with, given a response's status and registers."""
        n = self._n
        n["responses"] += 1
        if status != 0:
            n["backend_errors"] += 1
            self._glog.warning("stubdom-teed answered status %d: ENOTAVAIL", status)
            return UNAVAILABLE_REGS
        return cast(Regs, regs)  # eight: the response entry's layout

    def _receive(self, deadline: float, spun_ns: int = 0) -> None:
        """As the receiver: return once some response was delivered, the
        daemon died, or ``deadline`` passed. ``spun_ns`` of the polling
        window are spent already."""
        spin_left = max(0, self._poll_ns - spun_ns)
        while True:
            with self._lock:
                if self._dead is not None:
                    return
                step = min(spin_left, _SPIN_SLICE_NS)
                spin_left -= step
                try:
                    # Slices spin without re-arming rsp_event (a re-armed
                    # event index makes the daemon notify every answer); the
                    # last one does the final check before we may sleep. A
                    # spin returns at once when responses are waiting
                    # already: no pop before it, which would mostly be empty.
                    if self._ring.spin(step) if spin_left > 0 else self._ring.poll(step):
                        self._deliver()
                        return
                except _RING_BROKEN as e:
                    self._break(e)
                    return
                chan = self._chan
            if spin_left > 0:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or chan is None:
                return
            try:
                poller = self._poller_for(chan.fileno())
            except RingError:
                return  # closed under us: the domain is being torn down
            if TRACER.on and (tcall := TRACER.current()) is not None:
                t0 = now_ns()
                woke = poller.poll(max(1, int(remaining * 1000)))
                TRACER.span(tcall, "sleep", "vcpu", t0, now_ns())
            else:
                woke = poller.poll(max(1, int(remaining * 1000)))
            if not woke:
                return
            try:
                if chan.drain():
                    with self._lock:
                        self._n["wakeups"] += 1
            except PeerDied:
                self._mark_dead("the daemon closed the event channel")
                # the responses it pushed before dying are still on the ring
                with self._lock:
                    self._deliver()
                return
            except RingError:
                return

    def _poller_for(self, fd: int) -> select.poll:
        """A poll object on ``fd``, kept between sleeps (only the receiver
        sleeps, one at a time); a new channel gets a new one."""
        if self._poll_fd != fd:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            self._poller, self._poll_fd = poller, fd
            return poller
        assert self._poller is not None  # set with _poll_fd
        return self._poller

    def _deliver(self) -> bool:
        """Pop every response (lock held) and hand each to its waiter."""
        traced = TRACER.on and self._traced
        if traced:
            t0 = now_ns()
        try:
            rsps = self._ring.pop_batch()
        except _RING_BROKEN as e:
            self._break(e)
            return True
        if traced:
            self._trace_popped(rsps, t0)
        waiting = self._waiting
        for rsp in rsps:
            rid = rsp.id
            if waiting.get(rid, _GONE) is None:  # a vCPU waits for it, nothing delivered yet
                waiting[rid] = rsp
            else:
                self._n["dropped"] += 1
        if rsps:
            self._wake()
        return bool(rsps)

    def _trace_popped(self, rsps, t0: int) -> None:
        """(lock held) The pop that took sampled calls' responses off the ring."""
        t1 = now_ns()
        for rsp in rsps:
            traced = self._traced.get(rsp.id)
            if traced is not None:
                traced[2] = t1
                TRACER.span(traced[0], "ring pop", "vcpu", t0, t1, {"batch": len(rsps)})
                TRACER.flow(traced[0], "f", f"teeif/d{self.domid}/{rsp.id:x}/rsp", "teeif response", t0 + 1)

    # -- the daemon going away ---------------------------------------------------

    def _mark_dead(self, why: str) -> None:
        with self._lock:
            if self._dead is None and self._reconnect(receiver_ok=True):
                # a restarted daemon already listens: the requests on the ring
                # get its answer (run, or ENOTAVAIL if sent to the dead one)
                self._wake()
                return
            if self._dead is None:
                # a daemon that accepts and hangs up again would make each of
                # the guest's calls log this and the line below: rate-limited
                self._glog.warning("%s; calls get ENOTAVAIL until it is back", why)
                self._dead = why
            self._wake()

    def _break(self, e: RingError) -> None:
        """The daemon wrote impossible indices or truncated the ring file
        (lock held): disconnect it for good. Once per link: it never
        reconnects after this."""
        what = "truncated" if isinstance(e, RingTruncated) else "corrupted"
        log.error("d%d: stubdom-teed %s the teeif ring (%s): disconnected", self.domid, what, e)
        self._broken = True
        self._dead = f"ring corrupted: {e}"
        if self._chan is not None:
            self._chan.close()
        self._wake()

    def _reconnect(self, *, receiver_ok: bool = False) -> bool:
        """(lock held) A restarted daemon replaced the listener (and maybe the
        ring file): connect again. False while nobody listens."""
        if self._broken or (self._receiving and not receiver_ok):
            return False
        try:
            chan = EventChannel.connect(self.evtchn_path)
        except OSError:
            return False
        try:
            ino = os.stat(self.ring_path).st_ino
            if ino != self._ring_ino:
                ring = FrontRing.attach(self.ring_path, self._ring.ring_pages)
                rs = self._ring.statistics()
                self._sent += rs.notifications_sent
                self._suppressed += rs.notifications_suppressed
                self._ring.close()
                self._ring, self._ring_ino = ring, ino
        except (OSError, RingError) as e:
            chan.close()
            # tried again on each call while the daemon is away: rate-limited
            self._glog.warning("cannot re-attach the teeif ring: %s", e)
            return False
        if self._chan is not None:
            self._chan.close()
        self._chan = chan
        self._dead = None
        self._n["reconnects"] += 1
        self._glog.log(logging.INFO, "stubdom-teed is back: event channel reconnected")
        return True

    def reattach(self) -> bool:
        """The domain was created again in a restarted daemon (a new ring
        file, a new listener): connect to them now, rather than on the next
        call, which would otherwise push onto the old ring first. vCPUs
        waiting on the old ring resume with ENOTAVAIL. False when the ring
        was broken for good or cannot be attached."""
        with self._lock:
            if self._closed or self._broken:
                return False
            if not self._reconnect(receiver_ok=True):
                return False
            for rid, rsp in self._waiting.items():
                if rsp is None:
                    self._waiting[rid] = _GONE
            self._wake()
            return True

    # -- statistics, close -------------------------------------------------------

    def statistics(self) -> LinkStatistics:
        with self._lock:
            rs = self._ring.statistics() if not self._ring.closed else None
            return LinkStatistics(
                requests=self._n["requests"],
                responses=self._n["responses"],
                notifications_sent=self._sent + (rs.notifications_sent if rs else 0),
                notifications_suppressed=self._suppressed + (rs.notifications_suppressed if rs else 0),
                wakeups=self._n["wakeups"],
                timeouts=self._n["timeouts"],
                backend_errors=self._n["backend_errors"],
                unavailable=self._n["unavailable"],
                dropped=self._n["dropped"],
                reconnects=self._n["reconnects"],
            )

    def close(self) -> None:
        """Close the channel and unmap the ring (the vCPUs must be stopped)."""
        with self._lock:
            self._closed = True
            if self._chan is not None:
                self._chan.close()
            if not self._ring.closed:
                rs = self._ring.statistics()
                self._sent += rs.notifications_sent
                self._suppressed += rs.notifications_suppressed
                self._ring.close()
            self._dead = "domain closed"
            self._wake()


class StubdomPlacement:
    """Placement protocol (stubdom/platform/vsmc.py) forwarding to stubdom-teed.

    Starts the SMC gate for ``runtime_dir`` at once (the daemon connects to
    it at its own start); domains are created in the daemon through the
    control socket. Build it with :func:`stubdom_placement`.
    """

    name = "stubdom"

    def __init__(self, platform, runtime_dir: str | os.PathLike[str], *, poll_window_us: int = 0,
                 call_timeout_ms: int = DEFAULT_CALL_TIMEOUT_MS, control_timeout: float = 10.0,
                 toolstack: Toolstack | None = None,
                 log_clock: Callable[[], float] = time.monotonic) -> None:
        if type(poll_window_us) is not int or poll_window_us < 0:
            raise ValueError(f"poll_window_us must be a non-negative int, got {poll_window_us!r}")
        if type(call_timeout_ms) is not int or call_timeout_ms <= 0:
            raise ValueError(f"call_timeout_ms must be a positive int, got {call_timeout_ms!r}")
        self.runtime_dir = Path(runtime_dir)
        self._tee = platform.tee
        self._poll_ns = poll_window_us * 1000
        self._timeout = call_timeout_ms / 1000
        self._log_clock = log_clock  # of the rate limits (tests inject one)
        machine = platform.machine
        self.gate = Gate(self.runtime_dir, platform.tee,
                         domain_exists=lambda domid: domid in machine.domains(),
                         poll_window_ns=self._poll_ns, log_clock=log_clock)
        self.gate.start()
        self.toolstack = toolstack or Toolstack(control_socket_path(self.runtime_dir), timeout=control_timeout)
        self._lock = threading.Lock()
        self._links: dict[int, DomainLink] = {}
        # domains whose frontend is someone else's: the daemon's answer to domain_create
        self._external: dict[int, dict] = {}
        self._destroyed: set[int] = set()  # relinquish_resources done, teardown pending
        # the toolstack's own operations, one at a time: creating, destroying
        # and re-creating a domain in the daemon never interleave
        self._toolstack_lock = threading.RLock()
        self._watcher: DaemonWatcher | None = None
        self.fallback_destroys = 0  # VM_DESTROYED the platform sent itself (daemon gone)

    def domain_dir(self, domid: int) -> Path:
        return self.runtime_dir / f"dom{domid}"

    # -- Placement protocol ------------------------------------------------------

    def domain_init(self, domid: int) -> None:
        with self._toolstack_lock:
            result = self._create_in_daemon(domid)
            try:
                link = self._attach(domid, result)
            except (OSError, RingError, KeyError, TypeError, ValueError) as e:
                self._undo_create(domid)
                raise DomainCreationFailed(domid, f"cannot attach its teeif ring: {e}") from e
            with self._lock:
                self._links[domid] = link
                self._destroyed.discard(domid)

    def domain_init_external(self, domid: int) -> dict:
        """Create the domain in the daemon and leave its frontend to another
        program (docs/protocol.md, "A frontend of your own"): nothing here
        maps its ring. Returns the daemon's answer, checked as for our own
        frontend: ``{"domid", "dir", "ring", "evtchn", "ring_pages"}``."""
        with self._toolstack_lock:
            result = self._create_in_daemon(domid)
            try:
                self._check_paths(domid, result)
            except (KeyError, TypeError, ValueError) as e:
                self._undo_create(domid)
                raise DomainCreationFailed(domid, f"the daemon's answer: {e}") from e
            with self._lock:
                self._external[domid] = dict(result)
                self._destroyed.discard(domid)
        return dict(result)

    def external(self, domid: int) -> dict | None:
        """The daemon's answer for a domain with an external frontend (the
        latest, after a re-creation), None for any other domid."""
        with self._lock:
            got = self._external.get(domid)
        return None if got is None else dict(got)

    def _undo_create(self, domid: int) -> None:
        try:
            self.toolstack.domain_destroy(domid)
        except ControlSocketError as e2:
            log.warning("d%d: domain_destroy after a failed attach: %s", domid, e2)
            self._vm_destroyed(domid, f"domain_destroy after a failed attach: {e2}")
        self.gate.unassign(domid)

    def _create_in_daemon(self, domid: int) -> dict:
        """Assign in the gate, ``domain_create``; the daemon's answer."""
        self.gate.assign(domid)  # before the daemon may ask the gate for VM_CREATED
        try:
            return self.toolstack.domain_create(domid)
        except ControlDomainExists as e:
            # the daemon serves that domid already: its partition is not ours to end
            self.gate.unassign(domid)
            raise DomainCreationFailed(domid, f"stubdom-teed: {e}") from e
        except ControlSocketError as e:
            # The daemon may have sent VM_CREATED through the gate before it
            # failed or died (no answer tells which): end any partition the
            # secure world made for the domain, as Xen does for a domain
            # whose creation fails once its OP-TEE client exists
            # (domain_relinquish_resources -> optee_relinquish_resources).
            self._vm_destroyed(domid, f"domain_create failed: {e}")
            raise DomainCreationFailed(domid, f"stubdom-teed: {e}") from e

    def _vm_destroyed(self, domid: int, why: str) -> None:
        """Take the domain back from the stub domain, then VM_DESTROYED from
        the platform (client ID 0 in a7). After ``unassign`` nothing the
        daemon sent can still reach OP-TEE for it, so no VM_CREATED lands
        after this; OP-TEE answers OK for a client it does not know."""
        self.gate.unassign(domid)
        a0 = self._tee.smc((OPTEE_SMC_VM_DESTROYED, domid + 1, 0, 0, 0, 0, 0, HYP_CLIENT_ID))[0]
        log.warning("d%d: %s; VM_DESTROYED from the platform: a0=%#x", domid, why, a0)
        self.fallback_destroys += 1

    def _check_paths(self, domid: int, result: dict) -> tuple[Path, Path, int]:
        # The daemon is less privileged than the platform: map only the files
        # the contract names, wherever it says they are.
        ring, evtchn = self.domain_dir(domid) / RING_FILE, self.domain_dir(domid) / EVTCHN_FILE
        for key, expected in (("ring", ring), ("evtchn", evtchn)):
            if Path(result[key]).resolve() != expected.resolve():
                raise ValueError(f"daemon answered {key}={result[key]!r}, expected {str(expected)!r}")
        pages = result.get("ring_pages", 0)
        if type(pages) is not int:
            raise TypeError(f"daemon answered ring_pages={pages!r}")
        return ring, evtchn, pages

    def _attach(self, domid: int, result: dict) -> DomainLink:
        ring, evtchn, pages = self._check_paths(domid, result)
        return DomainLink(domid, ring, evtchn, pages, poll_window_ns=self._poll_ns, timeout_s=self._timeout,
                          log_clock=self._log_clock)

    def handle_call(self, domid: int, vcpu: int, regs: Regs) -> Regs:
        # read without the lock: a dict look-up is atomic, and a link closed
        # meanwhile refuses the call itself (UnknownDomain)
        link = self._links.get(domid)
        if link is None:
            raise UnknownDomain(domid)
        return link.call(vcpu, regs)

    def relinquish_resources(self, domid: int) -> bool:
        """Ask the daemon to destroy the domain's backend (it relinquishes
        pins and sends VM_DESTROYED through the gate). If the daemon is gone
        or lost the domain, the platform sends VM_DESTROYED itself, as the
        hypervisor may, so that the secure world frees the partition."""
        with self._lock:
            if domid in self._destroyed:
                return True
        with self._toolstack_lock:
            self._relinquish(domid)
        return True

    def _relinquish(self, domid: int) -> None:
        try:
            self.toolstack.domain_destroy(domid)
        except (DaemonUnavailable, ControlNoSuchDomain, ControlProtocolError) as e:
            log.warning("d%d: stubdom-teed could not destroy it (%s): VM_DESTROYED from the platform",
                        domid, e)
            a0 = self._tee.smc((OPTEE_SMC_VM_DESTROYED, domid + 1, 0, 0, 0, 0, 0, HYP_CLIENT_ID))[0]
            log.info("d%d: OP-TEE answered VM_DESTROYED with a0=%#x", domid, a0)
            self.fallback_destroys += 1
        except ControlError as e:
            log.error("d%d: stubdom-teed refused domain_destroy: %s", domid, e)
        with self._lock:
            self._destroyed.add(domid)

    def domain_teardown(self, domid: int) -> None:
        self.gate.unassign(domid)  # after domain_destroy completed
        with self._lock:
            link = self._links.pop(domid, None)
            self._external.pop(domid, None)
            self._destroyed.discard(domid)
        if link is not None:
            link.close()

    # -- the rest ------------------------------------------------------------------

    def statistics(self, domid: int) -> LinkStatistics:
        with self._lock:
            link = self._links.get(domid)
        if link is None:
            raise UnknownDomain(domid)
        return link.statistics()

    # -- a restarted daemon (docs/daemon.md, "The daemon restarted") ---------------

    def watch_daemon(self, on_recreated: Callable[[int, dict, bool], None] | None = None,
                     *, ready_timeout: float = 30.0) -> None:
        """From now on, when a stub domain connects to the gate (a daemon
        started, or started again), make it serve this platform's domains:
        once its control socket answers, ``list`` what it serves and
        ``domain_create`` every other domain of ours, as a Xen toolstack
        re-attaches a restarted backend; then the trap path connects to the
        new ring. A daemon that recovered its domains from its journal
        (after kill -9) serves them already: nothing is created twice.
        ``on_recreated(domid, answer, external)`` is called for each domain
        created again (``external``: its frontend is someone else's, who
        must attach to the new files). Idempotent; stopped by close()."""
        if self._watcher is None:
            self._watcher = DaemonWatcher(self, on_recreated, ready_timeout=ready_timeout)
            self.gate.on_welcome = self._watcher.stub_domain_connected
            self._watcher.start()

    def reconcile(self, daemon_pid: int | None = None) -> list[int]:
        """Create in the daemon every domain of ours it does not serve (the
        watcher's step, callable on its own); the domids created again."""
        recreated: list[tuple[int, dict, bool]] = []
        with self._toolstack_lock:
            served = {d["domid"] for d in self.toolstack.list()["domains"]}
            with self._lock:
                ours = {domid: domid in self._external for domid in (*self._links, *self._external)
                        if domid not in self._destroyed}
            missing = sorted(d for d in ours if d not in served)
            if ours:
                event(log, logging.INFO, "daemon_attached", pid=daemon_pid or "unknown",
                      serving=_ids(sorted(served & set(ours))) or "none",
                      recreating=_ids(missing) or "none")
            for domid in missing:
                try:
                    result = self.toolstack.domain_create(domid)
                    self._check_paths(domid, result)
                except (ControlSocketError, KeyError, TypeError, ValueError) as e:
                    event(log, logging.ERROR, "domain_recreate_failed", domid=domid, error=e)
                    continue
                with self._lock:
                    if ours[domid]:
                        self._external[domid] = dict(result)
                        link = None
                    else:
                        link = self._links.get(domid)
                if link is not None and not link.reattach():
                    event(log, logging.ERROR, "domain_recreate_failed", domid=domid,
                          error="its teeif ring could not be attached")
                    continue
                event(log, logging.INFO, "domain_recreated", domid=domid, ring=result["ring"],
                      frontend="external" if ours[domid] else "platform")
                recreated.append((domid, dict(result), ours[domid]))
        watcher = self._watcher
        for domid, result, external in recreated:
            if watcher is not None and watcher.on_recreated is not None:
                watcher.on_recreated(domid, result, external)
        return [domid for domid, _, _ in recreated]

    def close(self) -> None:
        """Close every link, the control connection and the gate."""
        if self._watcher is not None:
            self._watcher.stop()
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
        self.toolstack.close()
        self.gate.close()


def _ids(domids) -> str:
    return ",".join(str(d) for d in domids)


class DaemonWatcher:
    """The thread behind :meth:`StubdomPlacement.watch_daemon`: woken by the
    gate when a stub domain is welcomed, it waits (bounded by
    ``ready_timeout``, interruptible by ``stop``) for that daemon's control
    socket, then reconciles."""

    def __init__(self, placement: StubdomPlacement,
                 on_recreated: Callable[[int, dict, bool], None] | None, *, ready_timeout: float) -> None:
        self.placement = placement
        self.on_recreated = on_recreated
        self.ready_timeout = ready_timeout
        self._wake = threading.Condition(threading.Lock())
        self._pending: list[int | None] = []  # pids of stub domains welcomed, not yet handled
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daemon-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stub_domain_connected(self, pid: int | None) -> None:
        """The gate's hook (its thread): a stub domain was welcomed."""
        with self._wake:
            self._pending.append(pid)
            self._wake.notify()

    def stop(self) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping.is_set():
                    self._wake.wait()
                if self._stopping.is_set():
                    return
                pid = self._pending[-1]
                self._pending.clear()
            event(log, logging.INFO, "stub_domain_connected", pid=pid or "unknown")
            try:
                hello = self.placement.toolstack.wait_ready(self.ready_timeout, stop=self._stopping)
            except DaemonUnavailable as e:
                event(log, logging.WARNING, "daemon_not_ready", pid=pid or "unknown",
                      waited_s=self.ready_timeout, error=e)
                continue
            if hello is None:  # stopping
                return
            try:
                self.placement.reconcile(hello.get("pid"))
            except ControlSocketError as e:
                event(log, logging.ERROR, "daemon_attach_failed", pid=hello.get("pid"), error=e)


def stubdom_placement(runtime_dir: str | os.PathLike[str], *, poll_window_us: int = 0,
                      call_timeout_ms: int = DEFAULT_CALL_TIMEOUT_MS, control_timeout: float = 10.0,
                      log_clock: Callable[[], float] = time.monotonic):
    """A ``placement=`` factory for :class:`~stubdom.platform.Platform`.
    ``log_clock``: the clock of the per-domain log rate limits."""

    def make(platform) -> StubdomPlacement:
        return StubdomPlacement(platform, runtime_dir, poll_window_us=poll_window_us,
                                call_timeout_ms=call_timeout_ms, control_timeout=control_timeout,
                                log_clock=log_clock)

    return make
