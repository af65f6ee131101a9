"""Exceptions raised by the machine model.

Every class derives from :class:`MachineError`.  Each carries the offending
values as attributes and names them in its message (addresses, frame and
domain numbers in the hex/decimal forms Xen's own logs use: ``mfn 0x40123``,
``d1``).  Exceptions pickle with their constructor arguments, so they survive
a trip between processes.
"""

from __future__ import annotations

__all__ = [
    "MachineError",
    "BadMachineConfig",
    "MachineExists",
    "MachineFormatError",
    "BadDomid",
    "BadDomainConfig",
    "DomainExists",
    "HwdomExists",
    "NoSuchDomain",
    "BadIpa",
    "BadGfn",
    "NotMapped",
    "WrongP2mType",
    "GfnOccupied",
    "BadP2mTransition",
    "P2mFull",
    "MmioOverlapsRam",
    "FrameOutOfRange",
    "MachineAddressOutOfRange",
    "NotOwner",
    "PageNotPinned",
    "RefcountOverflow",
    "OutOfFrames",
    "FrameNotFree",
    "FramePinned",
    "NotDomheapPage",
    "StaticShmDenied",
]


def _hex(value: object) -> str:
    return hex(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


class MachineError(Exception):
    """Base of every error in :mod:`stubdom.xen`."""

    def __init__(self, message: str, *args: object) -> None:
        super().__init__(message)
        # Constructor arguments, so that pickling rebuilds the same exception.
        self._init_args = args if args else (message,)

    def __reduce__(self) -> tuple[type[MachineError], tuple[object, ...]]:
        return (type(self), self._init_args)


class BadMachineConfig(MachineError):
    """Raised by :meth:`Machine.create` for parameters that cannot describe a
    machine: a zero frame count, a RAM base or static region that is not page
    aligned, a static region that is empty or does not lie inside RAM."""

    def __init__(self, what: str, value: object, why: str) -> None:
        self.what = what
        self.value = value
        super().__init__(f"bad machine config: {what} = {_hex(value)}: {why}", what, value, why)


class MachineExists(MachineError):
    """Raised by :meth:`Machine.create` when the directory already holds a
    machine (or any file); a machine is never created over another one."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"machine directory {path} is not empty", path)


class MachineFormatError(MachineError):
    """Raised by :meth:`Machine.attach` (and when opening a p2m file) when a
    file is missing, has the wrong magic or version, or a size that does not
    match its header."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: {why}", path, why)


class BadDomid(MachineError):
    """Raised when a domain id is not an int in 0 .. DOMID_FIRST_RESERVED-1
    (the ids at and above 0x7FF0 are Xen's reserved pseudo-domains)."""

    def __init__(self, domid: object) -> None:
        self.domid = domid
        super().__init__(
            f"domid {domid!r} is not an ordinary domain id (0 .. 0x7fef)", domid
        )


class BadDomainConfig(MachineError):
    """Raised by :meth:`Machine.create_domain` for a page count that is not a
    positive int or does not fit the guest RAM bank."""

    def __init__(self, domid: int, what: str, value: object, why: str) -> None:
        self.domid = domid
        self.what = what
        self.value = value
        super().__init__(f"d{domid}: {what} = {value!r}: {why}", domid, what, value, why)


class DomainExists(MachineError):
    """Raised by :meth:`Machine.create_domain` when the domain id is in use,
    either by a live domain or by a dying one whose given-back frames are
    still pinned (Xen's "zombie" domain: its id cannot be reused until the
    last page is put)."""

    def __init__(self, domid: int, state: str, zombie_pages: int = 0) -> None:
        self.domid = domid
        self.state = state
        self.zombie_pages = zombie_pages
        detail = f" ({zombie_pages} frames still pinned)" if state == "dying" else ""
        super().__init__(f"d{domid} already exists: {state}{detail}", domid, state, zombie_pages)


class HwdomExists(MachineError):
    """Raised by :meth:`Machine.create_domain` with ``hwdom=True`` while
    another hardware domain is alive: there is exactly one."""

    def __init__(self, domid: int, existing: int) -> None:
        self.domid = domid
        self.existing = existing
        super().__init__(
            f"cannot make d{domid} the hardware domain: d{existing} already is", domid, existing
        )


class NoSuchDomain(MachineError):
    """Raised when a domain id names no live domain: never created, destroyed,
    or dying.  Also raised by a stale :class:`Domain` handle whose domain was
    destroyed."""

    def __init__(self, domid: object, state: str = "free") -> None:
        self.domid = domid
        self.state = state
        super().__init__(f"no such domain: d{domid} ({state})", domid, state)


