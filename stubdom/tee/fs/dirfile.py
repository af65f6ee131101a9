"""The directory file of the REE FS, dirf.db (``core/tee/fs_dirfile.c``).

dirf.db is itself a hash-tree file; its content is an array of 120-byte
``struct dirfile_entry`` (the owning TA's UUID, the object id and its length,
the hash of the object file's root node, the object's file number).  Every
entry is read or written through the file's read and write operations, so
each access is at least one FS READ of the 4 KiB block holding it — OP-TEE
caches no directory block.  File numbers in use are kept in memory (a
bitstring in OP-TEE, a set here: the lowest free number is the same).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from stubdom.optee.teec import TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_ITEM_NOT_FOUND, TEE_SUCCESS

from ..thread import RpcReply, RpcRequest, Thread
from .htree import TEE_FS_HTREE_HASH_SIZE

__all__ = ["DIRFILE_ENTRY_SIZE", "TEE_OBJECT_ID_MAX_LEN", "Dfh", "Dirh", "DirfOps", "dirfile_open",
           "dirfile_close", "dirfile_commit_writes", "dirfile_get_tmp", "dirfile_find", "dirfile_rename",
           "dirfile_remove", "dirfile_update_hash"]

TEE_OBJECT_ID_MAX_LEN = 64  # lib/libutee/include/tee_api_defines.h
OID_EMPTY_NAME = 1
# struct dirfile_entry: TEE_UUID uuid (as OP-TEE holds it in memory: u32, u16,
# u16 little-endian, then 8 bytes), uint8_t oid[64], uint32_t oidlen,
# uint8_t hash[32], uint32_t file_number
_DENT = struct.Struct("<16s64sI32sI")
DIRFILE_ENTRY_SIZE = _DENT.size  # 120

# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator[RpcRequest, RpcReply, Any]


_H = TypeVar("_H", contravariant=True)  # the REE FS's file handle of dirf.db


class DirfOps(Protocol[_H]):
    """struct tee_fs_dirfile_operations: the REE FS's operations on dirf.db.
    ``read`` returns (result, data), at most ``length`` bytes."""

    def open(self, t: Thread, create: bool) -> Gen: ...

    def close(self, t: Thread, fh: _H) -> Gen: ...

    def read(self, t: Thread, fh: _H, pos: int, length: int) -> Gen: ...

    def write(self, t: Thread, fh: _H, pos: int, data: bytes) -> Gen: ...

    def commit_writes(self, t: Thread, fh: _H) -> Gen: ...


@dataclass(eq=False)
class Dfh:
    """struct tee_fs_dirfile_fileh: an object's place in dirf.db."""

    file_number: int = 0
    hash: bytes = bytes(TEE_FS_HTREE_HASH_SIZE)
    idx: int = -1


@dataclass(eq=False)
class Dirh:
    """struct tee_fs_dirfile_dirh: dirf.db opened."""

    ops: DirfOps[Any]
    fh: object
    files: set[int] = field(default_factory=set)
    ndents: int = 0


@dataclass(frozen=True, slots=True)
class _Dent:
    uuid_le: bytes = bytes(16)
    oid: bytes = bytes(TEE_OBJECT_ID_MAX_LEN)
    oidlen: int = 0
    hash: bytes = bytes(TEE_FS_HTREE_HASH_SIZE)
    file_number: int = 0

    def pack(self) -> bytes:
        return _DENT.pack(self.uuid_le, self.oid, self.oidlen, self.hash, self.file_number)

    @property
    def is_free(self) -> bool:
        """is_free: no length and no first byte (an empty id has OID_EMPTY_NAME)."""
        return not self.oidlen and not self.oid[0]


_FREE = _Dent()


def _read_dent(t: Thread, dirh: Dirh, idx: int) -> Gen:
    """read_dent: (result, entry); a short read is ITEM_NOT_FOUND (the end)."""
    res, data = yield from dirh.ops.read(t, dirh.fh, DIRFILE_ENTRY_SIZE * idx, DIRFILE_ENTRY_SIZE)
    if res != TEE_SUCCESS:
        return res, None
    if len(data) != DIRFILE_ENTRY_SIZE:
        return TEE_ERROR_ITEM_NOT_FOUND, None
    return TEE_SUCCESS, _Dent(*_DENT.unpack(data))


def _write_dent(t: Thread, dirh: Dirh, idx: int, dent: _Dent) -> Gen:
    res = yield from dirh.ops.write(t, dirh.fh, DIRFILE_ENTRY_SIZE * idx, dent.pack())
    if res == TEE_SUCCESS and idx >= dirh.ndents:
        dirh.ndents = idx + 1
    return res


