"""The backend of a teeif ring: pops requests, pushes responses. The shared
page is hostile: a request is copied out before anything looks at it, and a
req_prod the frontend could not legitimately have written is RingCorrupted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ring._entries import (
    Request,
    Response,
    check_room,
    read_requests,
    request_buffer,
    response_buffer,
    write_responses,
)
from ring._lib import check, ffi, lib
from ring._shared import _RingEnd

if TYPE_CHECKING:
    from _typeshed import StrPath

    from ring._ring import CBackRing, CData

__all__ = ["BackRing"]


class BackRing(_RingEnd):
    """One domain's teeif ring, seen from the backend (stubdom-teed). Not
    thread-safe: one owner pops and pushes.

    Every push returns whether the frontend must be notified (the
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY decision).
    """

    _ctype = "struct teeif_back_ring"
    _c: CBackRing

    @classmethod
    def create(cls, path: StrPath, ring_pages: int = 1, *, start: int = 0) -> BackRing:
        """Create a new ring file (it must not exist) and attach to it; the
        daemon does this per domain."""
        return cls(path, ring_pages, True, start)

    @classmethod
    def attach(cls, path: StrPath, ring_pages: int = 0) -> BackRing:
        """Attach to an existing ring (after the daemon restarted): resume at
        the shared rsp_prod, so requests taken but not answered before the
        restart are taken again. ``ring_pages`` 0 takes it from the file."""
        return cls(path, ring_pages, False, 0)

    def _attach(self) -> None:
        check(lib.teeif_back_attach(self._c, self._sring, self._pages), self.path, back=self._c)
        self._reqs = request_buffer(self._c.nr_ents)
        self._rsp1 = response_buffer(1)
        self._reqs_mem = ffi.buffer(self._reqs)
        self._rsp1_mem = ffi.buffer(self._rsp1)

    @property
    def owed(self) -> int:
        """Requests popped that still await a response."""
        self._live()
        return (self._c.req_cons - self._c.rsp_prod_pvt) & 0xFFFFFFFF

    # -- pop ----------------------------------------------------------------

    def pop(self) -> Request | None:
        """Take one request off the ring, or None if there is none."""
        self._live()
        n = check(lib.teeif_back_pop_requests(self._c, self._reqs, 1), self.path, back=self._c)
        return read_requests(self._reqs, 1, self._reqs_mem)[0] if n else None

    def pop_batch(self, max_entries: int | None = None) -> list[Request]:
        """Take up to ``max_entries`` (default: a ring's worth) requests."""
        self._live()
        limit = self._c.nr_ents if max_entries is None else min(max_entries, self._c.nr_ents)
        n = check(lib.teeif_back_pop_requests(self._c, self._reqs, limit), self.path, back=self._c)
        return read_requests(self._reqs, n, self._reqs_mem) if n else []

    def pop_raw(self, buf: CData, max_entries: int) -> int:
        """Copy up to ``max_entries`` requests into a ``request_buffer``;
        returns how many. The hot path."""
        self._live()
        check_room(buf, max_entries)
        return check(lib.teeif_back_pop_requests(self._c, buf, max_entries), self.path,
                     back=self._c)

    # -- push ---------------------------------------------------------------

    def push(self, rsp: Response) -> bool:
        """Push one response; True if the frontend must be notified."""
        self._live()
        write_responses(self._rsp1, (rsp,), self._rsp1_mem)
        rc = lib.teeif_back_push_responses(self._c, self._rsp1, 1, self._notify)
        if rc < 0:
            check(rc, self.path, back=self._c, wanted=1)
        return bool(self._notify[0])

    def push_batch(self, rsps: Sequence[Response]) -> bool:
        """Push every response in ``rsps`` with one notify decision."""
        self._live()
        n = len(rsps)
        if n > 1:
            buf = response_buffer(n)
            write_responses(buf, rsps)
        else:
            buf = self._rsp1
            write_responses(buf, rsps, self._rsp1_mem)
        return self.push_raw(buf, n)

    def push_raw(self, buf: CData, n: int) -> bool:
        """Push the first ``n`` entries of a ``response_buffer``; the hot path.
        Raises TooManyResponses if fewer than ``n`` requests await one."""
        self._live()
        check_room(buf, n)
        check(lib.teeif_back_push_responses(self._c, buf, n, self._notify), self.path,
              back=self._c, wanted=n)
        return bool(self._notify[0])

    def recheck_notify(self) -> bool:
        """True if a frontend that has just connected must be notified: its
        rsp_event asks to be woken by a response already on the ring (the
        notification for it may have gone to the previous frontend's
        channel). Call after accepting a new channel, before serving it."""
        self._live()
        return check(lib.teeif_back_recheck_notify(self._c), self.path, back=self._c) > 0

    # -- sleeping -----------------------------------------------------------

    def unconsumed(self) -> int:
        """Requests waiting to be popped (does not re-arm req_event)."""
        self._live()
        return check(lib.teeif_back_unconsumed(self._c), self.path, back=self._c)

    def final_check(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: True if requests are waiting; False
        means req_event is armed and the caller may sleep on the channel."""
        self._live()
        return check(lib.teeif_back_final_check(self._c), self.path, back=self._c) > 0

    def poll(self, spin_ns: int) -> bool:
        """Spin (GIL released) for up to ``spin_ns`` waiting for requests, then
        do the final check: False means go to sleep."""
        self._live()
        return check(lib.teeif_back_poll(self._c, spin_ns), self.path, back=self._c) > 0

    def spin(self, spin_ns: int) -> bool:
        """Spin (GIL released) for up to ``spin_ns`` waiting for requests
        WITHOUT the final check (req_event left alone); see FrontRing.spin."""
        self._live()
        return check(lib.teeif_back_spin(self._c, spin_ns), self.path, back=self._c) > 0
