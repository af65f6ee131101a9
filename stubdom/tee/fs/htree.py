"""The hash tree of one REE FS file (``core/tee/fs_htree.c``).

A file holds two versions of its header (``struct tee_fs_htree_image``), two
versions of every tree node (``struct tee_fs_htree_node_image``) and two
versions of every 4 KiB data block; which version is committed is recorded in
the parent node's flags, and for the root in the header's counter.  Nodes
count from 1 (node n + 1 covers block n); node n's children are 2n and
2n + 1.  Every read and write of a header, node or block is one FS READ or
WRITE RPC, in the order fs_htree.c makes them; where in the file each one is
is the storage's business (``tee_ree_fs.c`` get_offs_size, in ``ree_fs``).

The tree is what OP-TEE's is: node hashes are SHA-256 over the node image
(without its hash), the root's over the file's meta data too, and over the
children's hashes (``calc_node_hash``); a tampered node fails ``verify_tree``
with TEE_ERROR_CORRUPT_OBJECT.  Simplified: OP-TEE encrypts blocks and the
header's meta data with AES-GCM under a per-file key (FEK) that is itself
wrapped with a key derived from the TA's UUID and the hardware unique key.
Here blocks and meta data are stored in clear, the FEK is stored unwrapped,
and each AES-GCM tag is replaced by a truncated HMAC-SHA256 under the FEK
over the same additional data and payload — integrity as OP-TEE checks it
(a wrong tag is TEE_ERROR_CORRUPT_OBJECT), no confidentiality, and nothing a
normal world that reads the FEK could not forge.  The sizes, offsets and
RPCs are OP-TEE's.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from stubdom.optee.teec import (
    TEE_ERROR_CORRUPT_OBJECT,
    TEE_ERROR_GENERIC,
    TEE_ERROR_OUT_OF_MEMORY,
    TEE_ERROR_SECURITY,
    TEE_SUCCESS,
)

from ..thread import RpcReply, RpcRequest, Thread

__all__ = [
    "TEE_FS_HTREE_HASH_SIZE",
    "TEE_FS_HTREE_IV_SIZE",
    "TEE_FS_HTREE_FEK_SIZE",
    "TEE_FS_HTREE_TAG_SIZE",
    "NODE_IMAGE_SIZE",
    "HEAD_IMAGE_SIZE",
    "BLOCK_SIZE",
    "MAX_HTREE_NODES",
    "HtreeType",
    "HtreeStorage",
    "Htree",
    "htree_open",
    "htree_sync_to_storage",
    "htree_read_block",
    "htree_write_block",
]

# core/include/tee/fs_htree.h
TEE_FS_HTREE_HASH_SIZE = 32  # TEE_SHA256_HASH_SIZE
TEE_FS_HTREE_IV_SIZE = 16
TEE_FS_HTREE_FEK_SIZE = 16
TEE_FS_HTREE_TAG_SIZE = 16
BLOCK_SIZE = 4096  # tee_ree_fs.c BLOCK_SIZE (1 << BLOCK_SHIFT)

# struct tee_fs_htree_node_image: hash, iv, tag, uint16_t flags (66 bytes)
_NODE = struct.Struct("<32s16s16sH")
NODE_IMAGE_SIZE = _NODE.size
# struct tee_fs_htree_imeta: struct tee_fs_htree_meta { uint64_t length },
# uint32_t max_node_id, uint32_t nop (16 bytes)
_IMETA = struct.Struct("<QII")
# struct tee_fs_htree_image: iv, tag, enc_fek, imeta[16], uint32_t counter (68 bytes)
_HEAD = struct.Struct("<16s16s16s16sI")
HEAD_IMAGE_SIZE = _HEAD.size
_META = struct.Struct("<Q")
_COUNTER = struct.Struct("<I")

HTREE_NODE_COMMITTED_BLOCK = 1 << 0


def HTREE_NODE_COMMITTED_CHILD(n: int) -> int:
    return 1 << (1 + n)


# OP-TEE allocates every node of a file it opens on its core heap, which
# bounds how big a tree it can hold; the model bounds it by count (64 MiB of
# data) so that a normal world claiming a huge tree gets OUT_OF_MEMORY, as
# OP-TEE's calloc would give it, instead of exhausting the platform.
MAX_HTREE_NODES = 16384


class HtreeType:
    """enum tee_fs_htree_type."""

    HEAD = 0
    NODE = 1
    BLOCK = 2


# a step of the secure world driven through RPCs: yields each RPC request, is
# sent its reply; what it returns differs per function (its docstring says), as
# for tas.ta.TaGen
Gen = Generator[RpcRequest, RpcReply, Any]


class HtreeStorage(Protocol):
    """struct tee_fs_htree_storage: reads and writes one element of the file.
    ``read`` returns (result, bytes read as the normal world says, data)."""

    def read(self, t: Thread, kind: int, idx: int, vers: int, length: int) -> Gen: ...

    def write(self, t: Thread, kind: int, idx: int, vers: int, data: bytes) -> Gen: ...


@dataclass(eq=False)
class _NodeImage:
    hash: bytes = bytes(TEE_FS_HTREE_HASH_SIZE)
    iv: bytes = bytes(TEE_FS_HTREE_IV_SIZE)
    tag: bytes = bytes(TEE_FS_HTREE_TAG_SIZE)
    flags: int = 0

    def pack(self) -> bytes:
        return _NODE.pack(self.hash, self.iv, self.tag, self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> _NodeImage:
        return cls(*_NODE.unpack(raw))


@dataclass(eq=False)
class _HeadImage:
    iv: bytes = bytes(TEE_FS_HTREE_IV_SIZE)
    tag: bytes = bytes(TEE_FS_HTREE_TAG_SIZE)
    enc_fek: bytes = bytes(TEE_FS_HTREE_FEK_SIZE)
    imeta: bytes = bytes(_IMETA.size)
    counter: int = 0

    def pack(self) -> bytes:
        return _HEAD.pack(self.iv, self.tag, self.enc_fek, self.imeta, self.counter)

    @classmethod
    def unpack(cls, raw: bytes) -> _HeadImage:
        return cls(*_HEAD.unpack(raw))


@dataclass(eq=False)
class _Node:
    """struct htree_node."""

    id: int
    node: _NodeImage = field(default_factory=_NodeImage)
    parent: _Node | None = None
    child: list[_Node | None] = field(default_factory=lambda: [None, None])
    dirty: bool = False
    block_updated: bool = False


@dataclass(eq=False)
class Htree:
    """struct tee_fs_htree: the tree of one open file."""

    stor: HtreeStorage
    rng: random.Random
    root: _Node = field(default_factory=lambda: _Node(0))
    head: _HeadImage = field(default_factory=_HeadImage)
    fek: bytes = bytes(TEE_FS_HTREE_FEK_SIZE)
    length: int = 0  # imeta.meta.length: bytes of the file's content
    max_node_id: int = 0  # imeta.max_node_id
    dirty: bool = False

    def meta_set_dirty(self) -> None:
        """tee_fs_htree_meta_set_dirty."""
        self.dirty = True
        self.root.dirty = True

    def _imeta(self) -> bytes:
        return _IMETA.pack(self.length, self.max_node_id, 0)


# -- the tree in memory ------------------------------------------------------------

def _level(node_id: int) -> int:
    """node_id_to_level: the root (1) is level 1."""
    return node_id.bit_length()


def _find_closest_node(ht: Htree, node_id: int) -> _Node:
    node = ht.root
    level = _level(node_id)
    for n in range(1, level):
        child = node.child[(node_id >> (level - n - 1)) & 1]
        if child is None:
            return node
        node = child
    return node


def _find_node(ht: Htree, node_id: int) -> _Node | None:
    node = _find_closest_node(ht, node_id)
    return node if node.id == node_id else None


def _get_node(ht: Htree, create: bool, node_id: int) -> _Node | int:
    """get_node: the node, creating the missing ones up to it when asked;
    the error (a TEE_ERROR_*) when there is none."""
    node = _find_closest_node(ht, node_id)
    if node.id == node_id:
        return node
    if not create:
        return TEE_ERROR_GENERIC
    if node_id > MAX_HTREE_NODES:
        return TEE_ERROR_OUT_OF_MEMORY
    for n in range(node.id + 1, node_id + 1):
        node = _find_closest_node(ht, n)
        if node.id == n:
            continue
        nc = _Node(n, parent=node)
        node.child[n & 1] = nc
        node = nc
    if node.id > ht.max_node_id:
        ht.max_node_id = node.id
    return node


def _post_order(node: _Node | None) -> list[_Node]:
    """The nodes of the subtree, children before parents (traverse_post_order)."""
    out: list[_Node] = []
    stack: list[tuple[_Node, bool]] = [(node, False)] if node is not None else []
    while stack:
        n, expanded = stack.pop()
        if expanded:
            out.append(n)
            continue
        stack.append((n, True))
        for c in (n.child[1], n.child[0]):
            if c is not None:
                stack.append((c, False))
    return out


def _calc_node_hash(node: _Node, meta: bytes | None) -> bytes:
    """calc_node_hash: SHA-256 over the node image after its hash, the meta
    data (root only) and the children's hashes."""
    h = hashlib.sha256(node.node.pack()[TEE_FS_HTREE_HASH_SIZE:])
    if meta is not None:
        h.update(meta)
    for c in node.child:
        if c is not None:
            h.update(c.node.hash)
    return h.digest()


