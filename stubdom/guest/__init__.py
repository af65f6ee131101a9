"""The guest side: an OP-TEE driver modelled on Linux drivers/tee/optee, its
tee-supplicant, the guest kernel's page allocator, a libteec-like client API,
and the guest kernel's TEE subsystem (/dev/tee0, /dev/teepriv0: tee_core,
tee_shm, optee/supp.c) that user processes reach through ``stubdom.guestdev``.

    driver = OpteeDriver(trap, domain, nr_vcpus=2, supplicant=Supplicant())
    driver.probe()
    with Context(driver) as ctx:
        session = ctx.open_session(TA_UUID)
        out = session.invoke(0, [Value(41, 0, INOUT)])
    driver.shutdown()
"""

from .callqueue import CallQueue as CallQueue
from .client import IN as IN
from .client import INOUT as INOUT
from .client import OUT as OUT
from .client import Context as Context
from .client import Direction as Direction
from .client import Param as Param
from .client import RegisteredMemref as RegisteredMemref
from .client import Session as Session
from .client import SharedMemory as SharedMemory
from .client import TempMemref as TempMemref
from .client import Value as Value
from .driver import MAX_ARG_PARAM_COUNT as MAX_ARG_PARAM_COUNT
from .driver import CallResult as CallResult
from .driver import OpteeDriver as OpteeDriver
from .driver import ProbeInfo as ProbeInfo
from .driver import ShmCacheBusy as ShmCacheBusy
from .driver import Trap as Trap
from .driver import UnsupportedLogin as UnsupportedLogin
from .errors import ApiRevisionMismatch as ApiRevisionMismatch
from .errors import ApiUidMismatch as ApiUidMismatch
from .errors import CapabilitiesMismatch as CapabilitiesMismatch
from .errors import DriverNotReady as DriverNotReady
from .errors import GuestError as GuestError
from .errors import NoSharedMemory as NoSharedMemory
from .errors import OutOfGuestPages as OutOfGuestPages
from .errors import PageNotAllocated as PageNotAllocated
from .errors import ProbeError as ProbeError
from .errors import ShmRegistrationFailed as ShmRegistrationFailed
from .errors import StaticShmNotCached as StaticShmNotCached
from .errors import StaticShmOutOfMemory as StaticShmOutOfMemory
from .errors import StaticShmUnavailable as StaticShmUnavailable
from .errors import TeecError as TeecError
from .errors import TeeErrno as TeeErrno
from .errors import TooManyParams as TooManyParams
from .errors import UnknownShm as UnknownShm
from .errors import origin_name as origin_name
from .errors import teec_name as teec_name
from .mm import MmTable as MmTable
from .mm import UserMm as UserMm
from .mm import UserPage as UserPage
from .notif import Notifications as Notifications
from .pages import PAGE_SIZE as PAGE_SIZE
from .pages import PageAllocator as PageAllocator
from .params import TeeParam as TeeParam
from .shm import DynamicPool as DynamicPool
from .shm import Shm as Shm
from .shm import ShmOwner as ShmOwner
from .shm import StaticPool as StaticPool
from .supp import SuppParam as SuppParam
from .supp import SuppQueue as SuppQueue
from .supplicant import DirectoryStore as DirectoryStore
from .supplicant import MemoryStore as MemoryStore
from .supplicant import Supplicant as Supplicant
from .supplicant import SupplicantPort as SupplicantPort
from .tastore import BuiltTaImages as BuiltTaImages
from .tastore import TaDirectory as TaDirectory
from .tastore import TaStore as TaStore
from .tastore import model_ta_images as model_ta_images
from .tastore import write_ta_images as write_ta_images
from .teecore import DEVICE_NAMES as DEVICE_NAMES
from .teecore import IoctlResult as IoctlResult
from .teecore import TeeContext as TeeContext
from .teecore import TeeDevice as TeeDevice
from .teecore import TeeSubsystem as TeeSubsystem
from .teeshm import ShmKind as ShmKind
from .teeshm import TeeShm as TeeShm
from .trace import TraceEvent as TraceEvent
from .trace import TraceRecorder as TraceRecorder
from .usermem import Caller as Caller
from .usermem import UserMemory as UserMemory
from .usermem import UserRegion as UserRegion

__all__ = [
    "ApiRevisionMismatch",
    "ApiUidMismatch",
    "BuiltTaImages",
    "CallQueue",
    "CallResult",
    "Caller",
    "CapabilitiesMismatch",
    "Context",
    "DEVICE_NAMES",
    "Direction",
    "DirectoryStore",
    "DriverNotReady",
    "DynamicPool",
    "GuestError",
    "IN",
    "INOUT",
    "IoctlResult",
    "MAX_ARG_PARAM_COUNT",
    "MemoryStore",
    "MmTable",
    "NoSharedMemory",
    "Notifications",
    "OUT",
    "OpteeDriver",
    "OutOfGuestPages",
    "PAGE_SIZE",
    "PageAllocator",
    "PageNotAllocated",
    "Param",
    "ProbeError",
    "ProbeInfo",
    "RegisteredMemref",
    "Session",
    "SharedMemory",
    "Shm",
    "ShmCacheBusy",
    "ShmKind",
    "ShmOwner",
    "ShmRegistrationFailed",
    "StaticPool",
    "StaticShmNotCached",
    "StaticShmOutOfMemory",
    "StaticShmUnavailable",
    "SuppParam",
    "SuppQueue",
    "Supplicant",
    "SupplicantPort",
    "TaDirectory",
    "TaStore",
    "TeeContext",
    "TeeDevice",
    "TeeErrno",
    "TeeParam",
    "TeeShm",
    "TeeSubsystem",
    "TeecError",
    "TempMemref",
    "TooManyParams",
    "TraceEvent",
    "TraceRecorder",
    "Trap",
    "UnknownShm",
    "UnsupportedLogin",
    "UserMemory",
    "UserMm",
    "UserPage",
    "UserRegion",
    "Value",
    "model_ta_images",
    "origin_name",
    "teec_name",
    "write_ta_images",
]
