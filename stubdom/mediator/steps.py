"""Work that may be cut into steps.

The mediator's long work — translating and pinning a guest's page lists —
is written as generators that ``yield`` between bounded steps and return
their result. At EL2 a trap is run to its end at once (:func:`drive`), as
Xen runs a trap handler; the stub domain, which serves every domain from one
event loop, runs other domains' requests at each yield (docs/daemon.md,
"Fair service"). A caller that stops early ``close()``s the generator: every
step releases what it took on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["Steps", "drive"]

T = TypeVar("T")

# A computation yielding None between steps and returning a T.
Steps = Generator[None, None, T]


def drive(steps: Steps[T], between: Callable[[], object] | None = None) -> T:
    """Run ``steps`` to its end (calling ``between()`` at each step
    boundary); its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        if between is not None:
            between()
