"""The call queue of Linux's OP-TEE driver (optee_cq_* in call.c).

Every yielding call joins the queue before its first SMC and leaves it when
the call is over.  When the secure world's thread count is known, at most that
many calls are in the secure world at once; when OP-TEE still answers
ETHREAD_LIMIT the caller sleeps until another call completes, then re-issues
the same registers.  A completion is never lost: it is recorded on a waiter
that is already queued, exactly as Linux's ``struct completion`` is.
"""

from __future__ import annotations

import threading

__all__ = ["CallQueue", "CallWaiter"]


class CallWaiter:
    """One caller's place in the queue (``struct optee_call_waiter``)."""

    __slots__ = ("completed",)

    def __init__(self) -> None:
        self.completed = False


class CallQueue:
    """Bounded by ``thread_count`` when it is non-zero (0 = unknown, unbounded)."""

    def __init__(self, thread_count: int = 0) -> None:
        self.thread_count = thread_count
        self._cond = threading.Condition()
        self._waiters: list[CallWaiter] = []
        self._in_flight = 0
        self.ethread_limit_waits = 0  # statistics: how often ETHREAD_LIMIT made a caller sleep

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def enter(self) -> CallWaiter:
        """Join the queue; blocks while all known secure threads are taken."""
        w = CallWaiter()
        with self._cond:
            self._waiters.append(w)
            while self.thread_count and self._in_flight >= self.thread_count:
                self._cond.wait()
            self._in_flight += 1
        return w

    def wait_for_completion(self, w: CallWaiter) -> None:
        """Sleep until another call completes (after ETHREAD_LIMIT)."""
        with self._cond:
            self.ethread_limit_waits += 1
            self._cond.wait_for(lambda: w.completed)
            w.completed = False
            # to the back of the line, out of the way of the other waiters
            self._waiters.remove(w)
            self._waiters.append(w)

    def leave(self, w: CallWaiter) -> None:
        """The call is over: its secure thread is free, wake one waiter (two if
        this caller had itself been handed a completion it no longer needs)."""
        with self._cond:
            self._waiters.remove(w)
            self._in_flight -= 1
            self._complete_one()
            if w.completed:
                self._complete_one()
            self._cond.notify_all()

    def _complete_one(self) -> None:
        for other in self._waiters:
            if not other.completed:
                other.completed = True
                return
