"""The SMC gate served by a waiting vCPU thread (docs/smc-gate.md, "Who
serves the gate ring"): a real Gate thread, the real OP-TEE model, a raw
stub domain on the real ring and event channel, and the test's own thread
as the vCPU that waits for its answer and serves the gate meanwhile
(Gate.waiter_enter / waiter_spin / waiter_serve / waiter_leave).

What a push returns is the io/ring.h notify decision the stub domain makes,
so each test can say whether the gate thread was asked to wake: while a
waiter spins nobody is; once the last one left, the gate thread is again."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from ring import EVTCHN_FILE, RING_FILE, BackRing, EventChannel, FrontRing, Request
from stubdom.optee import (
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
)
from stubdom.platform import Gate
from stubdom.public import GATE_OP_HYP, GATE_OP_SMC, gate_dir
from stubdom.tee import IsolationOracle, OpteeModel, TeeConfig
from stubdom.xen import Machine
from stubdom.xen.constants import DOMID_FIRST_RESERVED
from test_gate import SpyTee, regs

EPERM, EINVAL, ENOENT = -errno.EPERM, -errno.EINVAL, -errno.ENOENT
ZERO = (0,) * 8
PSCI_VERSION = 0x84000000  # SMCCC owner 4: not the TEE's
LONG_S = 30.0  # a bound no passing test comes near: only a hang reaches it


@pytest.fixture
def machine(tmp_path: Path):
    m = Machine.create(tmp_path / "machine", nr_frames=16384)
    for domid in (1, 2):
        m.create_domain(domid, nr_pages=16)
    yield m
    m.close()


@pytest.fixture
def spy(machine):
    return SpyTee(OpteeModel(machine, TeeConfig(), IsolationOracle(machine)))


@pytest.fixture
def gate(tmp_path: Path, machine, spy):
    g = Gate(tmp_path, spy, domain_exists=lambda d: d in machine.domains())
    g.start()
    yield g
    g.close()


@pytest.fixture
def vcpu_ring(tmp_path: Path):
    """The waiting vCPU's own teeif ring (its frontend): nothing arrives on it."""
    back = BackRing.create(tmp_path / "dom1-ring")
    front = FrontRing.attach(tmp_path / "dom1-ring")
    yield front
    front.close()
    back.close()


def _until(cond, what: str) -> None:
    """Wait for another thread to get somewhere (bounded only against a hang)."""
    end = time.monotonic() + LONG_S
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


def _stub_domain(gate: Gate, runtime: Path) -> tuple[FrontRing, EventChannel]:
    """A raw stub domain: connect, wait for the welcome, attach; returns once
    the gate thread has done its final check and sleeps on the channel."""
    sleeps = gate._ring.statistics().sleeps
    chan = EventChannel.connect(gate_dir(runtime) / EVTCHN_FILE)
    assert chan.wait(LONG_S) >= 1
    _until(lambda: gate._ring.statistics().sleeps > sleeps, "the gate thread armed req_event and slept")
    return FrontRing.attach(gate_dir(runtime) / RING_FILE), chan


def _by_gate_thread(gate: Gate, ring: FrontRing, chan: EventChannel, req: Request):
    """Push, notify as the ring says, wait for the answer (the daemon's side);
    returns once the gate thread has armed req_event again and sleeps."""
    sleeps = gate._ring.statistics().sleeps
    if ring.push(req):
        chan.notify()
    while True:
        rsp = ring.pop()
        if rsp is not None:
            break
        if not ring.final_check():
            assert chan.wait(LONG_S) >= 1
    _until(lambda: gate._ring.statistics().sleeps > sleeps, "the gate thread armed req_event and slept")
    return rsp


def _by_waiter(gate: Gate, vcpu: FrontRing, ring: FrontRing, req: Request):
    """The same request while a vCPU thread waits: it must need no notification,
    and the waiter answers it."""
    assert gate.waiter_spin(vcpu, 0) == (False, False)  # the waiter looks first: the gate thread sleeps
    assert ring.push(req) is False  # a waiter spins on the ring: nobody needs waking
    assert gate.waiter_spin(vcpu, int(LONG_S * 1e9)) == (False, True)
    assert gate.waiter_serve() is True
    rsp = ring.pop()
    assert rsp is not None and ring.pop() is None
    return rsp


def _counts(gate: Gate) -> tuple[dict, dict, int, int, int]:
    st = gate.statistics()
    return dict(st.calls), dict(st.refusals), st.batches, st.waiter_batches, st.wakeups


