"""OP-TEE's REE file system (``core/tee/tee_ree_fs.c``): persistent objects
as hash-tree files in the normal world, found through dirf.db.

Each object is the file ``/<file number>``, a hash tree (``htree``) whose
content is the object's bytes; dirf.db (``dirfile``) maps (TA UUID, object
id) to the file number and to the hash of that file's root node.  Where in a
file each header, node and block version lives is ``get_offs_size``: block 0
holds the two header versions, then groups of 31 node pairs each followed by
the 62 data-block versions they cover.

Per partition there is one ``ree_fs_mutex``, held across the RPCs of every
operation (a second thread sleeps in the normal world until it is free), and
one cached dirf.db handle, opened by the first operation that needs it and
closed when the last open object is closed (``get_dirh`` / ``put_dirh``).

This is an OP-TEE built without RPMB anchoring (CFG_REE_FS_INTEGRITY_RPMB=n)
and without a monotonic counter (``nv_counter_get_ree_fs`` not implemented,
accepted as 0 under CFG_INSECURE, as on QEMU): no rollback protection, and no
RPC besides OPTEE_RPC_CMD_FS.  Truncation to a smaller size, rename and
directory enumeration are not modelled (the storage TA uses none of them).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stubdom.optee.teec import (
    TEE_ERROR_ACCESS_CONFLICT,
    TEE_ERROR_BAD_PARAMETERS,
    TEE_ERROR_CORRUPT_OBJECT,
    TEE_ERROR_ITEM_NOT_FOUND,
    TEE_SUCCESS,
)

from ..sync import Mutex
from ..thread import RpcReply, RpcRequest, Thread
from . import fs_rpc
from .dirfile import (
    Dfh,
    Dirh,
    dirfile_close,
    dirfile_commit_writes,
    dirfile_find,
    dirfile_get_tmp,
    dirfile_open,
    dirfile_remove,
    dirfile_rename,
    dirfile_update_hash,
)
from .htree import (
    BLOCK_SIZE,
    HEAD_IMAGE_SIZE,
    NODE_IMAGE_SIZE,
    Htree,
    HtreeType,
    htree_open,
    htree_read_block,
    htree_sync_to_storage,
    htree_write_block,
)

__all__ = ["ReeFs", "FsFd", "get_offs_size", "ree_fs_open", "ree_fs_create", "ree_fs_close", "ree_fs_read",
           "ree_fs_write", "ree_fs_remove"]

# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator[RpcRequest, RpcReply, Any]
_BLOCK_NODES = BLOCK_SIZE // (NODE_IMAGE_SIZE * 2)  # 31 node pairs per node block


def get_offs_size(kind: int, idx: int, vers: int) -> tuple[int, int]:
    """get_offs_size: (file offset, size) of a header, node or block version."""
    if kind == HtreeType.HEAD:
        return HEAD_IMAGE_SIZE * vers, HEAD_IMAGE_SIZE
    if kind == HtreeType.NODE:
        pbn = 1 + (idx // _BLOCK_NODES) * _BLOCK_NODES * 2
        return pbn * BLOCK_SIZE + 2 * NODE_IMAGE_SIZE * (idx % _BLOCK_NODES) + NODE_IMAGE_SIZE * vers, \
            NODE_IMAGE_SIZE
    bidx = 2 * idx + vers
    pbn = 2 + bidx + bidx // (_BLOCK_NODES * 2 - 1)
    return pbn * BLOCK_SIZE, BLOCK_SIZE


@dataclass(eq=False)
class FsFd:
    """struct tee_fs_fd: an open REE FS file."""

    fd: int = -1
    ht: Htree | None = None  # None once an error closed the tree
    dfh: Dfh = field(default_factory=Dfh)


@dataclass(eq=False)
class _FileStorage:
    """ree_fs_storage_ops: the htree's reads and writes as FS RPCs on one fd."""

    fdp: FsFd

    def read(self, t: Thread, kind: int, idx: int, vers: int, length: int) -> Gen:
        offs, size = get_offs_size(kind, idx, vers)
        return (yield from fs_rpc.read_file(t, self.fdp.fd, offs, size))

    def write(self, t: Thread, kind: int, idx: int, vers: int, data: bytes) -> Gen:
        offs, _size = get_offs_size(kind, idx, vers)
        return (yield from fs_rpc.write_file(t, self.fdp.fd, offs, data))


@dataclass(eq=False)
class ReeFs:
    """tee_ree_fs.c's statics, one set per partition."""

    seed: int = 0
    mutex: Mutex = field(default_factory=Mutex)  # ree_fs_mutex
    dirh: Dirh | None = None  # ree_fs_dirh
    dirh_refcount: int = 0  # ree_fs_dirh_refcount
    rng: random.Random = field(init=False)  # crypto_rng_read, for keys and ivs

    def __post_init__(self) -> None:
        self.rng = random.Random(f"ree-fs:{self.seed}")


