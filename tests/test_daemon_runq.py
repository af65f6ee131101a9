"""stubdom.daemon.runq.tasks_runnable: the run queue's length, read from
trio's runner, agrees with trio's public statistics in every state the
daemon asks in, and fails as trio does outside a run."""

from __future__ import annotations

import pytest
import trio

from stubdom.daemon import runq


async def test_it_counts_what_trio_counts() -> None:
    def both() -> tuple[int, int]:
        return runq.tasks_runnable(), trio.lowlevel.current_statistics().tasks_runnable

    assert both() == (0, 0)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.sleep, 0)
        assert both() == (3, 3)  # spawned, not yet run
        await trio.lowlevel.checkpoint()
        assert both()[0] == both()[1]
    assert both() == (0, 0)


async def test_the_public_answer_is_the_same_number() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)
        assert runq._public() == runq.tasks_runnable() == 1


def test_the_runner_is_read_directly_on_this_trio() -> None:
    """The fallback is for a trio that moved its run queue: this one has it
    where the module looks, or the daemon would pay trio's O(fds) statistics
    per request without anyone noticing."""
    assert runq.tasks_runnable is not runq._public


def test_outside_a_run_it_fails_as_trio_does() -> None:
    with pytest.raises(RuntimeError):
        runq.tasks_runnable()
