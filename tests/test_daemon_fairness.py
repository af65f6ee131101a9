"""FairShare, the daemon's rule between the steps of a heavy call
(stubdom/daemon/fairness.py): a domain answered within the window has the
first claim; nobody waits longer than the window; a domain that stopped
calling costs nothing. Driven with a clock the test moves, in a real trio
loop."""

from __future__ import annotations

import pytest
import trio

from stubdom.daemon.fairness import FairShare

WINDOW = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


async def _spin(n: int = 20) -> None:
    for _ in range(n):
        await trio.lowlevel.checkpoint()


async def test_a_step_waits_for_a_recently_answered_domain_until_it_is_served_again():
    clock = Clock()
    fair = FairShare(WINDOW, clock=clock)
    fair.answered(2)
    clock.now = 10
    went = trio.Event()

    async def heavy():
        await fair.step(1)
        went.set()

    async with trio.open_nursery() as n:
        n.start_soon(heavy)
        await _spin()
        assert not went.is_set()  # d2's next request gets the first claim
        clock.now = 20
        fair.answered(2)  # d2 served again
        await _spin()
        assert went.is_set()
    assert fair.anticipations == 1 and fair.anticipated_ns == 10


async def test_the_wait_ends_with_the_window():
    clock = Clock()
    fair = FairShare(WINDOW, clock=clock)
    fair.answered(2)
    went = trio.Event()

    async def heavy():
        await fair.step(1)
        went.set()

    async with trio.open_nursery() as n:
        n.start_soon(heavy)
        await _spin()
        assert not went.is_set()
        clock.now = WINDOW  # d2 never came back
        await _spin()
        assert went.is_set()


async def test_no_wait_for_itself_nor_for_an_old_answer():
    clock = Clock()
    fair = FairShare(WINDOW, clock=clock)
    fair.answered(1)
    fair.answered(2)
    clock.now = WINDOW + 1
    fair.answered(1)
    with trio.fail_after(5):  # a wedged step fails the test, never hangs it
        await fair.step(1)
    assert fair.anticipations == 0 and fair.turns == 1
    assert fair.statistics() == {"window_us": 1, "turns": 1, "anticipations": 0, "anticipated_us": 0}


async def test_a_forgotten_domain_is_not_waited_for():
    clock = Clock()
    fair = FairShare(WINDOW, clock=clock)
    fair.answered(2)
    fair.forget(2)  # destroyed
    with trio.fail_after(5):
        await fair.step(1)
    assert fair.anticipations == 0


def test_a_negative_window_is_refused():
    with pytest.raises(ValueError, match="got -1"):
        FairShare(-1)
