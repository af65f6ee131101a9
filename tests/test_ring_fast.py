"""Answers given in C (ring.FastTable, cffi_build/teeif_fast.c): fixed and
forwarded rules, the per-ring mask, order (only the head is ever answered),
the owner's requests left in place, forwarding failures, the frontend's
channel, and the spin over many rings. Real rings and channels; the far end
of the forwarding ring is a thread."""

from __future__ import annotations

import mmap
import os
import struct
import threading

import pytest

from ring import (
    FORWARD_TIMEOUT,
    BackRing,
    BackSpinSet,
    EventChannel,
    FastRule,
    FastTable,
    FrontRing,
    Request,
    Response,
    RingCorrupted,
)

FIXED = FastRule(0x10, answer=(7, 1, 2, 3, 4, 5, 6, 2**64 - 1))
FWD = FastRule(0x20, keep=3)
OTHER = 0x30
OP = 5  # the forwarded requests' flags


def req(i: int, fn: int, *rest: int) -> Request:
    a = ((0xABCD << 32) | fn,) + tuple(rest) + (0,) * (7 - len(rest))
    return Request(id=i, vcpu=1, flags=0, a=a)


class Forwarder:
    """The far end of the forwarding ring: answers each request with
    a[i] = (function << 8 | i) + 2**40 (so the mask to 32 bits shows), or
    with ``status`` if set; records what it got."""

    def __init__(self, tmp_path, status: int = 0) -> None:
        self.back = BackRing.create(tmp_path / "fwd", 1)
        self.front = FrontRing.attach(tmp_path / "fwd")
        self.chan_back, self.chan_front = EventChannel.pair()
        self.status = status
        self.got: list[Request] = []
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while not self._stop:
            if not self.back.poll(1_000_000):
                self.chan_back.wait(0.05)
                continue
            for r in self.back.pop_batch():
                self.got.append(r)
                fn = r.a[0]
                a = tuple(((fn << 8) | i) + 2**40 for i in range(8))
                if self.back.push(Response(r.id, self.status, 0, a if not self.status else (0,) * 8)):
                    self.chan_back.notify()

    def table(self, *rules: FastRule, **kw) -> FastTable:
        return FastTable(rules or (FIXED, FWD), forward=self.front, forward_fd=self.chan_front.fileno(),
                         forward_flags=OP, **kw)

    def close(self) -> None:
        self._stop = True
        self._t.join()
        for end in (self.chan_back, self.chan_front, self.front, self.back):
            end.close()


@pytest.fixture
def fwd(tmp_path):
    f = Forwarder(tmp_path)
    yield f
    f.close()


@pytest.fixture
def keep():
    """Close what a test opened, whatever happens."""
    opened: list = []
    yield lambda *ends: (opened.extend(ends), ends)[1]
    for end in opened:
        end.close()


@pytest.fixture
def dom(tmp_path, keep):
    """A domain's ring (back, front) and channel (back end, front end)."""
    back = BackRing.create(tmp_path / "dom", 1)
    front = FrontRing.attach(tmp_path / "dom")
    return keep(back, front, *EventChannel.pair())


def test_rules_answer_at_the_head_in_order(fwd, dom):
    back, front, cb, cf = dom
    table = fwd.table()
    state = table.ring(target=9, evtchn_fd=cb.fileno())
    state.allow = 0b11
    for i, fn in enumerate((0x10, 0x20, OTHER, 0x10)):
        front.push(req(i, fn, 1, 2, 3))
    assert table.serve(back, state) == 2
    got = front.pop_batch()
    assert [(r.id, r.status, r.flags) for r in got] == [(0, 0, 0), (1, 0, 0)]
    assert got[0].a == FIXED.answer
    # forwarded as (function, 0, ..., 0) to target 9, three registers kept and masked
    (sent,) = fwd.got
    assert (sent.vcpu, sent.flags, sent.a) == (9, OP, (0x20,) + (0,) * 7)
    assert got[1].a == ((0x20 << 8) | 0, (0x20 << 8) | 1, (0x20 << 8) | 2, 0, 0, 0, 0, 0)
    # the owner's request stops the table: it and everything behind it stay
    assert table.serve(back, state) == 0
    assert [r.id for r in back.pop_batch()] == [2, 3]
    assert state.answered() == (1, 1)
    assert table.statistics().forwarded == 1
    assert len(state.take_latencies()) == 2 and state.take_latencies() == []
    assert [(r.function, n) for r, n in state.take_answered()] == [(0x10, 1), (0x20, 1)]
    assert state.take_answered() == []