def dirfile_open(t: Thread, ops: DirfOps[Any], create: bool) -> Gen:
    """tee_fs_dirfile_open: open (or create) dirf.db and read every entry,
    clearing one whose file number is already taken.  (result, dirh)."""
    res, fh = yield from ops.open(t, create)
    if res != TEE_SUCCESS:
        return res, None
    dirh = Dirh(ops, fh)
    n = 0
    while True:
        res, dent = yield from _read_dent(t, dirh, n)
        if res != TEE_SUCCESS:
            if res == TEE_ERROR_ITEM_NOT_FOUND:
                res = TEE_SUCCESS
            break
        if not dent.is_free:
            if dent.file_number in dirh.files:  # a duplicate: clear it
                res = yield from _write_dent(t, dirh, n, _FREE)
                if res != TEE_SUCCESS:
                    break
            else:
                dirh.files.add(dent.file_number)
        n += 1
    if res != TEE_SUCCESS:
        yield from dirfile_close(t, dirh)
        return res, None
    dirh.ndents = n
    return TEE_SUCCESS, dirh


def dirfile_close(t: Thread, dirh: Dirh) -> Gen:
    """tee_fs_dirfile_close."""
    yield from dirh.ops.close(t, dirh.fh)


def dirfile_commit_writes(t: Thread, dirh: Dirh) -> Gen:
    """tee_fs_dirfile_commit_writes: (result, root hash of dirf.db)."""
    return (yield from dirh.ops.commit_writes(t, dirh.fh))


def dirfile_get_tmp(dirh: Dirh) -> Dfh:
    """tee_fs_dirfile_get_tmp: the lowest file number not in use, taken."""
    n = 0
    while n in dirh.files:
        n += 1
    dirh.files.add(n)
    return Dfh(file_number=n)


def dirfile_find(t: Thread, dirh: Dirh, ta_uuid: uuid.UUID, oid: bytes) -> Gen:
    """tee_fs_dirfile_find: (result, dfh) of the TA's object ``oid``;
    ITEM_NOT_FOUND when the entries run out."""
    n = 0
    while True:
        res, dent = yield from _read_dent(t, dirh, n)
        if res != TEE_SUCCESS:
            return res, None
        if not dent.is_free and dent.oidlen == len(oid) and dent.uuid_le == ta_uuid.bytes_le \
                and dent.oid[:len(oid)] == oid:
            return TEE_SUCCESS, Dfh(dent.file_number, dent.hash, n)
        n += 1


def _find_empty_idx(t: Thread, dirh: Dirh) -> Gen:
    n = 0
    while True:
        res, dent = yield from _read_dent(t, dirh, n)
        if res == TEE_ERROR_ITEM_NOT_FOUND:
            return TEE_SUCCESS, n
        if res != TEE_SUCCESS:
            return res, -1
        if dent.is_free:
            return TEE_SUCCESS, n
        n += 1


def dirfile_rename(t: Thread, dirh: Dirh, ta_uuid: uuid.UUID, dfh: Dfh, oid: bytes) -> Gen:
    """tee_fs_dirfile_rename: write the entry naming ``dfh``'s file ``oid``,
    at its index, or at the object's current one, or at the first free one."""
    if len(oid) > TEE_OBJECT_ID_MAX_LEN:
        return TEE_ERROR_BAD_PARAMETERS
    raw_oid = oid if oid else bytes([OID_EMPTY_NAME])
    dent = _Dent(ta_uuid.bytes_le, raw_oid + bytes(TEE_OBJECT_ID_MAX_LEN - len(raw_oid)), len(oid),
                 dfh.hash, dfh.file_number)
    if dfh.idx < 0:
        res, found = yield from dirfile_find(t, dirh, ta_uuid, oid)
        if res == TEE_SUCCESS:
            dfh.idx = found.idx
        elif res == TEE_ERROR_ITEM_NOT_FOUND:
            res, dfh.idx = yield from _find_empty_idx(t, dirh)
            if res != TEE_SUCCESS:
                return res
        else:
            return res
    return (yield from _write_dent(t, dirh, dfh.idx, dent))


def dirfile_remove(t: Thread, dirh: Dirh, dfh: Dfh) -> Gen:
    """tee_fs_dirfile_remove: clear the entry and free its file number."""
    res, dent = yield from _read_dent(t, dirh, dfh.idx)
    if res != TEE_SUCCESS:
        return res
    if dent.is_free:
        return TEE_SUCCESS
    res = yield from _write_dent(t, dirh, dfh.idx, _FREE)
    if res == TEE_SUCCESS:
        dirh.files.discard(dent.file_number)
    return res


def dirfile_update_hash(t: Thread, dirh: Dirh, dfh: Dfh) -> Gen:
    """tee_fs_dirfile_update_hash: the object file's new root hash into its entry."""
    res, dent = yield from _read_dent(t, dirh, dfh.idx)
    if res != TEE_SUCCESS:
        return res
    return (yield from _write_dent(t, dirh, dfh.idx, _Dent(dent.uuid_le, dent.oid, dent.oidlen, dfh.hash,
                                                          dent.file_number)))
