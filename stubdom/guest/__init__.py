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
from .client import (
    IN as IN,
    INOUT as INOUT,
    OUT as OUT,
    Context as Context,
    Direction as Direction,
    Param as Param,
    RegisteredMemref as RegisteredMemref,
    Session as Session,
    SharedMemory as SharedMemory,
    TempMemref as TempMemref,
    Value as Value,
)
from .driver import (
    MAX_ARG_PARAM_COUNT as MAX_ARG_PARAM_COUNT,
    CallResult as CallResult,
    OpteeDriver as OpteeDriver,
    ProbeInfo as ProbeInfo,
    ShmCacheBusy as ShmCacheBusy,
    Trap as Trap,
    UnsupportedLogin as UnsupportedLogin,
)
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .notif import Notifications as Notifications
from .pages import PAGE_SIZE as PAGE_SIZE, PageAllocator as PageAllocator
from .params import TeeParam as TeeParam
from .shm import DynamicPool as DynamicPool, Shm as Shm, ShmOwner as ShmOwner, StaticPool as StaticPool
from .mm import MmTable as MmTable, UserMm as UserMm, UserPage as UserPage
from .supp import SuppParam as SuppParam, SuppQueue as SuppQueue
from .tastore import (
    BuiltTaImages as BuiltTaImages,
    TaDirectory as TaDirectory,
    TaStore as TaStore,
    model_ta_images as model_ta_images,
    write_ta_images as write_ta_images,
)
from .trace import TraceEvent as TraceEvent, TraceRecorder as TraceRecorder
from .supplicant import (
    DirectoryStore as DirectoryStore,
    MemoryStore as MemoryStore,
    Supplicant as Supplicant,
    SupplicantPort as SupplicantPort,
)
from .teecore import (
    DEVICE_NAMES as DEVICE_NAMES,
    IoctlResult as IoctlResult,
    TeeContext as TeeContext,
    TeeDevice as TeeDevice,
    TeeSubsystem as TeeSubsystem,
)
from .teeshm import ShmKind as ShmKind, TeeShm as TeeShm
from .usermem import Caller as Caller, UserMemory as UserMemory, UserRegion as UserRegion

__all__ = [
    "CallQueue",
    "IN",
    "INOUT",
    "OUT",
    "Context",
    "Direction",
    "Param",
    "RegisteredMemref",
    "Session",
    "SharedMemory",
    "TempMemref",
    "Value",
    "MAX_ARG_PARAM_COUNT",
    "CallResult",
    "OpteeDriver",
    "ProbeInfo",
    "ShmCacheBusy",
    "Trap",
    "UnsupportedLogin",
    "Notifications",
    "PAGE_SIZE",
    "PageAllocator",
    "TeeParam",
    "DynamicPool",
    "Shm",
    "ShmOwner",
    "StaticPool",
    "DirectoryStore",
    "MemoryStore",
    "Supplicant",
    "SupplicantPort",
    "BuiltTaImages",
    "TaDirectory",
    "TaStore",
    "model_ta_images",
    "write_ta_images",
    "TraceEvent",
    "TraceRecorder",
    "MmTable",
    "UserMm",
    "UserPage",
    "SuppParam",
    "SuppQueue",
    "DEVICE_NAMES",
    "IoctlResult",
    "TeeContext",
    "TeeDevice",
    "TeeSubsystem",
    "ShmKind",
    "TeeShm",
    "Caller",
    "UserMemory",
    "UserRegion",
    *_errors_all,
]