# -- files ---------------------------------------------------------------------------

_T = TypeVar("_T")


def _set(value: _T | None) -> _T:
    """A handle an earlier step of a ``res == TEE_SUCCESS`` chain set: the
    chain goes on only while every step succeeded, and the step that
    yields the handle sets it when it succeeds (OP-TEE's C code relies on
    the same)."""
    assert value is not None
    return value


def _open_primitive(t: Thread, fs: ReeFs, create: bool, want_hash: bytes | None, dfh: Dfh | None) -> Gen:
    """ree_fs_open_primitive: FS OPEN or CREATE, then the tree; on failure the
    fd is closed and a file that was being created (or has no hash to
    check, dirf.db) is removed.  (result, FsFd or None)."""
    fdp = FsFd()
    number = dfh.file_number if dfh is not None else None
    if create:
        res, fd = yield from fs_rpc.create_file(t, number)
    else:
        res, fd = yield from fs_rpc.open_file(t, number)
    if res == TEE_SUCCESS:
        fdp.fd = fd
        res, fdp.ht = yield from htree_open(t, create, want_hash, 0, _FileStorage(fdp), fs.rng)
    if res == TEE_SUCCESS:
        fdp.dfh = dfh if dfh is not None else Dfh(idx=-1)
        return TEE_SUCCESS, fdp
    if fdp.fd != -1:
        yield from fs_rpc.close_file(t, fdp.fd)
    if create or want_hash is None:
        yield from fs_rpc.remove_file(t, number)
    return res, None


def _close_primitive(t: Thread, fdp: FsFd) -> Gen:
    """ree_fs_close_primitive: drop the tree, FS CLOSE."""
    fdp.ht = None
    yield from fs_rpc.close_file(t, fdp.fd)


def _read_primitive(t: Thread, fdp: FsFd, pos: int, length: int) -> Gen:
    """ree_fs_read_primitive: (result, data) of up to ``length`` bytes at
    ``pos``, one block read per block touched."""
    ht = fdp.ht
    if ht is None:
        return TEE_ERROR_CORRUPT_OBJECT, b""
    remain = length
    if pos > ht.length:
        remain = 0
    elif pos + remain > ht.length:
        remain = ht.length - pos
    out = bytearray()
    block_num = pos // BLOCK_SIZE
    while remain:
        offset = pos % BLOCK_SIZE
        n = min(remain, BLOCK_SIZE - offset)
        res, block = yield from htree_read_block(t, ht, block_num)
        if res != TEE_SUCCESS:
            fdp.ht = None  # tee_fs_htree_read_block closes the tree on failure
            return res, b""
        out += block[offset:offset + n]
        remain -= n
        pos += n
        block_num += 1
    return TEE_SUCCESS, bytes(out)


