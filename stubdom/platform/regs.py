"""Trapped register sets: eight 64-bit values, x0..x7."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import BadRegisters

NR_SMC_REGS = 8
REG_MASK = (1 << 64) - 1

Regs = tuple[int, int, int, int, int, int, int, int]


def check_regs(regs: Sequence[int]) -> Regs:
    """Return ``regs`` as a tuple after checking it is eight u64 values."""
    if len(regs) != NR_SMC_REGS:
        raise BadRegisters(regs)
    for r in regs:
        if type(r) is not int or r < 0 or r > REG_MASK:
            raise BadRegisters(regs)
    return tuple(regs)  # type: ignore[return-value]  # eight values, checked above
