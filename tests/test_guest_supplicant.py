"""tee-supplicant's REE file system and dispatch, on both stores."""

from __future__ import annotations

import pytest

from stubdom.guest import (
    BuiltTaImages,
    DirectoryStore,
    MemoryStore,
    Shm,
    ShmOwner,
    Supplicant,
    TaDirectory,
    TeeParam,
    model_ta_images,
    write_ta_images,
)
from stubdom.optee import (
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_LOAD_TA,
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
    TEEC_ERROR_ACCESS_CONFLICT,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_GENERIC,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_SUCCESS,
    build_ta_image,
    uuid_to_value_words,
)
from stubdom.tee.tas import DIGEST_UUID, INCREMENT_UUID, builtin_tas

VIN, VOUT, MIN, MOUT = 1, 2, 5, 6


class Memory:
    """Flat byte-addressed memory standing in for a Domain."""

    def __init__(self) -> None:
        self.bytes = bytearray(1 << 20)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.bytes[addr : addr + n])

    def write(self, addr: int, data: bytes) -> None:
        self.bytes[addr : addr + len(data)] = data


@pytest.fixture(params=["memory", "directory"])
def supp(request, tmp_path):
    store = MemoryStore() if request.param == "memory" else DirectoryStore(tmp_path / "tee")
    return Supplicant(store)


@pytest.fixture
def mem():
    return Memory()


def buf(mem: Memory, data: bytes = b"", size: int = 4096, at: int = 0x1000) -> Shm:
    shm = Shm(mem, cookie=at, size=size, owner=ShmOwner.SUPPLICANT, pages=[at])
    shm.write(0, data)
    return shm


def name(mem, text: str, at: int = 0x1000) -> TeeParam:
    raw = text.encode() + b"\0"
    return TeeParam.memref(MIN, buf(mem, raw, at=at), 0, len(raw))


def fs(supp, op: int, *rest: TeeParam, b: int = 0, c: int = 0):
    params = [TeeParam.value(VIN, op, b, c), *rest]
    return supp.process(OPTEE_RPC_CMD_FS, params), params


def create(supp, mem, path: str) -> int:
    ret, p = fs(supp, OPTEE_RPC_FS_CREATE, name(mem, path), TeeParam.value(VOUT))
    assert ret == TEEC_SUCCESS
    return p[2].a


def test_create_write_read_truncate(supp, mem):
    fd = create(supp, mem, "dirf.db")
    assert fd == 3
    data = buf(mem, b"0123456789", at=0x3000)
    assert fs(supp, OPTEE_RPC_FS_WRITE, TeeParam.memref(MIN, data, 2, 6), b=fd, c=4)[0] == TEEC_SUCCESS
    out = buf(mem, size=64, at=0x5000)
    ret, p = fs(supp, OPTEE_RPC_FS_READ, TeeParam.memref(MOUT, out, 0, 64), b=fd, c=0)
    assert ret == TEEC_SUCCESS and p[1].size == 10 and out.read(0, 10) == b"\0\0\0\x00234567"
    assert fs(supp, OPTEE_RPC_FS_TRUNCATE, b=fd, c=6)[0] == TEEC_SUCCESS
    ret, p = fs(supp, OPTEE_RPC_FS_READ, TeeParam.memref(MOUT, out, 0, 64), b=fd, c=5)
    assert p[1].size == 1 and out.read(0, 1) == b"3"
    assert fs(supp, OPTEE_RPC_FS_CLOSE, b=fd)[0] == TEEC_SUCCESS
    assert fs(supp, OPTEE_RPC_FS_CLOSE, b=fd)[0] == TEEC_ERROR_GENERIC  # EBADF
    ret, p = fs(supp, OPTEE_RPC_FS_OPEN, name(mem, "dirf.db"), TeeParam.value(VOUT))
    assert ret == TEEC_SUCCESS and p[2].a == 3  # lowest free fd again


def test_open_missing_remove_and_rename(supp, mem):
    assert fs(supp, OPTEE_RPC_FS_OPEN, name(mem, "x"), TeeParam.value(VOUT))[0] == TEEC_ERROR_ITEM_NOT_FOUND
    assert fs(supp, OPTEE_RPC_FS_REMOVE, name(mem, "x"))[0] == TEEC_ERROR_ITEM_NOT_FOUND
    create(supp, mem, "ta/a")
    create(supp, mem, "ta/b")
    rename = lambda old, new, overwrite: fs(  # noqa: E731
        supp, OPTEE_RPC_FS_RENAME, name(mem, old, 0x1000), name(mem, new, 0x2000), b=overwrite
    )[0]
    assert rename("ta/a", "ta/b", 0) == TEEC_ERROR_ACCESS_CONFLICT
    assert rename("ta/zz", "ta/c", 0) == TEEC_ERROR_ITEM_NOT_FOUND
    assert rename("ta/a", "ta/b", 1) == TEEC_SUCCESS
    assert supp.store.load("ta/a") is None and supp.store.load("ta/b") == b""
    assert fs(supp, OPTEE_RPC_FS_REMOVE, name(mem, "ta/b"))[0] == TEEC_SUCCESS
    assert supp.store.listdir("ta") is None  # empty directory pruned


