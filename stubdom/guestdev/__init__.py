"""The guest device: a guest of the running platform whose processes use the
Linux TEE device interface (/dev/tee0, /dev/teepriv0) through an LD_PRELOAD
library, so that unmodified libteec, tee-supplicant and their clients run in
it (``stubdom-teed guest-dev``, docs/guest-dev.md).

    kernel = GuestKernel.boot(runtime_dir, domid=3, nr_pages=4096, vcpus=2, wait=30)
    trio.run(DeviceServer(kernel.tee, kernel.device_path, kernel.ram_path).serve)
    kernel.shutdown()
"""

from .command import ENV_SOCKET as ENV_SOCKET
from .command import guest_dev_main as guest_dev_main
from .command import preload_library as preload_library
from .errors import GuestDevError as GuestDevError
from .errors import PlatformGone as PlatformGone
from .errors import PlatformRefused as PlatformRefused
from .errors import PlatformUnavailable as PlatformUnavailable
from .errors import WireError as WireError
from .guest import GuestKernel as GuestKernel
from .guest import device_dir as device_dir
from .server import DeviceServer as DeviceServer
from .server import ServerStatistics as ServerStatistics
from .server import query_statistics as query_statistics
from .vcpus import PlatformLease as PlatformLease
from .vcpus import VcpuPool as VcpuPool
from .vcpus import attach_domain as attach_domain

__all__ = [
    "DeviceServer",
    "ENV_SOCKET",
    "GuestDevError",
    "GuestKernel",
    "PlatformGone",
    "PlatformLease",
    "PlatformRefused",
    "PlatformUnavailable",
    "ServerStatistics",
    "VcpuPool",
    "WireError",
    "attach_domain",
    "device_dir",
    "guest_dev_main",
    "preload_library",
    "query_statistics",
]