# -- "authenticated encryption" (see the module docstring) ---------------------------

def _tag(ht: Htree, aad: bytes, payload: bytes) -> bytes:
    return hmac.new(ht.fek, aad + payload, hashlib.sha256).digest()[:TEE_FS_HTREE_TAG_SIZE]


def _root_aad(ht: Htree) -> bytes:
    """authenc_init without a node: root hash, counter, enc_fek, iv."""
    return ht.root.node.hash + _COUNTER.pack(ht.head.counter) + ht.head.enc_fek + ht.head.iv


def _node_aad(ht: Htree, ni: _NodeImage) -> bytes:
    """authenc_init for a block: enc_fek, the node's iv."""
    return ht.head.enc_fek + ni.iv


def _iv(ht: Htree) -> bytes:
    return ht.rng.randbytes(TEE_FS_HTREE_IV_SIZE)


def _verify_root(ht: Htree) -> int:
    """verify_root: the header's tag over the meta data."""
    ht.fek = ht.head.enc_fek  # tee_fs_fek_crypt: the FEK is stored unwrapped here
    if not hmac.compare_digest(_tag(ht, _root_aad(ht), ht.head.imeta), ht.head.tag):
        return TEE_ERROR_CORRUPT_OBJECT
    ht.length, ht.max_node_id, _nop = _IMETA.unpack(ht.head.imeta)
    return TEE_SUCCESS


