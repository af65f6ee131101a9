"""The frame table: one 8-byte word per machine frame, shared by file.

Xen keeps a ``struct page_info`` per frame: an owner, a ``count_info`` with
a reference count and flags such as ``PGC_allocated``.  The model keeps the
part the mediator and the TEE depend on, packed into one u64 per frame so a
lock-free reader always sees a consistent (owner, state, pins) triple:

    bits  0..15  owner domid (DOMID_INVALID when free, DOMID_XEN for Xen's)
    bits 16..17  state: 0 free, 1 allocated, 2 zombie
    bit  20      need scrub (contents are stale; zeroed before reuse)
    bit  21      extra: owned but not guest RAM (Xen's PGC_extra, a
                 MEMF_no_refcount domheap page such as a mediator's shadow)
    bits 32..63  pins: references taken by get_page, dropped by put_page

"zombie" is Xen's page whose ``PGC_allocated`` was cleared (the guest gave
it back, guest_remove_page) while get_page references were still held: it
keeps its owner, is in no p2m, and is freed by the put_page that drops the
last reference.  The allocation reference Xen also counts is the state
here, not a pin, so ``pins`` is exactly the number of outstanding
get_page calls.

File ``<machine>/frametable`` (little-endian): a 64-byte header in a 4 KiB
page, then the words, frame ``first_mfn + i`` at offset ``4096 + 8*i``:

    0 char[8] "SDTFRAME"  8 u32 version (1)  12 u32 page_shift (12)
    16 u64 ram_base       24 u64 nr_frames
    32 u64 static_shm_base 40 u64 static_shm_size
    48 u64 seed           56 u64 nr_free
"""

from __future__ import annotations

import mmap
import os
import random
import struct
from array import array
from collections import Counter
from collections.abc import Iterable
from enum import IntEnum
from pathlib import Path

from .constants import DOMID_INVALID, PAGE_SHIFT, PAGE_SIZE
from .errors import FrameOutOfRange, MachineFormatError, NotOwner, PageNotPinned, RefcountOverflow
from .mapped import MappedFile

__all__ = ["FrameState", "FrameTable", "FRAME_WORD_FREE"]


class FrameState(IntEnum):
    FREE = 0  # on the heap, owner DOMID_INVALID
    ALLOCATED = 1  # owned and in use (Xen: PGC_allocated set)
    ZOMBIE = 2  # given back while pinned; freed at the last put_page


_OWNER_MASK = 0xFFFF
_STATE_SHIFT = 16
_STATE_MASK = 0x3
_NEED_SCRUB = 1 << 20
_EXTRA = 1 << 21
_PINS_SHIFT = 32
_PINS_MAX = 0xFFFF_FFFF
_LOW_MASK = (1 << _PINS_SHIFT) - 1

FRAME_WORD_FREE = DOMID_INVALID  # owner DOMID_INVALID, state free, 0 pins

_MAGIC = b"SDTFRAME"
_VERSION = 1
_HEADER = struct.Struct("<8sIIQQQQQQ")
assert _HEADER.size == 64
_H_NR_FREE = 7
_WORDS_OFFSET = PAGE_SIZE


def _word(owner: int, state: FrameState, pins: int) -> int:
    return owner | (int(state) << _STATE_SHIFT) | (pins << _PINS_SHIFT)


def _state_name(word: int) -> str:
    return FrameState((word >> _STATE_SHIFT) & _STATE_MASK).name.lower()