def _out_of_place_write(t: Thread, fdp: FsFd, pos: int, data: bytes | None, length: int) -> Gen:
    """out_of_place_write: each block touched is read (when it holds content),
    patched and written to its other version; ``data`` None writes zeros."""
    ht = fdp.ht
    assert ht is not None
    if not length:
        return TEE_ERROR_BAD_PARAMETERS
    done = 0
    block_num = pos // BLOCK_SIZE
    end_block = (pos + length - 1) // BLOCK_SIZE
    while block_num <= end_block:
        offset = pos % BLOCK_SIZE
        n = min(length - done, BLOCK_SIZE - offset)
        if block_num * BLOCK_SIZE < -(-ht.length // BLOCK_SIZE) * BLOCK_SIZE:
            res, block = yield from htree_read_block(t, ht, block_num)
            if res != TEE_SUCCESS:
                fdp.ht = None
                return res
        else:
            block = bytes(BLOCK_SIZE)
        chunk = data[done:done + n] if data is not None else bytes(n)
        block = block[:offset] + chunk + block[offset + n:]
        res = yield from htree_write_block(t, ht, block_num, block)
        if res != TEE_SUCCESS:
            fdp.ht = None
            return res
        done += n
        pos += n
        block_num += 1
    if pos > ht.length:
        ht.length = pos
        ht.meta_set_dirty()
    return TEE_SUCCESS


def _write_primitive(t: Thread, fdp: FsFd, pos: int, data: bytes) -> Gen:
    """ree_fs_write_primitive: a write past the end first extends the file
    with zeros (ree_fs_ftruncate_internal)."""
    if not data:
        return TEE_SUCCESS
    ht = fdp.ht
    if ht is None:
        return TEE_ERROR_CORRUPT_OBJECT
    if ht.length < pos:
        res = yield from _out_of_place_write(t, fdp, ht.length, None, pos - ht.length)
        if res != TEE_SUCCESS:
            return res
    return (yield from _out_of_place_write(t, fdp, pos, data, len(data)))


def _sync(t: Thread, fdp: FsFd) -> Gen:
    """tee_fs_htree_sync_to_storage into fdp->dfh.hash (the tree is dropped on failure)."""
    if fdp.ht is None:
        return TEE_ERROR_CORRUPT_OBJECT
    res, root_hash = yield from htree_sync_to_storage(t, fdp.ht)
    if res != TEE_SUCCESS:
        fdp.ht = None
        return res
    fdp.dfh.hash = root_hash
    return TEE_SUCCESS


# -- dirf.db -------------------------------------------------------------------------

@dataclass(eq=False)
class _DirfOps:
    """ree_dirf_ops: dirf.db through the same primitives (no mutex: held)."""

    fs: ReeFs

    def open(self, t: Thread, create: bool) -> Gen:
        return (yield from _open_primitive(t, self.fs, create, None, None))

    def close(self, t: Thread, fh: FsFd) -> Gen:
        yield from _close_primitive(t, fh)

    def read(self, t: Thread, fh: FsFd, pos: int, length: int) -> Gen:
        return (yield from _read_primitive(t, fh, pos, length))

    def write(self, t: Thread, fh: FsFd, pos: int, data: bytes) -> Gen:
        return (yield from _write_primitive(t, fh, pos, data))

    def commit_writes(self, t: Thread, fh: FsFd) -> Gen:
        res = yield from _sync(t, fh)
        return res, fh.dfh.hash


def _open_dirh(t: Thread, fs: ReeFs) -> Gen:
    """open_dirh: open dirf.db, create it when there is none (min counter 0)."""
    ops = _DirfOps(fs)
    res, dirh = yield from dirfile_open(t, ops, False)
    if res == TEE_ERROR_ITEM_NOT_FOUND:
        res, dirh = yield from dirfile_open(t, ops, True)
    return res, dirh


def _commit_dirh_writes(t: Thread, dirh: Dirh) -> Gen:
    """commit_dirh_writes: dirf.db's tree to storage (no counter to bump)."""
    res, _hash = yield from dirfile_commit_writes(t, dirh)
    return res


def _get_dirh(t: Thread, fs: ReeFs) -> Gen:
    """get_dirh: the cached dirf.db handle, opened if need be; counted."""
    if fs.dirh is None:
        res, dirh = yield from _open_dirh(t, fs)
        if res != TEE_SUCCESS:
            return res, None
        fs.dirh = dirh
    fs.dirh_refcount += 1
    return TEE_SUCCESS, fs.dirh


def _put_dirh_primitive(t: Thread, fs: ReeFs, close: bool) -> Gen:
    """put_dirh_primitive: uncount; the last put (or an error) closes dirf.db."""
    fs.dirh_refcount -= 1
    if fs.dirh is not None and (not fs.dirh_refcount or close):
        dirh, fs.dirh = fs.dirh, None
        yield from dirfile_close(t, dirh)


def _put_dirh(t: Thread, fs: ReeFs, dirh: Dirh | None, close: bool) -> Gen:
    if dirh is not None:
        yield from _put_dirh_primitive(t, fs, close)


# -- the file operations (struct tee_file_operations ree_fs_ops) ---------------------

def ree_fs_open(t: Thread, fs: ReeFs, ta_uuid: uuid.UUID, oid: bytes) -> Gen:
    """ree_fs_open: (result, FsFd, content size).  An object dirf.db names
    whose file is missing is TEE_ERROR_CORRUPT_OBJECT."""
    yield from fs.mutex.lock(t)
    fdp, size = None, 0
    res, dirh = yield from _get_dirh(t, fs)
    if res == TEE_SUCCESS:
        res, dfh = yield from dirfile_find(t, dirh, ta_uuid, oid)
        if res == TEE_SUCCESS:
            res, fdp = yield from _open_primitive(t, fs, False, dfh.hash, dfh)
            if res == TEE_ERROR_ITEM_NOT_FOUND:
                res = TEE_ERROR_CORRUPT_OBJECT
            elif res == TEE_SUCCESS:
                size = fdp.ht.length
    if res != TEE_SUCCESS:
        yield from _put_dirh(t, fs, dirh, True)
    yield from fs.mutex.unlock(t)
    return res, fdp, size


def _set_name(t: Thread, dirh: Dirh, fdp: FsFd, ta_uuid: uuid.UUID, oid: bytes, overwrite: bool) -> Gen:
    """set_name: enter the new file in dirf.db (over the old entry of the
    same id when overwriting), commit dirf.db, then remove the old file."""
    res, old = yield from dirfile_find(t, dirh, ta_uuid, oid)
    if not overwrite and res == TEE_SUCCESS:
        return TEE_ERROR_ACCESS_CONFLICT
    have_old = res == TEE_SUCCESS
    fdp.dfh.idx = old.idx if have_old else -1
    res = yield from dirfile_rename(t, dirh, ta_uuid, fdp.dfh, oid)
    if res != TEE_SUCCESS:
        return res
    res = yield from _commit_dirh_writes(t, dirh)
    if res != TEE_SUCCESS:
        return res
    if have_old:
        yield from fs_rpc.remove_file(t, old.file_number)
    return TEE_SUCCESS


def ree_fs_create(t: Thread, fs: ReeFs, ta_uuid: uuid.UUID, oid: bytes, overwrite: bool, head: bytes,
                  data: bytes) -> Gen:
    """ree_fs_create: a new file under the lowest free number with ``head``
    then ``data`` as content, committed, then named in dirf.db.  (result,
    FsFd left open)."""
    yield from fs.mutex.lock(t)
    fdp = None
    dfh = None
    res, dirh = yield from _get_dirh(t, fs)
    if res == TEE_SUCCESS:
        dfh = dirfile_get_tmp(dirh)
        res, fdp = yield from _open_primitive(t, fs, True, None, dfh)
    pos = 0
    if res == TEE_SUCCESS and head:
        res = yield from _write_primitive(t, _set(fdp), pos, head)
        pos += len(head)
    if res == TEE_SUCCESS and data:
        res = yield from _write_primitive(t, _set(fdp), pos, data)
    if res == TEE_SUCCESS:
        res = yield from _sync(t, _set(fdp))
    if res == TEE_SUCCESS:
        res = yield from _set_name(t, dirh, _set(fdp), ta_uuid, oid, overwrite)
    if res != TEE_SUCCESS:
        yield from _put_dirh(t, fs, dirh, True)
        if fdp is not None:
            yield from _close_primitive(t, fdp)
            yield from fs_rpc.remove_file(t, _set(dfh).file_number)
            fdp = None
    yield from fs.mutex.unlock(t)
    return res, fdp


def ree_fs_close(t: Thread, fs: ReeFs, fdp: FsFd) -> Gen:
    """ree_fs_close: uncount dirf.db (closing it with the last object), close the file."""
    yield from fs.mutex.lock(t)
    yield from _put_dirh_primitive(t, fs, False)
    yield from _close_primitive(t, fdp)
    yield from fs.mutex.unlock(t)


def ree_fs_read(t: Thread, fs: ReeFs, fdp: FsFd, pos: int, length: int) -> Gen:
    """ree_fs_read: (result, data)."""
    yield from fs.mutex.lock(t)
    res, data = yield from _read_primitive(t, fdp, pos, length)
    yield from fs.mutex.unlock(t)
    return res, data


def ree_fs_write(t: Thread, fs: ReeFs, fdp: FsFd, pos: int, data: bytes) -> Gen:
    """ree_fs_write: write, commit the file, its new root hash into dirf.db,
    commit dirf.db."""
    yield from fs.mutex.lock(t)
    res, dirh = yield from _get_dirh(t, fs)
    if res == TEE_SUCCESS:
        res = yield from _write_primitive(t, fdp, pos, data)
    if res == TEE_SUCCESS:
        res = yield from _sync(t, fdp)
    if res == TEE_SUCCESS:
        res = yield from dirfile_update_hash(t, dirh, fdp.dfh)
    if res == TEE_SUCCESS:
        res = yield from _commit_dirh_writes(t, dirh)
    yield from _put_dirh(t, fs, dirh, res != TEE_SUCCESS)
    yield from fs.mutex.unlock(t)
    return res


def ree_fs_remove(t: Thread, fs: ReeFs, ta_uuid: uuid.UUID, oid: bytes) -> Gen:
    """ree_fs_remove: clear the entry, commit dirf.db, then remove the file."""
    yield from fs.mutex.lock(t)
    res, dirh = yield from _get_dirh(t, fs)
    dfh = None
    if res == TEE_SUCCESS:
        res, dfh = yield from dirfile_find(t, dirh, ta_uuid, oid)
    if res == TEE_SUCCESS:
        res = yield from dirfile_remove(t, dirh, _set(dfh))
    if res == TEE_SUCCESS:
        res = yield from _commit_dirh_writes(t, dirh)
    if res == TEE_SUCCESS:
        yield from fs_rpc.remove_file(t, _set(dfh).file_number)
    yield from _put_dirh(t, fs, dirh, res != TEE_SUCCESS)
    yield from fs.mutex.unlock(t)
    return res
