"""Exceptions raised by the TEE model.

Guest-visible failures are never exceptions: the model answers them with the
a0 codes and TEEC results OP-TEE uses.  These classes are for the people who
build and test the platform: a configuration that cannot describe an OP-TEE
build, a broken invariant of the model itself, and isolation violations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .oracle import Violation

__all__ = [
    "TeeError",
    "BadRegisters",
    "IsolationViolation",
    "TaProtocolError",
]


class TeeError(Exception):
    """Base of every error in :mod:`stubdom.tee`."""


class BadRegisters(TeeError):
    """Raised by :meth:`OpteeModel.smc` when it is not given exactly eight
    ints in 0 .. 2**64-1: a bug in the caller (hardware cannot pass anything
    else), so it is not turned into an SMC return code."""

    def __init__(self, regs: object, why: str) -> None:
        self.regs = regs
        super().__init__(f"SMC registers {regs!r}: {why}")


class IsolationViolation(TeeError):
    """Raised by :meth:`IsolationOracle.assert_clean` when the model touched
    a frame the calling domain did not own or had not pinned; the message
    lists every recorded violation."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        lines = [f"{len(self.violations)} isolation violation(s):"]
        lines += [f"  {v.describe()}" for v in self.violations]
        super().__init__("\n".join(lines))


class TaProtocolError(TeeError):
    """Raised when a built-in TA breaks the model's contract (writes more
    than a memref holds, touches a param that is not a memref): a bug in the
    TA, never the normal world's fault."""
