"""The compiled module ``ring._ring`` and the one helper that turns its
return codes into exceptions."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from ring._ring import ffi, lib
from ring.errors import (
    FloorMismatch,
    PeerDied,
    RingCorrupted,
    RingError,
    RingFull,
    RingSizeError,
    RingTruncated,
    StaleBuild,
    TooManyResponses,
)

if TYPE_CHECKING:
    from ring._ring import CBackRing, CFrontRing, CRingEnd

# Must equal TEEIF_ABI_VERSION in cffi_build/teeif.h.
ABI_VERSION = 8

if lib.TEEIF_ABI_VERSION != ABI_VERSION:
    raise StaleBuild(
        f"ring._ring was built from teeif.h ABI {lib.TEEIF_ABI_VERSION}, "
        f"the Python package expects {ABI_VERSION}: rebuild the extension"
    )

__all__ = ["ffi", "lib", "check"]

_U32 = 0xFFFFFFFF


def check(rc: int, what: str = "", *, front: CFrontRing | None = None, back: CBackRing | None = None,
          wanted: int = 0, pages: int = 0) -> int:
    """Return ``rc`` if it is a success (>= 0), else raise what it means.

    ``front``/``back`` is the C state of the ring end that made the call (a
    ``struct teeif_front_ring *`` or ``struct teeif_back_ring *``), so that an
    error can carry the offending index values; ``wanted`` is the batch size
    of a push; ``pages`` the size of a mapping the call touched without an
    end (for RingTruncated).
    """
    if rc >= 0:
        return rc
    if rc == lib.TEEIF_ECORRUPT and front is not None:
        raise RingCorrupted(
            "frontend", "rsp_prod", front.bad_prod,
            rsp_cons=front.rsp_cons, req_prod_pvt=front.req_prod_pvt, nr_ents=front.nr_ents,
        )
    if rc == lib.TEEIF_ECORRUPT and back is not None:
        raise RingCorrupted(
            "backend", "req_prod", back.bad_prod,
            req_cons=back.req_cons, rsp_prod_pvt=back.rsp_prod_pvt, nr_ents=back.nr_ents,
        )
    if rc == lib.TEEIF_ETRUNC:
        if front is None and back is None:  # a call that touched a mapping without an end
            raise RingTruncated("ring", what, None, pages * lib.TEEIF_PAGE_SIZE)
        end: CRingEnd
        if front is not None:
            end, side = front, "frontend"
        else:
            assert back is not None  # both None was answered above
            end, side = back, "backend"
        off = None if end.fault_off == lib.TEEIF_FAULT_UNKNOWN else end.fault_off
        raise RingTruncated(side, what, off, end.ring_pages * lib.TEEIF_PAGE_SIZE)
    if rc == lib.TEEIF_EFULL and front is not None:
        raise RingFull(wanted, lib.teeif_front_free_requests(front))
    if rc == lib.TEEIF_ENOREQ and back is not None:
        raise TooManyResponses(wanted, (back.req_cons - back.rsp_prod_pvt) & _U32)
    if rc == lib.TEEIF_EPEER:
        raise PeerDied(f"{what}: end-of-file on the event channel, the peer is gone")
    if rc == lib.TEEIF_ESIZE:
        raise RingSizeError(
            f"{what}: ring file size is not a whole number of 4096-byte pages in "
            f"1..{lib.TEEIF_MAX_RING_PAGES}, or not the number of pages expected"
        )
    if rc == lib.TEEIF_EMISMATCH:
        raise FloorMismatch(f"{what}: a response did not echo its request")
    if -4096 < rc < 0:
        err = -rc
        raise OSError(err, f"{os.strerror(err)} [{errno.errorcode.get(err, '?')}]", what or None)
    raise RingError(f"{what}: unexpected return code {rc}")
