"""A tee-supplicant for one guest: the RPCs the driver cannot serve itself.

Modelled on OP-TEE/optee_client ``tee-supplicant`` (tee_supplicant.c for the
dispatch, tee_supp_fs.c for the REE file system): files by name relative to the
secure-storage root, integer file descriptors, directory handles, and the
TEEC results tee-supplicant returns for each failure.  The store is either a
per-guest directory on the host (:class:`DirectoryStore`) or a dict
(:class:`MemoryStore`).  Buffers tee-supplicant allocates for OP-TEE
(SHM_ALLOC type APPL) come from the driver it is attached to.
"""

from __future__ import annotations

import os
import posixpath
import threading
from pathlib import Path
from typing import Protocol

from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_LOAD_TA,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_FS_CLOSE,
    OPTEE_RPC_FS_CLOSEDIR,
    OPTEE_RPC_FS_CREATE,
    OPTEE_RPC_FS_OPEN,
    OPTEE_RPC_FS_OPENDIR,
    OPTEE_RPC_FS_READ,
    OPTEE_RPC_FS_READDIR,
    OPTEE_RPC_FS_REMOVE,
    OPTEE_RPC_FS_RENAME,
    OPTEE_RPC_FS_TRUNCATE,
    OPTEE_RPC_FS_WRITE,
    OPTEE_RPC_SHM_TYPE_APPL,
)
from stubdom.optee.teec import (
    TEEC_ERROR_ACCESS_CONFLICT,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_GENERIC,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_SUCCESS,
)
from stubdom.optee.uuid import value_words_to_uuid

from .params import (
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT,
    TeeParam,
)
from .shm import Shm
from .tastore import BuiltTaImages, TaStore

__all__ = ["SupplicantDevice", "SupplicantPort", "FileStore", "MemoryStore", "DirectoryStore", "Supplicant"]

_VIN = TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT
_VOUT = TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT
_MIN = TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT
_MOUT = TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT
_FIRST_FD = 3  # 0..2 are stdio in a real process; keep fds realistic


class SupplicantDevice(Protocol):
    """What the supplicant needs from its driver (Linux's /dev/teepriv0)."""

    def supp_alloc_shm(self, size: int) -> Shm: ...

    def supp_free_shm(self, shm_id: int) -> None: ...

    def supp_shm_id(self, shm: Shm) -> int: ...

    def supp_shm_by_id(self, shm_id: int) -> Shm | None: ...


class SupplicantPort(Protocol):
    """What the driver needs from whatever serves tee-supplicant's RPCs: this
    in-kernel :class:`Supplicant`, or the TEE subsystem's queue to a user-space
    tee-supplicant (:class:`stubdom.guest.supp.SuppQueue`)."""

    def attach(self, device) -> None: ...

    def process(self, cmd: int, params: list[TeeParam]) -> int:
        """optee_supp_thrd_req: serve one request; returns the TEEC result."""

    def get_shm(self, shm_id: int) -> Shm | None:
        """The supplicant's buffer with this id, referenced until put_shm
        (optee_rpc_cmd_alloc_suppl's tee_shm_get_from_id)."""

    def put_shm(self, shm: Shm) -> None:
        """Drop the reference get_shm took (cmd_free_suppl's tee_shm_put)."""

    def shm_id(self, shm: Shm) -> int:
        """The id tee-supplicant knows the buffer by (tee_shm_get_id)."""


class StoreError(Exception):
    """A store operation failed; ``result`` is the TEEC code to return."""

    def __init__(self, result: int) -> None:
        self.result = result
        super().__init__(hex(result))


class FileStore(Protocol):
    """Whole-file storage under one root; paths are '/'-separated, relative."""

    def load(self, path: str) -> bytes | None: ...

    def save(self, path: str, data: bytes) -> None: ...

    def delete(self, path: str) -> bool: ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str] | None: ...

    def rename(self, old: str, new: str) -> None: ...