def _delta(after, before) -> tuple:
    calls = {k: v - before[0].get(k, 0) for k, v in after[0].items() if v != before[0].get(k, 0)}
    refusals = {k: v - before[1].get(k, 0) for k, v in after[1].items() if v != before[1].get(k, 0)}
    return calls, refusals, after[2] - before[2], after[3] - before[3]


# Every kind of answer the gate gives: admitted (a7 stamped whatever was
# sent), and each refusal of docs/smc-gate.md.
CASES = [
    (GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, 99)),  # admitted, a7 99 ignored
    (GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID, 0, 0, 0, 0, 0, 0, 5)),  # a probe, a7 := 0
    (GATE_OP_SMC, 2, regs(OPTEE_SMC_GET_THREAD_COUNT)),  # exists, not assigned: EPERM
    (GATE_OP_SMC, 7, regs(OPTEE_SMC_GET_THREAD_COUNT)),  # no such domain: ENOENT
    (GATE_OP_SMC, DOMID_FIRST_RESERVED, regs(OPTEE_SMC_GET_THREAD_COUNT)),  # reserved: EINVAL
    (GATE_OP_SMC, 1, regs(PSCI_VERSION)),  # not the secure OS: EPERM
    (GATE_OP_HYP, 2, regs(OPTEE_SMC_VM_DESTROYED, 3)),  # not assigned: EPERM
    (GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_DESTROYED, 3)),  # a1 names another client: EPERM
    (9, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)),  # unknown op: EINVAL
]
EXPECTED_STATUS = [0, 0, EPERM, ENOENT, EINVAL, EPERM, EPERM, EPERM, EINVAL]


def test_a_waiter_checks_stamps_and_counts_exactly_as_the_gate_thread(tmp_path: Path, gate, spy,
                                                                        vcpu_ring) -> None:
    gate.assign(1)
    ring, chan = _stub_domain(gate, tmp_path)
    created = _by_gate_thread(gate, ring, chan, Request(1, 1, GATE_OP_HYP, regs(OPTEE_SMC_VM_CREATED, 2)))
    assert (created.status, created.a) == (0, regs(0, 2))

    answers = {}
    deltas = {}
    seen = {}
    for path in ("gate thread", "waiter"):
        before, n_seen = _counts(gate), len(spy.seen)
        if path == "waiter":
            assert gate.waiter_enter()
        got = []
        for i, (op, domid, r) in enumerate(CASES):
            req = Request(100 + i, domid, op, r)
            got.append(_by_waiter(gate, vcpu_ring, ring, req) if path == "waiter"
                       else _by_gate_thread(gate, ring, chan, req))
        if path == "waiter":
            gate.waiter_leave()
        assert [r.id for r in got] == [100 + i for i in range(len(CASES))]
        answers[path] = [(r.status, r.a) for r in got]
        deltas[path] = _delta(_counts(gate), before)
        seen[path] = spy.seen[n_seen:]

    assert [s for s, _ in answers["waiter"]] == EXPECTED_STATUS
    assert answers["waiter"] == answers["gate thread"]
    for status, a in answers["waiter"]:
        if status:
            assert a == ZERO  # a refusal leaves nothing behind
    # the TEE saw the same registers, a7 chosen by the gate: domid + 1, 0 for the probe
    assert seen["waiter"] == seen["gate thread"]
    assert [r[7] for r in seen["waiter"]] == [2, 0]
    calls_w, refusals_w, batches_w, waiter_w = deltas["waiter"]
    calls_g, refusals_g, batches_g, waiter_g = deltas["gate thread"]
    assert (calls_w, refusals_w) == (calls_g, refusals_g)
    assert refusals_w == {(2, "EPERM"): 2, (7, "ENOENT"): 1, (DOMID_FIRST_RESERVED, "EINVAL"): 1,
                          (1, "EPERM"): 2, (1, "EINVAL"): 1}
    assert (batches_g, waiter_g) == (len(CASES), 0)  # one batch per request, none by a waiter
    assert (batches_w, waiter_w) == (len(CASES), len(CASES))  # every one answered by the waiter
    ring.close()
    chan.close()


