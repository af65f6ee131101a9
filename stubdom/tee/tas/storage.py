"""The secure-storage TA: objects kept in the guest's normal-world store.

Every object is one REE file, reached the way OP-TEE's REE FS reaches it
(``core/tee/tee_fs_rpc.c``): OPTEE_RPC_CMD_FS requests whose names and data
travel in shared memory obtained with OPTEE_RPC_CMD_SHM_ALLOC of type APPL
through the thread's FS shm cache (``thread_rpc_shm_cache_alloc``, whole
pages, reallocated when too small) and handed back with SHM_FREE when the
standard call ends.

Commands (object id: MEMREF_INPUT of 1..64 bytes, TEE_OBJECT_ID_MAX_LEN):

* STORAGE_CMD_WRITE  (id, MEMREF_INPUT data): FS CREATE (truncating), WRITE
  at offset 0, CLOSE.
* STORAGE_CMD_READ   (id, MEMREF_OUTPUT data): FS OPEN, READ in chunks until
  a short read, CLOSE; TEE_ERROR_SHORT_BUFFER with the object's size when
  the output is too small; TEE_ERROR_ITEM_NOT_FOUND for a missing object.
* STORAGE_CMD_DELETE (id): FS REMOVE.

Simplified against OP-TEE: objects are stored in clear, one file each, with
no dirf.db, hash tree or rollback protection.  The file name is
``/<TA UUID>/<object id in hex>`` NUL-terminated in a TEE_FS_NAME_MAX buffer.
"""

from __future__ import annotations

import uuid

from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_FS_CLOSE,
    OPTEE_RPC_FS_CREATE,
    OPTEE_RPC_FS_OPEN,
    OPTEE_RPC_FS_READ,
    OPTEE_RPC_FS_REMOVE,
    OPTEE_RPC_FS_WRITE,
    OPTEE_RPC_SHM_TYPE_APPL,
)
from stubdom.optee.teec import (
    TEE_ERROR_BAD_PARAMETERS,
    TEE_ERROR_CORRUPT_OBJECT,
    TEE_ERROR_OUT_OF_MEMORY,
    TEE_ERROR_SHORT_BUFFER,
    TEE_SUCCESS,
)

from ..thread import SHM_CACHE_USER_FS, RpcParam
from .ta import (
    StatelessTa,
    TEE_PARAM_TYPE_MEMREF_INPUT,
    TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPES,
    TaContext,
    TaGen,
    TaParam,
    param_types,
)

__all__ = [
    "STORAGE_UUID",
    "STORAGE_CMD_WRITE",
    "STORAGE_CMD_READ",
    "STORAGE_CMD_DELETE",
    "TEE_OBJECT_ID_MAX_LEN",
    "TEE_FS_NAME_MAX",
    "STORAGE_READ_CHUNK",
    "StorageTa",
    "object_file_name",
]

STORAGE_UUID = uuid.UUID("674870f9-27a7-43b2-b20d-9f1a468f1782")
STORAGE_CMD_WRITE = 0
STORAGE_CMD_READ = 1
STORAGE_CMD_DELETE = 2

TEE_OBJECT_ID_MAX_LEN = 64  # tee_api_defines.h
TEE_FS_NAME_MAX = 350  # core/include/tee/tee_fs.h
# Bytes asked for per FS READ when reading an object back.
STORAGE_READ_CHUNK = 16 * 1024

_N = TEE_PARAM_TYPE_NONE
_WRITE = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_INPUT, _N, _N)
_READ = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT, _N, _N)
_DELETE = TEE_PARAM_TYPES(TEE_PARAM_TYPE_MEMREF_INPUT, _N, _N, _N)


def object_file_name(ta_uuid: uuid.UUID, object_id: bytes) -> str:
    """The REE file name of an object."""
    return f"/{ta_uuid}/{object_id.hex()}"


class StorageTa(StatelessTa):
    uuid = STORAGE_UUID
    name = "storage"

    def invoke(self, ctx: TaContext, cmd: int, params: list[TaParam]) -> TaGen:
        types = param_types(params)
        if cmd == STORAGE_CMD_WRITE and types == _WRITE:
            name = yield from _object_name(ctx, params[0])
            if name is None:
                return TEE_ERROR_BAD_PARAMETERS
            data = ctx.read_memref(params[1], "object data")
            return (yield from _write_object(ctx, name, data))
        if cmd == STORAGE_CMD_READ and types == _READ:
            name = yield from _object_name(ctx, params[0])
            if name is None:
                return TEE_ERROR_BAD_PARAMETERS
            res, data = yield from _read_object(ctx, name)
            if res != TEE_SUCCESS:
                return res
            out = params[1]
            if len(data) > out.size:
                out.size = len(data)
                return TEE_ERROR_SHORT_BUFFER
            ctx.write_memref(out, data, "object data")
            out.size = len(data)
            return TEE_SUCCESS
        if cmd == STORAGE_CMD_DELETE and types == _DELETE:
            name = yield from _object_name(ctx, params[0])
            if name is None:
                return TEE_ERROR_BAD_PARAMETERS
            return (yield from _remove(ctx, name))
        return TEE_ERROR_BAD_PARAMETERS



