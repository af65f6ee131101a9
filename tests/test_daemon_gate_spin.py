"""mediator.gate_spin_us (docs/config.md, docs/smc-gate.md): the daemon
waits for a gate hypercall's answer by spinning, not on the gate's event
channel, whatever the guests' polling window; 0 makes it sleep at once.

A real daemon process beside the real platform and gate, with the blocking
placement (poll_window_us: 0, so the gate thread sleeps between hypercalls
and its answer always comes after the daemon's final check). The daemon's
own wake-ups on the gate channel (`stats` → `gate.wakeups`) tell the two
apart; nothing is timed."""

from __future__ import annotations

import pytest

from daemon_support import Daemon, client, write_config
from stubdom.config import load_config
from stubdom.optee.smc import OPTEE_SMC_CALL_GET_OS_REVISION
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec

CALLS = 40


def _gate_wakeups(tmp_path, spin: str) -> tuple[int, int, tuple]:
    """(gate SMCs, the daemon's wake-ups on the gate channel, the answers) of
    CALLS fast calls; ``spin``: the gate_spin_us line, or "" for the default."""
    path = write_config(tmp_path)
    text = path.read_text()
    assert "  poll_window_us: 50\n" in text
    path.write_text(text.replace("  poll_window_us: 50\n", "  poll_window_us: 0\n" + spin))
    config = load_config(path)
    assert config.mediator.gate_spin_us == (0 if spin else 10_000)
    platform = Platform.for_config(config)
    daemon = Daemon(path, tmp_path)
    try:
        daemon.wait_listening()
        platform.create_domain(domain_spec(config.domain(1)))
        with client(config) as c:
            s0 = c.call("stats")["gate"]
            answers = {platform.trap(1, 0, (OPTEE_SMC_CALL_GET_OS_REVISION,) + (0,) * 7) for _ in range(CALLS)}
            s1 = c.call("stats")["gate"]
        platform.destroy_domain(1)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.stop()
        platform.close()
    return s1["smc_calls"] - s0["smc_calls"], s1["wakeups"] - s0["wakeups"], tuple(answers)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {name: _gate_wakeups(tmp_path_factory.mktemp(name), line)
            for name, line in (("default", ""), ("zero", "  gate_spin_us: 0\n"))}


def test_the_default_spins_for_the_answer(runs):
    smcs, wakeups, answers = runs["default"]
    assert smcs == CALLS and len(answers) == 1
    # an SMC would have to outlast 10 ms for the daemon to sleep on it
    assert wakeups <= CALLS // 2, runs


def test_zero_sleeps_on_the_gate_channel(runs):
    smcs, wakeups, answers = runs["zero"]
    assert smcs == CALLS
    assert answers == runs["default"][2]  # the same answer either way
    # each sleeps unless the daemon was preempted between its push and its
    # final check for longer than the gate took (a loaded machine): not all
    assert wakeups >= 1, runs

