"""One domain's backend: its teeif ring and event channel, served by one trio
task (docs/daemon.md, "Serving a domain").

The frontend (the platform's trap path) is hostile as far as this task is
concerned: a corrupted ring index or a ring file truncated under the
daemon's mapping tears down this domain's channel and nothing else; its
end-of-file means it died, and the domain stays until the toolstack destroys
it (a restarted frontend may connect again, and is notified at once if
responses it waits for are already on the ring).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import outcome
import trio

import ring
from stubdom.optee.smc import OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_RETURN_ENOTAVAIL
from stubdom.optee.smccc import function_id
from stubdom.trace import TRACE_ID_BIT, TRACER, TracedCall, now_ns

from .logs import GuestLog, event
from .runq import tasks_runnable
from .stats import DomainStats

if TYPE_CHECKING:
    from .fastpath import FastPath

__all__ = ["DomainBackend", "RingPoller", "BACKEND_FAILURE_STATUS"]

_ZERO = (0,) * 8
# teeif_response.status when the backend itself failed on a request (a daemon
# bug caught at this boundary): the vCPU gets a defined error, registers 0.
BACKEND_FAILURE_STATUS = -errno.EIO
# The shared spin runs in slices this long, with a trio checkpoint between
# them: the control socket and newly notified domains wait at most a slice.
_SPIN_SLICE_NS = 50_000
_TAKE_OVER = object()  # a parked backend's wake-up value: "you spin now"
# why a domain's channel was torn down, as logged
_BROKEN_EVENTS = {ring.RingCorrupted: "ring_corrupted", ring.RingTruncated: "ring_truncated"}


class RingPoller:
    """One spin over every idle domain ring, and one sleep for all of them
    (docs/performance.md, "How the stub domain polls").

    A backend that found its ring empty parks here instead of spinning on
    its own ring: one parked task at a time (the *spinner*) spins in C over
    all parked rings at once, GIL released, and wakes the owners of those
    that got requests. The polling window counts from the last request seen
    on any ring. When it ends with nothing anywhere, every parked ring gets
    its final check (req_event armed) and its event channel joins one epoll
    set; the owners stay parked and only the spinner sleeps, on that set.
    A notification wakes the spinner, which drains that channel for its
    owner (end-of-file is raised in the owner), wakes it, and spins again.

    So with calls rotating over many domains the daemon stays awake for all
    of them and no frontend needs to notify, where a spin per task made the
    next domain wait out the window of the one just served; and the end of
    a window costs one final check and at most one epoll registration per
    ring, not a task switch per ring.
    """

    def __init__(self, window_ns: int, *, slice_ns: int = _SPIN_SLICE_NS) -> None:
        self.window_ns = window_ns
        # answers given in C during the spin (fastpath.py); answered(domid)
        # is told of each domain that got some (fair service's bookkeeping)
        self.fast: FastPath | None = None
        self.answered: Callable[[int], None] | None = None
        self._slice = max(1, min(window_ns, slice_ns))
        self._set = ring.BackSpinSet()
        self._slots: dict[ring.BackRing, int] = {}  # watched rings
        self._rings: dict[int, ring.BackRing] = {}
        self._chans: dict[int, ring.EventChannel] = {}
        self._parked: dict[int, trio.lowlevel.Task] = {}  # slot -> owner task waiting here
        self._epoll = select.epoll() if window_ns else None  # channels of armed parked rings
        self._fd_slot: dict[int, int] = {}  # registered channel fd -> slot
        self._fast_slots: dict[int, ring.FastRing] = {}  # slots answered in C as well
        self._spinning = False
        self._idle: trio.CancelScope | None = None  # the spinner sleeping on the epoll set
        self.spins = 0  # C spin slices run
        self.windows_over = 0  # windows that ended with nothing on any ring: the spinner slept

    @property
    def parked(self) -> int:
        """Backends waiting here (the spinner included)."""
        return len(self._parked)

    @property
    def watched(self) -> int:
        """Rings in the shared spin (parked, or found busy and not yet forgotten)."""
        return len(self._slots)

    @property
    def asleep(self) -> bool:
        """The spinner sleeps on the parked rings' channels (window over)."""
        return self._idle is not None

    async def wait_for_requests(self, ring_: ring.BackRing, chan: ring.EventChannel,
                                fast: ring.FastRing | None = None) -> bool:
        """Return when ``ring_`` may have requests (look again). Raises
        PeerDied when its channel reached end-of-file. Needs a window > 0.
        ``fast``: the ring's state in the fast path's table; what the table
        answers during the spin never wakes the owner. True when the spin's
        table looked at the head (it is the owner's), False when nobody did."""
        slot = self._slots.get(ring_)
        if slot is None:
            slot = self._slots[ring_] = self._set.add(ring_, fast)
            self._rings[slot] = ring_
            if fast is not None:
                self._fast_slots[slot] = fast
        self._chans[slot] = chan
        self._parked[slot] = trio.lowlevel.current_task()
        if not self._spinning:
            return await self._spin(slot)
        if self._idle is not None:
            self._idle.cancel()  # the spinner sleeps: work is happening, spin again
            self._idle = None

        def abort(_raise_cancel):
            self._parked.pop(slot, None)
            return trio.lowlevel.Abort.SUCCEEDED

        got = await trio.lowlevel.wait_task_rescheduled(abort)
        if got is _TAKE_OVER:
            self._parked[slot] = trio.lowlevel.current_task()
            return await self._spin(slot)
        return got is True

    def forget(self, ring_: ring.BackRing) -> None:
        """Stop watching ``ring_`` (its owner stopped serving this channel;
        before the ring is closed)."""
        slot = self._slots.pop(ring_, None)
        if slot is None:
            return
        self._set.discard(slot)
        del self._rings[slot]
        self._fast_slots.pop(slot, None)
        self._parked.pop(slot, None)
        self._chans.pop(slot, None)
        for fd, s in list(self._fd_slot.items()):
            if s == slot:
                self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        del self._fd_slot[fd]
        assert self._epoll is not None  # a channel is registered only in a poller's epoll set
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already

    def _wake(self, slot: int, value) -> None:
        task = self._parked.pop(slot)
        trio.lowlevel.reschedule(task, value if isinstance(value, outcome.Outcome) else outcome.Value(value))

    async def _spin(self, own: int) -> bool:
        self._spinning = True
        try:
            last_work = time.perf_counter_ns()
            while True:
                # with other tasks ready (a domain's call between two of its
                # steps), look once and let them go on: they must not wait
                # out a slice, and a ring that got work is seen at once
                busy = tasks_runnable()
                looked = False  # the fast path's table looked at the rings it leaves ready
                if self.fast is not None and self._fast_slots:
                    ready, served, looked = self.fast.spin(self._set, 0 if busy else self._slice)
                    if served:
                        last_work = time.perf_counter_ns()
                        if self.answered is not None:
                            for slot in served:
                                self.answered(self._fast_slots[slot].target)
                else:
                    ready = self._set.spin(0 if busy else self._slice)
                self.spins += 1
                if ready:
                    mine = False
                    for slot in ready:
                        if slot == own:
                            mine = True
                        elif slot in self._parked:
                            self._wake(slot, looked and slot in self._fast_slots)
                        else:  # its owner is serving: it needs no spin until it parks
                            self.forget(self._rings[slot])
                    if mine:
                        return looked and own in self._fast_slots
                    last_work = time.perf_counter_ns()
                elif time.perf_counter_ns() - last_work >= self.window_ns:
                    if await self._window_over(own):
                        return False
                    last_work = time.perf_counter_ns()
                # the woken backends serve their batches, the control socket runs
                await trio.lowlevel.checkpoint()
        finally:
            self._parked.pop(own, None)
            self._spinning = False
            if self._parked:  # someone must go on spinning for the others
                self._spinning = True
                self._wake(next(iter(self._parked)), _TAKE_OVER)

    async def _window_over(self, own: int) -> bool:
        """Arm every parked ring; if none has work, sleep on their channels
        until a notification (or a newly parked backend). True: our own ring
        may have requests."""
        epoll = self._epoll
        assert epoll is not None  # only a poller with a window (window_ns > 0) parks rings to sleep on
        mine = woke = False
        for slot in list(self._parked):
            try:
                more = self._rings[slot].final_check()
            except ring.RingError:
                more = True  # its owner's pop reports it
            if more:
                if slot == own:
                    mine = True
                else:
                    self._wake(slot, False)  # nobody answered its head in C yet
                    woke = True
                continue
            fd = self._chans[slot].fileno()
            if fd not in self._fd_slot:
                epoll.register(fd, select.EPOLLIN)
                self._fd_slot[fd] = slot
        if mine or woke:
            return mine
        self.windows_over += 1
        try:
            with trio.CancelScope() as self._idle:
                await trio.lowlevel.wait_readable(epoll.fileno())
        finally:
            self._idle = None
        for fd, _ in epoll.poll(0):
            owner = self._fd_slot.get(fd)
            if owner is None:
                continue
            if owner != own and owner not in self._parked:
                self._unregister(fd)  # its owner is awake and will drain it
                continue
            result: outcome.Outcome[bool]
            try:
                self._chans[owner].drain()
                result = outcome.Value(False)  # a notification: C has not looked
            except (ring.PeerDied, ring.RingError, OSError) as e:
                self._unregister(fd)
                result = outcome.Error(e)
            if owner == own:
                result.unwrap()
                mine = True
            else:
                self._wake(owner, result)
        return mine


