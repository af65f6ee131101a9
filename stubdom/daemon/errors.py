"""Exceptions of the daemon, and the numeric error codes of the control
protocol (docs/control-protocol.md).

Nothing here is ever raised towards a guest: a guest gets OP-TEE return codes
in its registers, or a negative errno in the teeif response status.
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "DaemonError",
    "ControlError",
    "ProtocolError",
    "GateUnavailable",
    "GateRefused",
    "StartupError",
    "JournalCorrupt",
    "JournalWriteError",
]


class ErrorCode(enum.IntEnum):
    """Numeric error codes of control responses (fixed: clients switch on them)."""

    BAD_REQUEST = 1  # malformed request: not a map, missing/ill-typed argument, oversized
    UNKNOWN_OP = 2  # "op" names no operation
    NO_SUCH_DOMAIN = 3  # the domid has no backend in this daemon (or no domain in the machine)
    DOMAIN_EXISTS = 4  # domain_create for a domid that already has one
    TEE_REFUSED = 5  # OP-TEE (or the SMC gate) refused VM_CREATED
    POLICY_REFUSED = 6  # the domain's policy is disabled
    CONFIG_INVALID = 7  # reload: the file does not validate; the old policy stays
    SHUTTING_DOWN = 8  # the daemon is draining: no new domains, no new work
    INTERNAL = 9  # a daemon bug; the message says what


class DaemonError(Exception):
    """Base of every error in :mod:`stubdom.daemon`."""


class ControlError(DaemonError):
    """An operation failed with a control-protocol error code; the server
    answers ``{"ok": false, "error": {code, name, message}}``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = ErrorCode(code)
        self.message = message
        super().__init__(f"{self.code.name}: {message}")


class ProtocolError(ControlError):
    """A control message that cannot be served at all (malformed msgpack,
    larger than the frame limit, not a map). The server answers it with
    BAD_REQUEST and closes that connection; nothing else is affected."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


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


class GateRefused(DaemonError):
    """The SMC gate answered a hypercall with a negative status (-EPERM: the
    domain is not assigned to this stub domain or the op is not allowed for
    it; -EINVAL; -ENOENT), or did not answer within the bound. Raised by
    GatePort into the mediator, which turns it into a guest-visible error."""

    def __init__(self, op: str, domid: int, status: int, function: int) -> None:
        self.op = op
        self.domid = domid
        self.status = status
        self.function = function
        super().__init__(f"gate {op} for d{domid} (function {function:#x}) failed: status {status}")


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
