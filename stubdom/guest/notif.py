"""Synchronous notifications (OPTEE_RPC_CMD_NOTIFICATION), after Linux's
drivers/tee/optee/notif.c: one waiter per key, and a SEND that finds no waiter
is remembered so the next WAIT on that key returns at once."""

from __future__ import annotations

import errno
import threading

__all__ = ["Notifications", "OPTEE_DEFAULT_MAX_NOTIF_VALUE"]

OPTEE_DEFAULT_MAX_NOTIF_VALUE = 255  # optee_private.h: used when ASYNC_NOTIF is absent


class Notifications:
    """Wait queue keyed by notification value.  Thread-safe.

    Results follow notif.c: 0, ``-EINVAL`` (key above max_key), ``-EBUSY``
    (someone already waits on that key) and ``-ETIMEDOUT`` (the WAIT's
    timeout, in milliseconds, elapsed; 0 means wait forever).
    """

    def __init__(self, max_key: int = OPTEE_DEFAULT_MAX_NOTIF_VALUE) -> None:
        self.max_key = max_key
        self._cond = threading.Condition()
        self._posted: set[int] = set()  # notif.bitmap
        self._waiting: dict[int, list[bool]] = {}  # key -> [completed] (notif.db)

    def wait(self, key: int, timeout_ms: int = 0) -> int:
        if key > self.max_key:
            return -errno.EINVAL
        with self._cond:
            if key in self._posted:
                self._posted.discard(key)
                return 0
            if key in self._waiting:
                return -errno.EBUSY
            done = [False]
            self._waiting[key] = done
            try:
                timeout = timeout_ms / 1000 if timeout_ms else None
                if not self._cond.wait_for(lambda: done[0], timeout):
                    return -errno.ETIMEDOUT
                return 0
            finally:
                del self._waiting[key]

    def send(self, key: int) -> int:
        if key > self.max_key:
            return -errno.EINVAL
        with self._cond:
            done = self._waiting.get(key)
            if done is not None:
                done[0] = True
                self._cond.notify_all()
            else:
                self._posted.add(key)
        return 0

    def waiters(self) -> frozenset[int]:
        """Keys someone is blocked on right now (for tests and statistics)."""
        with self._cond:
            return frozenset(self._waiting)