class MemoryStore:
    """Files in a dict; directories exist while they hold a file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def load(self, path: str) -> bytes | None:
        return self.files.get(path)

    def save(self, path: str, data: bytes) -> None:
        self.files[path] = bytes(data)

    def delete(self, path: str) -> bool:
        return self.files.pop(path, None) is not None

    def exists(self, path: str) -> bool:
        return path in self.files or self.listdir(path) is not None

    def listdir(self, path: str) -> list[str] | None:
        prefix = "" if path in ("", ".") else path.rstrip("/") + "/"
        names = {p[len(prefix) :].split("/", 1)[0] for p in self.files if p.startswith(prefix)}
        return sorted(names) if names else None

    def rename(self, old: str, new: str) -> None:
        self.files[new] = self.files.pop(old)


class DirectoryStore:
    """Files under a host directory (tee-supplicant's /data/tee for one guest).

    Empty directories left by a removal are pruned, as tee-supplicant's
    ree_fs_new_remove does."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _host(self, path: str) -> Path:
        return self.root / path

    def load(self, path: str) -> bytes | None:
        p = self._host(path)
        return p.read_bytes() if p.is_file() else None

    def save(self, path: str, data: bytes) -> None:
        p = self._host(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def delete(self, path: str) -> bool:
        p = self._host(path)
        if not p.is_file():
            return False
        p.unlink()
        parent = p.parent
        for _ in range(2):  # the object's directory, then its parent
            if parent == self.root or any(parent.iterdir()):
                break
            parent.rmdir()
            parent = parent.parent
        return True

    def exists(self, path: str) -> bool:
        return self._host(path).exists()

    def listdir(self, path: str) -> list[str] | None:
        p = self._host(path)
        if not p.is_dir():
            return None
        names = sorted(n.name for n in p.iterdir() if not n.name.startswith("."))
        return names or None

    def rename(self, old: str, new: str) -> None:
        dst = self._host(new)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._host(old), dst)


def _type(p: TeeParam) -> int:
    return p.attr


class Supplicant:
    """One guest's tee-supplicant.  Thread-safe (OP-TEE threads may issue FS
    RPCs concurrently from several vCPUs).  ``store`` is its secure-storage
    directory, ``tas`` its TA directory (by default the images of the
    model's own TAs, as a guest with them installed has)."""

    def __init__(self, store: FileStore | None = None, tas: TaStore | None = None) -> None:
        self.store: FileStore = store if store is not None else MemoryStore()
        self.tas: TaStore = tas if tas is not None else BuiltTaImages()
        self._device: SupplicantDevice | None = None
        self._lock = threading.RLock()
        self._fds: dict[int, str] = {}
        self._dirs: dict[int, list[str]] = {}
        self.requests: list[int] = []  # cmd of every request served, for statistics

    def attach(self, device: SupplicantDevice) -> None:
        """Open the supplicant device of a driver (done by the driver itself)."""
        self._device = device

    # -- the driver's side of the buffers (SupplicantPort) ------------------------------
    def get_shm(self, shm_id: int) -> Shm | None:
        return None if self._device is None else self._device.supp_shm_by_id(shm_id)

    def put_shm(self, shm: Shm) -> None:
        """Nothing to do: this supplicant's buffers live until its SHM_FREE."""

    def shm_id(self, shm: Shm) -> int:
        assert self._device is not None
        return self._device.supp_shm_id(shm)

    @property
    def open_fds(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._fds)

    # -- dispatch (tee_supplicant.c: process_one_request) ----------------------------------
    def process(self, cmd: int, params: list[TeeParam]) -> int:
        with self._lock:
            self.requests.append(cmd)
            if cmd == OPTEE_RPC_CMD_FS:
                return self._fs(params)
            if cmd == OPTEE_RPC_CMD_SHM_ALLOC:
                return self._shm_alloc(params)
            if cmd == OPTEE_RPC_CMD_SHM_FREE:
                return self._shm_free(params)
            if cmd == OPTEE_RPC_CMD_LOAD_TA:
                return self._load_ta(params)
            return TEEC_ERROR_NOT_SUPPORTED

    def _load_ta(self, params: list[TeeParam]) -> int:
        """tee_supplicant.c load_ta: [0] the UUID's octets, [1] the buffer.
        Always answers the image's size; copies it only into a buffer that
        holds it (no buffer: the size query; too small: SHORT_BUFFER)."""
        if len(params) != 2 or not params[0].is_value or not params[1].is_memref:
            return TEEC_ERROR_BAD_PARAMETERS
        image = self.tas.load(value_words_to_uuid(params[0].a, params[0].b))
        if image is None:
            return TEEC_ERROR_ITEM_NOT_FOUND
        room = params[1].size
        params[1].size = len(image)
        if params[1].shm is None:
            return TEEC_SUCCESS
        if len(image) > room:
            return TEEC_ERROR_SHORT_BUFFER
        params[1].shm.write(params[1].offs, image)
        return TEEC_SUCCESS

    def _shm_alloc(self, params: list[TeeParam]) -> int:
        if len(params) != 1 or not params[0].is_value or self._device is None:
            return TEEC_ERROR_BAD_PARAMETERS
        if params[0].a != OPTEE_RPC_SHM_TYPE_APPL:
            return TEEC_ERROR_BAD_PARAMETERS
        try:
            shm = self._device.supp_alloc_shm(params[0].b)
        except Exception:
            return TEEC_ERROR_OUT_OF_MEMORY
        params[0].c = self._device.supp_shm_id(shm)
        return TEEC_SUCCESS

    def _shm_free(self, params: list[TeeParam]) -> int:
        if len(params) != 1 or not params[0].is_value or self._device is None:
            return TEEC_ERROR_BAD_PARAMETERS
        try:
            self._device.supp_free_shm(params[0].b)
        except Exception:
            return TEEC_ERROR_BAD_PARAMETERS
        return TEEC_SUCCESS

    # -- REE FS (tee_supp_fs.c) ---------------------------------------------------------
    def _fs(self, params: list[TeeParam]) -> int:
        if not params or not params[0].is_value:
            return TEEC_ERROR_BAD_PARAMETERS
        handler = {
            OPTEE_RPC_FS_OPEN: self._fs_open,
            OPTEE_RPC_FS_CREATE: self._fs_create,
            OPTEE_RPC_FS_CLOSE: self._fs_close,
            OPTEE_RPC_FS_READ: self._fs_read,
            OPTEE_RPC_FS_WRITE: self._fs_write,
            OPTEE_RPC_FS_TRUNCATE: self._fs_truncate,
            OPTEE_RPC_FS_REMOVE: self._fs_remove,
            OPTEE_RPC_FS_RENAME: self._fs_rename,
            OPTEE_RPC_FS_OPENDIR: self._fs_opendir,
            OPTEE_RPC_FS_CLOSEDIR: self._fs_closedir,
            OPTEE_RPC_FS_READDIR: self._fs_readdir,
        }.get(params[0].a)
        if handler is None:
            return TEEC_ERROR_BAD_PARAMETERS
        try:
            return handler(params)
        except StoreError as e:
            return e.result
        except OSError:
            return TEEC_ERROR_GENERIC

    @staticmethod
    def _shape(params: list[TeeParam], *types: int) -> bool:
        return len(params) == len(types) and all(_type(p) == t for p, t in zip(params, types))

    @staticmethod
    def _name(p: TeeParam) -> str:
        """The NUL-terminated file name in a memref, as a store path."""
        if p.shm is None:
            raise StoreError(TEEC_ERROR_BAD_PARAMETERS)
        raw = p.data().split(b"\0", 1)[0]
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise StoreError(TEEC_ERROR_BAD_PARAMETERS) from None
        norm = posixpath.normpath("/" + name).lstrip("/")
        if not name or not norm or norm == ".":
            raise StoreError(TEEC_ERROR_BAD_PARAMETERS)
        return norm

    def _new_fd(self, path: str) -> int:
        fd = _FIRST_FD
        while fd in self._fds:
            fd += 1
        self._fds[fd] = path
        return fd

    def _fd_path(self, fd: int) -> str:
        path = self._fds.get(fd)
        if path is None:
            raise StoreError(TEEC_ERROR_GENERIC)  # EBADF
        return path

    def _fs_open(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MIN, _VOUT):
            return TEEC_ERROR_BAD_PARAMETERS
        path = self._name(params[1])
        if self.store.load(path) is None:
            return TEEC_ERROR_ITEM_NOT_FOUND
        params[2].a = self._new_fd(path)
        return TEEC_SUCCESS

    def _fs_create(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MIN, _VOUT):
            return TEEC_ERROR_BAD_PARAMETERS
        path = self._name(params[1])
        self.store.save(path, b"")  # O_RDWR | O_CREAT | O_TRUNC, parents created
        params[2].a = self._new_fd(path)
        return TEEC_SUCCESS

    def _fs_close(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN):
            return TEEC_ERROR_BAD_PARAMETERS
        if self._fds.pop(params[0].b, None) is None:
            return TEEC_ERROR_GENERIC  # close(2) fails with EBADF
        return TEEC_SUCCESS

    def _data(self, fd: int) -> tuple[str, bytes]:
        path = self._fd_path(fd)
        data = self.store.load(path)
        if data is None:  # removed while open: an unlinked file reads as empty
            data = b""
        return path, data

    def _fs_read(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MOUT):
            return TEEC_ERROR_BAD_PARAMETERS
        if params[1].shm is None:
            return TEEC_ERROR_BAD_PARAMETERS
        _, data = self._data(params[0].b)
        offs = params[0].c
        chunk = data[offs : offs + params[1].size]
        params[1].shm.write(params[1].offs, chunk)
        params[1].size = len(chunk)
        return TEEC_SUCCESS

    def _fs_write(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MIN):
            return TEEC_ERROR_BAD_PARAMETERS
        if params[1].shm is None:
            return TEEC_ERROR_BAD_PARAMETERS
        path, data = self._data(params[0].b)
        offs = params[0].c
        buf = params[1].data()
        if offs > len(data):
            data = data + bytes(offs - len(data))  # pwrite past EOF leaves a hole of zeros
        self.store.save(path, data[:offs] + buf + data[offs + len(buf) :])
        return TEEC_SUCCESS

    def _fs_truncate(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN):
            return TEEC_ERROR_BAD_PARAMETERS
        path, data = self._data(params[0].b)
        length = params[0].c
        self.store.save(path, data[:length] + bytes(max(0, length - len(data))))
        return TEEC_SUCCESS

    def _fs_remove(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MIN):
            return TEEC_ERROR_BAD_PARAMETERS
        if not self.store.delete(self._name(params[1])):
            return TEEC_ERROR_ITEM_NOT_FOUND
        return TEEC_SUCCESS

    def _fs_rename(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MIN, _MIN):
            return TEEC_ERROR_BAD_PARAMETERS
        old = self._name(params[1])
        new = self._name(params[2])
        if not params[0].b and self.store.exists(new):
            return TEEC_ERROR_ACCESS_CONFLICT
        if self.store.load(old) is None:
            return TEEC_ERROR_ITEM_NOT_FOUND
        self.store.rename(old, new)
        return TEEC_SUCCESS

    def _fs_opendir(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MIN, _VOUT):
            return TEEC_ERROR_BAD_PARAMETERS
        names = self.store.listdir(self._name(params[1]))
        if not names:  # missing or empty directories are "not found" (xtest 6009/6010)
            return TEEC_ERROR_ITEM_NOT_FOUND
        handle = 0
        while handle in self._dirs:
            handle += 1
        self._dirs[handle] = list(names)
        params[2].a = handle
        return TEEC_SUCCESS

    def _fs_closedir(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN):
            return TEEC_ERROR_BAD_PARAMETERS
        if self._dirs.pop(params[0].b, None) is None:
            return TEEC_ERROR_BAD_PARAMETERS
        return TEEC_SUCCESS

    def _fs_readdir(self, params: list[TeeParam]) -> int:
        if not self._shape(params, _VIN, _MOUT):
            return TEEC_ERROR_BAD_PARAMETERS
        if params[1].shm is None:
            return TEEC_ERROR_BAD_PARAMETERS
        pending = self._dirs.get(params[0].b)
        if pending is None:
            return TEEC_ERROR_BAD_PARAMETERS
        if not pending:
            return TEEC_ERROR_ITEM_NOT_FOUND
        name = pending[0].encode() + b"\0"
        room = params[1].size
        params[1].size = len(name)
        if len(name) > room:
            return TEEC_ERROR_SHORT_BUFFER  # the entry stays for the retry with a bigger buffer
        pending.pop(0)
        params[1].shm.write(params[1].offs, name)
        return TEEC_SUCCESS