def test_the_mask_the_skip_bits_and_a_missing_channel_leave_requests_alone(fwd, dom):
    back, front, cb, _ = dom
    table = fwd.table(skip_id_bits=1 << 63)
    state = table.ring(1)
    front.push(req(0, 0x10))
    state.allow = 0b11
    assert table.serve(back, state) == 0  # no channel: an answer could not be announced
    state.evtchn_fd = cb.fileno()
    state.allow = 0b10  # FIXED not allowed
    assert table.serve(back, state) == 0
    state.allow = 0b11
    front.push(req(1 | 1 << 63, 0x10))
    assert table.serve(back, state) == 1  # the head only, the sampled one stays
    assert [r.id for r in back.pop_batch()] == [1 | 1 << 63]
    table.enabled = False
    front.push(req(2, 0x10))
    assert table.serve(back, state) == 0


def test_a_refused_forward_leaves_the_request_and_pauses_the_ring(tmp_path, dom):
    f = Forwarder(tmp_path, status=-1)
    try:
        back, front, cb, _ = dom
        table = f.table()
        state = table.ring(1, cb.fileno())
        state.allow = 0b11
        front.push(req(0, 0x20))
        front.push(req(1, 0x10))
        assert table.serve(back, state) == 0
        assert state.paused and table.enabled  # the table goes on for other rings
        st = table.statistics()
        assert (st.forwarded, st.failures, st.last_error) == (1, 1, -1)
        assert table.serve(back, state) == 0  # paused: nothing, not even the FIXED behind
        assert [r.id for r in back.pop_batch()] == [0, 1]
        state.resume()
    finally:
        f.close()


def test_no_answer_in_time_turns_the_table_off(tmp_path, dom, keep):
    back, front, cb, _ = dom
    fb, ff, _, chan = keep(BackRing.create(tmp_path / "fwd", 1), FrontRing.attach(tmp_path / "fwd"),
                           *EventChannel.pair())  # nobody serves it
    table = FastTable((FWD,), forward=ff, forward_fd=chan.fileno(), timeout_ns=20_000_000)
    state = table.ring(1, cb.fileno())
    state.allow = 1
    front.push(req(0, 0x20))
    assert table.serve(back, state) == 0
    assert not table.enabled and state.paused
    assert table.statistics().last_error == FORWARD_TIMEOUT
    assert back.unconsumed() == 1
    assert fb.unconsumed() == 1  # it was sent: the owner's own hypercall deals with the silence


def test_answers_notify_the_frontend_and_a_dead_one_pauses(fwd, dom):
    back, front, cb, cf = dom
    table = fwd.table()
    state = table.ring(1, cb.fileno())
    state.allow = 0b11
    front.push(req(0, 0x10))
    assert front.final_check() is False  # asleep: wake me for the first response
    assert table.serve(back, state) == 1
    assert cf.drain() == 1
    front.pop_batch()
    assert front.final_check() is False
    cf.close()
    front.push(req(1, 0x10))
    front.push(req(2, 0x10))
    assert table.serve(back, state) == 1  # answered, then the notification met end-of-file
    assert state.peer_gone and state.paused


def test_a_closed_forwarding_ring_turns_the_table_off(fwd, dom):
    back, front, cb, _ = dom
    table = fwd.table()
    state = table.ring(1, cb.fileno())
    state.allow = 0b11
    fwd.front.close()
    front.push(req(0, 0x20))
    assert table.serve(back, state) == 0
    assert not table.enabled


def test_the_spin_answers_and_reports_what_it_left(tmp_path, fwd, keep):
    rings = []
    for name in ("a", "b", "c"):
        b = BackRing.create(tmp_path / name, 1)
        rings.append(keep(b, FrontRing.attach(tmp_path / name)))
    chans = [keep(*EventChannel.pair()) for _ in rings]
    table = fwd.table()
    spin = BackSpinSet()
    states = []
    for _, (cb, _) in zip(rings, chans):
        st = table.ring(1, cb.fileno())
        st.allow = 0b11
        states.append(st)
    slots = [spin.add(rings[0][0], states[0]), spin.add(rings[1][0], states[1]), spin.add(rings[2][0])]
    assert spin.spin_serving(20_000, table) == ([], [])
    rings[0][1].push(req(0, 0x10))
    rings[1][1].push(req(1, 0x20))
    rings[1][1].push(req(2, OTHER))
    rings[2][1].push(req(3, 0x10))  # no state: its owner's
    ready, served = spin.spin_serving(10**9, table)
    assert sorted(ready) == [slots[1], slots[2]] and sorted(served) == [slots[0], slots[1]]
    assert [r.id for r in rings[0][1].pop_batch()] == [0]
    assert [r.id for r in rings[1][1].pop_batch()] == [1]
    # without a table it is the plain spin
    assert sorted(spin.spin_serving(0, None)[0]) == [slots[1], slots[2]]
    for slot in slots:
        spin.discard(slot)