class DomainBackend:
    """The daemon's side of domain ``domid``: created by domain_create, ended
    by domain_destroy (``close()``). ``run`` is the serving task.

    ``await serve_call(backend, vcpu, regs) -> (regs, refused_reason | None)``
    is the daemon's policy + mediator step. A gate hypercall inside it is
    synchronous (the stub domain's vCPU is inside the hypervisor for it);
    between the bounded steps of a call's translation, and between the
    requests of a batch when other domains are ready, other domains run.
    """

    def __init__(self, domid: int, directory: Path, ring_pages: int, *, hwdom: bool,
                 direct_mapped: bool, daemon, logger: logging.Logger, poll_window_ns: int,
                 poller: RingPoller | None = None, attach: bool = False) -> None:
        self.domid = domid
        self.directory = directory
        self.ring_path = directory / ring.RING_FILE
        self.evtchn_path = directory / ring.EVTCHN_FILE
        self.hwdom = hwdom
        self.direct_mapped = direct_mapped
        self._daemon = daemon
        self._logger = logger
        self._poll_ns = poll_window_ns
        self._poller = poller  # shared by the daemon's backends; None: spin on our own ring
        self.stats = DomainStats()
        self.log = GuestLog(logger, domid)
        self.state = "created"  # created → connected → (peer-died | broken) → closed
        self.connections = 0
        directory.mkdir(mode=0o700, exist_ok=True)
        attached = self._attach(ring_pages) if attach and self.ring_path.exists() else None
        if attached is not None:
            ring_pages = attached.ring_pages
        else:
            # a domain never inherits a stale ring (ring is O_EXCL): files left
            # by a daemon that died are ours to replace
            self.ring_path.unlink(missing_ok=True)
            attached = ring.BackRing.create(self.ring_path, ring_pages)
        self.ring: ring.BackRing = attached
        try:
            self.listener = ring.EventChannelListener(self.evtchn_path, replace=True)
        except BaseException:
            self.ring.close()
            self.ring_path.unlink(missing_ok=True)
            raise
        self.ring_pages = ring_pages
        self.channel: ring.EventChannel | None = None
        # this domain in the fast path's table (fastpath.py), if the daemon has one
        fast = getattr(daemon, "fast", None)
        self._fast: FastPath | None = fast
        self.fast: ring.FastRing | None = fast.ring_state(domid) if fast is not None else None
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    def _attach(self, ring_pages: int) -> ring.BackRing | None:
        """A restarted daemon recovering the domain (docs/faults.md): the
        frontend keeps its mapping; requests left on it are the caller's.
        None if the frontend broke the ring while no daemon watched it (a
        file truncated or of a size no ring has, impossible indices): the
        domain gets a fresh ring as at creation, which its frontend finds on
        reconnecting (a new file), and the other domains are recovered as
        usual."""
        try:
            return ring.BackRing.attach(self.ring_path)
        except (ring.RingSizeError, ring.RingCorrupted, ring.RingTruncated) as e:
            self.log.event(logging.ERROR, "ring_replaced", detail=f"{type(e).__name__}: {e}",
                           ring_pages=ring_pages)
            return None

    # -- the serving task ----------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                task_status.started()
                await self._serve_forever()
        finally:
            if self._poller is not None:
                self._poller.forget(self.ring)
            self._done.set()

    async def _serve_forever(self) -> None:
        nr = self.ring.size
        reqs = ring.request_buffer(nr)
        rsps = ring.response_buffer(nr)
        while True:
            await self.listener.wait_readable()
            self.channel = chan = self.listener.accept(timeout=0)
            self.connections += 1
            self.state = "connected"
            # a frontend can connect as often as it likes: its domain's limit
            self.log.event(logging.INFO, "frontend_connected", connection=self.connections)
            try:
                # Responses pushed while no channel (or a dead one) was there
                # were never announced to this frontend, which may already be
                # asleep on them (docs/protocol.md, "Restarts").
                if self.ring.recheck_notify():
                    chan.notify()
                await self._serve_channel(chan, reqs, rsps, nr)
            except ring.PeerDied:
                self.state = "peer-died"
                self.log.event(logging.WARNING, "frontend_died", connection=self.connections)
            except (ring.RingError, OSError) as e:
                # RingCorrupted, RingTruncated: a hostile frontend; anything
                # else here is a daemon bug. Either way only this domain's
                # channel goes.
                self.state = "broken"
                name = _BROKEN_EVENTS.get(type(e), "backend_broken")
                self.log.event(logging.ERROR, name, detail=f"{type(e).__name__}: {e}")
                self._close_channel()
                self.listener.close()  # no reconnecting to a ring we cannot trust
                return
            finally:
                if self._poller is not None:
                    self._poller.forget(self.ring)
                self._close_channel()

    async def _serve_channel(self, chan: ring.EventChannel, reqs, rsps, nr: int) -> None:
        fast, state = self._fast, self.fast
        if state is None:
            return await self._serve_requests(chan, reqs, rsps, nr)
        assert fast is not None  # a state comes from the daemon's fast path
        state.evtchn_fd = chan.fileno()  # answers given in C are announced on it
        fast.compile(self.domid, state)
        try:
            await self._serve_requests(chan, reqs, rsps, nr)
        finally:
            state.evtchn_fd = -1  # no channel: C answers nothing

    async def _serve_requests(self, chan: ring.EventChannel, reqs, rsps, nr: int) -> None:
        ring_ = self.ring
        state = self.fast
        c_looked = False  # the shared spin's table just left the head to us
        while True:
            if TRACER.on:
                await self._serve_traced(chan, reqs, rsps, nr, c_looked)
                c_looked = False
                continue
            n = self._pop(reqs, nr, c_looked)
            c_looked = False
            if n is None:
                # others run; then the head again, C first: the guest may
                # have made its next call while C made this one's SMC
                await trio.lowlevel.checkpoint()
                continue
            if state is not None and state.paused:
                state.resume()  # the request C left at the head is popped: C may go on after it
            if n:
                self.stats.in_flight += n
                done = 0  # answered, not yet pushed
                gone = None  # the frontend's end-of-file, met notifying it
                last = n - 1
                for i in range(n):
                    await self._serve_one(reqs[i], rsps[done])
                    self.stats.in_flight -= 1
                    done += 1
                    # (the last is answered below either way)
                    if i != last and tasks_runnable():
                        # others are ready: answer what we have, then let
                        # them run (a bounded share per turn); alone, the
                        # batch is answered at once, one notification
                        if ring_.push_raw(rsps, done):
                            gone = gone or _notify(chan)
                        self._daemon.fair.answered(self.domid)
                        done = 0
                        await trio.lowlevel.checkpoint()
                if done:
                    if ring_.push_raw(rsps, done):
                        gone = gone or _notify(chan)
                    self._daemon.fair.answered(self.domid)
                if gone is not None:
                    raise gone
                # other domains and the control socket run between batches
                await trio.lowlevel.checkpoint()
                continue
            if self._poller is not None and self._poller.window_ns:
                # one spin over all idle rings, then one sleep for all channels
                # (woken by the spin: its table has looked at the head already)
                c_looked = await self._poller.wait_for_requests(ring_, chan, state)
                continue
            if ring_.poll(self._poll_ns):  # spins, then the final check
                continue
            await chan.wait_readable()
            chan.drain()  # PeerDied once the last notifications are drained

    def _pop(self, reqs, nr: int, c_looked: bool) -> int | None:
        """Pop up to ``nr`` requests into ``reqs``: C answers what it may at
        the head first and only then the rest is popped, in one call, so
        nothing overtakes C on the head (``c_looked``: the spin's table left
        the head to us just now: pop). None: C answered everything there was."""
        fast, state = self._fast, self.fast
        if state is None or c_looked:
            return self.ring.pop_raw(reqs, nr)
        assert fast is not None  # a state comes from the daemon's fast path
        answered, n = fast.serve_pop(self.ring, state, reqs, nr)
        if answered:
            self._daemon.fair.answered(self.domid)
            if not n:
                return None
        return n

    async def _serve_traced(self, chan: ring.EventChannel, reqs, rsps, nr: int, c_looked: bool) -> None:
        """One turn of _serve_channel's loop with tracing on: the same steps,
        and the spans of the requests the frontend marked as sampled
        (stubdom.trace.TRACE_ID_BIT in their id)."""
        ring_ = self.ring
        t0 = now_ns()
        n = self._pop(reqs, nr, c_looked)
        if n is None:
            await trio.lowlevel.checkpoint()
            return
        if not n:
            if self._poller is not None and self._poller.window_ns:
                await self._poller.wait_for_requests(ring_, chan, self.fast)
                return
            if ring_.poll(self._poll_ns):
                return
            await chan.wait_readable()
            chan.drain()
            return
        t1 = now_ns()
        if self.fast is not None and self.fast.paused:
            self.fast.resume()
        self.stats.in_flight += n
        done = 0
        gone = None
        owed: list[TracedCall] = []  # sampled calls answered, not yet pushed
        for i in range(n):
            req = reqs[i]
            call = None
            if req.id & TRACE_ID_BIT:
                call = TracedCall(("teeif", self.domid, req.id), args={"domid": self.domid, "id": f"{req.id:#x}"})
                TRACER.span(call, "ring pop", "daemon", t0, t1, {"batch": n})
                TRACER.flow(call, "f", f"teeif/d{self.domid}/{req.id:x}/req", "teeif request", t0 + 1)
                owed.append(call)
            # the call is this task's until serve_call takes it (synchronously,
            # before its first await); serve_call sets it again after each
            TRACER.set_current(call)
            s0 = now_ns()
            await self._serve_one(req, rsps[done], call)
            TRACER.set_current(None)
            if call is not None:
                TRACER.span(call, "serve", "daemon", s0, now_ns(),
                            {"fn": f"{req.a[0] & 0xFFFFFFFF:#x}", "ret": f"{rsps[done].a[0] & 0xFFFFFFFF:#x}"})
            self.stats.in_flight -= 1
            done += 1
            if tasks_runnable() or i == n - 1:
                p0 = now_ns()
                if ring_.push_raw(rsps, done):
                    gone = gone or _notify(chan)
                p1 = now_ns()
                for c in owed:
                    TRACER.span(c, "reply push", "daemon", p0, p1, {"batch": done})
                    TRACER.flow(c, "s", f"teeif/d{self.domid}/{c.key[2]:x}/rsp", "teeif response", p1 - 1)
                owed.clear()
                self._daemon.fair.answered(self.domid)
                done = 0
                if i != n - 1:
                    await trio.lowlevel.checkpoint()
        if gone is not None:
            raise gone
        await trio.lowlevel.checkpoint()

    async def _serve_one(self, req, rsp, call: TracedCall | None = None) -> None:
        a = tuple(req.a)
        rsp.id = req.id
        rsp.flags = 0
        t0 = time.perf_counter_ns()
        try:
            regs, refused = await self._daemon.serve_call(self, req.vcpu, a)
        except Exception as e:  # a daemon bug: the guest gets a defined error
            self.stats.record_failure(a[0])
            self.log.event(logging.ERROR, "backend_failure", function=f"{a[0]:#x}",
                           error=f"{type(e).__name__}: {e}")
            rsp.status = BACKEND_FAILURE_STATUS
            rsp.a = _ZERO
            return
        rsp.status = 0
        rsp.a = regs
        if refused is not None:
            self.stats.record_refusal(a[0], refused)
        else:
            t1 = time.perf_counter_ns()
            self.stats.record(a[0], regs[0], t1 - t0)
            if call is not None:
                TRACER.span(call, "stats", "daemon", t1, now_ns())

    def absorb_fast(self) -> None:
        """Add what C answered for this domain since the last time to its
        statistics (before they are read)."""
        if self.fast is None:
            return
        latencies = self.fast.take_latencies()
        for rule, n in self.fast.take_answered():
            self.stats.record_answered_in_c(rule.function, n)
        self.stats.record_latencies(latencies)

    # -- teardown ------------------------------------------------------------

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    async def stop(self) -> None:
        """Stop serving (between batches: a call is never cut in half) and
        wait until the task has ended."""
        self._scope.cancel()
        await self._done.wait()

    def close(self) -> None:
        """Close the channel, the listener and the ring; remove the files."""
        self._close_channel()
        self.listener.close()
        self.ring.close()
        self.ring_path.unlink(missing_ok=True)
        try:
            os.rmdir(self.directory)
        except OSError as e:  # something else put a file there: leave it, say so
            event(self._logger, logging.WARNING, "domain_dir_not_removed", domid=self.domid,
                  dir=self.directory, error=e.strerror)
        self.state = "closed"

    def describe(self) -> dict:
        return {"domid": self.domid, "hwdom": self.hwdom, "direct_mapped": self.direct_mapped,
                "state": self.state, "dir": str(self.directory), "ring_pages": self.ring_pages,
                "connections": self.connections}


def _notify(chan: ring.EventChannel) -> ring.PeerDied | None:
    """Notify the frontend; its death is returned, not raised. The requests
    of the batch already taken off the ring are answered even so: nobody
    else would answer them, their slots would stay owed for good, and some
    may be a restarted frontend's, which is told on being accepted
    (``BackRing.recheck_notify``)."""
    try:
        chan.notify()
    except ring.PeerDied as e:
        return e
    return None


def refuse_while_draining(a0: int) -> tuple | None:
    """While the daemon drains, only RETURN_FROM_RPC (the continuation of an
    admitted call) goes on; anything else is answered ENOTAVAIL."""
    if function_id(a0) == OPTEE_SMC_CALL_RETURN_FROM_RPC:
        return None
    return (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7
