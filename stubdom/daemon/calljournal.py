"""What the daemon journals about the calls it serves, and when
(docs/faults.md, "What survives the daemon"): a domain's ``domain`` record
before its VM_CREATED, a ``begin`` before a call may change what OP-TEE
holds, the domain's snapshot (``state``) after, ``gone`` once it is
destroyed; a checkpoint rewrites the whole file from the current state.

A journal that cannot be written makes the daemon refuse state-changing
calls (their guests get ENOTAVAIL, nothing reaches the TEE) until a
checkpoint succeeds again: :attr:`CallJournal.healthy`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from stubdom.mediator import BadSnapshot, Intent, Snapshot

from . import journal as jr
from .errors import JournalWriteError
from .logs import event

__all__ = ["CallJournal", "SYNC_PER_CALL", "JOURNAL_COMPACT_BYTES"]

# Per-call records (begin, state) are written, not fsync'd: the fault they
# guard against is the daemon's own death, and a completed write(2) is in the
# page cache, which outlives the process. An fsync would only help if the
# host itself went down — and then the platform, its secure world and every
# domain go with it, so there is nothing to reconcile. Domain lifecycle
# records and checkpoints are fsync'd (they are rare). On a disk-backed
# runtime directory an fsync per call cost ~16 ms per standard call here.
SYNC_PER_CALL = False
# Past this size the journal is rewritten from the current state (a
# checkpoint): it only ever needs the latest record of each domain.
JOURNAL_COMPACT_BYTES = 1 << 20


class CallJournal:
    """The daemon's journal of the domains it serves. ``journal`` None: none
    is kept (in-process tests); every operation then succeeds doing nothing,
    and :meth:`checkpoint` says False."""

    def __init__(self, journal: jr.Journal | None, snapshot: Callable[[int], Snapshot],
                 logger: logging.Logger) -> None:
        self.journal = journal
        self._snapshot = snapshot
        self._logger = logger
        self.healthy = journal is not None
        self.created: dict[int, jr.DomainEntry] = {}  # each served domain's ``domain`` record
        self._seq = 0  # numbers ``begin`` records

    @property
    def kept(self) -> bool:
        return self.journal is not None

    def domain(self, created: jr.DomainEntry) -> None:
        """Record a domain about to get its partition (before VM_CREATED: a
        restart must know of every partition it may own). Raises
        JournalWriteError; the daemon then refuses the domain."""
        if self.journal is None:
            return
        try:
            self.journal.append(created)
        except JournalWriteError as e:
            self.failed(e)
            raise

    def serving(self, domid: int, created: jr.DomainEntry) -> None:
        """``domid`` is served from now on (its snapshots are journaled)."""
        if self.journal is not None:
            self.created[domid] = created

    def begin(self, domid: int, fn: int, tid: int, intent: Intent | None) -> bool:
        """A ``begin`` before the call may change what OP-TEE holds. False:
        the journal cannot be written; the call must be refused."""
        if self.journal is None:
            return True
        if not self.healthy:
            return False  # retried at rest (serve_call: checkpoint)
        self._seq += 1
        try:
            self.journal.append(jr.begin_record(domid, self._seq, fn, tid, intent), sync=SYNC_PER_CALL)
        except JournalWriteError as e:
            self.failed(e)
            return False
        return True

    def state(self, domid: int) -> None:
        """``domid``'s snapshot, now at rest (after a call)."""
        if self.journal is None or domid not in self.created or not self.healthy:
            return
        if self.journal.size > JOURNAL_COMPACT_BYTES:
            self.checkpoint()  # rewrites every domain's current state, this one's included
            return
        try:
            self.journal.append(jr.state_record(domid, self._snapshot(domid)), sync=SYNC_PER_CALL)
        except JournalWriteError as e:
            self.failed(e)
        except BadSnapshot as e:  # a mediator bug: the journal cannot vouch any more
            event(self._logger, logging.ERROR, "journal_snapshot_failed", domid=domid, error=e)
            self.healthy = False

    def gone(self, domid: int) -> None:
        """``domid`` is no longer served: nothing of it to recover."""
        self.created.pop(domid, None)
        if self.journal is None or not self.healthy:
            return  # a checkpoint writes only the domains still served
        try:
            self.journal.append(jr.gone_record(domid))
        except JournalWriteError as e:
            self.failed(e)

    def failed(self, e: JournalWriteError) -> None:
        if self.healthy:
            event(self._logger, logging.ERROR, "journal_write_failed", path=e.path,
                  errno=e.errno, error=str(e))
        self.healthy = False

    def checkpoint(self) -> bool:
        """Rewrite the journal from the current state of every served domain
        (startup, and after a write failure). True if it is healthy again."""
        if self.journal is None:
            return False
        records: list[jr.Entry] = []
        for domid in sorted(self.created):
            records.append(self.created[domid])
            try:
                records.append(jr.state_record(domid, self._snapshot(domid)))
            except BadSnapshot as e:
                event(self._logger, logging.ERROR, "journal_snapshot_failed", domid=domid, error=e)
                return False
        try:
            self.journal.rewrite(records)
        except JournalWriteError as e:
            self.failed(e)
            return False
        if not self.healthy:
            event(self._logger, logging.INFO, "journal_writable", path=self.journal.path)
        self.healthy = True
        return True

    def statistics(self) -> dict:
        j = self.journal
        if j is None:
            return {"kept": False}
        return {"kept": True, "healthy": self.healthy, "path": str(j.path), "size": j.size,
                "appends": j.appends, "syncs": j.syncs, "failures": j.failures}
