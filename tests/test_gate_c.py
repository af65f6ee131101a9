"""The SMC gate's hypercall path in C (cffi_build/teeif_gate.c, ring.GateTable)
through the real Gate: its ABI values against the Python ones, every
refusal, the client ID it stamps, unassign against a hypercall in the TEE,
a stub domain that breaks the ring, a TEE model that fails, and the
statistics. The gate is driven by a GateClient or by a raw front ring and
channel (the daemon's side), which put whatever they like on the ring."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import threading
import time
from pathlib import Path

import pytest

from gate_support import gate_machine, optee_model, serving_gate
from ring import (
    EVTCHN_FILE,
    GATE_ADMIT,
    GATE_REFUSE,
    GATE_UNASSIGNED,
    RING_FILE,
    BackRing,
    EventChannel,
    FrontRing,
    GateRegistersInvalid,
    GateTable,
    PeerDied,
    Request,
)
from ring._lib import lib
from stubdom.optee import (
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    smccc,
)
from stubdom.platform import Gate
from stubdom.public import GATE_OP_HYP, GATE_OP_SMC, GateClient, gate_dir
from stubdom.public import gate as gate_abi
from stubdom.tee import OpteeModel
from stubdom.xen.constants import DOMID_FIRST_RESERVED

EPERM, EINVAL, ENOENT = -errno.EPERM, -errno.EINVAL, -errno.ENOENT
ZERO = (0,) * 8
HANG_GUARD_S = 30.0  # only ever reached when something hangs
GATE_LOG = "stubdom.platform.gate"


def regs(*values: int) -> tuple[int, ...]:
    return tuple(values) + (0,) * (8 - len(values))


def fid(owner: int, number: int = 0) -> int:
    """A fast SMC64 function ID of ``owner``."""
    return smccc.smccc_call_val(True, True, owner, number)


class HeldTee:
    """The real OP-TEE model, recording what reached it; ``hold()`` makes the
    next SMC wait in the TEE until ``let_go()`` (a slow secure world), with
    ``entered`` set once it is there."""

    def __init__(self, tee: OpteeModel) -> None:
        self.tee = tee
        self.seen: list[tuple[int, ...]] = []
        self.entered = threading.Event()
        self._go = threading.Event()
        self._go.set()

    def hold(self) -> None:
        self.entered.clear()
        self._go.clear()

    def let_go(self) -> None:
        self._go.set()

    def smc(self, r):
        self.seen.append(tuple(r))
        self.entered.set()
        assert self._go.wait(HANG_GUARD_S)
        return self.tee.smc(r)


@pytest.fixture
def machine(tmp_path: Path):
    with gate_machine(tmp_path) as m:
        yield m


@pytest.fixture
def tee(machine):
    return HeldTee(optee_model(machine))


@pytest.fixture
def gate(tmp_path: Path, machine, tee):
    with serving_gate(tmp_path, machine, tee, tee.let_go) as g:
        yield g


@pytest.fixture
def client(tmp_path: Path, gate):
    c = GateClient(tmp_path, timeout=HANG_GUARD_S)
    yield c
    c.close()


def _in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    return t, out


def _until(cond, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


# -- the C values are the Python ones ---------------------------------------------------------------

def test_the_c_gate_abi_values_are_the_python_ones() -> None:
    assert (lib.TEEIF_GATE_OP_SMC, lib.TEEIF_GATE_OP_HYP) == (gate_abi.GATE_OP_SMC, gate_abi.GATE_OP_HYP)
    assert (lib.TEEIF_GATE_EPERM, lib.TEEIF_GATE_EINVAL) == (gate_abi.GATE_EPERM, gate_abi.GATE_EINVAL)
    assert lib.TEEIF_GATE_HYP_CLIENT_ID == gate_abi.HYP_CLIENT_ID
    assert lib.TEEIF_GATE_DOMID_FIRST_RESERVED == DOMID_FIRST_RESERVED
    assert (lib.TEEIF_GATE_OWNER_SHIFT, lib.TEEIF_GATE_OWNER_MASK) == (smccc.ARM_SMCCC_OWNER_SHIFT,
                                                                       smccc.ARM_SMCCC_OWNER_MASK)
    assert (lib.TEEIF_GATE_OWNER_FIRST, lib.TEEIF_GATE_OWNER_LAST) == (smccc.ARM_SMCCC_OWNER_TRUSTED_APP,
                                                                       smccc.ARM_SMCCC_OWNER_TRUSTED_OS_END)
    # the allow-lists are passed in: they must fit
    assert max(len(gate_abi.HYP_PROBE_CALLS), len(gate_abi.HYP_DOMAIN_CALLS)) <= lib.TEEIF_GATE_MAX_CALLS


# -- GateTable alone --------------------------------------------------------------------------------

def test_table_refuses_a_reserved_domid_and_too_long_allow_lists() -> None:
    t = GateTable(probes=(), domain_calls=())
    with pytest.raises(ValueError, match="0x7ff0"):
        t.assign(DOMID_FIRST_RESERVED)
    with pytest.raises(ValueError, match="at most 8"):
        GateTable(probes=range(9), domain_calls=())
    with pytest.raises(ValueError, match="uint64"):
        GateTable(probes=(-1,), domain_calls=())


def test_table_judges_and_marks_in_one_step() -> None:
    t = GateTable(probes=(), domain_calls=())
    t.assign(3)
    call = t.judge(Request(9, 3, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT, 1, 2, 3, 4, 5, 6, 77)))
    assert (call.verdict, call.status, call.a) == (GATE_ADMIT, 0, regs(OPTEE_SMC_GET_THREAD_COUNT, 1, 2, 3, 4,
                                                                          5, 6, 4))
    assert t.in_tee(3) and not t.in_tee(4)
    assert t.unassign(3) is True  # taken back with its hypercall still in the TEE
    assert t.judge(Request(10, 3, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT))).verdict == GATE_UNASSIGNED
    t.release()
    assert not t.in_tee(3) and t.unassign(3) is False
    assert t.judge(Request(11, 3, 9, ZERO))[4:] == (GATE_REFUSE, EINVAL)


def test_table_answer_of_a_refusal_carries_no_registers_and_bad_registers_push_nothing(tmp_path: Path) -> None:
    t = GateTable(probes=(), domain_calls=())
    back = BackRing.create(tmp_path / "ring")
    front = FrontRing.attach(tmp_path / "ring")
    try:
        front.push(Request(5, 1, GATE_OP_SMC, regs(1)))
        call = t.next(back, 0, -1)
        assert call is not None and call.verdict == GATE_UNASSIGNED
        with pytest.raises(GateRegistersInvalid) as e:
            t.answer(back, -1, call.id, 0, (1, 2))
        assert e.value.regs == (1, 2)
        assert front.pop() is None
        t.answer(back, -1, call.id, EPERM, (1,) * 8)
        assert tuple(front.pop()) == (5, EPERM, 0, ZERO)
        assert t.next(back, 0, -1) is None  # no channel: an empty ring is the end
        assert t.counters().batches == 1
    finally:
        front.close()
        back.close()


def test_table_answer_next_answers_then_pops_the_next_request(tmp_path: Path) -> None:
    """One call into C between two hypercalls: the answer pushed and the
    next request popped and judged; None once the ring is empty (no channel);
    bad registers push nothing and pop nothing."""
    t = GateTable(probes=(), domain_calls=())
    t.assign(1)
    back = BackRing.create(tmp_path / "ring")
    front = FrontRing.attach(tmp_path / "ring")
    try:
        front.push(Request(5, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
        front.push(Request(6, 2, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
        first = t.next(back, 0, -1)
        assert first is not None and first.verdict == GATE_ADMIT and t.in_tee(1)
        with pytest.raises(GateRegistersInvalid):
            t.answer_next(back, -1, first.id, 0, (1, 2), 0)
        assert front.pop() is None and not t.in_tee(1) and back.unconsumed() == 1
        second = t.answer_next(back, -1, first.id, 0, regs(7), 0)
        assert tuple(front.pop()) == (5, 0, 0, regs(7))
        assert second is not None and (second.id, second.domid, second.verdict) == (6, 2, GATE_UNASSIGNED)
        assert t.answer_next(back, -1, second.id, EPERM, regs(8), 0) is None
        assert tuple(front.pop()) == (6, EPERM, 0, ZERO)
        assert t.counters().batches == 2
    finally:
        front.close()
        back.close()


def test_table_answer_next_stops_for_an_owner_watching_the_mark(tmp_path: Path) -> None:
    """While an owner waits for the in-TEE mark (unassign), the clearing is
    reported in the same step and answer_next pops nothing: the owner is
    woken before the thread waits again."""
    t = GateTable(probes=(), domain_calls=())
    t.assign(1)
    back = BackRing.create(tmp_path / "ring")
    front = FrontRing.attach(tmp_path / "ring")
    try:
        for i in (5, 6):
            front.push(Request(i, 1, GATE_OP_SMC, regs(OPTEE_SMC_GET_THREAD_COUNT)))
        call = t.next(back, 0, -1)
        assert call is not None and t.watching() == 0
        assert t.watch(1) == 1
        assert t.answer_next(back, -1, call.id, 0, regs(1), 0) is None  # answered, nothing popped
        assert tuple(front.pop()) == (5, 0, 0, regs(1)) and back.unconsumed() == 1
        call = t.next(back, 0, -1)
        assert call is not None and call.id == 6
        assert t.answer(back, -1, call.id, 0, regs(2)) is True
        assert t.watch(-1) == 0
        with pytest.raises(ValueError, match="no owner watching"):
            t.watch(-1)
        with pytest.raises(ValueError, match="1 or -1"):
            t.watch(2)
        assert t.release() is False
    finally:
        front.close()
        back.close()


def test_table_next_timed_says_when_it_saw_and_judged_the_request(tmp_path: Path) -> None:
    """For the tracer's "gate pop": C's times, on time.perf_counter_ns's
    clock (CLOCK_MONOTONIC), in order and inside the call."""
    t = GateTable(probes=(), domain_calls=())
    back = BackRing.create(tmp_path / "ring")
    front = FrontRing.attach(tmp_path / "ring")
    try:
        front.push(Request(5, 1, GATE_OP_SMC, regs(1)))
        before = time.perf_counter_ns()
        call = t.next(back, 0, -1, timed=True)
        after = time.perf_counter_ns()
        assert call is not None and call.id == 5
        seen, judged = t.next_times()
        assert before <= seen <= judged <= after
    finally:
        front.close()
        back.close()


# -- every refusal, through the gate ----------------------------------------------------------------

TA = fid(smccc.ARM_SMCCC_OWNER_TRUSTED_APP)

REFUSALS = [
    # (op, domid, registers, status): d1 is assigned, d2 exists and is not, d9 does not exist
    pytest.param(GATE_OP_SMC, DOMID_FIRST_RESERVED, regs(OPTEE_SMC_GET_THREAD_COUNT), EINVAL, id="smc-reserved"),
    pytest.param(GATE_OP_SMC, 0xFFFFFFFF, regs(OPTEE_SMC_GET_THREAD_COUNT), EINVAL, id="smc-u32-max"),
    pytest.param(GATE_OP_SMC, 2, regs(OPTEE_SMC_GET_THREAD_COUNT), EPERM, id="smc-not-assigned"),
    pytest.param(GATE_OP_SMC, 9, regs(OPTEE_SMC_GET_THREAD_COUNT), ENOENT, id="smc-no-such-domain"),
    pytest.param(GATE_OP_SMC, 1, regs(fid(smccc.ARM_SMCCC_OWNER_TRUSTED_APP - 1)), EPERM, id="smc-owner-47"),
    pytest.param(GATE_OP_SMC, 1, regs(fid(smccc.ARM_SMCCC_OWNER_STANDARD)), EPERM, id="smc-psci"),
    pytest.param(GATE_OP_SMC, 1, regs(fid(smccc.ARM_SMCCC_OWNER_SIP)), EPERM, id="smc-sip"),
    pytest.param(GATE_OP_HYP, 1, regs(OPTEE_SMC_CALL_WITH_ARG, 2), EPERM, id="hyp-not-listed"),
    pytest.param(GATE_OP_HYP, 1, regs(OPTEE_SMC_CALLS_UID | 1 << 32, 2), EPERM, id="hyp-high-bits"),
    pytest.param(GATE_OP_HYP, DOMID_FIRST_RESERVED, regs(OPTEE_SMC_VM_CREATED, 0x7FF1), EINVAL,
                 id="hyp-reserved"),
    pytest.param(GATE_OP_HYP, 2, regs(OPTEE_SMC_VM_CREATED, 3), EPERM, id="hyp-not-assigned"),
    pytest.param(GATE_OP_HYP, 9, regs(OPTEE_SMC_VM_DESTROYED, 10), ENOENT, id="hyp-no-such-domain"),
    pytest.param(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_CREATED, 3), EPERM, id="hyp-a1-names-another"),
    pytest.param(GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_DESTROYED, 1), EPERM, id="hyp-a1-domid-not-client-id"),
    pytest.param(0, 1, regs(OPTEE_SMC_GET_THREAD_COUNT), EINVAL, id="op-0"),
    pytest.param(3, 1, regs(OPTEE_SMC_CALLS_UID), EINVAL, id="op-3"),
]


@pytest.mark.parametrize(("op", "domid", "sent", "status"), REFUSALS)
def test_every_refusal_answers_zeros_never_reaches_the_tee_and_is_counted(gate, client, tee, op, domid, sent,
                                                                          status) -> None:
    gate.assign(1)
    assert client.call(op, domid, sent) == (status, ZERO)
    assert tee.seen == []
    st = gate.statistics()
    assert dict(st.refusals) == {(domid, errno.errorcode[-status]): 1}
    assert dict(st.calls) == {(domid, op): 1}


@pytest.mark.parametrize("owner", [smccc.ARM_SMCCC_OWNER_TRUSTED_APP, smccc.ARM_SMCCC_OWNER_TRUSTED_APP_END,
                                   smccc.ARM_SMCCC_OWNER_TRUSTED_OS, smccc.ARM_SMCCC_OWNER_TRUSTED_OS_END])
def test_smc_of_every_trusted_owner_reaches_the_tee(gate, client, tee, owner: int) -> None:
    gate.assign(1)
    a0 = fid(owner, 7) | 0xABCD << 32  # the owner is read from the low 32 bits; the rest goes on untouched
    status, _ = client.call(GATE_OP_SMC, 1, regs(a0, 1, 2, 3, 4, 5, 6, 0))
    assert status == 0
    assert tee.seen == [regs(a0, 1, 2, 3, 4, 5, 6, 2)]


# -- the client ID ------------------------------------------------------------------------------------

@pytest.mark.parametrize("domid", [0, 1, 0x7FEF])
@pytest.mark.parametrize("sent_a7", [0, 5, 0x7FF0, 2**64 - 1])
def test_smc_a7_is_domid_plus_one_whatever_was_sent(gate, client, tee, domid: int, sent_a7: int) -> None:
    gate.assign(domid)
    status, _ = client.call(GATE_OP_SMC, domid, regs(OPTEE_SMC_GET_THREAD_COUNT, 11, 12, 13, 14, 15, 16, sent_a7))
    assert status == 0
    assert tee.seen == [regs(OPTEE_SMC_GET_THREAD_COUNT, 11, 12, 13, 14, 15, 16, domid + 1)]


@pytest.mark.parametrize("domid", [0, 5, DOMID_FIRST_RESERVED, 0xFFFFFFFF])
def test_hyp_probe_is_allowed_for_any_domid_with_a7_the_hypervisors(gate, client, tee, domid: int) -> None:
    status, _ = client.call(GATE_OP_HYP, domid, regs(OPTEE_SMC_CALLS_UID, 1, 2, 3, 4, 5, 6, 0x1234))
    assert status == 0
    assert tee.seen == [regs(OPTEE_SMC_CALLS_UID, 1, 2, 3, 4, 5, 6, gate_abi.HYP_CLIENT_ID)]


def test_hyp_domain_calls_for_an_assigned_domain_carry_a7_the_hypervisors(gate, client, tee) -> None:
    gate.assign(2)
    assert client.call(GATE_OP_HYP, 2, regs(OPTEE_SMC_VM_CREATED, 3, 0, 0, 0, 0, 0, 3))[0] == 0
    assert client.call(GATE_OP_HYP, 2, regs(OPTEE_SMC_VM_DESTROYED, 3, 0, 0, 0, 0, 0, 3))[0] == 0
    assert tee.seen == [regs(OPTEE_SMC_VM_CREATED, 3), regs(OPTEE_SMC_VM_DESTROYED, 3)]


# -- unassign and the hypercall in the TEE ------------------------------------------------------------

def test_unassign_returns_only_once_the_admitted_hypercall_left_the_tee(gate, client, tee) -> None:
    gate.assign(1)
    gate.assign(2)
    tee.hold()
    held, answer = _in_thread(client.call, GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))
    assert tee.entered.wait(HANG_GUARD_S)
    assert gate._table.in_tee(1)
    # another domain is taken back at once
    other, _ = _in_thread(gate.unassign, 2)
    other.join(HANG_GUARD_S)
    assert not other.is_alive()
    taker, _ = _in_thread(gate.unassign, 1)
    _until(lambda: gate._table.watching() == 1, "unassign(1) waits")
    # it waits on the mark, which only the gate's answer clears
    assert taker.is_alive() and gate._table.in_tee(1)
    assert 1 not in gate.assigned()
    tee.let_go()
    held.join(HANG_GUARD_S)
    taker.join(HANG_GUARD_S)
    assert not taker.is_alive() and not gate._table.in_tee(1)
    assert answer[0][0] == 0  # admitted before the unassign: answered
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EPERM, ZERO)
    assert len(tee.seen) == 1


def test_unassign_gives_up_on_a_hypercall_stuck_in_the_tee_with_a_warning(gate, client, tee, caplog) -> None:
    gate.assign(1)
    tee.hold()
    held, _ = _in_thread(client.call, GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))
    assert tee.entered.wait(HANG_GUARD_S)
    with caplog.at_level(logging.WARNING, logger=GATE_LOG):
        gate.unassign(1, timeout=0.01)
    assert [r.getMessage() for r in caplog.records if r.name == GATE_LOG] == [
        "d1: a hypercall for it is still in the TEE after 0 s"]
    tee.let_go()
    held.join(HANG_GUARD_S)


# -- a stub domain that breaks the ring ----------------------------------------------------------------

def _raw_daemon(runtime: Path) -> tuple[FrontRing, EventChannel]:
    chan = EventChannel.connect(gate_dir(runtime) / EVTCHN_FILE)
    assert chan.wait(HANG_GUARD_S) >= 1  # the welcome
    return FrontRing.attach(gate_dir(runtime) / RING_FILE), chan


def _hung_up(chan: EventChannel) -> bool:
    try:
        while True:
            assert chan.wait(HANG_GUARD_S), "the gate neither answered nor hung up"
    except PeerDied:
        return True


def test_a_stub_domain_corrupting_the_ring_is_disconnected_and_the_ring_reset(tmp_path: Path, gate, tee,
                                                                              caplog) -> None:
    gate.assign(1)
    ring, chan = _raw_daemon(tmp_path)
    path = gate_dir(tmp_path) / RING_FILE
    old_inode = path.stat().st_ino
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as page:
        struct.pack_into("<I", page, 0, 1000)  # req_prod: far more than a ring ahead
    with caplog.at_level(logging.ERROR, logger=GATE_LOG):
        chan.notify()
        assert _hung_up(chan)
    assert any("stub domain corrupted the SMC gate ring" in r.getMessage() for r in caplog.records)
    ring.close()
    chan.close()
    assert path.stat().st_ino != old_inode  # a fresh ring file
    with GateClient(tmp_path, timeout=HANG_GUARD_S) as c:
        assert c.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))[0] == 0
    assert tee.seen == [regs(OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, 2)]


def test_a_stub_domain_truncating_the_ring_is_disconnected_and_the_ring_reset(tmp_path: Path, gate) -> None:
    ring, chan = _raw_daemon(tmp_path)
    ring.close()  # the gate's mapping alone is left to fault
    os.truncate(gate_dir(tmp_path) / RING_FILE, 0)
    chan.notify()
    assert _hung_up(chan)
    chan.close()
    assert (gate_dir(tmp_path) / RING_FILE).stat().st_size == 4096
    with GateClient(tmp_path, timeout=HANG_GUARD_S) as c:
        assert c.call(GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID))[0] == 0


# -- a TEE model that fails ------------------------------------------------------------------------------

def test_a_tee_model_raising_or_answering_junk_is_einval_counted_and_the_gate_goes_on(gate, client, tee,
                                                                                      caplog) -> None:
    inner = tee.smc
    answers = iter([RuntimeError("model bug"), (1, 2, 3), (0, 0, 0, 0, 0, 0, 0, -1)])

    def smc(r):
        got = next(answers, None)
        if got is None:
            return inner(r)
        if isinstance(got, Exception):
            raise got
        return got

    tee.smc = smc
    gate.assign(1)
    with caplog.at_level(logging.ERROR, logger=GATE_LOG):
        for _ in range(3):
            assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)) == (EINVAL, ZERO)
    lines = [r.getMessage() for r in caplog.records if r.name == GATE_LOG]
    head = f"the TEE model raised on op 1 for d1 a0={OPTEE_SMC_GET_THREAD_COUNT:#x}"
    assert lines == [head, f"the TEE model answered op 1 for d1 a0={OPTEE_SMC_GET_THREAD_COUNT:#x}: an answer has "
                           "eight uint64 registers, got (1, 2, 3)",
                     f"the TEE model answered op 1 for d1 a0={OPTEE_SMC_GET_THREAD_COUNT:#x}: an answer has "
                     "eight uint64 registers, got (0, 0, 0, 0, 0, 0, 0, -1)"]
    assert not gate._table.in_tee(1)
    assert client.call(GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT))[0] == 0
    st = gate.statistics()
    assert st.tee_errors == 3
    assert dict(st.refusals) == {(1, "EINVAL"): 3}
    assert dict(st.calls) == {(1, GATE_OP_SMC): 4}


# -- statistics -------------------------------------------------------------------------------------------

def test_statistics_count_what_they_counted_in_python(gate, client, tee) -> None:
    gate.assign(1)
    sent = [
        (GATE_OP_HYP, 1, regs(OPTEE_SMC_VM_CREATED, 2)),
        (GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)),
        (GATE_OP_SMC, 1, regs(OPTEE_SMC_GET_THREAD_COUNT)),
        (GATE_OP_SMC, 2, regs(OPTEE_SMC_GET_THREAD_COUNT)),  # EPERM
        (GATE_OP_SMC, 9, regs(OPTEE_SMC_GET_THREAD_COUNT)),  # ENOENT
        (GATE_OP_SMC, 1, regs(fid(smccc.ARM_SMCCC_OWNER_SIP))),  # EPERM
        (GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID)),
        (5, 1, regs(OPTEE_SMC_CALLS_UID)),  # EINVAL
    ]
    for op, domid, r in sent:
        client.call(op, domid, r)
    st = gate.statistics()
    assert dict(st.calls) == {(1, GATE_OP_HYP): 1, (1, GATE_OP_SMC): 3, (2, GATE_OP_SMC): 1, (9, GATE_OP_SMC): 1,
                              (0, GATE_OP_HYP): 1, (1, 5): 1}
    assert dict(st.refusals) == {(2, "EPERM"): 1, (9, "ENOENT"): 1, (1, "EPERM"): 1, (1, "EINVAL"): 1}
    assert (st.assigned, st.connections, st.refused_peers, st.tee_errors) == (frozenset({1}), 1, 0, 0)
    # one pop and one push (one notify decision) per hypercall; the gate slept
    # before some of them (the client's push may land before it does)
    assert st.batches == len(sent)
    assert st.notifications_sent + st.notifications_suppressed == len(sent)
    assert st.wakeups <= len(sent)
    assert st.as_dict()["refusals"] == {"d1/EINVAL": 1, "d1/EPERM": 1, "d2/EPERM": 1, "d9/ENOENT": 1}


# -- close ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("poll_window_ns", [0, 200_000])
def test_close_stops_the_thread_asleep_in_c(tmp_path: Path, tee, poll_window_ns: int) -> None:
    g = Gate(tmp_path, tee, domain_exists=lambda d: True, poll_window_ns=poll_window_ns)
    g.start()
    with GateClient(tmp_path, poll_window_ns=poll_window_ns, timeout=HANG_GUARD_S) as c:
        assert c.call(GATE_OP_HYP, 0, regs(OPTEE_SMC_CALLS_UID))[0] == 0
        thread = g._thread
        assert thread is not None
        closer, _ = _in_thread(g.close)
        closer.join(HANG_GUARD_S)
        assert not closer.is_alive() and not thread.is_alive()
