"""Who is at the other end of a Unix socket (SO_PEERCRED, unix(7)).

Each end of the control socket and of the SMC gate's event channel checks
the other before reading or writing anything: the credentials the kernel
recorded when the peer called connect(2) (seen by the listener) or listen(2)
(seen by the connecting side), which the peer cannot change afterwards. A
peer is trusted when its effective uid is this process's or root's, as
ssh-agent trusts its clients: root can read and ptrace everything of ours
anyway, so refusing it would protect nothing.

The file modes already keep other users from connecting (Linux needs write
permission on a socket file to connect to it); this is the check that still
holds when a directory's mode does not, and the only one a client has that
the listener at a path is who it should be.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from .errors import PeerRefused

__all__ = ["PeerCredentials", "peer_credentials", "check_peer"]

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
_ROOT_UID = 0


class Socket(Protocol):
    """A connected socket as getsockopt(2) sees it: the standard library's
    or trio's."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process as the kernel recorded it at connect/listen time."""

    pid: int
    uid: int  # effective uid
    gid: int  # effective gid


def peer_credentials(sock: Socket | int) -> PeerCredentials:
    """SO_PEERCRED of a connected AF_UNIX socket (a socket object, trio's
    included, or a descriptor, which is left open)."""
    if isinstance(sock, int):
        with socket.socket(fileno=os.dup(sock)) as dup:
            raw = dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    else:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def check_peer(sock: Socket | int, path: str | os.PathLike[str], role: str) -> PeerCredentials:
    """The peer's credentials if its uid is this process's effective uid or
    root's; else :class:`PeerRefused` naming ``path``, the peer's pid and
    uid, and ``role`` (what the peer would have been). The caller closes the
    connection."""
    creds = peer_credentials(sock)
    own = os.geteuid()
    if creds.uid not in (own, _ROOT_UID):
        raise PeerRefused(os.fspath(path), role, creds.pid, creds.uid, creds.gid, own)
    return creds
