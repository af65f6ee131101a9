"""Persistent objects as a TA sees them (GP TEE Internal Core API), over the
REE FS, as ``core/tee/tee_svc_storage.c`` implements the storage syscalls.

An object's file starts with ``struct tee_svc_storage_head`` (six u32:
attribute size, object size, maximum object size, usage, type, whether it
has attributes), then its attributes (none for the data objects here), then
its data; ``ds_pos`` is where the data starts.  Only TEE_STORAGE_PRIVATE on
the REE FS is modelled, for data objects without attributes, and without
``struct tee_pobj``'s bookkeeping of who has which object open (no
TEE_ERROR_ACCESS_CONFLICT between two handles of one object): none of it
issues an RPC.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from stubdom.optee.teec import (
    TEE_ERROR_ACCESS_CONFLICT,
    TEE_ERROR_BAD_PARAMETERS,
    TEE_ERROR_CORRUPT_OBJECT,
    TEE_SUCCESS,
)

from ..thread import RpcReply, RpcRequest, Thread
from .dirfile import TEE_OBJECT_ID_MAX_LEN
from .ree_fs import FsFd, ReeFs, ree_fs_close, ree_fs_create, ree_fs_open, ree_fs_read, ree_fs_remove, ree_fs_write

__all__ = [
    "TEE_DATA_FLAG_ACCESS_READ",
    "TEE_DATA_FLAG_ACCESS_WRITE",
    "TEE_DATA_FLAG_ACCESS_WRITE_META",
    "TEE_DATA_FLAG_SHARE_READ",
    "TEE_DATA_FLAG_SHARE_WRITE",
    "TEE_DATA_FLAG_OVERWRITE",
    "TEE_TYPE_DATA",
    "TEE_USAGE_DEFAULT",
    "STORAGE_HEAD_SIZE",
    "PersistentObject",
    "create_persistent_object",
    "open_persistent_object",
    "read_object_data",
    "write_object_data",
    "close_object",
    "close_and_delete_persistent_object",
]

# lib/libutee/include/tee_api_defines.h
TEE_DATA_FLAG_ACCESS_READ = 0x00000001
TEE_DATA_FLAG_ACCESS_WRITE = 0x00000002
TEE_DATA_FLAG_ACCESS_WRITE_META = 0x00000004
TEE_DATA_FLAG_SHARE_READ = 0x00000010
TEE_DATA_FLAG_SHARE_WRITE = 0x00000020
TEE_DATA_FLAG_OVERWRITE = 0x00000400
TEE_TYPE_DATA = 0xA00000BF
TEE_USAGE_DEFAULT = 0xFFFFFFFF

_VALID_OPEN = (TEE_DATA_FLAG_ACCESS_READ | TEE_DATA_FLAG_ACCESS_WRITE | TEE_DATA_FLAG_ACCESS_WRITE_META
               | TEE_DATA_FLAG_SHARE_READ | TEE_DATA_FLAG_SHARE_WRITE)
_VALID_CREATE = _VALID_OPEN | TEE_DATA_FLAG_OVERWRITE
# struct tee_svc_storage_head
_HEAD = struct.Struct("<6I")
STORAGE_HEAD_SIZE = _HEAD.size  # 24

# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator[RpcRequest, RpcReply, Any]


@dataclass(eq=False)
class PersistentObject:
    """struct tee_obj of a persistent object: its open file and where its data is."""

    ta_uuid: uuid.UUID
    oid: bytes
    flags: int
    fh: FsFd | None
    ds_pos: int = STORAGE_HEAD_SIZE
    data_size: int = 0
    position: int = 0


def _check(oid: bytes, flags: int, valid: int) -> int:
    if flags & ~valid or len(oid) > TEE_OBJECT_ID_MAX_LEN:
        return TEE_ERROR_BAD_PARAMETERS
    return TEE_SUCCESS


def create_persistent_object(t: Thread, fs: ReeFs, ta_uuid: uuid.UUID, oid: bytes, flags: int,
                             data: bytes = b"") -> Gen:
    """syscall_storage_obj_create + tee_svc_storage_init_file: (result, object)."""
    res = _check(oid, flags, _VALID_CREATE)
    if res != TEE_SUCCESS:
        return res, None
    head = _HEAD.pack(0, 0, 0, TEE_USAGE_DEFAULT, TEE_TYPE_DATA, 0)
    res, fh = yield from ree_fs_create(t, fs, ta_uuid, oid, bool(flags & TEE_DATA_FLAG_OVERWRITE), head, data)
    if res != TEE_SUCCESS:
        return res, None
    return TEE_SUCCESS, PersistentObject(ta_uuid, oid, flags, fh, data_size=len(data))


def open_persistent_object(t: Thread, fs: ReeFs, ta_uuid: uuid.UUID, oid: bytes, flags: int) -> Gen:
    """syscall_storage_obj_open + tee_svc_storage_read_head: (result, object).
    A corrupt object is removed, as remove_corrupt_obj does."""
    res = _check(oid, flags, _VALID_OPEN)
    if res != TEE_SUCCESS:
        return res, None
    res, fh, size = yield from ree_fs_open(t, fs, ta_uuid, oid)
    if res != TEE_SUCCESS:
        if res == TEE_ERROR_CORRUPT_OBJECT:
            yield from ree_fs_remove(t, fs, ta_uuid, oid)
        return res, None
    obj = PersistentObject(ta_uuid, oid, flags, fh)
    res, raw = yield from ree_fs_read(t, fs, fh, 0, STORAGE_HEAD_SIZE)
    if res == TEE_SUCCESS:
        # a header that does not fit the file: head.attr_size past the end,
        # or a file shorter than a header
        attr_size = _HEAD.unpack(raw)[0] if len(raw) == STORAGE_HEAD_SIZE else size
        if STORAGE_HEAD_SIZE + attr_size > size:
            res = TEE_ERROR_CORRUPT_OBJECT
        else:
            obj.ds_pos = STORAGE_HEAD_SIZE + attr_size
            obj.data_size = size - obj.ds_pos
            return TEE_SUCCESS, obj
    if res == TEE_ERROR_CORRUPT_OBJECT:
        yield from ree_fs_remove(t, fs, ta_uuid, oid)
    yield from close_object(t, fs, obj)
    return res, None


def read_object_data(t: Thread, fs: ReeFs, obj: PersistentObject, size: int) -> Gen:
    """syscall_storage_obj_read: (result, data) from the current position."""
    if not obj.flags & TEE_DATA_FLAG_ACCESS_READ:
        return TEE_ERROR_ACCESS_CONFLICT, b""
    assert obj.fh is not None  # open: only close_object drops it, and nothing uses an object after that
    res, data = yield from ree_fs_read(t, fs, obj.fh, obj.ds_pos + obj.position, size)
    if res != TEE_SUCCESS:
        if res == TEE_ERROR_CORRUPT_OBJECT:
            yield from _remove_corrupt(t, fs, obj)
        return res, b""
    obj.position += len(data)
    return TEE_SUCCESS, data


def write_object_data(t: Thread, fs: ReeFs, obj: PersistentObject, data: bytes) -> Gen:
    """syscall_storage_obj_write at the current position."""
    if not obj.flags & TEE_DATA_FLAG_ACCESS_WRITE:
        return TEE_ERROR_ACCESS_CONFLICT
    assert obj.fh is not None  # open: only close_object drops it, and nothing uses an object after that
    res = yield from ree_fs_write(t, fs, obj.fh, obj.ds_pos + obj.position, data)
    if res != TEE_SUCCESS:
        if res == TEE_ERROR_CORRUPT_OBJECT:
            yield from _remove_corrupt(t, fs, obj)
        return res
    obj.position += len(data)
    obj.data_size = max(obj.data_size, obj.position)
    return TEE_SUCCESS


def _remove_corrupt(t: Thread, fs: ReeFs, obj: PersistentObject) -> Gen:
    """remove_corrupt_obj: the object goes from dirf.db, and its handle is
    closed (no TA here sets TA_FLAG_DONT_CLOSE_HANDLE_ON_CORRUPT_OBJECT)."""
    yield from ree_fs_remove(t, fs, obj.ta_uuid, obj.oid)
    yield from close_object(t, fs, obj)


def close_object(t: Thread, fs: ReeFs, obj: PersistentObject) -> Gen:
    """TEE_CloseObject: tee_obj_close, the file closed."""
    if obj.fh is not None:
        fh, obj.fh = obj.fh, None
        yield from ree_fs_close(t, fs, fh)


def close_and_delete_persistent_object(t: Thread, fs: ReeFs, obj: PersistentObject) -> Gen:
    """syscall_storage_obj_del: remove it from dirf.db, then close the handle."""
    if not obj.flags & TEE_DATA_FLAG_ACCESS_WRITE_META:
        return TEE_ERROR_ACCESS_CONFLICT
    res = yield from ree_fs_remove(t, fs, obj.ta_uuid, obj.oid)
    yield from close_object(t, fs, obj)
    return res
