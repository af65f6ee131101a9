"""The stubdom placement: the platform's trap path over real teeif rings and
event channels to a minimal daemon (tests/stubdom_support.py) that runs
the real mediator core behind the real SMC gate."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ring import EVTCHN_FILE, RING_FILE, BackRing, EventChannelListener, Response
from stubdom import workloads
from stubdom.guest import Context, MemoryStore, OpteeDriver, Supplicant
from stubdom.optee import (
    OPTEE_MSG_REVISION_MAJOR,
    OPTEE_MSG_REVISION_MINOR,
    OPTEE_MSG_UID_0,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
)
from stubdom.optee.teec import TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS
from stubdom.platform import (
    UNAVAILABLE_REGS,
    DomainCreationFailed,
    DomainSpec,
    Platform,
    UnknownDomain,
    stubdom_placement,
)
from stubdom.public import GATE_OP_HYP, GATE_OP_SMC
from stubdom.tee import TeeConfig
from stubdom.tee.tas import INCREMENT_UUID
from stubdom_support import MiniDaemon

NR_FRAMES = 16384  # holds the static region at 0x42000000
LONG_MS = 60_000  # a bound no passing test comes near: only a hang would reach it


def regs(*values: int) -> tuple[int, ...]:
    return tuple(values) + (0,) * (8 - len(values))


@pytest.fixture
def world(tmp_path: Path, request):
    """(platform, daemon) with the stubdom placement; call_timeout_ms and the
    daemon's gather count come from the test's ``world_args`` marker-free
    parametrization via ``request.param`` when given."""
    opts = getattr(request, "param", {})
    platform = Platform(tmp_path / "machine", nr_frames=NR_FRAMES, tee_config=TeeConfig(),
                        placement=stubdom_placement(tmp_path, call_timeout_ms=opts.get("timeout_ms", LONG_MS),
                                                    poll_window_us=opts.get("poll_us", 0)))
    daemon = MiniDaemon(tmp_path, gather=opts.get("gather", 1))
    try:
        yield platform, daemon
    finally:
        try:
            platform.close()
        finally:
            daemon.close()
    assert platform.oracle.violations == []


def test_placement_creates_the_domain_in_the_daemon_and_forwards_calls(world, tmp_path: Path) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    assert platform.placement.gate.assigned() == frozenset({1})
    assert (tmp_path / "dom1" / RING_FILE).exists()
    out = platform.trap(1, 0, regs(OPTEE_SMC_CALLS_REVISION, 1, 2, 3, 4, 5, 6, 7))
    assert out == regs(OPTEE_MSG_REVISION_MAJOR, OPTEE_MSG_REVISION_MINOR)
    st = platform.placement.statistics(1)
    assert (st.requests, st.responses, st.timeouts, st.unavailable) == (1, 1, 0, 0)
    assert st.notifications_sent == 1  # the daemon slept on a fresh ring


def test_full_ta_workload_through_daemon_and_gate(world) -> None:
    platform, daemon = world
    domain = platform.create_domain(DomainSpec(1, nr_pages=1024, vcpus=2))
    driver = OpteeDriver(platform.trap_entry(1), domain, nr_vcpus=2, seed=1, supplicant=Supplicant(MemoryStore()))
    driver.probe()
    with Context(driver) as ctx:
        assert workloads.increment(ctx, 41) == 42
        data = workloads.random_bytes(3 * 4096 + 77, 3)
        workloads.digest_temp(ctx, data)
        workloads.digest_registered(ctx, data)
        workloads.storage_round_trip(ctx, b"obj", workloads.random_bytes(5000, 4))
    driver.shutdown()
    gate = platform.placement.gate.statistics()
    # the mediator's SMCs for domain 1 went through the gate, none refused
    # (some guest calls, e.g. GET_THREAD_COUNT, the mediator answers itself)
    assert 0 < gate.calls[(1, GATE_OP_SMC)] <= platform.placement.statistics(1).requests
    assert gate.calls[(1, GATE_OP_HYP)] == 1  # VM_CREATED
    assert gate.refusals == {}
    platform.destroy_domain(1)
    assert platform.placement.gate.assigned() == frozenset()
    assert platform.placement.gate.statistics().calls[(1, GATE_OP_HYP)] == 2  # VM_DESTROYED
    assert platform.machine.dying_domains() == {}  # every pin was released


@pytest.mark.parametrize("world", [{"gather": 4}], indirect=True)
def test_several_vcpus_in_flight_each_get_their_own_answer(world) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256, vcpus=4))
    daemon.mode[1] = "gather"
    entry = platform.trap_entry(1)
    # Four different calls: the daemon answers only once all four are on the
    # ring, in one push; each vCPU must get the answer to its own call.
    calls = [regs(OPTEE_SMC_CALLS_UID), regs(OPTEE_SMC_CALLS_REVISION),
             regs(OPTEE_SMC_CALL_GET_OS_REVISION), regs(OPTEE_SMC_GET_THREAD_COUNT)]
    expected = [platform.tee.smc(c[:7] + (2,)) for c in calls]
    results: dict[int, tuple] = {}
    for _ in range(3):
        threads = [threading.Thread(target=lambda v: results.__setitem__(v, entry(v, calls[v])), args=(v,))
                   for v in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for v in range(4):
            assert results[v][:7] == expected[v][:7], f"vCPU {v} got another vCPU's answer"
    assert daemon.batches == [4, 4, 4]
    st = platform.placement.statistics(1)
    assert (st.requests, st.responses, st.timeouts) == (12, 12, 0)


@pytest.mark.parametrize("world", [{"poll_us": 200}], indirect=True)
def test_polling_window_changes_nothing_the_guest_sees(world) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    for _ in range(20):
        assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID))[0] == OPTEE_MSG_UID_0


@pytest.mark.parametrize("world", [{"timeout_ms": 200}], indirect=True)
def test_silent_daemon_gives_enotavail_within_the_bound(world) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    daemon.mode[1] = "silent"
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID, 1, 2, 3, 4, 5, 6, 7)) == UNAVAILABLE_REGS
    assert UNAVAILABLE_REGS == regs(OPTEE_SMC_RETURN_ENOTAVAIL)
    st = platform.placement.statistics(1)
    assert (st.timeouts, st.responses) == (1, 0)
    # the daemon wakes up and answers late: that answer is dropped, the next call works
    daemon.mode[1] = "serve"
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID))[0] == OPTEE_MSG_UID_0
    assert platform.placement.statistics(1).dropped == 1


@pytest.mark.parametrize("world", [{"timeout_ms": 200}], indirect=True)
def test_silent_daemon_fails_a_std_call_cleanly_in_the_guest(world) -> None:
    platform, daemon = world
    domain = platform.create_domain(DomainSpec(1, nr_pages=256))
    driver = OpteeDriver(platform.trap_entry(1), domain, seed=1, supplicant=Supplicant())  # it loads the REE TA
    driver.probe()
    with Context(driver) as ctx:
        workloads.increment(ctx, 1)  # the argument page is registered now
        daemon.mode[1] = "silent"
        # the yielding call gets a0 = ENOTAVAIL: Linux's TEEC_ERROR_COMMUNICATION
        result = driver.open_session(INCREMENT_UUID)
        assert (result.ret, result.ret_origin) == (TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS)
        daemon.mode[1] = "serve"
        assert workloads.increment(ctx, 2) == 3
    driver.shutdown()
    assert platform.placement.statistics(1).timeouts == 1


def test_daemon_death_is_enotavail_at_once_not_a_timeout(world) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    daemon.mode[1] = "die"
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID)) == UNAVAILABLE_REGS
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID)) == UNAVAILABLE_REGS  # nobody listens any more
    st = platform.placement.statistics(1)
    assert (st.timeouts, st.unavailable) == (0, 2)


def test_backend_status_error_is_enotavail(world) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    daemon.mode[1] = "status"
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID)) == UNAVAILABLE_REGS
    assert platform.placement.statistics(1).backend_errors == 1


def test_restarted_backend_is_reconnected(world, tmp_path: Path) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID))[0] == OPTEE_MSG_UID_0
    # the backend dies; a new one attaches the same ring and replaces the listener
    old = daemon.backends[1]
    daemon.mode[1] = "die"
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID)) == UNAVAILABLE_REGS
    old.join()
    old.ring.close()
    old.listener.close()
    ring = BackRing.attach(tmp_path / "dom1" / RING_FILE)
    listener = EventChannelListener(tmp_path / "dom1" / EVTCHN_FILE, replace=True)
    served = []

    def serve_one() -> None:
        # BackRing.attach takes again the request the dead backend took but
        # never answered: answer it too (the frontend drops it), then ours.
        chan = listener.accept(timeout=10)
        while len(served) < 2:
            req = ring.pop()
            if req is None:
                if not ring.final_check():
                    chan.wait(10)
                continue
            served.append(req)
            if ring.push(Response(req.id, 0, 0, daemon.mediator.handle_call(1, req.vcpu, req.a))):
                chan.notify()
        chan.close()

    t = threading.Thread(target=serve_one)
    t.start()
    assert platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID))[0] == OPTEE_MSG_UID_0
    t.join()
    st = platform.placement.statistics(1)
    assert (st.reconnects, st.dropped) == (1, 1)
    ring.close()
    listener.close()
    # put a serving backend back for teardown
    daemon.backends.pop(1)
    daemon.mediator.relinquish_resources(1)
    daemon.mediator.domain_teardown(1)
    daemon.refuse["domain_destroy"] = (3, "NO_SUCH_DOMAIN")
    platform.destroy_domain(1)


def test_policy_refusal_fails_creation_and_leaves_nothing(world) -> None:
    platform, daemon = world
    daemon.refuse["domain_create"] = (6, "POLICY_REFUSED")
    with pytest.raises(DomainCreationFailed, match="POLICY_REFUSED"):
        platform.create_domain(DomainSpec(1, nr_pages=256))
    assert platform.placement.gate.assigned() == frozenset()
    assert 1 not in platform.machine.domains()
    with pytest.raises(UnknownDomain):
        platform.trap(1, 0, regs(OPTEE_SMC_CALLS_UID))


def test_ring_outside_the_domain_directory_is_refused(world, tmp_path: Path) -> None:
    platform, daemon = world
    daemon.answer_override["domain_create"] = {"domid": 1, "dir": str(tmp_path), "ring": "/etc/passwd",
                                               "evtchn": str(tmp_path / "dom1" / EVTCHN_FILE), "ring_pages": 1}
    with pytest.raises(DomainCreationFailed, match="expected"):
        platform.create_domain(DomainSpec(1, nr_pages=256))
    assert platform.placement.gate.assigned() == frozenset()
    assert 1 not in daemon.backends  # the daemon was asked to destroy it again


def test_daemon_gone_at_destroy_platform_sends_vm_destroyed(world) -> None:
    platform, daemon = world
    platform.create_domain(DomainSpec(1, nr_pages=256))
    daemon.refuse["domain_destroy"] = (3, "NO_SUCH_DOMAIN")  # e.g. a restarted daemon lost it
    backend = daemon.backends.pop(1)
    backend.close()
    while not daemon.mediator.relinquish_resources(1):
        pass
    daemon.mediator._domains.pop(1)  # forget it without VM_DESTROYED
    platform.destroy_domain(1)
    assert platform.placement.fallback_destroys == 1
    # the partition is gone: client 2 can be created again
    assert platform.tee.smc(regs(OPTEE_SMC_VM_CREATED, 2))[0] == 0
    platform.tee.smc(regs(OPTEE_SMC_VM_DESTROYED, 2))  # and gone again, for a clean end