def _update_root(ht: Htree) -> None:
    """update_root: count the commit, seal the meta data under a fresh iv."""
    ht.head.counter = (ht.head.counter + 1) & 0xFFFFFFFF
    ht.head.iv = _iv(ht)
    ht.head.imeta = ht._imeta()
    ht.head.tag = _tag(ht, _root_aad(ht), ht.head.imeta)


# -- RPC helpers (rpc_read / rpc_write) -------------------------------------------

def _rpc_read(t: Thread, ht: Htree, kind: int, idx: int, vers: int, length: int) -> Gen:
    """rpc_read: exactly ``length`` bytes or TEE_ERROR_CORRUPT_OBJECT."""
    res, n, data = yield from ht.stor.read(t, kind, idx, vers, length)
    if res != TEE_SUCCESS:
        return res, b""
    if n != length or len(data) != length:
        return TEE_ERROR_CORRUPT_OBJECT, b""
    return TEE_SUCCESS, data


def _read_head(t: Thread, ht: Htree, vers: int) -> Gen:
    res, raw = yield from _rpc_read(t, ht, HtreeType.HEAD, 0, vers, HEAD_IMAGE_SIZE)
    return res, (_HeadImage.unpack(raw) if res == TEE_SUCCESS else None)


def _read_node(t: Thread, ht: Htree, node_id: int, vers: int) -> Gen:
    res, raw = yield from _rpc_read(t, ht, HtreeType.NODE, node_id - 1, vers, NODE_IMAGE_SIZE)
    return res, (_NodeImage.unpack(raw) if res == TEE_SUCCESS else None)


def _write_head(t: Thread, ht: Htree, vers: int, head: _HeadImage) -> Gen:
    return (yield from ht.stor.write(t, HtreeType.HEAD, 0, vers, head.pack()))


