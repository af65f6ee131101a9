"""The runtime directory and who may use it (docs/config.md, "The runtime
directory"; docs/security.md, "Local users and the runtime directory").

Shared by the platform and the daemon, owned by neither: where the runtime
directory is by default, creating it (and the directories in it) so that no
other local user controls them, the modes of what is created there, the
credentials of the peer on each of its sockets, and their addresses (a
path longer than sun_path included).
"""

from .directory import DIR_MODE as DIR_MODE
from .directory import FILE_MODE as FILE_MODE
from .directory import SOCKET_MODE as SOCKET_MODE
from .directory import default_runtime_dir as default_runtime_dir
from .directory import ensure_runtime_dir as ensure_runtime_dir
from .directory import make_private_dir as make_private_dir
from .directory import make_private_dirs as make_private_dirs
from .errors import PeerRefused as PeerRefused
from .errors import RundirError as RundirError
from .errors import RuntimeDirError as RuntimeDirError
from .errors import RuntimeDirRefused as RuntimeDirRefused
from .errors import describe_trusted as describe_trusted
from .errors import describe_uid as describe_uid
from .peercred import PeerCredentials as PeerCredentials
from .peercred import check_peer as check_peer
from .peercred import peer_credentials as peer_credentials
from .sockaddr import SUN_PATH_MAX as SUN_PATH_MAX
from .sockaddr import sockaddr as sockaddr

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "PeerCredentials",
    "PeerRefused",
    "RundirError",
    "RuntimeDirError",
    "RuntimeDirRefused",
    "SOCKET_MODE",
    "SUN_PATH_MAX",
    "check_peer",
    "default_runtime_dir",
    "describe_trusted",
    "describe_uid",
    "ensure_runtime_dir",
    "make_private_dir",
    "make_private_dirs",
    "peer_credentials",
    "sockaddr",
]
