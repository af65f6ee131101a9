"""Exceptions of the mediator core.

None of these is ever raised towards a guest: a guest gets OP-TEE return
codes in its registers or in its message.  They are for the placement and the
toolstack (refusing to start, refusing a domain) and for broken invariants.
"""

from __future__ import annotations

__all__ = [
    "MediatorError",
    "TeeProbeFailed",
    "DomainRefused",
    "DomainAlreadyInitialised",
    "DomainNotInitialised",
    "TeardownInvariantBroken",
    "BadSnapshot",
    "UnknownProfile",
]


class MediatorError(Exception):
    """Base of every error in :mod:`stubdom.mediator`."""


class TeeProbeFailed(MediatorError):
    """The secure world is not an OP-TEE the mediator can serve (wrong API
    UID, no thread count, no NS-virtualization, no dynamic shm).  Raised when
    the mediator is created; the placement must not start."""

    def __init__(self, what: str, value: object) -> None:
        self.what = what
        self.value = value
        super().__init__(f"TEE probe failed: {what} (got {value!r})")


class DomainRefused(MediatorError):
    """OP-TEE refused VM_CREATED for a domain (partition limit reached, or
    out of memory); the domain cannot be created with a TEE."""

    def __init__(self, domid: int, a0: int) -> None:
        self.domid = domid
        self.a0 = a0
        super().__init__(f"d{domid}: OP-TEE answered VM_CREATED(client {domid + 1}) with a0={a0:#x}")


class DomainAlreadyInitialised(MediatorError):
    """domain_init for a domid that already has a mediator context."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        super().__init__(f"d{domid} already has a mediator context")


class DomainNotInitialised(MediatorError):
    """A toolstack operation named a domid without a mediator context."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        super().__init__(f"d{domid} has no mediator context")


class TeardownInvariantBroken(MediatorError):
    """After a domain's resources were relinquished something is left (a
    counter not zero, a frame still pinned): a mediator bug, never a guest's
    doing."""

    def __init__(self, domid: int, what: str) -> None:
        self.domid = domid
        self.what = what
        super().__init__(f"d{domid}: teardown invariant broken: {what}")


class BadSnapshot(MediatorError):
    """Journaled mediator state that does not describe a domain context (a
    missing or ill-typed field, a message that does not parse, counters
    that disagree): never restored."""

    def __init__(self, domid: int, what: str) -> None:
        self.domid = domid
        self.what = what
        super().__init__(f"d{domid}: bad snapshot: {what}")


class UnknownProfile(MediatorError, ValueError):
    """A mediator profile was named that does not exist (the configuration
    loader refuses one before any mediator is built)."""

    def __init__(self, name: object, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown mediator profile {name!r}; one of {', '.join(known)}")
