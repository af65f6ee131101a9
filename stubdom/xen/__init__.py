"""The machine model: what Xen on Arm knows about memory.

Machine RAM as a file of 4 KiB frames, a frame table with owners and
get_page/put_page reference counts, domains with a p2m (gfn -> mfn, type),
the direct-mapped hardware domain, scattered domUs, and the static OP-TEE
shared-memory carve-out — all in files under one directory so that several
processes can map the same machine.  See docs/machine-model.md.
"""

from .constants import DEFAULT_RAM_BASE as DEFAULT_RAM_BASE
from .constants import DOMID_COW as DOMID_COW
from .constants import DOMID_FIRST_RESERVED as DOMID_FIRST_RESERVED
from .constants import DOMID_IDLE as DOMID_IDLE
from .constants import DOMID_INVALID as DOMID_INVALID
from .constants import DOMID_IO as DOMID_IO
from .constants import DOMID_MASK as DOMID_MASK
from .constants import DOMID_SELF as DOMID_SELF
from .constants import DOMID_XEN as DOMID_XEN
from .constants import GUEST_RAM0_BASE as GUEST_RAM0_BASE
from .constants import GUEST_RAM0_SIZE as GUEST_RAM0_SIZE
from .constants import INVALID_GFN as INVALID_GFN
from .constants import INVALID_MFN as INVALID_MFN
from .constants import IPA_BITS as IPA_BITS
from .constants import OPTEE_SHMEM_SIZE as OPTEE_SHMEM_SIZE
from .constants import OPTEE_SHMEM_START as OPTEE_SHMEM_START
from .constants import PAGE_MASK as PAGE_MASK
from .constants import PAGE_OFFSET_MASK as PAGE_OFFSET_MASK
from .constants import PAGE_SHIFT as PAGE_SHIFT
from .constants import PAGE_SIZE as PAGE_SIZE
from .domain import Domain as Domain
from .errors import BadDomainConfig as BadDomainConfig
from .errors import BadDomid as BadDomid
from .errors import BadGfn as BadGfn
from .errors import BadIpa as BadIpa
from .errors import BadMachineConfig as BadMachineConfig
from .errors import BadP2mTransition as BadP2mTransition
from .errors import DomainExists as DomainExists
from .errors import FrameNotFree as FrameNotFree
from .errors import FrameOutOfRange as FrameOutOfRange
from .errors import FramePinned as FramePinned
from .errors import GfnOccupied as GfnOccupied
from .errors import HwdomExists as HwdomExists
from .errors import MachineAddressOutOfRange as MachineAddressOutOfRange
from .errors import MachineError as MachineError
from .errors import MachineExists as MachineExists
from .errors import MachineFormatError as MachineFormatError
from .errors import MmioOverlapsRam as MmioOverlapsRam
from .errors import NoSuchDomain as NoSuchDomain
from .errors import NotDomheapPage as NotDomheapPage
from .errors import NotMapped as NotMapped
from .errors import NotOwner as NotOwner
from .errors import OutOfFrames as OutOfFrames
from .errors import P2mFull as P2mFull
from .errors import PageNotPinned as PageNotPinned
from .errors import RefcountOverflow as RefcountOverflow
from .errors import StaticShmDenied as StaticShmDenied
from .errors import WrongP2mType as WrongP2mType
from .frames import FrameState as FrameState
from .machine import P2M_SPARE_TABLES as P2M_SPARE_TABLES
from .machine import Machine as Machine
from .machine import StaticShm as StaticShm
from .p2m import RAM_TYPES as RAM_TYPES
from .p2m import P2mEntry as P2mEntry
from .p2m import P2mType as P2mType

__all__ = [
    "BadDomainConfig",
    "BadDomid",
    "BadGfn",
    "BadIpa",
    "BadMachineConfig",
    "BadP2mTransition",
    "DEFAULT_RAM_BASE",
    "DOMID_COW",
    "DOMID_FIRST_RESERVED",
    "DOMID_IDLE",
    "DOMID_INVALID",
    "DOMID_IO",
    "DOMID_MASK",
    "DOMID_SELF",
    "DOMID_XEN",
    "Domain",
    "DomainExists",
    "FrameNotFree",
    "FrameOutOfRange",
    "FramePinned",
    "FrameState",
    "GUEST_RAM0_BASE",
    "GUEST_RAM0_SIZE",
    "GfnOccupied",
    "HwdomExists",
    "INVALID_GFN",
    "INVALID_MFN",
    "IPA_BITS",
    "Machine",
    "MachineAddressOutOfRange",
    "MachineError",
    "MachineExists",
    "MachineFormatError",
    "MmioOverlapsRam",
    "NoSuchDomain",
    "NotDomheapPage",
    "NotMapped",
    "NotOwner",
    "OPTEE_SHMEM_SIZE",
    "OPTEE_SHMEM_START",
    "OutOfFrames",
    "P2M_SPARE_TABLES",
    "P2mEntry",
    "P2mFull",
    "P2mType",
    "PAGE_MASK",
    "PAGE_OFFSET_MASK",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "PageNotPinned",
    "RAM_TYPES",
    "RefcountOverflow",
    "StaticShm",
    "StaticShmDenied",
    "WrongP2mType",
]
