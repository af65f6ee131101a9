"""The frontend of a teeif ring: pushes requests, pops responses.

In stubdom-teed the frontend is the platform's trap path, and the backend
(the stub domain) is the less trusted side: like the backend, the frontend
validates the peer's producer index and copies entries out before use.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ring._entries import (
    _REQ,
    _RSP,
    Request,
    Response,
    check_room,
    pack_entry,
    read_responses,
    request_buffer,
    response_buffer,
    write_request,
    write_requests,
)
from ring._evtchn import EventChannel
from ring._lib import check, ffi, lib
from ring._shared import _RingEnd

if TYPE_CHECKING:
    from _typeshed import StrPath

    from ring._ring import CData, CFrontRing

__all__ = ["CallStatus", "FrontRing"]


class CallStatus(enum.IntEnum):
    """What :meth:`FrontRing.call` did when it brought no answer back. Its
    request is on the ring in every case (teeif.h, teeif_front_call)."""

    WAITING = lib.TEEIF_CALL_WAITING  # the window ended with no response
    OTHER = lib.TEEIF_CALL_OTHER  # the oldest response is another id's: left on the ring
    FAILED = lib.TEEIF_CALL_FAILED  # the ring failed after the push: the next pop or spin raises it
    NOTIFY_FAILED = lib.TEEIF_CALL_NOTIFY_FAILED  # the notification could not be sent: nothing spun


_ANSWERED = lib.TEEIF_CALL_ANSWERED
# CallStatus by value: a dict lookup, not the enum's call (the hot path's fallback)
_STATUS = {s.value: s for s in CallStatus}
_new_response = tuple.__new__  # a Response without its Python-level __new__


class FrontRing(_RingEnd):
    """One domain's teeif ring, seen from the frontend. Not thread-safe: one
    owner pushes and pops (io/ring.h's single producer, single consumer).

    Every push returns whether the backend must be notified (the
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY decision); send that notification on
    the event channel.
    """

    _ctype = "struct teeif_front_ring"
    _c: CFrontRing

    @classmethod
    def create(cls, path: StrPath, ring_pages: int = 1, *, start: int = 0) -> FrontRing:
        """Create a new ring file (it must not exist) and attach to it."""
        return cls(path, ring_pages, True, start)

    @classmethod
    def attach(cls, path: StrPath, ring_pages: int = 0) -> FrontRing:
        """Attach to an existing ring (also after this end restarted): resume
        producing at the shared req_prod and consuming at rsp_prod. Responses
        to requests an earlier frontend left in flight still arrive: callers
        drop ids they do not know. ``ring_pages`` 0 takes it from the file."""
        return cls(path, ring_pages, False, 0)

    def _attach(self) -> None:
        check(lib.teeif_front_attach(self._c, self._sring, self._pages), self.path, front=self._c)
        self._req1 = request_buffer(1)
        self._times: Any = ffi.new("uint64_t[2]")  # call(timed=True)'s, for the tracer
        self._rsps = response_buffer(self._c.nr_ents)
        self._req1_mem = ffi.buffer(self._req1)
        self._rsps_mem = ffi.buffer(self._rsps)

    @property
    def free_requests(self) -> int:
        """Slots the frontend may still fill (io/ring.h RING_FREE_REQUESTS)."""
        self._live()
        return lib.teeif_front_free_requests(self._c)

    @property
    def in_flight(self) -> int:
        """Requests pushed whose responses have not been popped."""
        return self._c.nr_ents - self.free_requests

    # -- push ---------------------------------------------------------------

    def push(self, req: Request) -> bool:
        """Push one request; returns True if the backend must be notified.
        Raises RingFull if no slot is free."""
        self._live()
        write_request(self._req1_mem, req)
        rc = lib.teeif_front_push_requests(self._c, self._req1, 1, self._notify)
        if rc < 0:
            check(rc, self.path, front=self._c, wanted=1)
        return bool(self._notify[0])

    def push_batch(self, reqs: Sequence[Request]) -> bool:
        """Push every request in ``reqs`` with one notify decision; all or
        nothing (RingFull if they do not fit)."""
        self._live()
        n = len(reqs)
        buf = request_buffer(n) if n > 1 else self._req1
        write_requests(buf, reqs)
        return self.push_raw(buf, n)

    def push_raw(self, buf: CData, n: int) -> bool:
        """Push the first ``n`` entries of a ``request_buffer``; the hot path."""
        self._live()
        check_room(buf, n)
        check(lib.teeif_front_push_requests(self._c, buf, n, self._notify), self.path,
              front=self._c, wanted=n)
        return bool(self._notify[0])

    # -- one round trip -----------------------------------------------------

    def call(self, req: Request, spin_ns: int, chan: EventChannel, *, timed: bool = False) -> Response | CallStatus:
        """Push ``req``, notify ``chan`` if the push says so, spin (GIL
        released) for up to ``spin_ns`` and take the oldest response if it is
        ``req``'s answer: one C call for a caller that is the only one
        waiting on this ring. Returns that answer, or a :class:`CallStatus`
        saying why there is none yet (``req`` is pushed either way; a
        response of another id stays on the ring for ``pop``). Raises only
        when nothing was pushed: RingFull, RingTruncated. A ring that fails
        after the push is ``CallStatus.FAILED``: a truncated end stays
        truncated, and an impossible rsp_prod is refused by the next pop or
        spin too unless the backend set it right again (nothing was read
        with it). ``timed``: record when the push was done and when the
        answer was seen (``call_times``), for the tracer."""
        got = self.call_entry(req.id, req.vcpu, req.a, spin_ns, chan, timed, req.flags)
        if isinstance(got, CallStatus):
            return got
        return _new_response(Response, (got[0], got[1], got[2], got[3:]))

    def call_entry(self, rid: int, vcpu: int, regs: Sequence[int], spin_ns: int, chan: EventChannel,
                   timed: bool = False, flags: int = 0) -> tuple[int, ...] | CallStatus:
        """:meth:`call` with the request given as its fields and the answer
        as the response entry's fields, (id, status, flags, x0, ..., x7):
        the trap path's round trip without a Request or Response built."""
        if self._closed:
            self._live()
        try:
            _REQ.pack_into(self._req1_mem, 0, rid, vcpu, flags, *regs)
        except struct.error:
            pack_entry(_REQ, self._req1_mem, 0, rid, vcpu, flags, regs)  # raises what was wrong
            raise
        notify = self._notify
        rc = lib.teeif_front_call(self._c, self._req1, spin_ns, chan.fileno(), self._rsps, notify,
                                  self._times if timed else ffi.NULL)
        if rc < 0:
            check(rc, self.path, front=self._c, wanted=1)
        if notify[0]:
            chan._count_notify(notify[0])
        if rc == _ANSWERED:
            return _RSP.unpack_from(self._rsps_mem)
        return _STATUS[rc]

    def await_entry(self, rid: int, spin_ns: int, timed: bool = False) -> tuple[int, ...] | CallStatus:
        """``call_entry``'s wait again, nothing pushed: spin (GIL released)
        for up to ``spin_ns`` and take the oldest response only if its id is
        ``rid`` (teeif_front_await). For a caller that waits in slices and
        takes the interpreter back between them. Raises RingTruncated for a
        truncated end."""
        if self._closed:
            self._live()
        rc = lib.teeif_front_await(self._c, rid, spin_ns, self._rsps, self._times if timed else ffi.NULL)
        if rc < 0:
            check(rc, self.path, front=self._c)
        if rc == _ANSWERED:
            return _RSP.unpack_from(self._rsps_mem)
        return _STATUS[rc]

    def call_times(self) -> tuple[int, int]:
        """The last ``call(timed=True)``'s (push done, answer seen), in
        ``time.perf_counter_ns`` units (CLOCK_MONOTONIC); 0 where the call
        did not get that far."""
        return self._times[0], self._times[1]

    # -- pop ----------------------------------------------------------------

    def pop(self) -> Response | None:
        """Take one response off the ring, or None if there is none."""
        self._live()
        n = check(lib.teeif_front_pop_responses(self._c, self._rsps, 1), self.path, front=self._c)
        return read_responses(self._rsps, 1, self._rsps_mem)[0] if n else None

    def pop_batch(self, max_entries: int | None = None) -> list[Response]:
        """Take up to ``max_entries`` (default: a ring's worth) responses."""
        self._live()
        limit = self._c.nr_ents if max_entries is None else min(max_entries, self._c.nr_ents)
        n = check(lib.teeif_front_pop_responses(self._c, self._rsps, limit), self.path, front=self._c)
        return read_responses(self._rsps, n, self._rsps_mem) if n else []

    def pop_raw(self, buf: CData, max_entries: int) -> int:
        """Copy up to ``max_entries`` responses into a ``response_buffer``;
        returns how many. The hot path."""
        self._live()
        check_room(buf, max_entries)
        return check(lib.teeif_front_pop_responses(self._c, buf, max_entries), self.path,
                     front=self._c)

    # -- sleeping -----------------------------------------------------------

    def unconsumed(self) -> int:
        """Responses waiting to be popped (does not re-arm rsp_event)."""
        self._live()
        return check(lib.teeif_front_unconsumed(self._c), self.path, front=self._c)

    def final_check(self) -> bool:
        """RING_FINAL_CHECK_FOR_RESPONSES: True if responses are waiting; False
        means rsp_event is armed and the caller may sleep on the channel."""
        self._live()
        return check(lib.teeif_front_final_check(self._c), self.path, front=self._c) > 0

    def poll(self, spin_ns: int) -> bool:
        """Spin on the ring (GIL released) for up to ``spin_ns`` waiting for
        responses, then do the final check: False means go to sleep."""
        self._live()
        return check(lib.teeif_front_poll(self._c, spin_ns), self.path, front=self._c) > 0

    def spin(self, spin_ns: int) -> bool:
        """Spin (GIL released) for up to ``spin_ns`` waiting for responses
        WITHOUT the final check: rsp_event is left alone, so the backend
        keeps not notifying. For spinning in slices: call ``poll`` (or
        ``final_check``) once, at the end of the whole window."""
        self._live()
        return check(lib.teeif_front_spin(self._c, spin_ns), self.path, front=self._c) > 0