def test_directories(supp, mem):
    assert fs(supp, OPTEE_RPC_FS_OPENDIR, name(mem, "ta"), TeeParam.value(VOUT))[0] == TEEC_ERROR_ITEM_NOT_FOUND
    for n in ("ta/1", "ta/22"):
        create(supp, mem, n)
    ret, p = fs(supp, OPTEE_RPC_FS_OPENDIR, name(mem, "ta"), TeeParam.value(VOUT))
    assert ret == TEEC_SUCCESS
    handle = p[2].a
    out = buf(mem, size=64, at=0x6000)
    ret, p = fs(supp, OPTEE_RPC_FS_READDIR, TeeParam.memref(MOUT, out, 0, 64), b=handle)
    assert (ret, p[1].size, out.read(0, 2)) == (TEEC_SUCCESS, 2, b"1\0")
    ret, p = fs(supp, OPTEE_RPC_FS_READDIR, TeeParam.memref(MOUT, out, 0, 2), b=handle)
    assert (ret, p[1].size) == (TEEC_ERROR_SHORT_BUFFER, 3)
    ret, p = fs(supp, OPTEE_RPC_FS_READDIR, TeeParam.memref(MOUT, out, 0, 64), b=handle)
    assert (ret, out.read(0, 3)) == (TEEC_SUCCESS, b"22\0")
    assert fs(supp, OPTEE_RPC_FS_READDIR, TeeParam.memref(MOUT, out, 0, 64), b=handle)[0] == TEEC_ERROR_ITEM_NOT_FOUND
    assert fs(supp, OPTEE_RPC_FS_CLOSEDIR, b=handle)[0] == TEEC_SUCCESS
    assert fs(supp, OPTEE_RPC_FS_CLOSEDIR, b=handle)[0] == TEEC_ERROR_BAD_PARAMETERS


def test_bad_shapes_and_other_commands(supp, mem):
    assert fs(supp, OPTEE_RPC_FS_OPEN, name(mem, "x"))[0] == TEEC_ERROR_BAD_PARAMETERS
    assert fs(supp, 99)[0] == TEEC_ERROR_BAD_PARAMETERS
    assert supp.process(OPTEE_RPC_CMD_FS, []) == TEEC_ERROR_BAD_PARAMETERS
    assert fs(supp, OPTEE_RPC_FS_CREATE, name(mem, ""), TeeParam.value(VOUT))[0] == TEEC_ERROR_BAD_PARAMETERS
    assert supp.process(OPTEE_RPC_CMD_LOAD_TA, [TeeParam.value(VIN)]) == TEEC_ERROR_BAD_PARAMETERS
    assert supp.process(OPTEE_RPC_CMD_GET_TIME, [TeeParam.value(VOUT)]) == TEEC_ERROR_NOT_SUPPORTED


def test_names_cannot_escape_the_root(tmp_path, mem):
    supp = Supplicant(DirectoryStore(tmp_path / "root"))
    create(supp, mem, "../../escape")
    assert (tmp_path / "root" / "escape").is_file()
    assert not (tmp_path / "escape").exists()


def load_ta(supp, ta_uuid, shm=None, size=0):
    a, b = uuid_to_value_words(ta_uuid)
    p = [TeeParam.value(VIN, a, b), TeeParam.memref(MOUT, shm, 0, size)]
    return supp.process(OPTEE_RPC_CMD_LOAD_TA, p), p[1].size


def test_load_ta_size_query_then_load(mem):
    """tee_supplicant.c load_ta: no buffer -> the size; a buffer that holds
    it -> the image; a smaller one -> SHORT_BUFFER and the size."""
    supp = Supplicant()
    image = model_ta_images()[INCREMENT_UUID]
    assert load_ta(supp, INCREMENT_UUID) == (TEEC_SUCCESS, len(image))
    small = buf(mem, size=100)
    assert load_ta(supp, INCREMENT_UUID, small, 100) == (TEEC_ERROR_SHORT_BUFFER, len(image))
    room = Shm(mem, cookie=0x2000, size=len(image), owner=ShmOwner.SUPPLICANT,
               pages=[0x2000 + i * 4096 for i in range(-(-len(image) // 4096))])
    assert load_ta(supp, INCREMENT_UUID, room, len(image)) == (TEEC_SUCCESS, len(image))
    assert room.read(0, len(image)) == image
    assert load_ta(supp, DIGEST_UUID.__class__("12345678-1234-1234-1234-123456789abc")) == \
        (TEEC_ERROR_ITEM_NOT_FOUND, 0)


def test_ta_directory_reads_uuid_dot_ta_and_the_legacy_name(tmp_path):
    written = write_ta_images(tmp_path / "ta")
    assert sorted(p.name for p in written) == sorted(f"{u}.ta" for u in builtin_tas())
    store = TaDirectory(tmp_path / "ta")
    assert store.load(INCREMENT_UUID) == BuiltTaImages().load(INCREMENT_UUID)
    # tee-supplicant's fallback spelling: no dash between clock_seq and node
    legacy = tmp_path / "ta" / "a0bd9563-24c5-41c0-9d2236aa5bad6745.ta"
    (tmp_path / "ta" / f"{DIGEST_UUID}.ta").rename(legacy)
    image = build_ta_image(DIGEST_UUID, "digest", size=4096)
    legacy.write_bytes(image)
    assert store.load(DIGEST_UUID) == image
    assert TaDirectory(tmp_path / "nowhere").load(INCREMENT_UUID) is None