def test_the_gate_thread_serves_again_once_the_last_waiter_left(tmp_path: Path, gate, vcpu_ring) -> None:
    gate.assign(1)
    ring, chan = _stub_domain(gate, tmp_path)
    assert gate.waiter_enter() and gate.waiter_enter()  # two vCPUs wait
    _by_waiter(gate, vcpu_ring, ring, Request(1, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
    gate.waiter_leave()
    # one still spins: still nobody to notify
    _by_waiter(gate, vcpu_ring, ring, Request(2, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
    gate.waiter_leave()
    # The last one left: it did the final check, so the stub domain's next
    # push must notify, and the gate thread (asleep all along) answers.
    wakeups = gate.statistics().wakeups
    assert ring.push(Request(3, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT))) is True
    chan.notify()
    rsp = None
    while rsp is None:
        rsp = ring.pop()
        if rsp is None and not ring.final_check():
            assert chan.wait(LONG_S) >= 1
    assert (rsp.id, rsp.status) == (3, 0)
    st = gate.statistics()
    assert (st.batches, st.waiter_batches) == (3, 2)
    assert st.wakeups == wakeups + 1
    ring.close()
    chan.close()


def test_what_arrived_while_the_last_waiter_stopped_spinning_is_answered_at_its_leave(
        tmp_path: Path, gate, vcpu_ring) -> None:
    gate.assign(1)
    ring, chan = _stub_domain(gate, tmp_path)
    assert gate.waiter_enter()
    assert gate.waiter_spin(vcpu_ring, 0) == (False, False)  # holds the notifications off
    # The request lands after the waiter's last look and needs no notification;
    # the gate thread sleeps. The waiter's leave finds it in the final check.
    assert ring.push(Request(5, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT))) is False
    gate.waiter_leave()
    rsp = ring.pop()
    assert rsp is not None and (rsp.id, rsp.status) == (5, 0)
    assert gate.statistics().waiter_batches == 1
    ring.close()
    chan.close()


def test_no_waiter_without_a_stub_domain(gate, vcpu_ring) -> None:
    # nobody to serve: the vCPU just waits on its own ring
    assert gate.waiter_enter() is False
    assert gate.waiter_spin(vcpu_ring, 0) == (False, False)
    assert gate.waiter_serve() is False


def test_a_daemon_killed_while_a_waiter_spins_is_answered_at_reattach(tmp_path: Path, gate, spy,
                                                                      vcpu_ring) -> None:
    gate.assign(1)
    ring, chan = _stub_domain(gate, tmp_path)
    assert gate.waiter_enter()
    assert gate.waiter_spin(vcpu_ring, 0) == (False, False)
    # the stub domain pushes a hypercall (nobody needs notifying) and dies
    assert ring.push(Request(7, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, 42))) is False
    ring.close()
    chan.close()
    n_seen = len(spy.seen)
    _until(lambda: gate._chan is None, "the gate thread saw the end-of-file")
    assert gate.waiter_serve() is False  # no stub domain served: the waiter leaves the ring alone
    gate.waiter_leave()  # nor does it arm it
    assert spy.seen[n_seen:] == []
    # Its successor attaches only after the gate answered what it left.
    chan2 = EventChannel.connect(gate_dir(tmp_path) / EVTCHN_FILE)
    assert chan2.wait(LONG_S) >= 1
    ring2 = FrontRing.attach(gate_dir(tmp_path) / RING_FILE)
    assert ring2.in_flight == 0
    answered = spy.seen[n_seen:]
    assert [r[0] for r in answered] == [OPTEE_SMC_GET_THREAD_COUNT] and answered[0][7] == 2
    st = gate.statistics()
    assert dict(st.calls)[(1, GATE_OP_SMC)] == 1
    assert st.waiter_batches == 0  # the gate thread answered it, at the re-attach
    ring2.close()
    chan2.close()


def test_a_waiter_leaves_a_corrupted_ring_to_the_gate_thread(tmp_path: Path, gate, vcpu_ring) -> None:
    gate.assign(1)
    ring, chan = _stub_domain(gate, tmp_path)
    old = gate._ring
    assert gate.waiter_enter()
    ring._c.sring.req_prod = ring._c.req_prod_pvt + ring.size + 5  # more requests than slots
    assert gate.waiter_spin(vcpu_ring, 0) == (False, True)  # work, as far as the spin can tell
    assert gate.waiter_serve() is False  # the pop refused it, and woke the gate thread
    gate.waiter_leave()
    # the gate thread finds it too: it disconnects the stub domain and replaces the ring
    _until(lambda: gate._ring is not old and gate._chan is None, "the ring was replaced")
    assert gate.statistics().waiter_batches == 0
    ring.close()
    chan.close()
    # and serves the next stub domain, waiters included
    ring2, chan2 = _stub_domain(gate, tmp_path)
    assert gate.waiter_enter()
    rsp = _by_waiter(gate, vcpu_ring, ring2, Request(8, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
    assert (rsp.id, rsp.status) == (8, 0)
    gate.waiter_leave()
    ring2.close()
    chan2.close()