def _write_node(t: Thread, ht: Htree, node_id: int, vers: int, ni: _NodeImage) -> Gen:
    return (yield from ht.stor.write(t, HtreeType.NODE, node_id - 1, vers, ni.pack()))


# -- opening -----------------------------------------------------------------------

def _get_idx_from_counter(counter0: int, counter1: int) -> int:
    """get_idx_from_counter: which header is the committed one (-1: neither)."""
    if not counter0 & 1:
        if not counter1 & 1:
            return 0
        return 0 if counter0 > counter1 else 1
    if counter1 & 1:
        return 1
    return -1


def _init_head_from_data(t: Thread, ht: Htree, want_hash: bytes | None, min_counter: int) -> Gen:
    if want_hash is not None:
        idx = 0
        while True:
            res, node = yield from _read_node(t, ht, 1, idx)
            if res != TEE_SUCCESS:
                return res
            ht.root.node = node
            if node.hash == want_hash:
                res, head = yield from _read_head(t, ht, idx)
                if res != TEE_SUCCESS:
                    return res
                ht.head = head
                break
            if idx:
                return TEE_ERROR_CORRUPT_OBJECT
            idx += 1
    else:
        heads = []
        for idx in range(2):
            res, head = yield from _read_head(t, ht, idx)
            if res != TEE_SUCCESS:
                return res
            heads.append(head)
        idx = _get_idx_from_counter(heads[0].counter, heads[1].counter)
        if idx < 0:
            return TEE_ERROR_SECURITY
        res, node = yield from _read_node(t, ht, 1, idx)
        if res != TEE_SUCCESS:
            return res
        ht.root.node = node
        ht.head = heads[idx]
    if ht.head.counter < min_counter:
        return TEE_ERROR_SECURITY
    ht.root.id = 1
    return TEE_SUCCESS


def _init_tree_from_data(t: Thread, ht: Htree) -> Gen:
    if ht.max_node_id > MAX_HTREE_NODES:
        return TEE_ERROR_OUT_OF_MEMORY
    node_id = 2
    while node_id <= ht.max_node_id:
        parent = _find_node(ht, node_id >> 1)
        if parent is None:
            return TEE_ERROR_GENERIC
        vers = int(bool(parent.node.flags & HTREE_NODE_COMMITTED_CHILD(node_id & 1)))
        res, image = yield from _read_node(t, ht, node_id, vers)
        if res != TEE_SUCCESS:
            return res
        nc = _get_node(ht, True, node_id)
        if isinstance(nc, int):
            return nc
        nc.node = image
        node_id += 1
    return TEE_SUCCESS


def _verify_tree(ht: Htree) -> int:
    """verify_tree: every node's hash, children first."""
    meta = _META.pack(ht.length)
    for node in _post_order(ht.root):
        want = _calc_node_hash(node, None if node.parent is not None else meta)
        if not hmac.compare_digest(want, node.node.hash):
            return TEE_ERROR_CORRUPT_OBJECT
    return TEE_SUCCESS


def _create_and_sync(t: Thread, ht: Htree, min_counter: int) -> Gen:
    """create_and_sync: a fresh key, the root node, a first commit, and the
    other header version written as a dummy with the minimum counter."""
    ht.fek = ht.rng.randbytes(TEE_FS_HTREE_FEK_SIZE)
    ht.head.enc_fek = ht.fek
    ht.root.id = 1
    ht.root.dirty = True
    ht.root.node.hash = _calc_node_hash(ht.root, _META.pack(ht.length))
    ht.dirty = True
    res, _ = yield from htree_sync_to_storage(t, ht)
    if res != TEE_SUCCESS:
        return res
    return (yield from _write_head(t, ht, 0, _HeadImage(counter=min_counter)))


def _partially_done(head: _HeadImage) -> bool:
    """ht_head_is_partially_done: counter 0 and an all-zero tag."""
    return head.counter == 0 and head.tag == bytes(TEE_FS_HTREE_TAG_SIZE)