def test_a_corrupted_ring_is_its_owners_to_report(fwd, dom, tmp_path):
    back, front, cb, _ = dom
    table = fwd.table()
    state = table.ring(1, cb.fileno())
    state.allow = 0b11
    fd = os.open(tmp_path / "dom", os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            m[0:4] = struct.pack("<I", 1000)  # req_prod far past anything produced
    finally:
        os.close(fd)
    with pytest.raises(RingCorrupted):
        table.serve(back, state)
    spin = BackSpinSet()
    slot = spin.add(back, state)
    assert spin.spin_serving(10**9, table) == ([slot], [])
    spin.discard(slot)


def test_rules_are_checked():
    with pytest.raises(ValueError, match="eight"):
        FastRule(1, answer=(1, 2))
    with pytest.raises(ValueError, match="keep"):
        FastRule(1, keep=9)
    with pytest.raises(ValueError, match="forward ring"):
        FastTable((FWD,))
    with pytest.raises(ValueError, match="twice"):
        FastTable((FIXED, FIXED))


def test_sampled_answers_are_recorded_and_their_forwards_marked(fwd, dom):
    back, front, cb, _ = dom
    bit = 1 << 63
    table = fwd.table(trace_bits=bit)
    state = table.ring(4, cb.fileno())
    state.allow = 0b11
    front.push(req(0, 0x20))
    front.push(req(1 | bit, 0x20))
    front.push(req(2 | bit, 0x10))
    assert table.serve(back, state) == 3
    t1, t2 = table.take_traces()
    assert table.take_traces() == []
    assert (t1.id, t1.target, t1.function) == (1 | bit, 4, 0x20)
    assert t1.fwd_id & bit and fwd.got[1].id == t1.fwd_id and not fwd.got[0].id & bit
    assert (t1.peek_start <= t1.peek_end <= t1.fwd_start <= t1.fwd_pushed <= t1.fwd_popped
            <= t1.push_start <= t1.push_end)
    assert (t2.function, t2.fwd_id, t2.fwd_start) == (0x10, 0, 0)  # a fixed answer forwards nothing


def test_nothing_is_answered_while_the_owner_owes_an_answer(fwd, dom):
    back, front, cb, _ = dom
    table = fwd.table()
    state = table.ring(1, cb.fileno())
    state.allow = 0b11
    front.push(req(0, OTHER))
    front.push(req(1, 0x10))
    assert [r.id for r in back.pop_batch(1)] == [0]  # the owner took the first, not answered yet
    assert table.serve(back, state) == 0  # the second would be answered before the first
    back.push(Response(0, 0, 0, (0,) * 8))
    assert table.serve(back, state) == 1
    assert [r.id for r in front.pop_batch()] == [0, 1]


def test_serve_pop_answers_the_head_then_pops_the_rest_and_never_a_request_past_c(fwd, dom):
    from ring import request_buffer

    back, front, cb, _ = dom
    table = fwd.table()
    state = table.ring(1, cb.fileno())
    state.allow = 0b11
    buf = request_buffer(back.size)
    front.push(req(0, 0x10))
    front.push(req(1, 0x20))
    assert table.serve_pop(back, state, buf, back.size) == (2, 0)  # answered, nothing left to pop
    front.push(req(2, 0x10))
    front.push(req(3, OTHER))
    front.push(req(4, 0x10))
    assert table.serve_pop(back, state, buf, back.size) == (1, 2)  # the owner's head and what follows it
    assert [buf[i].id for i in range(2)] == [3, 4]


def test_forward_makes_the_owners_own_request(fwd):
    table = fwd.table()
    status, a = table.forward(7, 3, (0x99, 1, 2, 3, 4, 5, 6, 7))
    assert status == 0 and a[0] == (0x99 << 8) + 2**40
    sent = fwd.got[-1]
    assert (sent.vcpu, sent.flags, sent.a) == (7, 3, (0x99, 1, 2, 3, 4, 5, 6, 7))
    with pytest.raises(ValueError, match="8 registers"):
        table.forward(7, 3, (1, 2))
