"""The SMC gate: a real Gate thread in front of the real OP-TEE model, driven
through the real ring and event channel by a raw GateClient (the daemon's
side), which puts whatever it likes into a7 and the domid field."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from gate_support import gate_machine, optee_model, serving_gate
from ring import EVTCHN_FILE, RING_FILE, EventChannel, FrontRing, Request
from stubdom.optee import (
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
)
from stubdom.platform import Gate
from stubdom.public import (
    GATE_OP_HYP,
    GATE_OP_SMC,
    GateBusy,
    GateClient,
    GateClosed,
    GateNotRunning,
    GateTimeout,
    gate_dir,
)
from stubdom.tee import OpteeModel, TeeConfig

EPERM, EINVAL, ENOENT = -errno.EPERM, -errno.EINVAL, -errno.ENOENT
ZERO = (0,) * 8
PSCI_VERSION = 0x84000000  # SMCCC owner 4 (standard secure service): not the TEE's
THREADS = TeeConfig().threads_per_guest


def regs(*values: int) -> tuple[int, ...]:
    return tuple(values) + (0,) * (8 - len(values))


class SpyTee:
    """The real OP-TEE model; records the registers each SMC reached it with,
    and can hold SMCs back (a slow secure world)."""

    def __init__(self, tee: OpteeModel) -> None:
        self.tee = tee
        self.seen: list[tuple[int, ...]] = []
        self.release = threading.Event()
        self.release.set()

    def smc(self, r):
        self.release.wait()
        self.seen.append(tuple(r))
        return self.tee.smc(r)


@pytest.fixture
def machine(tmp_path: Path):
    with gate_machine(tmp_path) as m:
        yield m


@pytest.fixture
def spy(machine):
    return SpyTee(optee_model(machine))


@pytest.fixture
def gate(tmp_path: Path, machine, spy):
    with serving_gate(tmp_path, machine, spy, spy.release.set) as g:
        yield g


@pytest.fixture
def client(tmp_path: Path, gate):
    c = GateClient(tmp_path, timeout=10.0)
    yield c
    c.close()


def created(gate, client, domid: int) -> None:
    gate.assign(domid)
    assert client.call(GATE_OP_HYP, domid, regs(OPTEE_SMC_VM_CREATED, domid + 1)) == (0, regs(0, domid + 1))


def test_files_live_under_xen_gate(tmp_path: Path, gate) -> None:
    assert gate_dir(tmp_path) == tmp_path / "xen" / "gate"
    assert (tmp_path / "xen" / "gate" / RING_FILE).stat().st_size == 4096
    assert (tmp_path / "xen" / "gate" / EVTCHN_FILE).is_socket()


def test_smc_for_unassigned_domid_is_eperm_and_never_reaches_the_tee(gate, client, spy) -> None:
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT, 5, 6, 7, 8, 9, 10, 2)) == (EPERM, ZERO)
    assert spy.seen == []


def test_smc_for_a_domain_that_does_not_exist_is_enoent(gate, client, spy) -> None:
    assert client.call(GATE_OP_SMC, 7, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (ENOENT, ZERO)
    assert client.call(GATE_OP_HYP, 7, regs(OPTEE_SMC_VM_CREATED, 8)) == (ENOENT, ZERO)
    assert spy.seen == []


def test_reserved_domid_and_unknown_op_are_einval(gate, client, spy) -> None:
    assert client.call(GATE_OP_SMC, 0x7FF0, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EINVAL, ZERO)
    assert client.call(GATE_OP_SMC, 0xFFFFFFFF, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EINVAL, ZERO)
    gate.assign(1)
    for op in (0, 3, 0xFFFFFFFF):
        assert client.call(op, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EINVAL, ZERO)
    assert spy.seen == []


@pytest.mark.parametrize("daemon_a7", [0, 1, 3, 0xFFFF, 2**64 - 1])
def test_smc_stamps_a7_whatever_the_daemon_sent(gate, client, spy, daemon_a7: int) -> None:
    created(gate, client, 1)
    created(gate, client, 2)
    spy.seen.clear()
    status, out = client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, daemon_a7))
    # Client 2 (domid 1) has a partition: the TEE answered for it (a7 as it
    # saw it comes back: the mediator, not the gate, chooses what a guest sees).
    assert (status, out) == (0, regs(0, THREADS, 0, 0, 0, 0, 0, 2))
    assert spy.seen == [regs(OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, 2)]


def test_smc_passes_a0_to_a6_untouched(gate, client, spy) -> None:
    created(gate, client, 2)
    spy.seen.clear()
    sent = (OPTEE_SMC_CALL_WITH_ARG, 0, 0x1000, 3, 4, 5, 6, 0)
    client.call(GATE_OP_SMC, 2, sent)
    assert spy.seen == [sent[:7] + (3,)]


def test_smc_outside_the_trusted_os_range_is_eperm(gate, client, spy) -> None:
    gate.assign(1)
    assert client.call(GATE_OP_SMC, 1, regs(PSCI_VERSION)) == (EPERM, ZERO)
    assert spy.seen == []


@pytest.mark.parametrize("fid", [OPTEE_SMC_CALLS_UID, OPTEE_SMC_CALLS_REVISION, OPTEE_SMC_CALL_GET_OS_REVISION,
                                 OPTEE_SMC_GET_THREAD_COUNT, OPTEE_SMC_EXCHANGE_CAPABILITIES])
def test_hyp_probes_are_allowed_with_a7_zero(gate, client, spy, fid: int) -> None:
    status, out = client.call(GATE_OP_HYP, 0, regs(fid, 0, 0, 0, 0, 0, 0, 0x55))
    assert status == 0
    assert spy.seen == [regs(fid)]
    assert out == spy.tee.smc(regs(fid))


def test_hyp_calls_uid_answers_the_optee_uid(gate, client) -> None:
    status, out = client.call(GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID))
    assert (status, out[:4]) == (0, (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3))


@pytest.mark.parametrize("fid", [OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_GET_SHM_CONFIG, OPTEE_SMC_ENABLE_SHM_CACHE,
                                 OPTEE_SMC_DISABLE_SHM_CACHE, PSCI_VERSION, OPTEE_SMC_CALLS_UID | 1 << 32])
def test_hyp_outside_the_allow_list_is_eperm(gate, client, spy, fid: int) -> None:
    gate.assign(1)
    assert client.call(GATE_OP_HYP, 1, regs(fid, 2)) == (EPERM, ZERO)
    assert spy.seen == []


def test_vm_created_and_destroyed_only_for_an_assigned_domain_named_twice(gate, client, spy) -> None:
    assert client.call(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_CREATED, 2)) == (EPERM, ZERO)  # not assigned
    gate.assign(1)
    assert client.call(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_CREATED, 3)) == (EPERM, ZERO)  # a1 names d2
    assert client.call(GATE_OP_HYP, 2, regs(OPTEE_SMC_VM_CREATED, 2)) == (EPERM, ZERO)  # vcpu names d2
    assert spy.seen == []
    assert client.call(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_CREATED, 2, 0, 0, 0, 0, 0, 9)) == (0, regs(0, 2))
    assert spy.seen == [regs(OPTEE_SMC_VM_CREATED, 2)]  # a7 = 0: the hypervisor
    assert client.call(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_DESTROYED, 2))[0] == 0
    gate.unassign(1)
    assert client.call(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_DESTROYED, 2)) == (EPERM, ZERO)


def test_unassign_takes_the_domain_back(gate, client) -> None:
    created(gate, client, 1)
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))[0] == 0
    gate.unassign(1)
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EPERM, ZERO)


def test_unassign_waits_for_a_hypercall_of_the_domain_still_in_the_tee(gate, client, spy) -> None:
    created(gate, client, 1)
    spy.release.clear()  # the secure world holds the next SMC
    held = threading.Thread(target=client.call, args=(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)))
    held.start()
    deadline = time.monotonic() + 10.0
    while not gate._table.in_tee(1):
        assert time.monotonic() < deadline, "the hypercall never reached the TEE"
        time.sleep(0.001)
    unassigned = threading.Event()
    taker = threading.Thread(target=lambda: (gate.unassign(1), unassigned.set()))
    taker.start()
    # unassign must not return while the hypercall it admitted is in the TEE
    assert not unassigned.wait(0.05)
    spy.release.set()
    held.join()
    taker.join()
    assert unassigned.is_set()
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EPERM, ZERO)


def test_statistics_count_per_domid_and_op_and_refusals(gate, client) -> None:
    created(gate, client, 1)
    client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))
    client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))
    client.call(GATE_OP_SMC, 2, regs(OPTEE_SMC_GET_THREAD_COUNT))  # EPERM
    client.call(GATE_OP_SMC, 9, regs(OPTEE_SMC_GET_THREAD_COUNT))  # ENOENT
    client.call(GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID))
    client.call(7, 1, regs(OPTEE_SMC_CALLS_UID))  # EINVAL
    st = gate.statistics()
    assert dict(st.calls) == {(1, GATE_OP_HYP): 1, (1, GATE_OP_SMC): 2, (2, GATE_OP_SMC): 1,
                              (9, GATE_OP_SMC): 1, (0, GATE_OP_HYP): 1, (1, 7): 1}
    assert dict(st.refusals) == {(2, "EPERM"): 1, (9, "ENOENT"): 1, (1, "EINVAL"): 1}
    assert st.assigned == frozenset({1})
    assert st.connections == 1
    assert st.as_dict()["calls"]["d1/op1"] == 2


def _raw_daemon(runtime: Path) -> tuple[FrontRing, EventChannel]:
    """A daemon without GateClient: connect, wait for the welcome, attach."""
    chan = EventChannel.connect(gate_dir(runtime) / EVTCHN_FILE)
    assert chan.wait(10.0) >= 1
    return FrontRing.attach(gate_dir(runtime) / RING_FILE), chan


def test_requests_pushed_together_are_answered_one_by_one_in_order(tmp_path: Path, gate) -> None:
    gate.assign(1)
    ring, chan = _raw_daemon(tmp_path)
    reqs = [Request(100 + i, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)) for i in range(8)]
    assert ring.push_batch(reqs)  # the gate sleeps on a fresh ring: notify
    chan.notify()
    got = []
    while len(got) < 8:
        got += ring.pop_batch()
        if len(got) < 8 and not ring.final_check():
            chan.wait(10.0)
    assert [r.id for r in got] == list(range(100, 108))
    st = gate.statistics()
    # the C path pops one request and pushes its answer before the next: one
    # pop and one notify decision per request (the first one notifies: the
    # daemon's ring asked to be woken by the first answer)
    assert st.batches == 8
    assert st.notifications_sent + st.notifications_suppressed == 8
    assert st.notifications_sent >= 1
    # domain 1 has no partition: each SMC reached OP-TEE with client 2, which said ENOTAVAIL
    assert {r.a[0] for r in got} == {7}
    ring.close()
    chan.close()


def test_gate_survives_the_daemon_and_serves_its_successor(tmp_path: Path, gate) -> None:
    created_by_first = GateClient(tmp_path, timeout=10.0)
    created(gate, created_by_first, 1)
    # the first daemon dies with a request in flight
    ring, chan = _raw_daemon_after(created_by_first, tmp_path)
    ring.push(Request(1, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
    chan.notify()
    ring.close()
    chan.close()
    second = GateClient(tmp_path, timeout=10.0)
    try:
        assert second.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (0, regs(0, THREADS, *[0] * 5, 2))
        assert second.statistics().dropped == 0
    finally:
        second.close()
    assert gate.statistics().connections == 3  # GateClient, the raw daemon, GateClient
    assert dict(gate.statistics().calls)[(1, GATE_OP_SMC)] == 2  # the orphan was answered too


def _raw_daemon_after(client: GateClient, runtime: Path) -> tuple[FrontRing, EventChannel]:
    client.close()
    return _raw_daemon(runtime)


def test_a_second_stub_domain_is_not_accepted_while_one_is_served(tmp_path: Path, client) -> None:
    with pytest.raises(GateNotRunning, match="serves another stub domain"):
        GateClient(tmp_path, timeout=0.2)


def test_no_gate_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GateNotRunning) as e:
        GateClient(tmp_path / "nowhere")
    assert str(e.value) == (f"no SMC gate at {tmp_path}/nowhere/xen/gate/evtchn (no such socket): start the "
                            f"platform first with `stubdom-teed platform --config <file>`")


def test_a_silent_platform_is_a_timeout_and_the_late_answer_is_dropped(gate, client, spy) -> None:
    created(gate, client, 1)
    spy.release.clear()
    with pytest.raises(GateTimeout, match="no answer within 0.1 s"):
        client._timeout = 0.1  # only this call
        client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))
    client._timeout = 10.0
    spy.release.set()
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_CALLS_UID))[1][0] == OPTEE_MSG_UID_0
    st = client.statistics()
    assert (st.timeouts, st.dropped) == (1, 1)


def test_closed_gate_is_gate_closed_for_the_daemon(tmp_path: Path, gate, client) -> None:
    gate.close()
    with pytest.raises(GateClosed):
        client.call(GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID))
    assert not (gate_dir(tmp_path) / RING_FILE).exists()
    assert not (gate_dir(tmp_path) / EVTCHN_FILE).exists()


def test_second_gate_in_a_live_runtime_dir_is_refused(tmp_path: Path, gate, spy) -> None:
    with pytest.raises(GateBusy):
        Gate(tmp_path, spy, domain_exists=lambda d: True)


def test_stale_gate_files_of_a_dead_platform_are_replaced(tmp_path: Path, spy) -> None:
    d = gate_dir(tmp_path)
    d.mkdir(parents=True)
    (d / RING_FILE).write_bytes(b"\xff" * 4096)
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(d / EVTCHN_FILE))
    s.close()  # a socket file nobody listens on
    with Gate(tmp_path, spy, domain_exists=lambda d: True) as g, GateClient(tmp_path, timeout=10.0) as c:
        assert c.call(GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID))[0] == 0
        assert g.statistics().connections == 1


def test_polling_gate_and_client_answer_the_same(tmp_path: Path, machine, spy) -> None:
    with Gate(tmp_path, spy, domain_exists=lambda d: True, poll_window_ns=200_000) as g, \
            GateClient(tmp_path, poll_window_ns=200_000, timeout=10.0) as c:
        g.assign(1)
        assert c.call(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_CREATED, 2)) == (0, regs(0, 2))
        for _ in range(20):
            assert c.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (0, regs(0, THREADS, *[0] * 5, 2))
