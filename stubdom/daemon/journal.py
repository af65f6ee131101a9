"""The daemon's journal: what it needs to recover its mediator state after a
SIGKILL (docs/faults.md).

File ``<runtime_dir>/stubdom-teed/journal``: a 16-byte header
(``b"SDTJRNL\\0"``, u32 version, u32 0), then records, each
``u32 length, u32 crc32(payload), payload`` (little-endian), the payload one
msgpack map with ``"t"``:

``domain``  {domid, hwdom, direct_mapped, limits, static_shm} — before VM_CREATED
``state``   {domid, snap} — the domain's mediator snapshot, at rest
``begin``   {domid, id, fn, tid, intent} — a call that may change lasting TEE state is about to
            reach the TEE (intent: a standard call's command, session, cookie, shadow page)
``gone``    {domid} — the domain was destroyed

Every record is written with one ``write`` before the daemon acts on it (a
SIGKILL leaves a whole record or none: the page cache survives the process);
lifecycle records and checkpoints are also fsync'd, per-call records are not
(daemon.SYNC_PER_CALL says why). A failed write truncates the file back to its last whole record,
so one failure never corrupts what follows. A record cut short at the very
end (a torn write: the disk filled up, the machine stopped) is dropped;
anything else that does not check is corruption: :func:`load` refuses the
whole file.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict, cast

import msgpack

from stubdom.rundir import FILE_MODE

from .errors import JournalCorrupt, JournalWriteError

if TYPE_CHECKING:
    from stubdom.mediator import DomainLimits, Intent, Snapshot

__all__ = ["Journal", "Replay", "DomainRecord", "load", "JOURNAL_FILE", "JOURNAL_MAGIC",
           "JOURNAL_VERSION", "DomainEntry", "StateEntry", "BeginEntry", "GoneEntry", "Entry"]

JOURNAL_FILE = "journal"
JOURNAL_MAGIC = b"SDTJRNL\0"
JOURNAL_VERSION = 1
_HEADER = struct.Struct("<8sII")
_FRAME = struct.Struct("<II")
# One record carries one domain's snapshot; far below this in practice.
MAX_RECORD = 16 << 20
_TYPES = {"domain": ("domid", "hwdom", "direct_mapped", "limits", "static_shm"),
          "state": ("domid", "snap"), "begin": ("domid", "id", "fn"), "gone": ("domid",)}


# The records, as written by the constructors at the end of this module.
# :func:`load` checks a record's type, its keys and its domid; the values
# are the ones written (the CRC vouches for the bytes), and the mediator
# checks a snapshot again when it restores one (BadSnapshot).

class DomainEntry(TypedDict):
    t: Literal["domain"]
    domid: int
    hwdom: bool
    direct_mapped: bool
    limits: list[int]  # DomainLimits' fields, in order
    static_shm: bool


class StateEntry(TypedDict):
    t: Literal["state"]
    domid: int
    snap: Snapshot


class BeginEntry(TypedDict):
    t: Literal["begin"]
    domid: int
    id: int
    fn: int
    tid: NotRequired[int]
    intent: NotRequired[Intent | None]
    set_aside: NotRequired[str]  # added by recovery: what of the call was set aside (never written)


class GoneEntry(TypedDict):
    t: Literal["gone"]
    domid: int


Entry = DomainEntry | StateEntry | BeginEntry | GoneEntry


@dataclass
class DomainRecord:
    """What the journal says of one domain that was not destroyed."""

    domid: int
    created: DomainEntry  # its ``domain`` record
    snap: Snapshot | None = None  # the last ``state``; None: created, VM_CREATED not confirmed
    open_call: BeginEntry | None = None  # a ``begin`` with no ``state`` after it

    @property
    def clean(self) -> bool:
        """At rest when the daemon died: the snapshot is the whole truth."""
        return self.snap is not None and self.open_call is None


@dataclass
class Replay:
    domains: dict[int, DomainRecord] = field(default_factory=dict)
    records: int = 0
    torn_tail: int = 0  # bytes of a record cut short at the end, dropped


def load(path: Path) -> Replay:
    """Replay a journal file. Raises JournalCorrupt (with the offset and
    what is wrong) for anything but a torn last record."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise JournalCorrupt(path, 0, f"{len(data)} bytes: shorter than the header")
    magic, version, _ = _HEADER.unpack_from(data)
    if magic != JOURNAL_MAGIC:
        raise JournalCorrupt(path, 0, f"magic {magic!r}, expected {JOURNAL_MAGIC!r}")
    if version != JOURNAL_VERSION:
        raise JournalCorrupt(path, 8, f"version {version}, expected {JOURNAL_VERSION}")
    replay = Replay()
    pos = _HEADER.size
    while pos < len(data):
        if pos + _FRAME.size > len(data):
            replay.torn_tail = len(data) - pos
            break
        length, crc = _FRAME.unpack_from(data, pos)
        if length > MAX_RECORD:
            raise JournalCorrupt(path, pos, f"record length {length} > {MAX_RECORD}")
        body = data[pos + _FRAME.size:pos + _FRAME.size + length]
        if len(body) < length:
            replay.torn_tail = len(data) - pos
            break
        if zlib.crc32(body) != crc:
            raise JournalCorrupt(path, pos, f"crc32 {zlib.crc32(body):#010x}, record says {crc:#010x}")
        try:
            rec = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as e:
            raise JournalCorrupt(path, pos, f"not msgpack: {e}") from None
        _apply(path, pos, replay, rec)
        replay.records += 1
        pos += _FRAME.size + length
    return replay