class FrameTable(MappedFile):
    """The mapped frame table.  Readers are lock-free; every method documented
    "(lock held)" must be called under the machine lock."""

    WHAT = "frame table"
    VIEWS = ("_words", "_header")

    # from the header (struct.unpack gives them untyped)
    ram_base: int  # machine address of frame first_mfn
    nr_frames: int
    static_shm_base: int  # the static OP-TEE shared-memory carve-out
    static_shm_size: int
    seed: int  # the seed domU frame scattering derives from

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        super().__init__(path, fd, mm)
        (magic, version, page_shift, self.ram_base, self.nr_frames,
         self.static_shm_base, self.static_shm_size, self.seed, _free) = _HEADER.unpack_from(mm, 0)
        if magic != _MAGIC or version != _VERSION or page_shift != PAGE_SHIFT:
            self.close()
            raise MachineFormatError(
                str(path), f"not a frame table (magic {magic!r}, version {version}, page_shift {page_shift})"
            )
        if len(mm) != _WORDS_OFFSET + 8 * self.nr_frames:
            self.close()
            raise MachineFormatError(str(path), f"size {len(mm)} does not match {self.nr_frames} frames")
        self.first_mfn = self.ram_base >> PAGE_SHIFT
        self.last_mfn = self.first_mfn + self.nr_frames - 1
        self._header = memoryview(mm)[: _HEADER.size].cast("Q")
        self._words = memoryview(mm)[_WORDS_OFFSET:].cast("Q")

    @classmethod
    def create(cls, path: Path, *, ram_base: int, nr_frames: int, static_shm_base: int,
               static_shm_size: int, seed: int) -> FrameTable:
        def init(fd: int) -> None:
            os.pwrite(fd, _HEADER.pack(_MAGIC, _VERSION, PAGE_SHIFT, ram_base, nr_frames,
                                       static_shm_base, static_shm_size, seed, nr_frames), 0)
            os.ftruncate(fd, _WORDS_OFFSET)
            # Every frame starts free (a zero word would say "owned by d0").
            chunk = array("Q", [FRAME_WORD_FREE]) * min(nr_frames, 1 << 16)
            left = nr_frames
            while left:
                n = min(left, len(chunk))
                os.pwrite(fd, chunk[:n].tobytes(), _WORDS_OFFSET + 8 * (nr_frames - left))
                left -= n

        return cls(path, *cls._create_mapping(path, _WORDS_OFFSET + 8 * nr_frames, init))

    @classmethod
    def open(cls, path: Path) -> FrameTable:
        return cls(path, *cls._open_mapping(path, _WORDS_OFFSET))

    # -- lock-free readers ------------------------------------------------------

    @property
    def nr_free(self) -> int:
        return self._header[_H_NR_FREE]

    def index(self, mfn: int) -> int:
        if type(mfn) is not int or not self.first_mfn <= mfn <= self.last_mfn:
            raise FrameOutOfRange(mfn, self.first_mfn, self.last_mfn)
        return mfn - self.first_mfn

    def word(self, mfn: int) -> int:
        return self._words[self.index(mfn)]

    def owner(self, mfn: int) -> int:
        return self._words[self.index(mfn)] & _OWNER_MASK

    def pins(self, mfn: int) -> int:
        return self._words[self.index(mfn)] >> _PINS_SHIFT

    def state(self, mfn: int) -> FrameState:
        return FrameState((self._words[self.index(mfn)] >> _STATE_SHIFT) & _STATE_MASK)

    def is_free(self, mfn: int) -> bool:
        return (self.word(mfn) >> _STATE_SHIFT) & _STATE_MASK == FrameState.FREE

    def pinned(self, owner: int | None = None) -> dict[int, int]:
        words = self._words.tolist()
        first = self.first_mfn
        return {
            first + i: w >> _PINS_SHIFT
            for i, w in enumerate(words)
            if w >> _PINS_SHIFT and (owner is None or w & _OWNER_MASK == owner)
        }

    def is_extra(self, mfn: int) -> bool:
        return bool(self.word(mfn) & _EXTRA)

    def extra_frames(self, owner: int) -> list[int]:
        """Allocated extra frames of ``owner`` (a full scan; teardown only)."""
        want = owner | (FrameState.ALLOCATED << _STATE_SHIFT) | _EXTRA
        mask = _OWNER_MASK | (_STATE_MASK << _STATE_SHIFT) | _EXTRA
        return [self.first_mfn + i for i, w in enumerate(self._words.tolist()) if w & mask == want]

    def describe(self, mfn: int) -> tuple[int, str]:
        """(owner, state name) of a frame, for error messages."""
        w = self.word(mfn)
        return w & _OWNER_MASK, _state_name(w)

    # -- the allocator (lock held) ----------------------------------------------

    def pick_scattered(self, count: int, rng: random.Random) -> list[int]:
        """``count`` free frames in a random order spread over all of RAM.
        The caller checked ``nr_free >= count``.  Deterministic for a given
        RNG state and frame table."""
        words = self._words
        n = self.nr_frames
        chosen: set[int] = set()
        picked: list[int] = []
        # Rejection sampling while free frames are plentiful ...
        budget = 8 * count + 64
        while len(picked) < count and budget:
            budget -= 1
            i = rng.randrange(n)
            if i not in chosen and (words[i] >> _STATE_SHIFT) & _STATE_MASK == FrameState.FREE:
                chosen.add(i)
                picked.append(i)
        # ... then an exact draw from the ones left.
        if len(picked) < count:
            rest = [i for i, w in enumerate(words.tolist())
                    if (w >> _STATE_SHIFT) & _STATE_MASK == FrameState.FREE and i not in chosen]
            picked.extend(rng.sample(rest, count - len(picked)))
        return [self.first_mfn + i for i in picked]

    def pick_lowest(self, count: int) -> list[int]:
        """The ``count`` lowest free frames, ascending (for a direct map)."""
        picked: list[int] = []
        for i, w in enumerate(self._words.tolist()):
            if (w >> _STATE_SHIFT) & _STATE_MASK == FrameState.FREE:
                picked.append(self.first_mfn + i)
                if len(picked) == count:
                    break
        return picked

    def assign(self, mfns: Iterable[int], owner: int, *, extra: bool = False) -> list[int]:
        """Allocate free ``mfns`` to ``owner`` (as extra pages if ``extra``).
        Returns the frames whose stale contents the caller must scrub (zero)
        before the owner sees them."""
        words = self._words
        dirty: list[int] = []
        n = 0
        for mfn in mfns:
            i = self.index(mfn)
            w = words[i]
            assert (w >> _STATE_SHIFT) & _STATE_MASK == FrameState.FREE, hex(mfn)
            if w & _NEED_SCRUB:
                dirty.append(mfn)
            words[i] = _word(owner, FrameState.ALLOCATED, 0) | (_EXTRA if extra else 0)
            n += 1
        self._header[_H_NR_FREE] -= n
        return dirty

    def _free(self, i: int) -> None:
        self._words[i] = FRAME_WORD_FREE | _NEED_SCRUB
        self._header[_H_NR_FREE] += 1

    def give_back(self, mfn: int) -> bool:
        """The owner relinquishes an allocated frame (decrease_reservation,
        domain destruction).  True if it is free now, False if pins keep it
        as a zombie until the last put_page."""
        i = self.index(mfn)
        w = self._words[i]
        if w >> _PINS_SHIFT:
            self._words[i] = (w & ~(_STATE_MASK << _STATE_SHIFT)) | (FrameState.ZOMBIE << _STATE_SHIFT)
            return False
        self._free(i)
        return True

    # -- get_page / put_page (lock held) ----------------------------------------

    def get_pages(self, mfns: Iterable[int], domid: int) -> None:
        """Pin every frame once per occurrence; all or nothing."""
        counts = Counter(mfns)
        words = self._words
        for mfn in counts:
            self.index(mfn)  # every range error before any ownership error
        for mfn, k in counts.items():
            w = words[mfn - self.first_mfn]
            if (w & _OWNER_MASK != domid
                    or (w >> _STATE_SHIFT) & _STATE_MASK != FrameState.ALLOCATED):
                raise NotOwner(mfn, domid, w & _OWNER_MASK, _state_name(w))
            if (w >> _PINS_SHIFT) + k > _PINS_MAX:
                raise RefcountOverflow(mfn)
        for mfn, k in counts.items():
            words[mfn - self.first_mfn] += k << _PINS_SHIFT

    def put_pages(self, mfns: Iterable[int]) -> list[int]:
        """Drop one pin per occurrence; all or nothing.  Returns the owners of
        zombie frames this freed (one entry per frame)."""
        counts = Counter(mfns)
        words = self._words
        for mfn in counts:
            self.index(mfn)
        for mfn, k in counts.items():
            if words[mfn - self.first_mfn] >> _PINS_SHIFT < k:
                raise PageNotPinned(mfn)
        freed_owners: list[int] = []
        for mfn, k in counts.items():
            i = mfn - self.first_mfn
            w = words[i] - (k << _PINS_SHIFT)
            if not w >> _PINS_SHIFT and (w >> _STATE_SHIFT) & _STATE_MASK == FrameState.ZOMBIE:
                freed_owners.append(w & _OWNER_MASK)
                self._free(i)
            else:
                words[i] = w
        return freed_owners
