"""The hostile harness's platforms: both placements show the same
mediator state through the same surface, the stub-domain one really runs
the mediator in the daemon process, and a dead daemon is reported."""

from __future__ import annotations

import signal

import pytest

from stubdom.hostile import (
    PLACEMENTS,
    DaemonDied,
    HostileGuest,
    destroy_all_and_check,
    make_platform,
    tee_smcs_of,
)
from stubdom.mediator import client_id
from stubdom.platform import DomainSpec


def _exercise(p) -> dict:
    p.create_domain(DomainSpec(1, nr_pages=128))
    g = HostileGuest(p, 1)
    assert g.register(0x51, 3)[1].ret == 0
    state = p.mediator_state(1)
    assert state["pinned_pages"] == 3 and state["nr_shm_buffers"] == 1
    assert [b["cookie"] for b in state["shm_buffers"]] == [0x51]
    assert state["internal_errors"] == 0 and state["calls_in_flight"] == 0
    assert tee_smcs_of(p, 1) >= 1
    return state


def test_both_placements_show_the_same_state(tmp_path):
    keys = {}
    for placement in PLACEMENTS:
        with make_platform(tmp_path / placement, placement) as p:
            keys[placement] = set(_exercise(p))
            destroy_all_and_check(p)
        if placement == "stubdom":
            assert p.daemon_exit == 0, p.daemon_log()
    assert keys["el2"] <= keys["stubdom"], keys["el2"] - keys["stubdom"]


def test_stubdom_mediates_in_the_daemon(tmp_path):
    with make_platform(tmp_path, "stubdom") as p:
        assert not hasattr(p.placement, "mediator")  # nothing of it in this process
        _exercise(p)
        stats = p.daemon_stats(1)
        assert stats["calls"]["CALL_WITH_ARG"] >= 1 and stats["pinned_pages"] == len(p.machine.pinned_frames(1))
        assert "event=domain_created domid=1" in p.daemon_log()
        destroy_all_and_check(p)
        assert p.tee.partition_stats(client_id(1)) is None


def test_a_dead_daemon_is_reported(tmp_path):
    p = make_platform(tmp_path, "stubdom")
    try:
        p.daemon.proc.send_signal(signal.SIGKILL)
        p.daemon.proc.wait()
        with pytest.raises(DaemonDied, match="exited with status -9"):
            p.check_daemon_alive()
    finally:
        p.close()


def test_the_stubdom_filter_is_the_daemons_policy(tmp_path):
    with pytest.raises(ValueError, match="daemon's policy"):
        make_platform(tmp_path, "stubdom", open_session_filter=lambda *a: None)


def test_smc_record_is_a_sequence_of_what_arrived():
    from stubdom.hostile import SmcRecord

    smcs = [(i, 0, 0, 0, 0, 0, 0, i % 3) for i in range(10)]
    every, last4 = SmcRecord(), SmcRecord(keep=4)
    for regs in smcs:
        every.append(regs)
        last4.append(regs)
    for sl in (slice(3, 5), slice(None, None, -3), slice(8, None), slice(5, 2), slice(-3, None),
               slice(None, None, 2), slice(7, 1, -2)):
        assert every[sl] == smcs[sl]
    assert (every[3], every[-1], len(every)) == (smcs[3], smcs[-1], 10)
    assert last4[-4:] == smcs[-4:] and last4[9:5:-1] == smcs[9:5:-1] and list(last4) == smcs[-4:]
    for dropped in (5, slice(2, 8), slice(9, 0, -1)):
        with pytest.raises(IndexError, match="was dropped"):
            last4[dropped]
    assert last4.counts() == (10, {0: 4, 1: 3, 2: 3}) and last4.of_client(1) == 3
