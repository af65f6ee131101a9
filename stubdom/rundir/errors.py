"""Exceptions of :mod:`stubdom.rundir`: a runtime directory that cannot be
trusted, and a socket peer that is not who it should be.

Each carries the offending values as attributes and names them in its
message, which is one line for the operator.
"""

from __future__ import annotations

import pwd

__all__ = ["RundirError", "RuntimeDirError", "RuntimeDirRefused", "PeerRefused", "describe_uid", "describe_trusted"]


def describe_uid(uid: int) -> str:
    """``uid 65534 (nobody)``, or ``uid 4242`` when no user has it."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def describe_trusted(uid: int) -> str:
    """Who is trusted besides root, for messages: ``root`` or ``uid 1000 (alice) or root``."""
    return "root" if uid == 0 else f"{describe_uid(uid)} or root"


class RundirError(Exception):
    """Base of every error in :mod:`stubdom.rundir`."""


class RuntimeDirError(RundirError):
    """The runtime directory cannot be used: it, or a directory on the way to
    it, cannot be created or examined (``reason`` says why: the OS error).
    ``runtime_dir`` is the directory configured (``mediator.runtime_dir``),
    ``path`` the one that failed."""

    def __init__(self, runtime_dir: str, path: str, reason: str) -> None:
        self.runtime_dir = runtime_dir
        self.path = path
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        where = "" if self.path == self.runtime_dir else f" ({self.path})"
        return f"cannot use runtime directory {self.runtime_dir}{where}: {self.reason}"


class RuntimeDirRefused(RuntimeDirError):
    """Another local user could control the runtime directory: it, or a
    directory on the way to it, is owned by someone else (the directories
    above it may also be root's), or is writable by its group or others (the
    directories above it may be if they are sticky, as /tmp is), or is not a
    directory. Nothing was created in it. Remove it, or set
    ``mediator.runtime_dir`` to a directory only you can write."""

    def __init__(self, runtime_dir: str, path: str, owner: int, mode: int, reason: str) -> None:
        self.owner = owner
        self.mode = mode  # the permission bits, sticky/setgid included
        super().__init__(runtime_dir, path, reason)

    def _message(self) -> str:
        if self.path == self.runtime_dir:
            what, fix = "it", "remove it, or set mediator.runtime_dir to a directory only you can write"
        else:
            what, fix = f"{self.path} on the way to it", ("set mediator.runtime_dir to a directory "
                                                        "that only you and root can change, all the way up")
        return (f"refusing runtime directory {self.runtime_dir}: {what} (owner {describe_uid(self.owner)}, "
                f"mode {self.mode:04o}) {self.reason}; {fix}")


class PeerRefused(RundirError):
    """The process at the other end of one of the runtime directory's sockets
    runs as a user this process does not trust (SO_PEERCRED: neither this
    process's effective uid nor root). The connection was closed before
    anything was read from it or sent on it. ``role`` is what the peer would
    have been ("stubdom-teed", "control client", "SMC gate", "stub domain")."""

    def __init__(self, path: str, role: str, pid: int, uid: int, gid: int, own_uid: int) -> None:
        self.path = path
        self.role = role
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.own_uid = own_uid
        # the message without the path, for callers that name the path their way
        self.detail = (f"refused the {role}: pid {pid} runs as {describe_uid(uid)} (gid {gid}); "
                       f"only {describe_trusted(own_uid)} may be the {role} here")
        super().__init__(f"{path}: {self.detail}")
