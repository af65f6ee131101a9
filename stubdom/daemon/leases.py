"""Leases on calls a restarted daemon restored suspended in RPCs
(docs/faults.md, "The lease on a restored suspended call").

A guest may have sent the RETURN_FROM_RPC of such a call while no daemon
listened; its frontend then answered it ENOTAVAIL itself, the guest gave the
call up, and nothing of that reaches the new daemon. So each restored
suspended call is on a lease of ``mediator.call_timeout_ms`` (the bound the
platform puts on a guest waiting for the daemon, here put on the daemon
waiting for the guest): unresumed by then, it is given up in OP-TEE
(``recovery.give_up``); a later resume of it gets ERESUME.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from stubdom.optee.smc import OPTEE_SMC_CALL_RETURN_FROM_RPC

from .logs import event
from .recovery import give_up

if TYPE_CHECKING:
    from stubdom.mediator import Mediator

    from .calljournal import CallJournal

__all__ = ["Leases"]


class Leases:
    """The leases of one daemon. Everything runs in its trio thread, so the
    mediator is never entered from two places at once."""

    def __init__(self, *, mediator: Mediator, journal: CallJournal, lease_s: float,
                 logger: logging.Logger) -> None:
        self._mediator = mediator
        self._journal = journal  # CallJournal
        self.lease_s = lease_s
        self._logger = logger
        self._calls: dict[int, dict[int, int]] = {}  # domid -> {thread: seq} still leased
        self._scopes: dict[int, trio.CancelScope] = {}
        self.expired = 0  # restored suspended calls given up unresumed
        self.abandoned = 0  # of them, those OP-TEE completed
        self.lost_calls_settled = 0  # of them, those whose effect in OP-TEE was undone

    def grant(self, domid: int, suspended: dict[int, int]) -> None:
        """``suspended`` ({thread: call seq}) of ``domid`` go on a lease."""
        self._calls[domid] = dict(suspended)

    @property
    def domains(self) -> list[int]:
        return sorted(self._calls)

    def resumed(self, domid: int, tid: int) -> None:
        """The guest resumes the call on ``tid``: no longer on a lease
        (whatever the outcome)."""
        calls = self._calls.get(domid)
        if calls is not None:
            calls.pop(tid, None)

    def cancel(self, domid: int) -> None:
        """The domain is being destroyed: relinquish ends its calls now."""
        scope = self._scopes.pop(domid, None)
        if scope is not None:
            scope.cancel()
        self._calls.pop(domid, None)

    @property
    def leased(self) -> int:
        return sum(len(v) for v in self._calls.values())

    async def run(self, domid: int, deadline: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sleep until ``domid``'s leases end, then give up the calls still
        unresumed. Cancelled when the domain is destroyed or the daemon
        stops."""
        scope = trio.CancelScope()
        self._scopes[domid] = scope
        try:
            with scope:
                task_status.started()
                while self._calls.get(domid):
                    await trio.sleep_until(deadline)
                    if not self.expire(domid):
                        # the journal cannot be written: try again a lease later
                        deadline = trio.current_time() + self.lease_s
        finally:
            if self._scopes.get(domid) is scope:
                del self._scopes[domid]
            self._calls.pop(domid, None)

    def expire(self, domid: int) -> bool:
        """Give up every restored suspended call of ``domid`` its guest has
        not resumed. A ``begin`` (a RETURN_FROM_RPC of that thread) is
        journaled first: a kill in the middle is then recovered like a lost
        resume (settle). False: the journal cannot be written, nothing was
        done for the rest."""
        calls = self._calls.get(domid, {})
        for tid in sorted(calls):
            seq = calls[tid]
            if self._mediator.suspended(domid).get(tid) != seq:  # resumed, or given up at re-attach
                del calls[tid]
                continue
            if self._journal.kept:
                if not self._journal.healthy and not self._journal.checkpoint():
                    return False
                if not self._journal.begin(domid, OPTEE_SMC_CALL_RETURN_FROM_RPC, tid, None):
                    return False
            del calls[tid]
            try:
                given = give_up(self._mediator, domid, tid)
            finally:
                self._journal.state(domid)
            if given.error is not None:
                event(self._logger, logging.ERROR, "abandon_failed", domid=domid, thread=tid,
                      error=given.error)
            self.abandoned += given.ended
            self.lost_calls_settled += given.undone is not None
            self.expired += 1
            event(self._logger, logging.WARNING, "lease_expired", domid=domid, thread=tid,
                  seq=seq, abandoned=int(given.ended), lost_call=given.undone or "nothing to undo",
                  lease_ms=int(self.lease_s * 1000))
        return True
