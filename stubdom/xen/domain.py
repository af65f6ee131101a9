"""A domain as the hypervisor sees it: its p2m and its memory by IPA.

A :class:`Domain` is a handle obtained from :meth:`Machine.create_domain` or
:meth:`Machine.domain`; any process attached to the machine can hold one.
Translation (``lookup``/``translate``/``read``/``write``) is lock-free on
the hot path; every change to the p2m or to frame ownership takes the
machine lock and first checks that the handle still names the live
incarnation of the domain (else :class:`NoSuchDomain`).
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

from .constants import IPA_BITS, PAGE_SHIFT, PAGE_SIZE
from .errors import (
    BadGfn,
    BadIpa,
    BadP2mTransition,
    FrameNotFree,
    FrameOutOfRange,
    GfnOccupied,
    MmioOverlapsRam,
    NoSuchDomain,
    NotMapped,
    NotOwner,
    OutOfFrames,
    StaticShmDenied,
    WrongP2mType,
)
from .frames import FrameState
from .p2m import P2M_TABLE_ORDER, P2M_TYPE_MASK, RAM_TYPES, P2mEntry, P2mFile, P2mType, decode_entry, encode_entry
from .registry import DomainState, decode_control

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer as Buffer

    from .machine import Machine

__all__ = ["Domain"]

_IPA_LIMIT = 1 << IPA_BITS
_GFN_LIMIT = 1 << (IPA_BITS - PAGE_SHIFT)
_OFFSET_MASK = PAGE_SIZE - 1
_RAM_RW = int(P2mType.p2m_ram_rw)
_RAM_RO = int(P2mType.p2m_ram_ro)
_MMIO = int(P2mType.p2m_mmio_direct_dev)
_MFN_LIMIT = 1 << (64 - PAGE_SHIFT)


def pread_ram(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of the RAM file at ``offset`` (inside it: checked by
    the caller; the file never shrinks while mapped)."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"short read of machine RAM: {len(data)} of {length} bytes at {offset:#x}")
    return data


class Domain:
    """One domain (incarnation ``generation`` of ``domid``)."""

    def __init__(self, machine: Machine, domid: int, is_hwdom: bool, direct_mapped: bool,
                 generation: int, p2m: P2mFile) -> None:
        self._machine = machine
        self.domid = domid
        self.is_hwdom = is_hwdom
        self.direct_mapped = direct_mapped
        self.generation = generation
        self._p2m = p2m
        self._ram = machine._ram
        self._read_fd = machine._read_fd  # Machine.attach(read_by_fd=True): reads by pread(2)
        self._ram_base = machine.ram_base
        self._ram_size = machine.ram_size

    def __repr__(self) -> str:
        kind = "hwdom" if self.is_hwdom else "domU"
        dm = ", direct-mapped" if self.direct_mapped else ""
        return f"<Domain d{self.domid} ({kind}{dm}) generation {self.generation}>"

    # -- state ------------------------------------------------------------------

    def _require_live(self) -> None:
        """(lock held) Refuse a handle on a destroyed incarnation."""
        state, _flags, gen = decode_control(self._machine._registry.control(self.domid))
        if gen != self.generation:
            raise NoSuchDomain(self.domid, "destroyed")
        if state is not DomainState.LIVE:
            raise NoSuchDomain(self.domid, state.name.lower())

    @property
    def nr_pages(self) -> int:
        """Frames the domain owns and has not given back (Xen's tot_pages)."""
        state, _flags, gen = decode_control(self._machine._registry.control(self.domid))
        if gen != self.generation or state is not DomainState.LIVE:
            raise NoSuchDomain(self.domid, "destroyed")
        return self._machine._registry.tot_pages(self.domid)

    @property
    def extra_pages(self) -> int:
        """Frames it owns outside its RAM (Machine.alloc_domheap_pages)."""
        entry = self._machine._registry.entry(self.domid)
        if entry.generation != self.generation or entry.state is not DomainState.LIVE:
            raise NoSuchDomain(self.domid, "destroyed")
        return entry.extra_pages

    def ram_gfns(self) -> list[int]:
        """The guest's RAM gfns in ascending order: entries of a RAM type whose
        frame this domain owns (the hwdom's 1:1 static shm is Xen's)."""
        frames = self._machine._frames
        first, last = frames.first_mfn, frames.last_mfn
        out = []
        for gfn, word in self._p2m.mapped():
            if word & P2M_TYPE_MASK in (_RAM_RW, _RAM_RO):
                mfn = word >> PAGE_SHIFT
                if first <= mfn <= last and frames.owner(mfn) == self.domid:
                    out.append(gfn)
        return out

    # -- translation (lock-free) --------------------------------------------------

    def _check_gfn(self, gfn: int) -> None:
        if type(gfn) is not int or not 0 <= gfn < _GFN_LIMIT:
            raise BadGfn(self.domid, gfn)

    def _word(self, gfn: int) -> int:
        word = self._p2m.word(gfn)
        if word is None:
            # A table this process has not seen yet (or none at all).
            with self._machine._lock:
                self._p2m.refresh()
                word = self._p2m.word(gfn)
        return word or 0

    def lookup(self, gfn: int) -> P2mEntry:
        """The p2m entry for ``gfn`` (``p2m_invalid`` / INVALID_MFN if none)."""
        self._check_gfn(gfn)
        return decode_entry(gfn, self._word(gfn))

    def translate(self, ipa: int, *, write: bool) -> int:
        """The machine address behind ``ipa`` for a read or a write by the
        hypervisor on the guest's behalf (Xen's guest copy rules: RAM only,
        and writes only to p2m_ram_rw)."""
        if type(ipa) is not int or not 0 <= ipa < _IPA_LIMIT:
            raise BadIpa(self.domid, ipa, f"outside the {IPA_BITS}-bit IPA space")
        word = self._p2m.word(ipa >> PAGE_SHIFT)
        if word is None:
            word = self._word(ipa >> PAGE_SHIFT)
        t = word & P2M_TYPE_MASK
        if t == _RAM_RW or (t == _RAM_RO and not write):
            return (word & ~_OFFSET_MASK) | (ipa & _OFFSET_MASK)
        raise self._refusal(ipa, t, "write" if write else "read")

    def _refusal(self, ipa: int, t: int, access: str) -> Exception:
        if t == 0:
            if self._p2m.dead:
                return NoSuchDomain(self.domid, "destroyed")
            return NotMapped(self.domid, ipa)
        return WrongP2mType(self.domid, ipa, P2mType(t).name, access)

    def _spans(self, ipa: int, length: int, write: bool) -> list[tuple[int, int]]:
        """(RAM offset, byte count) per page of [ipa, ipa + length), every page
        translated and type-checked before any byte moves."""
        if type(length) is not int or length < 0:
            raise BadIpa(self.domid, ipa, f"bad length {length!r}")
        if type(ipa) is not int or ipa < 0 or ipa + length > _IPA_LIMIT:
            raise BadIpa(self.domid, ipa, f"access of {length} bytes leaves the {IPA_BITS}-bit IPA space")
        spans = []
        end = ipa + length
        while ipa < end:
            n = min(PAGE_SIZE - (ipa & _OFFSET_MASK), end - ipa)
            off = self.translate(ipa, write=write) - self._ram_base
            if not 0 <= off <= self._ram_size - n:  # p2m corrupted: never touch outside RAM
                raise FrameOutOfRange((off + self._ram_base) >> PAGE_SHIFT,
                                      self._ram_base >> PAGE_SHIFT,
                                      (self._ram_base + self._ram_size >> PAGE_SHIFT) - 1)
            spans.append((off, n))
            ipa += n
        return spans

    def read(self, ipa: int, length: int) -> bytes:
        """A copy of ``length`` bytes of guest memory at ``ipa``."""
        spans = self._spans(ipa, length, False)
        if self._read_fd >= 0:
            fd = self._read_fd
            if len(spans) == 1:
                off, n = spans[0]
                return pread_ram(fd, n, off)
            return b"".join([pread_ram(fd, n, off) for off, n in spans])
        ram = self._ram
        if len(spans) == 1:
            off, n = spans[0]
            return bytes(ram[off : off + n])
        return b"".join([ram[off : off + n] for off, n in spans])

    def write(self, ipa: int, data: Buffer) -> None:
        """Write ``data`` into guest memory at ``ipa``; nothing is written
        unless every page is writable RAM."""
        src = memoryview(data).cast("B")
        spans = self._spans(ipa, src.nbytes, True)
        ram = self._ram
        pos = 0
        for off, n in spans:
            ram[off : off + n] = src[pos : pos + n]
            pos += n

    # -- reservation changes (lock held inside) -------------------------------------

    def balloon_out(self, gfn: int) -> int:
        """XENMEM_decrease_reservation of one page: the gfn leaves the p2m at
        once; the frame is freed, or — if get_page pins are outstanding — kept
        as a zombie (owner unchanged) until the last put_page.  Returns the
        mfn that backed the gfn."""
        self._check_gfn(gfn)
        m = self._machine
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            word = self._p2m.word(gfn) or 0
            t = word & P2M_TYPE_MASK
            if t == 0:
                raise NotMapped(self.domid, gfn << PAGE_SHIFT, gfn_only=True)
            if t not in (_RAM_RW, _RAM_RO):
                raise WrongP2mType(self.domid, gfn << PAGE_SHIFT, P2mType(t).name, "balloon out")
            mfn = word >> PAGE_SHIFT
            owner, state = m._frames.describe(mfn)
            if owner != self.domid or state != "allocated":
                raise NotOwner(mfn, self.domid, owner, state)
            self._p2m.clear(gfn)  # unmapped before the frame can be reused
            freed = m._frames.give_back(mfn)
            m._registry.adjust(self.domid, tot=-1, zombie=0 if freed else 1)
        return mfn

    def populate(self, gfn: int) -> int:
        """XENMEM_increase_reservation / populate_physmap of one page: a fresh
        zeroed frame at ``gfn`` (for a direct-mapped domain, frame mfn ==
        gfn, which must be free).  Returns the mfn."""
        self._check_gfn(gfn)
        m = self._machine
        frames = m._frames
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            word = self._p2m.word(gfn) or 0
            if word:
                raise GfnOccupied(self.domid, gfn, P2mType(word & P2M_TYPE_MASK).name)
            if self.direct_mapped:
                mfn = gfn
                if not frames.first_mfn <= mfn <= frames.last_mfn:
                    raise FrameOutOfRange(mfn, frames.first_mfn, frames.last_mfn)
                if frames.state(mfn) is not FrameState.FREE:
                    owner, state = frames.describe(mfn)
                    raise FrameNotFree(self.domid, mfn, owner, state)
            else:
                if frames.nr_free < 1:
                    raise OutOfFrames(self.domid, 1, frames.nr_free)
                self._p2m.ensure_tables([gfn >> P2M_TABLE_ORDER])  # P2mFull before allocating
                rng = random.Random(
                    f"stubdom.xen:{m.seed}:populate:{self.domid}:{self.generation}:{gfn}:"
                    f"{m._registry.tot_pages(self.domid)}"
                )
                mfn = frames.pick_scattered(1, rng)[0]
            m._scrub(frames.assign([mfn], self.domid))
            self._p2m.set_word(gfn, encode_entry(mfn, P2mType.p2m_ram_rw))
            m._registry.adjust(self.domid, tot=1)
        return mfn

    # -- other p2m changes ------------------------------------------------------------

    def map_mmio(self, gfn: int, mfn: int) -> None:
        """Map device MMIO at machine frame ``mfn`` (outside RAM) to ``gfn``
        as p2m_mmio_direct_dev (Xen's map_mmio_regions)."""
        self._check_gfn(gfn)
        m = self._machine
        if type(mfn) is not int or not 0 <= mfn < _MFN_LIMIT:
            raise FrameOutOfRange(mfn, 0, _MFN_LIMIT - 1)
        if m.first_mfn <= mfn <= m.last_mfn:
            raise MmioOverlapsRam(self.domid, gfn, mfn)
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            word = self._p2m.word(gfn) or 0
            if word:
                raise GfnOccupied(self.domid, gfn, P2mType(word & P2M_TYPE_MASK).name)
            self._p2m.set_word(gfn, encode_entry(mfn, P2mType.p2m_mmio_direct_dev))

    def unmap_mmio(self, gfn: int) -> None:
        self._check_gfn(gfn)
        m = self._machine
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            t = (self._p2m.word(gfn) or 0) & P2M_TYPE_MASK
            if t == 0:
                raise NotMapped(self.domid, gfn << PAGE_SHIFT, gfn_only=True)
            if t != _MMIO:
                raise WrongP2mType(self.domid, gfn << PAGE_SHIFT, P2mType(t).name, "unmap MMIO")
            self._p2m.clear(gfn)

    def set_type(self, gfn: int, p2m_type: P2mType) -> None:
        """Re-type a mapped gfn: RAM between p2m_ram_rw and p2m_ram_ro (Xen's
        p2m_change_type / mem_access-like restriction), MMIO stays MMIO."""
        self._check_gfn(gfn)
        try:
            new = P2mType(p2m_type)
        except ValueError:
            new = None
        m = self._machine
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            word = self._p2m.word(gfn) or 0
            old = P2mType(word & P2M_TYPE_MASK)
            if old is P2mType.p2m_invalid:
                raise NotMapped(self.domid, gfn << PAGE_SHIFT, gfn_only=True)
            allowed = RAM_TYPES if old in RAM_TYPES else {P2mType.p2m_mmio_direct_dev}
            if new is None or new not in allowed:
                raise BadP2mTransition(self.domid, gfn, old.name,
                                       new.name if new is not None else p2m_type)
            self._p2m.set_word(gfn, encode_entry(word >> PAGE_SHIFT, new))

    # -- static shared memory ---------------------------------------------------------

    def _static_gfns(self) -> range:
        shm = self._machine.static_shm
        if not (self.is_hwdom and self.direct_mapped):
            raise StaticShmDenied(self.domid, self.is_hwdom, self.direct_mapped)
        return range(shm.base >> PAGE_SHIFT, (shm.base + shm.size) >> PAGE_SHIFT)

    def map_static_shm(self) -> None:
        """Map the static shared-memory region 1:1 (gfn == mfn) as
        p2m_ram_rw.  Only the direct-mapped hardware domain may have it; the
        frames stay Xen's (DOMID_XEN)."""
        gfns = self._static_gfns()
        m = self._machine
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            for gfn in gfns:
                word = self._p2m.word(gfn) or 0
                if word:
                    raise GfnOccupied(self.domid, gfn, P2mType(word & P2M_TYPE_MASK).name)
            for gfn in gfns:
                self._p2m.set_word(gfn, encode_entry(gfn, P2mType.p2m_ram_rw))

    def unmap_static_shm(self) -> None:
        gfns = self._static_gfns()
        m = self._machine
        with m._lock:
            self._require_live()
            self._p2m.refresh()
            for gfn in gfns:
                word = self._p2m.word(gfn) or 0
                if word & P2M_TYPE_MASK not in (_RAM_RW, _RAM_RO) or word >> PAGE_SHIFT != gfn:
                    raise NotMapped(self.domid, gfn << PAGE_SHIFT, gfn_only=True)
            for gfn in gfns:
                self._p2m.clear(gfn)

    @property
    def static_shm_mapped(self) -> bool:
        if not (self.is_hwdom and self.direct_mapped):
            return False
        first = self._machine.static_shm.base >> PAGE_SHIFT
        word = self._word(first)
        return word & P2M_TYPE_MASK in (_RAM_RW, _RAM_RO) and word >> PAGE_SHIFT == first