def _apply(path: Path, pos: int, replay: Replay, rec) -> None:
    kind = rec.get("t") if isinstance(rec, dict) else None
    if kind not in _TYPES or any(k not in rec for k in _TYPES[kind]):
        raise JournalCorrupt(path, pos, f"not a journal record: {str(rec)[:80]}")
    domid = rec["domid"]
    if type(domid) is not int or not 0 <= domid < 0x7FF0:  # DOMID_FIRST_RESERVED, xen.h
        raise JournalCorrupt(path, pos, f"{kind} record for domid {domid!r}")
    doms = replay.domains
    if kind == "domain":
        doms[domid] = DomainRecord(domid, rec)
        return
    d = doms.get(domid)
    if d is None:
        raise JournalCorrupt(path, pos, f"{kind} record for d{domid}, which has no domain record")
    if kind == "gone":
        del doms[domid]
    elif kind == "begin":
        d.open_call = rec
    else:
        if not isinstance(rec["snap"], dict):
            raise JournalCorrupt(path, pos, f"state record for d{domid} without a snapshot")
        # a map: whether it describes a context, the mediator checks on restore (BadSnapshot)
        d.snap, d.open_call = cast("Snapshot", rec["snap"]), None


def _frame(rec: Entry, pack: Callable[[object], bytes] | None = None) -> bytes:
    """A record as written: length, CRC, msgpack payload. ``pack``: a
    journal's own Packer's (msgpack.packb builds a Packer per call)."""
    body = pack(rec) if pack is not None else msgpack.packb(rec, use_bin_type=True)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


class Journal:
    """The open journal: ``append`` a record (one write, then fsync).

    ``write`` is os.write unless a test injects failures (a full disk)."""

    def __init__(self, path: Path, *, write: Callable[[int, memoryview], int] = os.write,
                 fsync: Callable[[int], None] = os.fsync) -> None:
        self.path = Path(path)
        self._write = write
        self._fsync = fsync
        self._fd = -1
        self._size = 0
        # one Packer for every record (the same bytes as msgpack.packb: it
        # resets after each record, and after one it could not pack)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.appends = 0
        self.syncs = 0
        self.failures = 0

    # -- whole file ---------------------------------------------------------

    def rewrite(self, records: list[Entry]) -> None:
        """Replace the file with the header and ``records`` (a checkpoint):
        written beside it, fsync'd, renamed over it, directory fsync'd. On
        failure the old file stays as it was; raises JournalWriteError."""
        tmp = self.path.with_name(self.path.name + ".new")
        data = _HEADER.pack(JOURNAL_MAGIC, JOURNAL_VERSION, 0) + b"".join(_frame(r, self._pack) for r in records)
        fd = -1
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            # exactly FILE_MODE: O_CREAT's mode is less the umask, and a
            # leftover file keeps its own mode
            os.fchmod(fd, FILE_MODE)
            self._write_all(fd, data)
            self._fsync(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            self.failures += 1
            if fd >= 0:
                os.close(fd)
                fd = -1
            tmp.unlink(missing_ok=True)
            raise JournalWriteError(self.path, e.errno or errno.EIO, e.strerror or str(e)) from None
        finally:
            if fd >= 0:
                os.close(fd)
        self._reopen(len(data))
        self.syncs += 1

    def _reopen(self, size: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = size

    @property
    def size(self) -> int:
        """Bytes of whole records (and header) in the file."""
        return self._size

    # -- records ------------------------------------------------------------

    def append(self, rec: Entry, *, sync: bool = True) -> None:
        """One record, one write; fsync'd unless ``sync`` is False. On a
        failure the file is cut back to its last whole record and
        JournalWriteError is raised."""
        if self._fd < 0:
            raise JournalWriteError(self.path, errno.EBADF, "journal not open")
        data = _frame(rec, self._pack)
        try:
            self._write_all(self._fd, data)
            if sync:
                self._fsync(self._fd)
                self.syncs += 1
        except OSError as e:
            self.failures += 1
            try:
                os.ftruncate(self._fd, self._size)  # never leave half a record before the next
            except OSError:
                pass
            raise JournalWriteError(self.path, e.errno or errno.EIO, e.strerror or str(e)) from None
        self._size += len(data)
        self.appends += 1

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._write(fd, view)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        """After a clean shutdown: nothing is left to recover."""
        self.close()
        self.path.unlink(missing_ok=True)


# record constructors (one place that knows the field names)

def domain_record(domid: int, *, hwdom: bool, direct_mapped: bool, limits: DomainLimits,
                  static_shm: bool) -> DomainEntry:
    return {"t": "domain", "domid": domid, "hwdom": hwdom, "direct_mapped": direct_mapped,
            "limits": [limits.max_calls, limits.max_shm_buffers, limits.max_pages_per_buffer,
                       limits.max_total_pages], "static_shm": static_shm}


def state_record(domid: int, snap: Snapshot) -> StateEntry:
    return {"t": "state", "domid": domid, "snap": snap}


def begin_record(domid: int, request_id: int, function: int, thread: int,
                 intent: Intent | None = None) -> BeginEntry:
    """``thread``: a3 of the call (the OP-TEE thread a RETURN_FROM_RPC resumes);
    ``intent``: a standard call's mediator.call_intent (command, session,
    cookie, shadow page), for recovery to undo what OP-TEE did unanswered."""
    return {"t": "begin", "domid": domid, "id": request_id, "fn": function, "tid": thread,
            "intent": intent}


def gone_record(domid: int) -> GoneEntry:
    return {"t": "gone", "domid": domid}