def htree_open(t: Thread, create: bool, want_hash: bytes | None, min_counter: int, stor: HtreeStorage,
               rng: random.Random) -> Gen:
    """tee_fs_htree_open: (result, tree or None)."""
    ht = Htree(stor, rng)
    if create:
        res = yield from _create_and_sync(t, ht, min_counter)
    else:
        res = yield from _init_head_from_data(t, ht, want_hash, min_counter)
        if res == TEE_SUCCESS and _partially_done(ht.head):
            # a power loss while the file was being created: start it again
            res = yield from _create_and_sync(t, ht, min_counter)
        if res == TEE_SUCCESS:
            res = _verify_root(ht)
        if res == TEE_SUCCESS:
            res = yield from _init_tree_from_data(t, ht)
        if res == TEE_SUCCESS:
            res = _verify_tree(ht)
    return res, (ht if res == TEE_SUCCESS else None)


# -- committing ---------------------------------------------------------------------

def _sync_node(t: Thread, ht: Htree, node: _Node) -> Gen:
    """htree_sync_node_to_storage: a dirty node goes to the version its
    parent's flag (or, for the root, the next counter) does not commit."""
    if not node.dirty:
        return TEE_SUCCESS
    meta = None
    if node.parent is not None:
        f = HTREE_NODE_COMMITTED_CHILD(node.id & 1)
        node.parent.dirty = True
        node.parent.node.flags ^= f
        vers = int(bool(node.parent.node.flags & f))
    else:
        vers = int(not ht.head.counter & 1)
        meta = _META.pack(ht.length)
    node.node.hash = _calc_node_hash(node, meta)
    node.dirty = False
    node.block_updated = False
    return (yield from _write_node(t, ht, node.id, vers, node.node))


def htree_sync_to_storage(t: Thread, ht: Htree) -> Gen:
    """tee_fs_htree_sync_to_storage: every dirty node (children first), then
    the header at the version the new counter selects.  Returns (result,
    the root hash); on failure the caller must drop the tree, as OP-TEE
    closes it."""
    if not ht.dirty:
        return TEE_SUCCESS, ht.root.node.hash
    for node in _post_order(ht.root):
        res = yield from _sync_node(t, ht, node)
        if res != TEE_SUCCESS:
            return res, b""
    _update_root(ht)
    res = yield from _write_head(t, ht, ht.head.counter & 1, ht.head)
    if res != TEE_SUCCESS:
        return res, b""
    ht.dirty = False
    return TEE_SUCCESS, ht.root.node.hash


# -- data blocks --------------------------------------------------------------------

def htree_write_block(t: Thread, ht: Htree, block_num: int, block: bytes) -> Gen:
    """tee_fs_htree_write_block: the block goes to the version its node does
    not commit (flipped once per commit), sealed with a fresh iv."""
    node = _get_node(ht, True, block_num + 1)
    if isinstance(node, int):
        return node
    if not node.block_updated:
        node.node.flags ^= HTREE_NODE_COMMITTED_BLOCK
    vers = int(bool(node.node.flags & HTREE_NODE_COMMITTED_BLOCK))
    node.node.iv = _iv(ht)
    node.node.tag = _tag(ht, _node_aad(ht, node.node), block)
    res = yield from ht.stor.write(t, HtreeType.BLOCK, block_num, vers, block)
    if res != TEE_SUCCESS:
        return res
    node.block_updated = True
    node.dirty = True
    ht.dirty = True
    return TEE_SUCCESS


def htree_read_block(t: Thread, ht: Htree, block_num: int) -> Gen:
    """tee_fs_htree_read_block: (result, the block), checked against its tag."""
    node = _get_node(ht, False, block_num + 1)
    if isinstance(node, int):
        return node, b""
    vers = int(bool(node.node.flags & HTREE_NODE_COMMITTED_BLOCK))
    res, n, data = yield from ht.stor.read(t, HtreeType.BLOCK, block_num, vers, BLOCK_SIZE)
    if res != TEE_SUCCESS:
        return res, b""
    if n != BLOCK_SIZE or len(data) != BLOCK_SIZE:
        return TEE_ERROR_CORRUPT_OBJECT, b""
    if not hmac.compare_digest(_tag(ht, _node_aad(ht, node.node), data), node.node.tag):
        return TEE_ERROR_CORRUPT_OBJECT, b""
    return TEE_SUCCESS, data