def _object_name(ctx: TaContext, p: TaParam) -> TaGen:
    object_id = ctx.read_memref(p, "object id")
    if not 1 <= len(object_id) <= TEE_OBJECT_ID_MAX_LEN:
        return None
    return object_file_name(ctx.session.ta.uuid, object_id)
    yield


def _name_buffer(ctx: TaContext, name: str) -> TaGen:
    """operation_open_dfh: the name in a TEE_FS_NAME_MAX buffer from the FS cache."""
    mobj = yield from ctx.thread.shm_cache_alloc(SHM_CACHE_USER_FS, OPTEE_RPC_SHM_TYPE_APPL, TEE_FS_NAME_MAX)
    if mobj is None:
        return None
    raw = name.encode() + b"\0"
    assert ctx.thread.ns is not None
    ctx.thread.ns.write(mobj, 0, raw + bytes(TEE_FS_NAME_MAX - len(raw)), "FS file name")
    return mobj


def _open(ctx: TaContext, name: str, op: int) -> TaGen:
    mobj = yield from _name_buffer(ctx, name)
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY, 0
    res, out = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_FS, [
        RpcParam.value_in(op, 0, 0),
        RpcParam.memref(0, mobj, 0, TEE_FS_NAME_MAX),
        RpcParam.value_out(),
    ])
    return res, out[2].a & 0xFFFFFFFF


def _close(ctx: TaContext, fd: int) -> TaGen:
    res, _ = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_FS, [RpcParam.value_in(OPTEE_RPC_FS_CLOSE, fd, 0)])
    return res


def _write_object(ctx: TaContext, name: str, data: bytes) -> TaGen:
    res, fd = yield from _open(ctx, name, OPTEE_RPC_FS_CREATE)
    if res != TEE_SUCCESS:
        return res
    if data:
        mobj = yield from ctx.thread.shm_cache_alloc(SHM_CACHE_USER_FS, OPTEE_RPC_SHM_TYPE_APPL, len(data))
        if mobj is None:
            yield from _close(ctx, fd)
            return TEE_ERROR_OUT_OF_MEMORY
        assert ctx.thread.ns is not None
        ctx.thread.ns.write(mobj, 0, data, "FS write data")
        res, _ = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_FS, [
            RpcParam.value_in(OPTEE_RPC_FS_WRITE, fd, 0),
            RpcParam.memref(0, mobj, 0, len(data)),
        ])
        if res != TEE_SUCCESS:
            yield from _close(ctx, fd)
            return res
    return (yield from _close(ctx, fd))


def _read_object(ctx: TaContext, name: str) -> TaGen:
    res, fd = yield from _open(ctx, name, OPTEE_RPC_FS_OPEN)
    if res != TEE_SUCCESS:
        return res, b""
    chunks: list[bytes] = []
    offset = 0
    while True:
        mobj = yield from ctx.thread.shm_cache_alloc(SHM_CACHE_USER_FS, OPTEE_RPC_SHM_TYPE_APPL,
                                                     STORAGE_READ_CHUNK)
        if mobj is None:
            yield from _close(ctx, fd)
            return TEE_ERROR_OUT_OF_MEMORY, b""
        res, out = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_FS, [
            RpcParam.value_in(OPTEE_RPC_FS_READ, fd, offset),
            RpcParam.memref(1, mobj, 0, STORAGE_READ_CHUNK),
        ])
        if res != TEE_SUCCESS:
            yield from _close(ctx, fd)
            return res, b""
        n = out[1].size
        if n > STORAGE_READ_CHUNK:
            yield from _close(ctx, fd)
            return TEE_ERROR_CORRUPT_OBJECT, b""
        assert ctx.thread.ns is not None
        chunks.append(ctx.thread.ns.read(mobj, 0, n, "FS read data"))
        offset += n
        if n < STORAGE_READ_CHUNK:
            break
    res = yield from _close(ctx, fd)
    if res != TEE_SUCCESS:
        return res, b""
    return TEE_SUCCESS, b"".join(chunks)


def _remove(ctx: TaContext, name: str) -> TaGen:
    mobj = yield from _name_buffer(ctx, name)
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY
    res, _ = yield from ctx.thread.rpc_cmd(OPTEE_RPC_CMD_FS, [
        RpcParam.value_in(OPTEE_RPC_FS_REMOVE, 0, 0),
        RpcParam.memref(0, mobj, 0, TEE_FS_NAME_MAX),
    ])
    return res
