"""Exceptions of the daemon itself: startup and its journal.

The errors of the protocols it shares with the platform (the control
protocol's codes and ControlError, the SMC gate's GateError family) are
defined once in stubdom.public.errors. Nothing here is ever raised towards
a guest: a guest gets OP-TEE return codes in its registers, or a negative
errno in the teeif response status.
"""

from __future__ import annotations

__all__ = [
    "DaemonError",
    "GateUnavailable",
    "StartupError",
    "JournalCorrupt",
    "JournalWriteError",
]


class DaemonError(Exception):
    """Base of every error in :mod:`stubdom.daemon`."""


class GateUnavailable(DaemonError):
    """The platform's SMC gate is not there (its event channel socket is
    missing or refuses connections): start the platform first."""

    def __init__(self, path: str, config_path: str | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        command = "stubdom-teed platform" + (f" --config {config_path}" if config_path else "")
        super().__init__(
            f"stubdom-teed: no SMC gate at {path} ({reason}); start the platform first with "
            f"`{command}`"
        )


class StartupError(DaemonError):
    """The daemon cannot start (after the config validated): the message is
    one line for the operator; exit status 1."""


class JournalCorrupt(DaemonError):
    """The journal does not check (bad header, a record whose crc32 or
    msgpack does not check, a record that names nothing): refused whole."""

    def __init__(self, path, offset: int, reason: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"journal {path} is corrupt at offset {offset}: {reason}")


class JournalWriteError(DaemonError):
    """A journal record could not be written or fsync'd (ENOSPC, EIO...)."""

    def __init__(self, path, err: int, strerror: str) -> None:
        self.path = str(path)
        self.errno = err
        super().__init__(f"journal {path}: write failed: {strerror} (errno {err})")
