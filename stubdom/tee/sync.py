"""OP-TEE's sleeping locks: a thread that must wait parks in the normal world.

OP-TEE never blocks inside an SMC.  A thread that finds a mutex taken, or
waits on a condition variable, asks the normal world to put it to sleep with
OPTEE_RPC_CMD_NOTIFICATION WAIT on its own key, and whoever releases it asks
the normal world to wake that key with NOTIFICATION SEND; Linux's driver
blocks and wakes the calling tasks (``drivers/tee/optee/notif.c``).  This
module is that machinery, function for function:

* ``core/kernel/mutex.c``: ``__mutex_lock`` (wait while taken, retry when
  woken), ``__mutex_unlock`` (wake the next waiter), ``__condvar_wait_timeout``
  (queue as a condvar waiter on the mutex, unlock, wait, relock),
  ``cv_signal`` (promote one or all condvar waiters to mutex waiters);
* ``core/kernel/wait_queue.c``: ``wq_wait_init_condvar``, ``wq_wait_final``
  (one WAIT, then leave the queue whether woken or not), ``wq_wake_next``
  (mark the first plain waiter done and SEND to it), ``wq_promote_condvar``;
* ``core/kernel/notif.c``: ``notif_wait_timeout`` / ``notif_send_sync``, one
  RPC each with a single VALUE_INPUT param (a = WAIT or SEND, b = key,
  c = timeout in ms).

The key of a thread is ``NOTIF_SYNC_VALUE_BASE + thread id``; without
CFG_CORE_ASYNC_NOTIF (this model has no asynchronous notifications)
NOTIF_SYNC_VALUE_BASE is 0 (``core/include/kernel/notif.h``), so the key is
the thread's index in its partition.  Read locks (``wait_read``) are not
modelled: every lock here is taken for writing.

Every function that may sleep or wake is a generator run inside a thread's
generator (``yield from``), so the RPCs it issues are the thread's own.  The
model serialises all world entries, so nothing between two RPCs can race; a
lock is contended only when its holder is itself suspended in an RPC.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stubdom.optee.rpc import OPTEE_RPC_CMD_NOTIFICATION, OPTEE_RPC_NOTIFICATION_SEND, OPTEE_RPC_NOTIFICATION_WAIT

if TYPE_CHECKING:  # pragma: no cover
    from .thread import RpcReply, RpcRequest, Thread

__all__ = [
    "NOTIF_SYNC_VALUE_BASE",
    "WaitQueueElem",
    "Mutex",
    "Condvar",
    "notif_wait",
    "notif_send_sync",
]

# core/include/kernel/notif.h without CFG_CORE_ASYNC_NOTIF.
NOTIF_SYNC_VALUE_BASE = 0

# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator["RpcRequest", "RpcReply", Any]


def notif_wait(t: Thread, value: int, timeout_ms: int = 0) -> Gen:
    """notif_wait_timeout: sleep in the normal world on ``value``; returns
    the normal world's result."""
    from .thread import RpcParam

    res, _ = yield from t.rpc_cmd(OPTEE_RPC_CMD_NOTIFICATION,
                                  [RpcParam.value_in(OPTEE_RPC_NOTIFICATION_WAIT, value, timeout_ms)])
    return res


def notif_send_sync(t: Thread, value: int) -> Gen:
    """notif_send_sync: wake whoever sleeps on ``value``."""
    from .thread import RpcParam

    res, _ = yield from t.rpc_cmd(OPTEE_RPC_CMD_NOTIFICATION,
                                  [RpcParam.value_in(OPTEE_RPC_NOTIFICATION_SEND, value, 0)])
    return res


@dataclass(eq=False)
class WaitQueueElem:
    """struct wait_queue_elem: one sleeping thread."""

    handle: int  # the thread's id (its index in the partition)
    cv: Condvar | None = None  # waiting for this condvar, not (yet) for the mutex
    done: bool = False  # woken by wq_wake_next


def _wait_final(t: Thread, wq: list[WaitQueueElem], wqe: WaitQueueElem) -> Gen:
    """wq_wait_final: one WAIT, then out of the queue; True if woken."""
    yield from notif_wait(t, wqe.handle + NOTIF_SYNC_VALUE_BASE)
    wq.remove(wqe)
    return wqe.done


def _wake_next(t: Thread, wq: list[WaitQueueElem]) -> Gen:
    """wq_wake_next: the first waiter that is neither a condvar waiter nor
    already woken is marked done and sent its key."""
    for wqe in wq:
        if wqe.cv is not None or wqe.done:
            continue
        wqe.done = True
        yield from notif_send_sync(t, wqe.handle + NOTIF_SYNC_VALUE_BASE)
        return


@dataclass(eq=False)
class Mutex:
    """struct mutex (write-locked only): who holds it and who waits."""

    owner: int | None = None  # thread id of the holder (state -1), None when free (state 0)
    wq: list[WaitQueueElem] = field(default_factory=list)

    def lock(self, t: Thread) -> Gen:
        """__mutex_lock: take it, or wait in the normal world until the holder
        lets go and try again."""
        while True:
            if self.owner is None:
                self.owner = t.index
                return
            wqe = WaitQueueElem(t.index)
            self.wq.append(wqe)
            yield from _wait_final(t, self.wq, wqe)

    def unlock(self, t: Thread) -> Gen:
        """__mutex_unlock: release it and wake the next waiter, if any."""
        if self.owner != t.index:
            raise AssertionError(f"thread {t.index} unlocks a mutex held by {self.owner}")
        self.owner = None
        yield from _wake_next(t, self.wq)


@dataclass(eq=False)
class Condvar:
    """struct condvar: linked to the mutex of its first wait."""

    m: Mutex | None = None

    def wait(self, t: Thread, m: Mutex) -> Gen:
        """__condvar_wait_timeout (no timeout): queue on ``m`` as a condvar
        waiter, unlock ``m`` (waking its next waiter), sleep, relock."""
        if self.m is not None and self.m is not m:
            raise AssertionError("condvar used with two mutexes")
        if m.owner != t.index:
            raise AssertionError(f"thread {t.index} waits on a condvar without holding its mutex")
        self.m = m
        wqe = WaitQueueElem(t.index, cv=self)
        m.wq.append(wqe)
        m.owner = None
        yield from _wake_next(t, m.wq)
        yield from _wait_final(t, m.wq, wqe)
        yield from m.lock(t)

    def signal(self) -> None:
        """condvar_signal: the first condvar waiter becomes a mutex waiter
        (woken when the mutex is next unlocked).  Issues no RPC."""
        self._promote(only_one=True)

    def broadcast(self) -> None:
        """condvar_broadcast: every condvar waiter becomes a mutex waiter."""
        self._promote(only_one=False)

    def _promote(self, *, only_one: bool) -> None:
        if self.m is None:
            return
        for wqe in self.m.wq:
            if wqe.cv is self:
                wqe.cv = None
                if only_one:
                    return
