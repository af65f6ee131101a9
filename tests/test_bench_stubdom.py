"""Operation counts under the stub-domain placements, against the real
daemon process: a call's crossings are known by construction. And the whole
``--quick`` run end to end (slow)."""

from __future__ import annotations

import json

import pytest

from stubdom.bench import (
    MEDIATOR_OPS,
    OPS,
    Layout,
    PlacementUnavailable,
    bench_main,
    make_placement,
    per_call,
    validate,
)
from stubdom.bench.workloads import WORKLOADS, Worker


@pytest.fixture(scope="module")
def el2(tmp_path_factory):
    pl = make_placement("el2", tmp_path_factory.mktemp("el2"), Layout(1, 1), seed=2)
    try:
        pl.start()
        yield pl
    finally:
        pl.close()


@pytest.fixture(scope="module", params=["stubdom", "stubdom-poll"])
def stub(request, tmp_path_factory):
    try:
        pl = make_placement(request.param, tmp_path_factory.mktemp(request.param), Layout(1, 1), seed=2,
                            daemon_cpu=None, poll_window_us=200)
    except PlacementUnavailable as e:
        pytest.skip(e.reason)
    try:
        pl.start()
        yield pl
    finally:
        pl.close()


def _ops(pl, workload: str, calls: int = 3) -> dict:
    w = Worker(pl.drivers[1], 1, 0, seed=4)
    try:
        call = WORKLOADS[workload].prepare(w)
        call()
        before = pl.counts()
        for _ in range(calls):
            call()
        return per_call(before, pl.counts(), calls)
    finally:
        w.close()


def test_fast_call_crossings(stub):
    ops = _ops(stub, "fast_call")
    # 1 trap + 1 teeif request and 1 response (each pushed once, popped once)
    # + 1 SMC-gate hypercall + 1 SMC
    assert ops["guest_traps"] == 1
    assert ops["ring_pushes"] == 2 and ops["ring_pops"] == 2
    assert ops["gate_hypercalls"] == 1
    assert ops["smc_world_switches"] == 1
    assert ops["rpc_round_trips"] == 0


def test_every_smc_goes_through_the_gate(stub):
    ops = _ops(stub, "storage_rw", calls=1)
    assert ops["gate_hypercalls"] == ops["smc_world_switches"] == ops["guest_traps"]
    assert ops["ring_pushes"] == 2 * ops["guest_traps"]
    # two INVOKEs and, around each, two temporary memrefs registered and
    # unregistered (libteec); every other trap resumes an RPC
    assert ops["rpc_round_trips"] == ops["guest_traps"] - 2 - 8


@pytest.mark.parametrize("workload", ["digest_16p", "storage_rw", "open_close"])
def test_mediator_counts_come_from_the_daemon_and_are_its_own(stub, el2, workload):
    """The stub-domain placement measures the mediator's pins, look-ups and
    copies in the daemon (its ``stats`` answer), no longer borrowing el2's:
    the same mediator core doing the same work for the same call counts the
    same; the transport, which the placements do not share, differs."""
    assert stub.counted_ops() == frozenset(OPS)
    assert set(MEDIATOR_OPS) <= set(stub.extra_counts())  # read from the daemon, not from this process
    mine = _ops(stub, workload, calls=2)
    theirs = _ops(el2, workload, calls=2)
    assert mine["pages_pinned"] > 0 and mine["bytes_copied"] > 0
    same = (*MEDIATOR_OPS, "guest_traps", "smc_world_switches", "rpc_round_trips")
    assert {op: mine[op] for op in same} == {op: theirs[op] for op in same}
    assert mine["pages_unpinned"] == mine["pages_pinned"]  # every pin released (invariant 6)
    # the same trapped SMCs, each one crossing to the daemon and back through the gate
    assert mine["guest_traps"] == theirs["guest_traps"] == mine["gate_hypercalls"]
    assert theirs["gate_hypercalls"] == theirs["ring_pushes"] == 0 < mine["ring_pushes"]


def test_every_push_notifies_or_is_suppressed(stub):
    t0 = stub.transport()
    _ops(stub, "fast_call", calls=4)
    t1 = stub.transport()
    d = {k: t1[k] - t0.get(k, 0) for k in t1}
    # io/ring.h: each request push either crosses the daemon's req_event
    # (one notification) or finds it awake (suppressed) -- whatever the timing
    assert d["notifications_to_backend"] + d["notifications_suppressed_to_backend"] == d["entries_pushed"]
    assert d["entries_pushed"] == d["gate_calls"] == 5  # the unmeasured first call and 4 more
    # a vCPU is woken at most once per answer it waits for
    assert 0 <= d["wakeups_frontend"] <= d["entries_pushed"]


def test_daemon_is_a_separate_process(stub):
    procs = {p["role"]: p for p in stub.processes()}
    assert procs["daemon"]["pid"] != procs["platform"]["pid"]
    assert stub.rss_kib()["daemon"] > 0


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    assert bench_main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    validate(doc)
    assert {c["sweep"] for c in doc["cells"]} == {"workloads", "vcpus", "scale"}
    assert (tmp_path / "report.md").exists() and (tmp_path / "latency-cdf.png").exists()
