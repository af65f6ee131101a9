"""Exceptions raised by the guest OP-TEE driver, its supplicant and the client API.

Every class derives from :class:`GuestError`.  Driver-level failures (probe,
memory, the SMC loop) are plain exceptions carrying the offending value;
failures the TEE or the driver report as a GlobalPlatform result are
:class:`TeecError`, which carries ``ret`` and ``origin`` as libteec does.
"""

from __future__ import annotations

import errno as _errno
import os as _os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stubdom.optee.teec import TEEC_ORIGIN_NAMES
from stubdom.optee.teec import teec_name as _teec_name

if TYPE_CHECKING:
    from .client import Param

__all__ = [
    "GuestError",
    "OutOfGuestPages",
    "PageNotAllocated",
    "ProbeError",
    "ApiUidMismatch",
    "ApiRevisionMismatch",
    "CapabilitiesMismatch",
    "NoSharedMemory",
    "StaticShmUnavailable",
    "StaticShmNotCached",
    "StaticShmOutOfMemory",
    "DriverNotReady",
    "ShmRegistrationFailed",
    "UnknownShm",
    "TooManyParams",
    "TeecError",
    "TeeErrno",
    "teec_name",
    "origin_name",
]


def teec_name(ret: int) -> str:
    """The TEEC/TEE name of a result code, or its hex value when unnamed."""
    return _teec_name(ret)


def origin_name(origin: int) -> str:
    """The TEEC_ORIGIN_* name of a return origin, or its value when unnamed."""
    return TEEC_ORIGIN_NAMES.get(origin, f"origin {origin:#x}")


class GuestError(Exception):
    """Base of every error raised by :mod:`stubdom.guest`."""


class OutOfGuestPages(GuestError):
    """Raised by the guest page allocator when fewer free pages remain than were
    asked for.  Nothing is allocated in that case; free something and retry."""

    def __init__(self, wanted: int, free: int) -> None:
        self.wanted = wanted
        self.free = free
        super().__init__(f"out of guest pages: wanted {wanted}, {free} free")


class PageNotAllocated(GuestError):
    """Raised when a page is freed that the allocator does not have out (a
    double free, or an address that is not one of its pages)."""

    def __init__(self, ipa: int) -> None:
        self.ipa = ipa
        super().__init__(f"page {ipa:#x} is not allocated from this allocator")


class ProbeError(GuestError):
    """Base of the probe failures (Linux ``optee_probe`` returning an error):
    the driver is unusable and nothing was left allocated."""


class ApiUidMismatch(ProbeError):
    """CALLS_UID did not return the OP-TEE API UID ("api uid mismatch")."""

    def __init__(self, regs: tuple[int, ...]) -> None:
        self.regs = regs
        super().__init__(
            "api uid mismatch: CALLS_UID returned "
            + ", ".join(f"{r:#010x}" for r in regs[:4])
        )


class ApiRevisionMismatch(ProbeError):
    """CALLS_REVISION did not report major 2 with a non-negative minor."""

    def __init__(self, major: int, minor: int) -> None:
        self.major = major
        self.minor = minor
        super().__init__(f"api revision mismatch: {major:#x}.{minor:#x}, need 2.x")


class CapabilitiesMismatch(ProbeError):
    """EXCHANGE_CAPABILITIES returned a non-OK status in a0."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"capabilities mismatch: EXCHANGE_CAPABILITIES a0 = {status:#x}")


class NoSharedMemory(ProbeError):
    """The secure world offers neither dynamic nor reserved shared memory."""

    def __init__(self, sec_caps: int) -> None:
        self.sec_caps = sec_caps
        super().__init__(
            f"no usable shared memory: sec caps {sec_caps:#x} have neither "
            "DYNAMIC_SHM nor HAVE_RESERVED_SHM"
        )


class StaticShmUnavailable(ProbeError):
    """GET_SHM_CONFIG failed ("static shm service not available"), or the region
    it names is empty after page rounding."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"static shm service not available: {detail}")


class StaticShmNotCached(ProbeError):
    """GET_SHM_CONFIG returned a3 != OPTEE_SMC_SHM_CACHED ("only normal cached
    shared memory supported")."""

    def __init__(self, settings: int) -> None:
        self.settings = settings
        super().__init__(
            f"only normal cached shared memory supported: GET_SHM_CONFIG a3 = {settings:#x}"
        )


class StaticShmOutOfMemory(GuestError):
    """The reserved (static) shared-memory pool cannot satisfy an allocation."""

    def __init__(self, size: int, free: int) -> None:
        self.size = size
        self.free = free
        super().__init__(f"static shm pool exhausted: wanted {size} bytes, {free} free")


class DriverNotReady(GuestError):
    """A call was made before ``probe()`` succeeded or after ``shutdown()``."""

    def __init__(self, state: str) -> None:
        self.state = state
        super().__init__(f"OP-TEE driver is {state}")


class ShmRegistrationFailed(GuestError):
    """REGISTER_SHM or UNREGISTER_SHM failed (Linux returns -EINVAL): a0 != OK or
    the message's ret != TEEC_SUCCESS."""

    def __init__(self, what: str, a0: int, ret: int) -> None:
        self.a0 = a0
        self.ret = ret
        super().__init__(f"{what} failed: a0 = {a0:#x}, ret = {teec_name(ret)}")


class UnknownShm(GuestError):
    """A cookie (shm_ref) names no shared-memory object of this driver."""

    def __init__(self, cookie: int) -> None:
        self.cookie = cookie
        super().__init__(f"no shared memory object with cookie {cookie:#x}")


class TooManyParams(GuestError):
    """More parameters than a request may carry (MAX_ARG_PARAM_COUNT = 6 in
    Linux's call.c, i.e. 4 TA params + 2 meta params for OPEN_SESSION)."""

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(f"{count} parameters, at most {limit} allowed")


class TeecError(GuestError):
    """A GlobalPlatform result other than TEEC_SUCCESS, as libteec returns it:
    ``ret`` is the TEEC_Result, ``origin`` the TEEC_ORIGIN_* value.

    Raised by the client API; ``outputs`` holds whatever output parameters the
    call produced (e.g. the size needed after TEEC_ERROR_SHORT_BUFFER) when
    the TEE answered, or a message when the API itself refused the call."""

    def __init__(self, ret: int, origin: int, outputs: Sequence[Param] | str | None = None) -> None:
        self.ret = ret
        self.origin = origin
        self.outputs = outputs
        super().__init__(f"{teec_name(ret)} ({ret:#010x}) from {origin_name(origin)}")


class TeeErrno(GuestError):
    """A TEE-subsystem system call (open, ioctl, mmap of /dev/tee*) failed the
    way Linux fails it: ``errno`` is what the calling process sees, ``why``
    names the check that failed and the offending value.  The device server
    returns it to the process; nothing of the failed call reached the secure
    world unless ``why`` says so."""

    def __init__(self, errno: int, why: str) -> None:
        self.errno = errno
        self.why = why
        super().__init__(f"{_errno.errorcode.get(errno, errno)} ({_os.strerror(errno)}): {why}")
