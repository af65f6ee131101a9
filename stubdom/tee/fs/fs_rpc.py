"""The REE file system's RPCs (``core/tee/tee_fs_rpc.c``): one
OPTEE_RPC_CMD_FS request each, with names and data in the thread's FS shared
memory cache (``thread_rpc_shm_cache_alloc(THREAD_SHM_CACHE_USER_FS,
THREAD_SHM_TYPE_APPLICATION, ...)``: an SHM_ALLOC of type APPL of whole
pages the first time in a standard call, a bigger one when it is too small,
SHM_FREE when the call ends).

File names are ``/dirf.db`` for the directory file and ``/<file number in
hex>`` for an object (``create_filename`` + ``tee_fs_dirfile_fileh_to_fname``),
NUL-terminated in a TEE_FS_NAME_MAX buffer; tee-supplicant puts them under
its secure-storage directory.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

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
from stubdom.optee.teec import TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS

from ..thread import SHM_CACHE_USER_FS, RpcParam, RpcReply, RpcRequest, Thread

__all__ = ["TEE_FS_NAME_MAX", "DIRF_NAME", "file_name", "open_file", "create_file", "close_file",
           "read_file", "write_file", "remove_file"]

TEE_FS_NAME_MAX = 350  # core/include/tee/tee_fs.h
DIRF_NAME = "dirf.db"  # tee_fs_dirfile_fileh_to_fname with no file handle

# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator[RpcRequest, RpcReply, Any]


def file_name(file_number: int | None) -> str:
    """The REE name of an object file (or of dirf.db for None)."""
    return "/" + (DIRF_NAME if file_number is None else f"{file_number:x}")


def _name_buffer(t: Thread, file_number: int | None) -> Gen:
    """The name in the FS cache buffer, NUL-padded to TEE_FS_NAME_MAX."""
    mobj = yield from t.shm_cache_alloc(SHM_CACHE_USER_FS, OPTEE_RPC_SHM_TYPE_APPL, TEE_FS_NAME_MAX)
    if mobj is None:
        return None
    raw = file_name(file_number).encode() + b"\0"
    assert t.ns is not None
    t.ns.write(mobj, 0, raw + bytes(TEE_FS_NAME_MAX - len(raw)), "FS file name")
    return mobj


def _open_dfh(t: Thread, op: int, file_number: int | None) -> Gen:
    """operation_open_dfh: (result, fd)."""
    mobj = yield from _name_buffer(t, file_number)
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY, -1
    res, out = yield from t.rpc_cmd(OPTEE_RPC_CMD_FS, [
        RpcParam.value_in(op, 0, 0),
        RpcParam.memref(0, mobj, 0, TEE_FS_NAME_MAX),
        RpcParam.value_out(),
    ])
    if res != TEE_SUCCESS:
        return res, -1
    return TEE_SUCCESS, out[2].a & 0xFFFFFFFF  # the fd is an int in OP-TEE


def open_file(t: Thread, file_number: int | None) -> Gen:
    """tee_fs_rpc_open_dfh: FS OPEN; returns (result, fd)."""
    return (yield from _open_dfh(t, OPTEE_RPC_FS_OPEN, file_number))


def create_file(t: Thread, file_number: int | None) -> Gen:
    """tee_fs_rpc_create_dfh: FS CREATE (tee-supplicant truncates); (result, fd)."""
    return (yield from _open_dfh(t, OPTEE_RPC_FS_CREATE, file_number))


def close_file(t: Thread, fd: int) -> Gen:
    """tee_fs_rpc_close: FS CLOSE."""
    res, _ = yield from t.rpc_cmd(OPTEE_RPC_CMD_FS, [RpcParam.value_in(OPTEE_RPC_FS_CLOSE, fd, 0)])
    return res


def read_file(t: Thread, fd: int, offset: int, length: int) -> Gen:
    """tee_fs_rpc_read_init + _final: FS READ of ``length`` bytes at
    ``offset``.  Returns (result, bytes read as the normal world says,
    the data): the data is empty when that count exceeds what was asked."""
    mobj = yield from t.shm_cache_alloc(SHM_CACHE_USER_FS, OPTEE_RPC_SHM_TYPE_APPL, length)
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY, 0, b""
    res, out = yield from t.rpc_cmd(OPTEE_RPC_CMD_FS, [
        RpcParam.value_in(OPTEE_RPC_FS_READ, fd, offset),
        RpcParam.memref(1, mobj, 0, length),
    ])
    if res != TEE_SUCCESS:
        return res, 0, b""
    n = out[1].size
    if n > length:
        return TEE_SUCCESS, n, b""
    assert t.ns is not None
    return TEE_SUCCESS, n, t.ns.read(mobj, 0, n, "FS read data")


def write_file(t: Thread, fd: int, offset: int, data: bytes) -> Gen:
    """tee_fs_rpc_write_init + _final: FS WRITE of ``data`` at ``offset``."""
    mobj = yield from t.shm_cache_alloc(SHM_CACHE_USER_FS, OPTEE_RPC_SHM_TYPE_APPL, len(data))
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY
    assert t.ns is not None
    t.ns.write(mobj, 0, data, "FS write data")
    res, _ = yield from t.rpc_cmd(OPTEE_RPC_CMD_FS, [
        RpcParam.value_in(OPTEE_RPC_FS_WRITE, fd, offset),
        RpcParam.memref(0, mobj, 0, len(data)),
    ])
    return res


def remove_file(t: Thread, file_number: int | None) -> Gen:
    """tee_fs_rpc_remove_dfh: FS REMOVE by name."""
    mobj = yield from _name_buffer(t, file_number)
    if mobj is None:
        return TEE_ERROR_OUT_OF_MEMORY
    res, _ = yield from t.rpc_cmd(OPTEE_RPC_CMD_FS, [
        RpcParam.value_in(OPTEE_RPC_FS_REMOVE, 0, 0),
        RpcParam.memref(0, mobj, 0, TEE_FS_NAME_MAX),
    ])
    return res
