"""The machine model: what Xen on Arm knows about memory.

Machine RAM as a file of 4 KiB frames, a frame table with owners and
get_page/put_page reference counts, domains with a p2m (gfn -> mfn, type),
the direct-mapped hardware domain, scattered domUs, and the static OP-TEE
shared-memory carve-out — all in files under one directory so that several
processes can map the same machine.  See docs/machine-model.md.
"""

from .constants import (
    DEFAULT_RAM_BASE,
    DOMID_COW,
    DOMID_FIRST_RESERVED,
    DOMID_IDLE,
    DOMID_INVALID,
    DOMID_IO,
    DOMID_MASK,
    DOMID_SELF,
    DOMID_XEN,
    GUEST_RAM0_BASE,
    GUEST_RAM0_SIZE,
    INVALID_GFN,
    INVALID_MFN,
    IPA_BITS,
    OPTEE_SHMEM_SIZE,
    OPTEE_SHMEM_START,
    PAGE_MASK,
    PAGE_OFFSET_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from .domain import Domain
from .errors import (
    BadDomainConfig,
    BadDomid,
    BadGfn,
    BadIpa,
    BadMachineConfig,
    BadP2mTransition,
    DomainExists,
    FrameNotFree,
    FrameOutOfRange,
    FramePinned,
    NotDomheapPage,
    GfnOccupied,
    HwdomExists,
    MachineAddressOutOfRange,
    MachineError,
    MachineExists,
    MachineFormatError,
    MmioOverlapsRam,
    NoSuchDomain,
    NotMapped,
    NotOwner,
    OutOfFrames,
    P2mFull,
    PageNotPinned,
    RefcountOverflow,
    StaticShmDenied,
    WrongP2mType,
)
from .frames import FrameState
from .machine import P2M_SPARE_TABLES, Machine, StaticShm
from .p2m import RAM_TYPES, P2mEntry, P2mType

__all__ = [
    # constants
    "PAGE_SHIFT", "PAGE_SIZE", "PAGE_MASK", "PAGE_OFFSET_MASK",
    "DOMID_FIRST_RESERVED", "DOMID_SELF", "DOMID_IO", "DOMID_XEN", "DOMID_COW",
    "DOMID_INVALID", "DOMID_IDLE", "DOMID_MASK",
    "GUEST_RAM0_BASE", "GUEST_RAM0_SIZE", "INVALID_MFN", "INVALID_GFN", "IPA_BITS",
    "DEFAULT_RAM_BASE", "OPTEE_SHMEM_START", "OPTEE_SHMEM_SIZE",
    # model
    "Machine", "StaticShm", "Domain", "FrameState", "P2mType", "P2mEntry", "RAM_TYPES",
    "P2M_SPARE_TABLES",
    # errors
    "MachineError", "BadMachineConfig", "MachineExists", "MachineFormatError", "BadDomid",
    "BadDomainConfig", "DomainExists", "HwdomExists", "NoSuchDomain", "BadIpa", "BadGfn",
    "NotMapped", "WrongP2mType", "GfnOccupied", "BadP2mTransition", "P2mFull",
    "MmioOverlapsRam", "FrameOutOfRange", "MachineAddressOutOfRange", "NotOwner", "FramePinned", "NotDomheapPage",
    "PageNotPinned", "RefcountOverflow", "OutOfFrames", "FrameNotFree", "StaticShmDenied",
]
