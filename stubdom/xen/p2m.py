"""The p2m: a domain's stage-2 table, gfn -> (mfn, p2m type), in a file.

Types keep the names *and values* of Xen's ``p2m_type_t``
(xen/arch/arm/include/asm/p2m.h); the model uses the first four.

File layout (little-endian; see docs/machine-model.md), one file per domain
``<machine>/p2m/dom<domid>.p2m``, fixed size, sparse:

    0   char[8] magic "SDTP2M\\0\\0"
    8   u32 version (1)          12  u32 domid
    16  u64 generation           24  u64 capacity (tables the file can hold)
    32  u64 nr_tables (published) 40  u64 dir_offset (64)
    48  u64 tables_offset        56  u64 flags (bit 0: domain destroyed)
    dir_offset + 8*i:    u64 block number + 1 of table i (0: unused)
    tables_offset + 4096*i: table i, 512 u64 entries for gfns
                         block*512 .. block*512+511

Each table is a level-3 table: 512 entries, 2 MiB of IPA space.  An entry is
``(mfn << 12) | type`` — the machine address of the frame with the type in
the low bits, like a stage-2 descriptor — so an all-zero entry is
``p2m_invalid``.  Entries are single aligned 8-byte stores, so a lock-free
reader sees either the old or the new entry.  Tables are only ever
appended (the directory entry is written before ``nr_tables`` is bumped),
so a reader's cached block -> table index never goes stale; a reader that
misses refreshes it under the machine lock.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from .constants import INVALID_MFN, PAGE_SHIFT, PAGE_SIZE
from .errors import MachineFormatError, P2mFull
from .mapped import MappedFile

__all__ = [
    "P2mType",
    "P2mEntry",
    "P2mFile",
    "RAM_TYPES",
    "P2M_TABLE_ORDER",
    "P2M_TABLE_ENTRIES",
    "P2M_TYPE_MASK",
    "encode_entry",
    "decode_entry",
]


class P2mType(IntEnum):
    """Xen's p2m_type_t (xen/arch/arm/include/asm/p2m.h), same values."""

    p2m_invalid = 0  # nothing mapped here
    p2m_ram_rw = 1  # normal read/write guest RAM
    p2m_ram_ro = 2  # read-only guest RAM
    p2m_mmio_direct_dev = 3  # device MMIO, mapped 1:1 from a machine address


RAM_TYPES = frozenset({P2mType.p2m_ram_rw, P2mType.p2m_ram_ro})

# Xen keeps the type in 4 spare descriptor bits ("only 16 fields").
P2M_TYPE_MASK = 0xF
# One level-3 table maps 2^9 pages = 2 MiB of IPA space.
P2M_TABLE_ORDER = 9
P2M_TABLE_ENTRIES = 1 << P2M_TABLE_ORDER
_INDEX_MASK = P2M_TABLE_ENTRIES - 1
# mfns are 52-bit at most, as in an Arm stage-2 descriptor's output address.
_MFN_LIMIT = 1 << (64 - PAGE_SHIFT)

_MAGIC = b"SDTP2M\0\0"
_VERSION = 1
_HEADER = struct.Struct("<8sIIQQQQQQ")
assert _HEADER.size == 64
# Header fields by index in the u64 view.
_H_GENERATION, _H_CAPACITY, _H_NR_TABLES, _H_FLAGS = 2, 3, 4, 7
_FLAG_DEAD = 1
_DIR_OFFSET = 64


def encode_entry(mfn: int, p2m_type: P2mType) -> int:
    """The 8-byte entry for ``mfn`` with ``p2m_type``."""
    if not 0 <= mfn < _MFN_LIMIT:
        raise ValueError(f"mfn {mfn:#x} does not fit a p2m entry (52 bits)")
    return (mfn << PAGE_SHIFT) | int(p2m_type)


def decode_entry(gfn: int, word: int) -> P2mEntry:
    p2m_type = P2mType(word & P2M_TYPE_MASK)
    if p2m_type is P2mType.p2m_invalid:
        return P2mEntry(gfn, INVALID_MFN, p2m_type)
    return P2mEntry(gfn, word >> PAGE_SHIFT, p2m_type)


@dataclass(frozen=True, slots=True)
class P2mEntry:
    """One p2m entry: ``gfn`` maps ``mfn`` with ``type``.  An unmapped gfn
    reads as ``p2m_invalid`` with ``mfn == INVALID_MFN``."""

    gfn: int
    mfn: int
    type: P2mType

    @property
    def is_ram(self) -> bool:
        return self.type in RAM_TYPES


