"""The secure-storage TA: optee_examples' secure_storage TA
(``secure_storage/ta/secure_storage_ta.c``) with this project's UUID, over
OP-TEE's REE FS (``stubdom.tee.fs``): every object is a hash-tree file in the
guest's normal world, named in dirf.db, reached with OPTEE_RPC_CMD_FS.

Commands (object id: MEMREF_INPUT of 1..64 bytes, TEE_OBJECT_ID_MAX_LEN),
each the TEE Internal Core API calls the example makes:

* STORAGE_CMD_WRITE  (id, MEMREF_INPUT data): TEE_CreatePersistentObject
  (ACCESS_READ | ACCESS_WRITE | ACCESS_WRITE_META | OVERWRITE, no
  attributes, no initial data), TEE_WriteObjectData, TEE_CloseObject
  (TEE_CloseAndDeletePersistentObject1 when the write failed).
* STORAGE_CMD_READ   (id, MEMREF_OUTPUT data): TEE_OpenPersistentObject
  (ACCESS_READ | SHARE_READ), the object's size (TEE_ERROR_SHORT_BUFFER with
  it when the output is smaller), TEE_ReadObjectData of all of it,
  TEE_CloseObject; TEE_ERROR_ITEM_NOT_FOUND for a missing object.
* STORAGE_CMD_DELETE (id): TEE_OpenPersistentObject (ACCESS_READ |
  ACCESS_WRITE_META), TEE_CloseAndDeletePersistentObject1.

docs/tee-model.md lists the FS RPCs each command makes.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from stubdom.optee.teec import TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_SHORT_BUFFER, TEE_SUCCESS

from ..fs.dirfile import TEE_OBJECT_ID_MAX_LEN
from ..fs.persistent import (
    TEE_DATA_FLAG_ACCESS_READ,
    TEE_DATA_FLAG_ACCESS_WRITE,
    TEE_DATA_FLAG_ACCESS_WRITE_META,
    TEE_DATA_FLAG_OVERWRITE,
    TEE_DATA_FLAG_SHARE_READ,
    close_and_delete_persistent_object,
    close_object,
    create_persistent_object,
    open_persistent_object,
    read_object_data,
    write_object_data,
)
from .ta import (
    TEE_PARAM_TYPE_MEMREF_INPUT,
    TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPES,
    StatelessTa,
    TaContext,
    TaGen,
    TaParam,
    param_types,
)

if TYPE_CHECKING:
    from ..fs.ree_fs import ReeFs
    from ..thread import Thread

__all__ = [
    "STORAGE_UUID",
    "STORAGE_CMD_WRITE",
    "STORAGE_CMD_READ",
    "STORAGE_CMD_DELETE",
    "TEE_OBJECT_ID_MAX_LEN",
    "StorageTa",
]

STORAGE_UUID = uuid.UUID("674870f9-27a7-43b2-b20d-9f1a468f1782")
STORAGE_CMD_WRITE = 0  # TA_SECURE_STORAGE_CMD_WRITE_RAW
STORAGE_CMD_READ = 1  # TA_SECURE_STORAGE_CMD_READ_RAW
STORAGE_CMD_DELETE = 2  # TA_SECURE_STORAGE_CMD_DELETE

_N = TEE_PARAM_TYPE_NONE
_WRITE = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_INPUT, _N, _N)
_READ = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT, _N, _N)
_DELETE = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, _N, _N, _N)

_WRITE_FLAGS = (TEE_DATA_FLAG_ACCESS_READ | TEE_DATA_FLAG_ACCESS_WRITE | TEE_DATA_FLAG_ACCESS_WRITE_META
                | TEE_DATA_FLAG_OVERWRITE)
_READ_FLAGS = TEE_DATA_FLAG_ACCESS_READ | TEE_DATA_FLAG_SHARE_READ
_DELETE_FLAGS = TEE_DATA_FLAG_ACCESS_READ | TEE_DATA_FLAG_ACCESS_WRITE_META


class StorageTa(StatelessTa):
    uuid = STORAGE_UUID
    name = "storage"

    def invoke(self, ctx: TaContext, cmd: int, params: list[TaParam]) -> TaGen:
        types = param_types(params)
        if cmd == STORAGE_CMD_WRITE and types == _WRITE:
            oid = _object_id(ctx, params[0])
            if oid is None:
                return TEE_ERROR_BAD_PARAMETERS
            return (yield from _write_raw(ctx, oid, ctx.read_memref(params[1], "object data")))
        if cmd == STORAGE_CMD_READ and types == _READ:
            oid = _object_id(ctx, params[0])
            if oid is None:
                return TEE_ERROR_BAD_PARAMETERS
            return (yield from _read_raw(ctx, oid, params[1]))
        if cmd == STORAGE_CMD_DELETE and types == _DELETE:
            oid = _object_id(ctx, params[0])
            if oid is None:
                return TEE_ERROR_BAD_PARAMETERS
            return (yield from _delete(ctx, oid))
        return TEE_ERROR_BAD_PARAMETERS


def _storage(ctx: TaContext) -> tuple[Thread, ReeFs, uuid.UUID]:
    """The thread, the partition's REE FS and this TA's UUID."""
    fs, ta = ctx.ree_fs, ctx.session.ta
    assert fs is not None  # entry_std gives every TA its partition's REE FS
    assert ta is not None  # a session is invoked only once its TA is found (open_session)
    return ctx.thread, fs, ta.uuid


def _object_id(ctx: TaContext, p: TaParam) -> bytes | None:
    oid = ctx.read_memref(p, "object id")
    return oid if 1 <= len(oid) <= TEE_OBJECT_ID_MAX_LEN else None


def _write_raw(ctx: TaContext, oid: bytes, data: bytes) -> TaGen:
    """create_raw_object."""
    t, fs, me = _storage(ctx)
    res, obj = yield from create_persistent_object(t, fs, me, oid, _WRITE_FLAGS)
    if res != TEE_SUCCESS:
        return res
    res = yield from write_object_data(t, fs, obj, data)
    if res != TEE_SUCCESS:
        yield from close_and_delete_persistent_object(t, fs, obj)
    else:
        yield from close_object(t, fs, obj)
    return res


def _read_raw(ctx: TaContext, oid: bytes, out: TaParam) -> TaGen:
    """read_raw_object."""
    t, fs, me = _storage(ctx)
    res, obj = yield from open_persistent_object(t, fs, me, oid, _READ_FLAGS)
    if res != TEE_SUCCESS:
        return res
    if obj.data_size > out.size:
        out.size = obj.data_size
        res = TEE_ERROR_SHORT_BUFFER
    else:
        res, data = yield from read_object_data(t, fs, obj, obj.data_size)
        if res == TEE_SUCCESS:
            ctx.write_memref(out, data, "object data")
            out.size = len(data)
    yield from close_object(t, fs, obj)
    return res


def _delete(ctx: TaContext, oid: bytes) -> TaGen:
    """delete_object."""
    t, fs, me = _storage(ctx)
    res, obj = yield from open_persistent_object(t, fs, me, oid, _DELETE_FLAGS)
    if res != TEE_SUCCESS:
        return res
    return (yield from close_and_delete_persistent_object(t, fs, obj))
