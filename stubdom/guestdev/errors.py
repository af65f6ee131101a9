"""Exceptions of the guest device (``stubdom-teed guest-dev``).

The TEE subsystem's own failures, which a process sees as errno values, are
:class:`stubdom.guest.TeeErrno`; these are the failures around it.
"""

from __future__ import annotations

from stubdom.guest.errors import GuestError

__all__ = ["GuestDevError", "WireError", "PlatformUnavailable", "PlatformRefused", "PlatformGone"]


class GuestDevError(GuestError):
    """Base of the guest device's errors."""


class WireError(GuestDevError):
    """A message on the device socket broke preload/teedev_wire.h (wrong
    magic or version, a length past the message).  The server drops the
    connection that sent it; nothing of it reached the guest kernel."""


class PlatformUnavailable(GuestDevError):
    """No platform answered at its vCPU host socket within the wait: start
    ``stubdom-teed platform --config X`` first (same runtime directory)."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"no platform at {path}: {why}")


class PlatformRefused(GuestDevError):
    """The platform would not create the guest's domain; ``reason`` is its
    answer (a domid in use or pre-declared, no memory, the daemon's policy)."""

    def __init__(self, domid: int, reason: str) -> None:
        self.domid = domid
        self.reason = reason
        super().__init__(f"the platform refused d{domid}: {reason}")


class PlatformGone(GuestDevError):
    """A vCPU's channel to the platform closed: the platform stopped or
    destroyed the domain.  The guest cannot trap any more."""

    def __init__(self, domid: int, vcpu: int) -> None:
        self.domid = domid
        self.vcpu = vcpu
        super().__init__(f"d{domid} vCPU {vcpu}: the platform closed the channel")