def _tables_offset(capacity: int) -> int:
    end_of_dir = _DIR_OFFSET + 8 * capacity
    return (end_of_dir + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class P2mFile(MappedFile):
    """A domain's p2m file, mapped.  Mutators expect the machine lock held;
    :meth:`word` is lock-free."""

    WHAT = "p2m file"
    VIEWS = ("_entries", "_dir", "_header")

    # from the header (struct.unpack gives them untyped)
    domid: int
    capacity: int  # tables the file can hold

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        super().__init__(path, fd, mm)
        self._header = memoryview(mm)[:_HEADER.size].cast("Q")
        magic, version, domid, _gen, capacity, _n, dir_offset, tables_offset, _flags = (
            _HEADER.unpack_from(mm, 0)
        )
        if magic != _MAGIC or version != _VERSION:
            self.close()
            raise MachineFormatError(str(path), f"not a p2m file (magic {magic!r}, version {version})")
        if (
            dir_offset != _DIR_OFFSET
            or tables_offset != _tables_offset(capacity)
            or len(mm) != tables_offset + capacity * PAGE_SIZE
        ):
            self.close()
            raise MachineFormatError(str(path), f"p2m size {len(mm)} does not match capacity {capacity}")
        self.domid = domid
        self.capacity = capacity
        self._dir = memoryview(mm)[_DIR_OFFSET : _DIR_OFFSET + 8 * capacity].cast("Q")
        self._entries = memoryview(mm)[tables_offset:].cast("Q")
        # block number -> table index, for the tables this process has seen.
        self._blocks: dict[int, int] = {}
        self._seen = 0
        self.refresh()

    # -- creation / opening -------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, domid: int, generation: int, capacity: int) -> P2mFile:
        tables_offset = _tables_offset(capacity)
        size = tables_offset + capacity * PAGE_SIZE

        def init(fd: int) -> None:
            os.ftruncate(fd, size)  # sparse: untouched tables cost nothing
            os.pwrite(
                fd,
                _HEADER.pack(_MAGIC, _VERSION, domid, generation, capacity, 0,
                             _DIR_OFFSET, tables_offset, 0),
                0,
            )

        return cls(path, *cls._create_mapping(path, size, init))

    @classmethod
    def open(cls, path: Path) -> P2mFile:
        return cls(path, *cls._open_mapping(path, _HEADER.size))

    # -- header ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._header[_H_GENERATION]

    @property
    def nr_tables(self) -> int:
        return self._header[_H_NR_TABLES]

    @property
    def dead(self) -> bool:
        return bool(self._header[_H_FLAGS] & _FLAG_DEAD)

    def mark_dead(self) -> None:
        self._header[_H_FLAGS] = self._header[_H_FLAGS] | _FLAG_DEAD

    # -- lookup ---------------------------------------------------------------

    def word(self, gfn: int) -> int | None:
        """The raw entry for ``gfn``, or None when this process knows no table
        for its block (call :meth:`refresh` under the lock and retry)."""
        table = self._blocks.get(gfn >> P2M_TABLE_ORDER)
        if table is None:
            return None
        return self._entries[(table << P2M_TABLE_ORDER) | (gfn & _INDEX_MASK)]

    def refresh(self) -> None:
        """Learn tables appended since the last look (by any process)."""
        n = self._header[_H_NR_TABLES]
        for i in range(self._seen, n):
            self._blocks[self._dir[i] - 1] = i
        self._seen = n

    def entry(self, gfn: int) -> P2mEntry:
        word = self.word(gfn)
        if word is None:
            self.refresh()
            word = self.word(gfn)
        return decode_entry(gfn, word or 0)

    # -- mutation (machine lock held) ------------------------------------------

    def _table_for(self, gfn: int) -> int:
        block = gfn >> P2M_TABLE_ORDER
        table = self._blocks.get(block)
        if table is None:
            self.refresh()
            table = self._blocks.get(block)
        if table is None:
            n = self._header[_H_NR_TABLES]
            if n >= self.capacity:
                raise P2mFull(self.domid, gfn, self.capacity)
            self._dir[n] = block + 1
            self._header[_H_NR_TABLES] = n + 1  # publish after the dir entry
            self.refresh()
            table = self._blocks[block]
        return table

    def ensure_tables(self, blocks: Iterable[int]) -> None:
        for block in sorted(set(blocks)):
            self._table_for(block << P2M_TABLE_ORDER)

    def tables_needed(self, gfns: Iterable[int]) -> int:
        """How many new tables mapping ``gfns`` would append."""
        self.refresh()
        return len({g >> P2M_TABLE_ORDER for g in gfns} - self._blocks.keys())

    def set_word(self, gfn: int, word: int) -> None:
        table = self._table_for(gfn)
        self._entries[(table << P2M_TABLE_ORDER) | (gfn & _INDEX_MASK)] = word

    def clear(self, gfn: int) -> None:
        table = self._blocks.get(gfn >> P2M_TABLE_ORDER)
        if table is None:
            self.refresh()
            table = self._blocks.get(gfn >> P2M_TABLE_ORDER)
        if table is not None:
            self._entries[(table << P2M_TABLE_ORDER) | (gfn & _INDEX_MASK)] = 0

    def mapped(self) -> Iterator[tuple[int, int]]:
        """(gfn, entry) for every entry that is not p2m_invalid, by gfn."""
        self.refresh()
        for block, table in sorted(self._blocks.items()):
            base = table << P2M_TABLE_ORDER
            words = self._entries[base : base + P2M_TABLE_ENTRIES].tolist()
            first_gfn = block << P2M_TABLE_ORDER
            for i, word in enumerate(words):
                if word:
                    yield first_gfn + i, word
