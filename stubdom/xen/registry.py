"""The domain registry: which domain ids are live, shared by file.

File ``<machine>/domains`` (little-endian, sparse, zero = free):

    0  char[8] "SDTDOMRG"   8 u32 version (1)   12 u32 nr_entries (0x7FF0)
    16 u64 hwdom (domid of the hardware domain, DOMID_INVALID if none)
    24 u64 last_generation (bumped by every create)
    64 + 32*domid: entry
        +0  u64 control: bits 0..7 state (0 free, 1 live, 2 dying),
                         bits 8..15 flags (bit 0 hwdom, bit 1 direct-mapped),
                         bits 16..63 generation of this incarnation
        +8  u64 tot_pages     frames the domain owns and has not given back
        +16 u64 zombie_pages  frames it gave back that pins keep alive
        +24 u64 extra_pages   frames it owns outside its RAM (Xen's
                              d->extra_pages: MEMF_no_refcount domheap pages)

``control`` is one aligned 8-byte word, so a lock-free reader sees a
consistent (state, flags, generation); counters are updated under the
machine lock.  A "dying" domain is Xen's zombie domain: destroyed, p2m gone,
but frames still pinned by someone else; its id is reused only after its
last zombie frame is freed.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from .constants import DOMID_FIRST_RESERVED, DOMID_INVALID
from .errors import MachineFormatError
from .mapped import MappedFile

__all__ = ["DomainState", "RegistryEntry", "DomainRegistry", "FLAG_HWDOM", "FLAG_DIRECT_MAPPED"]


class DomainState(IntEnum):
    FREE = 0
    LIVE = 1
    DYING = 2  # destroyed, some given-back frames still pinned


FLAG_HWDOM = 1
FLAG_DIRECT_MAPPED = 2

_MAGIC = b"SDTDOMRG"
_VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")
_HEADER_SIZE = 64
_ENTRY_WORDS = 4  # 32 bytes
_H_HWDOM, _H_LAST_GEN = 2, 3
_E_CONTROL, _E_TOT, _E_ZOMBIE, _E_EXTRA = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    domid: int
    state: DomainState
    flags: int
    generation: int
    tot_pages: int
    zombie_pages: int
    extra_pages: int

    @property
    def is_hwdom(self) -> bool:
        return bool(self.flags & FLAG_HWDOM)

    @property
    def direct_mapped(self) -> bool:
        return bool(self.flags & FLAG_DIRECT_MAPPED)


def decode_control(control: int) -> tuple[DomainState, int, int]:
    return DomainState(control & 0xFF), (control >> 8) & 0xFF, control >> 16


class DomainRegistry(MappedFile):
    WHAT = "domain registry"
    VIEWS = ("_entries", "_header")

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        super().__init__(path, fd, mm)
        magic, version, nr_entries, _hwdom, _gen = _HEADER.unpack_from(mm, 0)
        if magic != _MAGIC or version != _VERSION or nr_entries != DOMID_FIRST_RESERVED:
            self.close()
            raise MachineFormatError(str(path), f"not a domain registry (magic {magic!r}, version {version})")
        if len(mm) != _HEADER_SIZE + 8 * _ENTRY_WORDS * nr_entries:
            self.close()
            raise MachineFormatError(str(path), f"registry size {len(mm)} is wrong")
        self._header = memoryview(mm)[:_HEADER_SIZE].cast("Q")
        self._entries = memoryview(mm)[_HEADER_SIZE:].cast("Q")

    @classmethod
    def create(cls, path: Path) -> DomainRegistry:
        size = _HEADER_SIZE + 8 * _ENTRY_WORDS * DOMID_FIRST_RESERVED

        def init(fd: int) -> None:
            os.ftruncate(fd, size)
            os.pwrite(fd, _HEADER.pack(_MAGIC, _VERSION, DOMID_FIRST_RESERVED, DOMID_INVALID, 0), 0)

        return cls(path, *cls._create_mapping(path, size, init))

    @classmethod
    def open(cls, path: Path) -> DomainRegistry:
        return cls(path, *cls._open_mapping(path, _HEADER_SIZE))

    # -- lock-free readers ----------------------------------------------------

    def control(self, domid: int) -> int:
        return self._entries[domid * _ENTRY_WORDS + _E_CONTROL]

    def entry(self, domid: int) -> RegistryEntry:
        base = domid * _ENTRY_WORDS
        state, flags, generation = decode_control(self._entries[base + _E_CONTROL])
        return RegistryEntry(domid, state, flags, generation, self._entries[base + _E_TOT],
                             self._entries[base + _E_ZOMBIE], self._entries[base + _E_EXTRA])

    def tot_pages(self, domid: int) -> int:
        return self._entries[domid * _ENTRY_WORDS + _E_TOT]

    @property
    def last_generation(self) -> int:
        return self._header[_H_LAST_GEN]

    @property
    def hwdom(self) -> int:
        return self._header[_H_HWDOM]

    def with_state(self, state: DomainState) -> list[int]:
        controls = self._entries[_E_CONTROL::_ENTRY_WORDS].tolist()
        return [d for d, c in enumerate(controls) if c & 0xFF == state]

    # -- mutation (machine lock held) ---------------------------------------------

    def next_generation(self) -> int:
        gen = self._header[_H_LAST_GEN] + 1
        self._header[_H_LAST_GEN] = gen
        return gen

    def set_hwdom(self, domid: int) -> None:
        self._header[_H_HWDOM] = domid

    def make_live(self, domid: int, flags: int, generation: int, tot_pages: int) -> None:
        base = domid * _ENTRY_WORDS
        self._entries[base + _E_TOT] = tot_pages
        self._entries[base + _E_ZOMBIE] = 0
        self._entries[base + _E_EXTRA] = 0
        # Published last: readers that see LIVE see the counters too.
        self._entries[base + _E_CONTROL] = DomainState.LIVE | (flags << 8) | (generation << 16)

    def set_state(self, domid: int, state: DomainState) -> None:
        base = domid * _ENTRY_WORDS
        control = self._entries[base + _E_CONTROL]
        self._entries[base + _E_CONTROL] = (control & ~0xFF) | state

    def adjust(self, domid: int, *, tot: int = 0, zombie: int = 0, extra: int = 0) -> None:
        base = domid * _ENTRY_WORDS
        if extra:
            self._entries[base + _E_EXTRA] += extra
        if tot:
            self._entries[base + _E_TOT] += tot
        if zombie:
            self._entries[base + _E_ZOMBIE] += zombie