class BadIpa(MachineError):
    """Raised when an IPA (guest physical address) or an access built on it
    is not valid: not an int, negative, or reaching past the top of the IPA
    space (``1 << IPA_BITS``); also a negative access length."""

    def __init__(self, domid: int, ipa: object, why: str) -> None:
        self.domid = domid
        self.ipa = ipa
        super().__init__(f"d{domid}: bad IPA {_hex(ipa)}: {why}", domid, ipa, why)


class BadGfn(MachineError):
    """Raised when a guest frame number is not an int in 0 .. (1 << (IPA_BITS
    - PAGE_SHIFT)) - 1."""

    def __init__(self, domid: int, gfn: object) -> None:
        self.domid = domid
        self.gfn = gfn
        super().__init__(f"d{domid}: bad gfn {_hex(gfn)}: outside the IPA space", domid, gfn)


class NotMapped(MachineError):
    """Raised when an IPA or gfn has no p2m entry (``p2m_invalid``): never
    populated, ballooned out, or the domain was destroyed.  In Xen this is a
    stage-2 translation fault (or a failed ``get_page_from_gfn``)."""

    def __init__(self, domid: int, ipa: int, gfn_only: bool = False) -> None:
        self.domid = domid
        self.ipa = ipa
        what = f"gfn {ipa >> 12:#x}" if gfn_only else f"IPA {ipa:#x} (gfn {ipa >> 12:#x})"
        super().__init__(f"d{domid}: {what} is not mapped (p2m_invalid)", domid, ipa, gfn_only)


class WrongP2mType(MachineError):
    """Raised when the p2m entry exists but its type forbids the access: a
    write to ``p2m_ram_ro``, any data access through ``p2m_mmio_direct_dev``
    (Xen's guest copy helpers accept RAM types only), or a RAM operation
    (balloon out) on an MMIO entry."""

    def __init__(self, domid: int, ipa: int, p2m_type: str, access: str) -> None:
        self.domid = domid
        self.ipa = ipa
        self.p2m_type = p2m_type
        self.access = access
        super().__init__(
            f"d{domid}: {access} at IPA {ipa:#x} (gfn {ipa >> 12:#x}) refused: "
            f"p2m type is {p2m_type}",
            domid, ipa, p2m_type, access,
        )


class GfnOccupied(MachineError):
    """Raised when mapping something (populate, MMIO, static shm) at a gfn
    that already has a p2m entry; entries are never silently replaced."""

    def __init__(self, domid: int, gfn: int, p2m_type: str) -> None:
        self.domid = domid
        self.gfn = gfn
        self.p2m_type = p2m_type
        super().__init__(f"d{domid}: gfn {gfn:#x} is already mapped ({p2m_type})", domid, gfn, p2m_type)


class BadP2mTransition(MachineError):
    """Raised by :meth:`Domain.set_type` for a change that is not a
    re-typing: RAM may switch between ``p2m_ram_rw`` and ``p2m_ram_ro``, MMIO
    stays MMIO, and nothing becomes ``p2m_invalid`` this way (use
    ``balloon_out`` / ``unmap_mmio``)."""

    def __init__(self, domid: int, gfn: int, old: str, new: object) -> None:
        self.domid = domid
        self.gfn = gfn
        super().__init__(f"d{domid}: gfn {gfn:#x}: cannot change p2m type {old} -> {new}", domid, gfn, old, new)


class P2mFull(MachineError):
    """Raised when a p2m file has no room for another level-3 table (each
    covers 2 MiB of IPA space); the capacity is fixed when the domain is
    created."""

    def __init__(self, domid: int, gfn: int, capacity: int) -> None:
        self.domid = domid
        self.gfn = gfn
        self.capacity = capacity
        super().__init__(
            f"d{domid}: no room to map gfn {gfn:#x}: p2m holds at most {capacity} tables",
            domid, gfn, capacity,
        )


class MmioOverlapsRam(MachineError):
    """Raised by :meth:`Domain.map_mmio` when the machine frame lies in
    machine RAM: device MMIO is outside RAM, and a RAM frame mapped as MMIO
    would bypass ownership."""

    def __init__(self, domid: int, gfn: int, mfn: int) -> None:
        self.domid = domid
        self.gfn = gfn
        self.mfn = mfn
        super().__init__(
            f"d{domid}: cannot map gfn {gfn:#x} as MMIO: mfn {mfn:#x} is machine RAM", domid, gfn, mfn
        )


