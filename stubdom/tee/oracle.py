"""The isolation oracle: every machine address the secure world touches.

Real OP-TEE cannot tell whose page it is reading; the simulation can.  Each
access the TEE model makes on behalf of client ``c`` (domain ``c - 1``) goes
through :meth:`IsolationOracle.read` / :meth:`IsolationOracle.write`, which
check every frame touched, at that moment:

* the frame is owned by the calling domain, and
* it is pinned (reference count > 0: someone called get_page for it), unless
  ``require_pins`` is False;
* the static shared-memory region is excepted for the hardware domain (it
  belongs to the TEE carve-out, not to any domain, and only a direct-mapped
  hardware domain may be given it).

A violation is recorded as a frozen :class:`Violation` and the access then
proceeds exactly as the hardware would perform it: the oracle detects, it
never hides.  Tests call :meth:`assert_clean`.

``require_pins=False`` is for the 2017-RFC pass-through placement with a
direct-mapped hardware domain: nothing pins that domain's pages (the RFC did
not), so only ownership is checked.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stubdom.xen.constants import PAGE_SHIFT, PAGE_SIZE

from .errors import IsolationViolation

if TYPE_CHECKING:
    from stubdom.xen import Machine

__all__ = ["IsolationOracle", "Violation", "REASON_FOREIGN", "REASON_UNPINNED"]

REASON_FOREIGN = "frame not owned by the calling domain"
REASON_UNPINNED = "frame not pinned"


@dataclass(frozen=True, slots=True)
class Violation:
    """One access to a frame the calling domain had no right to expose."""

    client_id: int  # OP-TEE client id (a7): domid + 1
    domid: int  # the calling domain
    maddr: int  # first byte of this frame that was touched
    mfn: int
    owner: int  # frame owner at the time (DOMID_INVALID = free)
    refcount: int  # pins held at the time
    access: str  # "read" or "write"
    what: str  # what was being accessed ("msg arg", "page list", "memref 1", ...)
    smc: str  # the SMC that was being served
    call: str  # the call inside it (message command, RPC, TA command)
    reason: str

    def describe(self) -> str:
        return (
            f"client {self.client_id} (d{self.domid}) {self.access} of {self.what} at "
            f"{self.maddr:#x} (mfn {self.mfn:#x}): {self.reason}; owner {self.owner:#x}, "
            f"refcount {self.refcount}; during {self.smc} / {self.call}"
        )


class IsolationOracle:
    """Checks and performs the TEE model's machine-memory accesses."""

    def __init__(self, machine: Machine, *, require_pins: bool = True) -> None:
        if type(require_pins) is not bool:
            raise TypeError(f"require_pins must be a bool, got {require_pins!r}")
        self._machine = machine
        self.require_pins = require_pins
        self._violations: list[Violation] = []
        self._lock = threading.Lock()
        self._accesses = 0

    # -- results -----------------------------------------------------------

    @property
    def violations(self) -> list[Violation]:
        """A copy of every violation recorded so far, oldest first."""
        with self._lock:
            return list(self._violations)

    @property
    def accesses(self) -> int:
        """Number of checked accesses (read or write calls) so far."""
        return self._accesses

    def assert_clean(self) -> None:
        """Raise :class:`IsolationViolation` listing every violation, if any."""
        found = self.violations
        if found:
            raise IsolationViolation(found)

    def clear(self) -> list[Violation]:
        """Forget the recorded violations and return them (for tests that
        provoke one on purpose and then check the rest stays clean)."""
        with self._lock:
            found, self._violations = self._violations, []
        return found

    # -- accesses ----------------------------------------------------------

    def read(self, client_id: int, maddr: int, length: int, *, what: str, smc: str, call: str) -> bytes:
        """Read ``length`` bytes of machine memory for ``client_id``."""
        self._check(client_id, maddr, length, "read", what, smc, call)
        return self._machine.read_machine(maddr, length)

    def write(self, client_id: int, maddr: int, data: bytes, *, what: str, smc: str, call: str) -> None:
        """Write ``data`` to machine memory for ``client_id``."""
        self._check(client_id, maddr, len(data), "write", what, smc, call)
        self._machine.write_machine(maddr, data)

    def _check(self, client_id: int, maddr: int, length: int, access: str, what: str,
               smc: str, call: str) -> None:
        self._accesses += 1
        if length <= 0:
            return
        domid = client_id - 1
        hwdom = self._machine.hwdom
        static = self._machine.static_shm
        first = maddr >> PAGE_SHIFT
        last = (maddr + length - 1) >> PAGE_SHIFT
        for mfn in range(first, last + 1):
            frame_addr = max(maddr, mfn << PAGE_SHIFT)
            if static is not None and domid == hwdom and static.contains(mfn << PAGE_SHIFT, PAGE_SIZE):
                continue
            owner = self._machine.frame_owner(mfn)
            refcount = self._machine.frame_refcount(mfn)
            if owner != domid:
                reason = REASON_FOREIGN
            elif self.require_pins and refcount == 0:
                reason = REASON_UNPINNED
            else:
                continue
            with self._lock:
                self._violations.append(
                    Violation(client_id, domid, frame_addr, mfn, owner, refcount, access, what,
                              smc, call, reason)
                )
