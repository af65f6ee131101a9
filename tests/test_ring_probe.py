"""The machine probes (ring.probe_machine, cffi_build/teeif_probe.c): real
measurements in C, so only their shape is asserted, never a speed."""

from __future__ import annotations

import os

import pytest

import ring


def test_probe_on_one_cpu():
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    p = ring.probe_machine(cpu, calls=1000, turns=500)
    assert p.cpu == cpu and p.turns == 500
    assert p.syscall_ns > 0 and p.yield_alone_ns > 0
    assert 0 < p.turn_p50_ns <= p.turn_p90_ns
    assert os.sched_getaffinity(0) == before  # the caller's affinity is given back
    assert p.to_json() == {"syscall_ns": p.syscall_ns, "yield_alone_ns": p.yield_alone_ns,
                           "turn_p50_ns": p.turn_p50_ns, "turn_p90_ns": p.turn_p90_ns, "turns": 500,
                           "cpu": cpu}


def test_probe_unpinned():
    p = ring.probe_machine(None, calls=100, turns=100)
    assert p.cpu is None and 0 < p.turn_p50_ns <= p.turn_p90_ns


@pytest.mark.parametrize("kwargs, words", [
    ({"calls": 0}, "calls >= 1"),
    ({"turns": 0}, "turns >= 1"),
    ({"cpu": -1}, "CPU -1"),
    ({"cpu": 4096}, "CPU 4096"),
])
def test_probe_refuses_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ring.probe_machine(**kwargs)