class FrameOutOfRange(MachineError):
    """Raised when a machine frame number is not an int naming a frame of
    machine RAM (``first_mfn .. last_mfn``)."""

    def __init__(self, mfn: object, first_mfn: int, last_mfn: int) -> None:
        self.mfn = mfn
        super().__init__(
            f"mfn {_hex(mfn)} is outside machine RAM (mfn {first_mfn:#x} .. {last_mfn:#x})",
            mfn, first_mfn, last_mfn,
        )


class MachineAddressOutOfRange(MachineError):
    """Raised by machine-address accessors when ``[maddr, maddr + length)``
    does not lie inside machine RAM, or the arguments are not ints."""

    def __init__(self, maddr: object, length: object, ram_base: int, ram_end: int) -> None:
        self.maddr = maddr
        self.length = length
        super().__init__(
            f"machine address {_hex(maddr)} (+{length!r} bytes) is outside machine RAM "
            f"[{ram_base:#x}, {ram_end:#x})",
            maddr, length, ram_base, ram_end,
        )


class NotOwner(MachineError):
    """Raised by ``get_page(mfn, domid)`` (and guest operations on a frame)
    when the frame is not allocated to that domain: owned by another domain
    or by Xen, free, or already given back (a zombie awaiting its last put).
    Xen's get_page() fails the same way, returning false."""

    def __init__(self, mfn: int, domid: int, owner: int, state: str) -> None:
        self.mfn = mfn
        self.domid = domid
        self.owner = owner
        self.state = state
        super().__init__(
            f"mfn {mfn:#x} is not allocated to d{domid}: owner {owner:#x}, state {state}",
            mfn, domid, owner, state,
        )


class PageNotPinned(MachineError):
    """Raised by ``put_page`` when the frame has no pin to drop (reference
    count underflow, a bug in the caller)."""

    def __init__(self, mfn: int) -> None:
        self.mfn = mfn
        super().__init__(f"put_page(mfn {mfn:#x}): frame is not pinned (count would underflow)", mfn)


class RefcountOverflow(MachineError):
    """Raised by ``get_page`` when the frame's 32-bit pin count would
    overflow; Xen's get_page() refuses the same way."""

    def __init__(self, mfn: int) -> None:
        self.mfn = mfn
        super().__init__(f"get_page(mfn {mfn:#x}): reference count would overflow", mfn)


class OutOfFrames(MachineError):
    """Raised when there are not enough free frames for a domain's RAM or a
    populate; nothing is allocated and nothing is half created."""

    def __init__(self, domid: int, requested: int, free: int) -> None:
        self.domid = domid
        self.requested = requested
        self.free = free
        super().__init__(
            f"d{domid}: out of frames: {requested} requested, {free} free", domid, requested, free
        )


class FrameNotFree(MachineError):
    """Raised when a direct-mapped domain populates gfn == mfn but that frame
    is in use (allocated, zombie, or the static shared-memory region)."""

    def __init__(self, domid: int, mfn: int, owner: int, state: str) -> None:
        self.domid = domid
        self.mfn = mfn
        super().__init__(
            f"d{domid}: mfn {mfn:#x} is not free (owner {owner:#x}, state {state})",
            domid, mfn, owner, state,
        )


class FramePinned(MachineError):
    """Raised by :meth:`Machine.free_domheap_pages` for a frame that still
    has get_page pins: the caller must put_page it first (freeing it would
    pull memory from under whoever holds the pin)."""

    def __init__(self, mfn: int, pins: int) -> None:
        self.mfn = mfn
        self.pins = pins
        super().__init__(f"mfn {mfn:#x} still has {pins} pin(s); put_page it before freeing",
                         mfn, pins)


class NotDomheapPage(MachineError):
    """Raised by :meth:`Machine.free_domheap_pages` for a frame of the
    domain that is not one of its extra (domheap) pages: guest RAM, which
    only leaves through balloon_out or domain destruction."""

    def __init__(self, mfn: int, domid: int) -> None:
        self.mfn = mfn
        self.domid = domid
        super().__init__(f"mfn {mfn:#x} of d{domid} is guest RAM, not a domheap page", mfn, domid)


class StaticShmDenied(MachineError):
    """Raised by :meth:`Domain.map_static_shm` for a domain that is not both
    the hardware domain and direct-mapped (the only one that may see the
    static shared-memory region 1:1)."""

    def __init__(self, domid: int, is_hwdom: bool, direct_mapped: bool) -> None:
        self.domid = domid
        super().__init__(
            f"d{domid}: static shm is only for the direct-mapped hardware domain "
            f"(hwdom={is_hwdom}, direct_mapped={direct_mapped})",
            domid, is_hwdom, direct_mapped,
        )
