"""Exceptions of the ``ring`` package, all in one place.

C functions return codes (teeif.h); ``ring._lib.check`` is the one place that
turns them into these exceptions, or into ``OSError`` for a negative errno.
"""

import os

__all__ = [
    "RingError",
    "RingFull",
    "RingCorrupted",
    "TooManyResponses",
    "RingClosed",
    "RingSizeError",
    "RingTruncated",
    "PeerDied",
    "FloorMismatch",
    "StaleBuild",
]


class RingError(Exception):
    """Base class of everything the ring package raises on purpose."""


class RingFull(RingError):
    """Raised by a frontend push when the batch does not fit in the free slots.

    Nothing was pushed. Consume responses (or wait for them) and retry.
    """

    def __init__(self, wanted: int, free: int) -> None:
        super().__init__(f"ring full: {wanted} requests to push, {free} free slots")
        self.wanted = wanted
        self.free = free


class RingCorrupted(RingError):
    """The peer's producer index in the shared page is impossible.

    Raised when a backend sees req_prod more than a ring ahead of the responses
    it produced (io/ring.h RING_REQUEST_PROD_OVERFLOW) or behind what it already
    consumed; likewise for a frontend and rsp_prod. Nothing past the valid
    indices was read. The peer is hostile or broken: disconnect it.
    """

    def __init__(self, side: str, field: str, prod: int, **indices: int) -> None:
        private = ", ".join(f"{k}={v:#010x}" for k, v in indices.items())
        super().__init__(f"{side}: shared {field}={prod:#010x} is impossible ({private})")
        self.side = side
        self.field = field
        self.prod = prod
        self.indices = indices


class TooManyResponses(RingError):
    """A backend tried to push more responses than requests it has taken."""

    def __init__(self, wanted: int, owed: int) -> None:
        super().__init__(f"{wanted} responses to push but only {owed} requests await one")
        self.wanted = wanted
        self.owed = owed


class RingClosed(RingError):
    """The ring or event channel was used after ``close()``."""


class RingSizeError(RingError):
    """A ring file's size is not a whole number of 4 KiB pages in range,
    or not the number of pages the caller expected."""


class RingTruncated(RingError):
    """The ring file shrank under its mapping: the peer truncated it.

    Touching the lost pages raised SIGBUS; the ring's C code caught it
    (docs/protocol.md, "A peer that truncates the ring file") instead of
    letting it kill the process. Xen's granted pages cannot shrink, so the
    peer is hostile: disconnect it. The ring end stays failed (every later
    call raises this again) even if the file grows back; only ``close()``
    is still useful.
    """

    def __init__(self, side: str, path: str, offset: int | None, mapped: int) -> None:
        try:
            now = f"{os.stat(path).st_size} bytes"
        except OSError as e:
            now = f"unreadable: {e.strerror}"
        where = "at an unknown offset" if offset is None else f"at offset {offset:#x}"
        super().__init__(f"{side}: the ring file {path} shrank under its {mapped}-byte mapping "
                         f"(access {where} faulted with SIGBUS; the file is now {now}): "
                         f"the peer truncated it")
        self.side = side
        self.path = path
        self.offset = offset
        self.mapped = mapped


class PeerDied(RingError):
    """End-of-file on the event channel: the other end closed or its process died.

    The ring's shared page is still mapped and readable; re-attach when a new
    peer connects.
    """


class FloorMismatch(RingError):
    """The transport floor received a response that did not echo its request."""


class StaleBuild(ImportError):
    """The compiled ``ring._ring`` does not match this Python package: rebuild
    it (``pip install -e . --no-build-isolation``)."""
