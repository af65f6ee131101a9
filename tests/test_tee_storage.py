"""Secure storage through OP-TEE's REE FS: the FS RPCs the storage TA's
commands make, in OP-TEE's order, at the offsets tee_ree_fs.c's
get_offs_size gives (core/tee/tee_ree_fs.c, fs_htree.c, fs_dirfile.c,
tee_fs_rpc.c), and what a normal world that tampers with the files gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_FS_CLOSE,
    OPTEE_RPC_FS_CREATE,
    OPTEE_RPC_FS_OPEN,
    OPTEE_RPC_FS_READ,
    OPTEE_RPC_FS_REMOVE,
    OPTEE_RPC_FS_WRITE,
    TEE_ERROR_CORRUPT_OBJECT,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ORIGIN_TRUSTED_APP,
    TEEC_SUCCESS,
    MsgParam,
)
from stubdom.tee.fs.dirfile import DIRFILE_ENTRY_SIZE
from stubdom.tee.fs.htree import HEAD_IMAGE_SIZE, NODE_IMAGE_SIZE
from stubdom.tee.fs.ree_fs import get_offs_size
from stubdom.tee.tas import STORAGE_CMD_DELETE, STORAGE_CMD_READ, STORAGE_CMD_WRITE, STORAGE_UUID
from tee_support import setup_guests

NAMES = {OPTEE_RPC_FS_OPEN: "OPEN", OPTEE_RPC_FS_CREATE: "CREATE", OPTEE_RPC_FS_CLOSE: "CLOSE",
         OPTEE_RPC_FS_READ: "READ", OPTEE_RPC_FS_WRITE: "WRITE", OPTEE_RPC_FS_REMOVE: "REMOVE"}
HEAD, NODE, BLOCK = 0, 1, 2


def at(kind: int, idx: int, vers: int) -> tuple[int, int]:
    return get_offs_size(kind, idx, vers)


class Recorder:
    """Wraps the test normal world's FS: (op, file, offset, size) per FS RPC,
    files named "dirf" and "obj" as the fds they were opened with say."""

    def __init__(self, nw) -> None:
        self.nw = nw
        self.log: list[tuple] = []
        self.fd_names: dict[int, str] = {}
        self._fs = nw.fs
        nw.fs = self

    def __call__(self, params):
        nw, op = self.nw, params[0].a
        if op in (OPTEE_RPC_FS_OPEN, OPTEE_RPC_FS_CREATE, OPTEE_RPC_FS_REMOVE):
            buf, offs = nw.memref(params[1])
            name = nw.read_buf(buf, params[1].size, offs).split(b"\0")[0].decode()
            ret, out = self._fs(params)
            self.log.append((NAMES[op], name))
            if ret == TEEC_SUCCESS and op != OPTEE_RPC_FS_REMOVE:
                self.fd_names[out[2].a] = "dirf" if name == "/dirf.db" else "obj"
            return ret, out
        ret, out = self._fs(params)
        who = self.fd_names[params[0].b]
        if op in (OPTEE_RPC_FS_READ, OPTEE_RPC_FS_WRITE):
            self.log.append((NAMES[op], who, params[0].c, params[1].size))
        else:
            self.log.append((NAMES[op], who))
        return ret, out


@pytest.fixture
def store(tmp_path: Path):
    machine, _tee, oracle, (nw,) = setup_guests(tmp_path, 1)
    _, arg = nw.open_session(STORAGE_UUID)
    yield nw, arg.session, Recorder(nw)
    oracle.assert_clean()
    machine.close()


def memref(nw, data: bytes, attr=OPTEE_MSG_ATTR_TYPE_TMEM_INPUT):
    buf = nw.buffer(len(data))
    nw.write_buf_fast(buf, data)
    return buf, MsgParam(attr | OPTEE_MSG_ATTR_NONCONTIG, buf.buf_ptr, len(data), 0xC0FFEE)


def write(nw, sid, oid: bytes, data: bytes) -> int:
    return nw.invoke(sid, STORAGE_CMD_WRITE, memref(nw, oid)[1], memref(nw, data)[1])[1].ret


def read(nw, sid, oid: bytes, size: int):
    back, p = memref(nw, bytes(size), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT)
    _, arg = nw.invoke(sid, STORAGE_CMD_READ, memref(nw, oid)[1], p)
    return arg, nw.read_buf(back, arg.params[1].size) if arg.ret == TEEC_SUCCESS else b""


def test_layout_sizes_are_optee_structs() -> None:
    # struct tee_fs_htree_node_image / tee_fs_htree_image / dirfile_entry
    assert (NODE_IMAGE_SIZE, HEAD_IMAGE_SIZE, DIRFILE_ENTRY_SIZE) == (66, 68, 120)
    # tee_ree_fs.c get_offs_size: 31 node pairs per node block, data blocks in
    # pairs after it.  (Its layout comment puts the second node block at phys
    # block 64; the code, which is what files hold, puts it at 63 and data
    # block 30's second version at 64.)
    assert at(HEAD, 0, 1) == (68, 68)
    assert at(NODE, 0, 0) == (4096, 66) and at(NODE, 30, 1) == (4096 + 66 * 61, 66)
    assert at(BLOCK, 0, 0) == (2 * 4096, 4096) and at(BLOCK, 30, 0) == (62 * 4096, 4096)
    assert at(NODE, 31, 0) == (63 * 4096, 66) and at(BLOCK, 30, 1) == (64 * 4096, 4096)
    assert at(BLOCK, 31, 0) == (65 * 4096, 4096)


def _steady_write(new: str, old: str) -> list[tuple]:
    """A STORAGE_CMD_WRITE of 4 KiB over an existing object, dirf.db holding
    that one entry: TEE_CreatePersistentObject (ree_fs_create), then
    TEE_WriteObjectData (ree_fs_write), then TEE_CloseObject (ree_fs_close)."""
    return [
        # get_dirh -> open_dirh -> tee_fs_dirfile_open -> tee_fs_htree_open(no hash):
        # both headers, the committed root node (counter 4 -> version 0... its
        # counter parity), then dirfile_open reads entry 0 (one block)
        ("OPEN", "/dirf.db"),
        ("READ", "dirf", *at(HEAD, 0, 0)), ("READ", "dirf", *at(HEAD, 0, 1)),
        ("READ", "dirf", *at(NODE, 0, 1)),
        ("READ", "dirf", *at(BLOCK, 0, 0)),
        # the new file (lowest free number) and its tree: create_and_sync writes
        # root node v1, header v1 (counter 1), then the dummy header v0
        ("CREATE", new),
        ("WRITE", "obj", *at(NODE, 0, 1)), ("WRITE", "obj", *at(HEAD, 0, 1)), ("WRITE", "obj", *at(HEAD, 0, 0)),
        # the 24-byte struct tee_svc_storage_head: block 0 (nothing to read back yet)
        ("WRITE", "obj", *at(BLOCK, 0, 1)),
        # tee_fs_htree_sync_to_storage: root v0, header v0 (counter 2)
        ("WRITE", "obj", *at(NODE, 0, 0)), ("WRITE", "obj", *at(HEAD, 0, 0)),
        # set_name: find the old entry (read), rewrite it (read-modify-write of
        # its block), commit dirf.db (root, header), remove the old file
        ("READ", "dirf", *at(BLOCK, 0, 0)),
        ("READ", "dirf", *at(BLOCK, 0, 0)), ("WRITE", "dirf", *at(BLOCK, 0, 1)),
        ("WRITE", "dirf", *at(NODE, 0, 0)), ("WRITE", "dirf", *at(HEAD, 0, 0)),
        ("REMOVE", old),
        # ree_fs_write of 4096 bytes at 24: block 0 read and rewritten, block 1 new
        ("READ", "obj", *at(BLOCK, 0, 1)), ("WRITE", "obj", *at(BLOCK, 0, 0)), ("WRITE", "obj", *at(BLOCK, 1, 1)),
        # sync: node 2 (child 0 of the root), root, header
        ("WRITE", "obj", *at(NODE, 1, 1)), ("WRITE", "obj", *at(NODE, 0, 1)), ("WRITE", "obj", *at(HEAD, 0, 1)),
        # tee_fs_dirfile_update_hash (read, read-modify-write), commit dirf.db
        ("READ", "dirf", *at(BLOCK, 0, 1)), ("READ", "dirf", *at(BLOCK, 0, 1)),
        ("WRITE", "dirf", *at(BLOCK, 0, 0)),
        ("WRITE", "dirf", *at(NODE, 0, 1)), ("WRITE", "dirf", *at(HEAD, 0, 1)),
        # ree_fs_close: the last object closes dirf.db, then the object's file
        ("CLOSE", "dirf"), ("CLOSE", "obj"),
    ]


def _read(name: str) -> list[tuple]:
    """A STORAGE_CMD_READ of that object: TEE_OpenPersistentObject (ree_fs_open
    + the head read), TEE_ReadObjectData, TEE_CloseObject."""
    return [
        ("OPEN", "/dirf.db"),
        ("READ", "dirf", *at(HEAD, 0, 0)), ("READ", "dirf", *at(HEAD, 0, 1)),
        ("READ", "dirf", *at(NODE, 0, 1)), ("READ", "dirf", *at(BLOCK, 0, 0)),
        ("READ", "dirf", *at(BLOCK, 0, 0)),  # tee_fs_dirfile_find
        # the object's tree, checked against the hash dirf.db holds: root v0
        # does not match, v1 does, then its header and node 2
        ("OPEN", name),
        ("READ", "obj", *at(NODE, 0, 0)), ("READ", "obj", *at(NODE, 0, 1)), ("READ", "obj", *at(HEAD, 0, 1)),
        ("READ", "obj", *at(NODE, 1, 1)),
        ("READ", "obj", *at(BLOCK, 0, 0)),  # struct tee_svc_storage_head
        ("READ", "obj", *at(BLOCK, 0, 0)), ("READ", "obj", *at(BLOCK, 1, 1)),  # the 4 KiB of data
        ("CLOSE", "dirf"), ("CLOSE", "obj"),
    ]


def test_fs_rpcs_of_a_4k_write_and_read(store) -> None:
    nw, sid, rec = store
    blob = bytes(range(256)) * 16
    assert write(nw, sid, b"obj", blob) == TEEC_SUCCESS
    # the very first write also creates dirf.db: OPEN fails, REMOVE, CREATE
    assert rec.log[:3] == [("OPEN", "/dirf.db"), ("REMOVE", "/dirf.db"), ("CREATE", "/dirf.db")]
    assert len(rec.log) == 29
    rec.log.clear()
    arg, back = read(nw, sid, b"obj", 4096)
    assert back == blob and rec.log == _read("/0")
    rec.log.clear()
    assert write(nw, sid, b"obj", blob) == TEEC_SUCCESS
    assert rec.log == _steady_write("/1", "/0")
    rec.log.clear()
    arg, back = read(nw, sid, b"obj", 4096)
    assert back == blob and rec.log == _read("/1")
    # OP-TEE 4.x makes about forty FS RPCs to create, write 4 KiB, read and
    # close an object; here 31 + 16 once dirf.db exists
    assert len(_steady_write("/1", "/0")) + len(_read("/1")) == 47


def test_payload_buffers_come_from_one_shm_alloc_per_call(store) -> None:
    nw, sid, _rec = store
    nw.rpc_log.clear()
    assert write(nw, sid, b"obj", b"x" * 5000) == TEEC_SUCCESS
    cmds = [e[1] for e in nw.rpc_log if e[0] == "cmd"]
    # the thread's FS cache: one APPL page for names, headers, nodes and blocks
    assert cmds.count(OPTEE_RPC_CMD_SHM_ALLOC) == 1 and cmds[-1] == OPTEE_RPC_CMD_SHM_FREE
    assert cmds[0] == OPTEE_RPC_CMD_SHM_ALLOC and set(cmds[1:-1]) == {OPTEE_RPC_CMD_FS}
    assert nw.shm == {}


def test_objects_are_per_ta_and_id_and_survive_each_other(store) -> None:
    nw, sid, _rec = store
    for i in range(3):
        assert write(nw, sid, b"obj%d" % i, bytes([i]) * (1000 + 4096 * i)) == TEEC_SUCCESS
    assert sorted(nw.files) == ["/0", "/1", "/2", "/dirf.db"]
    assert len(nw.files["/dirf.db"]) > 0
    assert nw.invoke(sid, STORAGE_CMD_DELETE, memref(nw, b"obj1")[1])[1].ret == TEEC_SUCCESS
    assert sorted(nw.files) == ["/0", "/2", "/dirf.db"]
    for i in (0, 2):
        arg, back = read(nw, sid, b"obj%d" % i, 1000 + 4096 * i)
        assert back == bytes([i]) * (1000 + 4096 * i)
    arg, _ = read(nw, sid, b"obj1", 10)
    assert (arg.ret, arg.ret_origin) == (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_TRUSTED_APP)
    # the freed number is reused
    assert write(nw, sid, b"obj3", b"new") == TEEC_SUCCESS and "/1" in nw.files


def test_a_tampered_block_is_a_corrupt_object_and_is_removed(store) -> None:
    nw, sid, rec = store
    assert write(nw, sid, b"obj", b"secret" * 1000) == TEEC_SUCCESS
    block_offs, _ = at(BLOCK, 1, 1)
    f = nw.files["/0"]
    f[block_offs + 100] ^= 0xFF
    rec.log.clear()
    arg, _ = read(nw, sid, b"obj", 6000)
    assert (arg.ret, arg.ret_origin) == (TEE_ERROR_CORRUPT_OBJECT, TEEC_ORIGIN_TRUSTED_APP)
    arg, _ = read(nw, sid, b"obj", 6000)
    assert arg.ret == TEEC_ERROR_ITEM_NOT_FOUND


def test_a_tampered_node_fails_the_tree_check(store) -> None:
    nw, sid, _rec = store
    assert write(nw, sid, b"obj", b"secret" * 1000) == TEEC_SUCCESS
    offs, _ = at(NODE, 1, 1)  # node 2's committed version: its hash no longer fits
    nw.files["/0"][offs + 40] ^= 1
    arg, _ = read(nw, sid, b"obj", 6000)
    assert arg.ret == TEE_ERROR_CORRUPT_OBJECT


def test_a_lost_directory_file_loses_the_objects(store) -> None:
    nw, sid, _rec = store
    assert write(nw, sid, b"obj", b"data") == TEEC_SUCCESS
    del nw.files["/dirf.db"]  # no rollback protection without an anchor: a fresh dirf.db
    arg, _ = read(nw, sid, b"obj", 4)
    assert arg.ret == TEEC_ERROR_ITEM_NOT_FOUND


def test_short_and_garbage_answers_are_defined_errors(store) -> None:
    nw, sid, _rec = store
    assert write(nw, sid, b"obj", b"data" * 100) == TEEC_SUCCESS
    nw.files["/0"] = bytearray(b"\xff" * 50)  # shorter than a header
    arg, _ = read(nw, sid, b"obj", 400)
    assert arg.ret == TEE_ERROR_CORRUPT_OBJECT
    nw.files["/dirf.db"] = bytearray(b"\x01" * 20000)  # garbage directory
    arg, _ = read(nw, sid, b"obj", 400)
    assert arg.ret != TEEC_SUCCESS
