"""FrontRing.call (teeif_front_call): push, notify, spin and take the caller's
own answer in one C call; everything else is left on the ring, untouched,
for the caller's pop (docs/protocol.md, "One round trip in one call").

Nothing here is timed: a window that must end is short and nobody answers
in it; a window that must not end is a minute long and the answer, or the
fault, is made to happen inside it."""

from __future__ import annotations

import mmap
import os
import struct
import threading

import pytest

from ring import (
    BackRing,
    CallStatus,
    EventChannel,
    FrontRing,
    PeerDied,
    Request,
    Response,
    RingCorrupted,
    RingFull,
    RingTruncated,
)

LONG_NS = 60 * 10**9  # a window no passing test reaches the end of


def req(i: int) -> Request:
    return Request(i, 3, 0, tuple(range(i, i + 8)))


def answer(r: Request) -> Response:
    return Response(r.id, 0, 0, tuple(~x & (2**64 - 1) for x in r.a))


@pytest.fixture
def ring(tmp_path):
    path = tmp_path / "ring"
    back = BackRing.create(path, 1, start=0xFFFFFFF0)  # the indices wrap during the tests
    front = FrontRing.attach(path)
    ours, theirs = EventChannel.pair()
    yield path, front, back, ours, theirs
    for x in (front, back, ours, theirs):
        x.close()


def serve_one(back: BackRing, rsp=answer) -> threading.Thread:
    """A backend thread answering the next request (spinning: GIL released)."""

    def run() -> None:
        assert back.spin(LONG_NS)
        (r,) = back.pop_batch()
        back.push(rsp(r))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_the_callers_own_answer_is_taken_and_the_sleeping_back_notified(ring):
    path, front, back, ours, theirs = ring
    t = serve_one(back)
    got = front.call(req(1), LONG_NS, ours)  # the backend thread runs while C spins
    t.join()
    assert got == answer(req(1))
    assert front.in_flight == 0 and front.unconsumed() == 0
    st = front.statistics()
    assert (st.pushes, st.pops, st.notifications_sent, st.poll_hits, st.final_checks) == (1, 1, 1, 1, 0)
    # a fresh ring's back asked to be woken by the first request: one notification, counted
    assert theirs.drain() == 1
    assert ours.statistics().sent == 1


def test_an_awake_back_is_not_notified(ring):
    path, front, back, ours, theirs = ring
    front.push(req(0))  # the first push notifies; the back, awake, does not re-arm
    back.push(answer(back.pop()))
    assert front.pop() == answer(req(0))
    t = serve_one(back)
    assert front.call(req(1), LONG_NS, ours) == answer(req(1))
    t.join()
    assert front.statistics().notifications_suppressed == 1
    assert ours.statistics().sent == 0


def test_a_response_of_another_id_is_left_on_the_ring(ring):
    path, front, back, ours, theirs = ring
    front.push(req(7))  # a call that timed out: its answer comes late
    back.push(answer(back.pop()))
    assert front.call(req(8), LONG_NS, ours) is CallStatus.OTHER  # at once: 7's answer is at the head
    assert front.statistics().pops == 0
    assert front.unconsumed() == 1 and front.in_flight == 2
    assert front.pop() == answer(req(7))  # the caller's pop takes it ...
    back.push(answer(back.pop()))
    assert front.pop() == answer(req(8))  # ... and then the answer to the call


def test_an_answer_echoing_the_wrong_id_is_left_too(ring):
    path, front, back, ours, theirs = ring
    t = serve_one(back, lambda r: Response(r.id + 1, 0, 0, (0,) * 8))
    assert front.call(req(1), LONG_NS, ours) is CallStatus.OTHER
    t.join()
    assert front.pop() == Response(2, 0, 0, (0,) * 8)


def test_a_window_that_ends_leaves_the_request_and_the_event_index(ring):
    path, front, back, ours, theirs = ring
    before = front.shared_indices().rsp_event
    assert front.call(req(1), 20_000, ours) is CallStatus.WAITING
    assert front.call(req(2), 0, ours) is CallStatus.WAITING  # window 0: one look
    assert front.shared_indices().rsp_event == before  # not re-armed: no final check
    assert front.statistics().final_checks == 0
    assert [r.id for r in back.pop_batch()] == [1, 2]
    back.push_batch([answer(req(1)), answer(req(2))])
    assert front.pop_batch() == [answer(req(1)), answer(req(2))]


def test_a_full_ring_pushes_nothing(ring):
    path, front, back, ours, theirs = ring
    front.push_batch([req(i) for i in range(front.size)])
    with pytest.raises(RingFull):
        front.call(req(99), LONG_NS, ours)
    assert back.unconsumed() == front.size


def test_a_dead_channel_is_reported_after_the_push_without_spinning(ring):
    path, front, back, ours, theirs = ring
    theirs.close()
    assert front.call(req(1), LONG_NS, ours) is CallStatus.NOTIFY_FAILED
    assert back.pop() == req(1)  # pushed
    with pytest.raises(PeerDied):
        ours.notify()  # the channel says why


def test_an_impossible_rsp_prod_fails_the_call_after_the_push(ring):
    path, front, back, ours, theirs = ring
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            rsp_prod = struct.unpack_from("<I", m, 8)[0]
            struct.pack_into("<I", m, 8, (rsp_prod + 5) & 0xFFFFFFFF)  # answers for requests never made
            assert front.call(req(1), LONG_NS, ours) is CallStatus.FAILED
            assert back.pop() == req(1)  # pushed; no slot was read
            with pytest.raises(RingCorrupted) as e:
                front.pop()  # the caller's pop meets the index again
            assert e.value.prod == (rsp_prod + 5) & 0xFFFFFFFF
            assert front.statistics().pops == 0
    finally:
        os.close(fd)


def test_a_ring_truncated_before_the_call_pushes_nothing(ring):
    path, front, back, ours, theirs = ring
    os.truncate(path, 0)
    slot = 64 + 16 * 80  # start 0xfffffff0: the request's slot is 16, the first write
    with pytest.raises(RingTruncated, match=rf"^frontend: .*offset {slot:#x} faulted"):
        front.call(req(1), LONG_NS, ours)
    assert front.in_flight == 0


def test_a_ring_truncated_during_the_spin_fails_the_pushed_call(ring):
    path, front, back, ours, theirs = ring
    out = []
    t = threading.Thread(target=lambda: out.append(front.call(req(1), LONG_NS, ours)))
    t.start()
    while not back.unconsumed():  # the request is pushed: C spins on rsp_prod now
        pass
    os.truncate(path, 0)
    t.join()
    assert out == [CallStatus.FAILED]
    assert front.in_flight == 1
    with pytest.raises(RingTruncated, match=r"^frontend: .*offset 0x8 faulted"):
        front.pop()  # the end stays failed


def test_a_timed_call_says_when_it_pushed_and_when_it_saw_the_answer(ring):
    """For the tracer: the push's end and the answer's arrival, on the
    clock of time.perf_counter_ns (CLOCK_MONOTONIC), in order."""
    import time

    path, front, back, ours, theirs = ring
    t = serve_one(back)
    before = time.perf_counter_ns()
    got = front.call(req(1), LONG_NS, ours, timed=True)
    after = time.perf_counter_ns()
    t.join()
    assert got == answer(req(1))
    pushed, seen = front.call_times()
    assert before <= pushed <= seen <= after
    # a window that ends: pushed, nothing seen
    assert front.call(req(2), 0, ours, timed=True) is CallStatus.WAITING
    pushed2, seen2 = front.call_times()
    assert pushed2 >= after and seen2 == 0


def test_call_entry_takes_the_request_as_fields_and_gives_the_answer_as_the_entrys_fields(ring):
    """The trap path's form of call: no Request or Response built, the same
    round trip; a register set that is not eight uint64 values is refused
    before anything is pushed, naming what was wrong."""
    path, front, back, ours, theirs = ring
    r = req(4)
    t = serve_one(back)
    got = front.call_entry(r.id, r.vcpu, r.a, LONG_NS, ours)
    t.join()
    a = answer(r)
    assert got == (a.id, a.status, a.flags, *a.a)
    with pytest.raises(ValueError, match="exactly 8 registers, got 7"):
        front.call_entry(5, 3, r.a[:7], 0, ours)
    with pytest.raises(OverflowError, match="out of range"):
        front.call_entry(5, 3, (2**64,) + r.a[1:], 0, ours)
    with pytest.raises(TypeError, match="integer"):
        front.call_entry(5, 3, ("x",) + r.a[1:], 0, ours)
    assert front.in_flight == 0 and back.unconsumed() == 0


def test_await_entry_waits_again_for_the_callers_own_answer_only(ring):
    """call_entry's wait without a push: the slice that ends with nothing says
    WAITING; the caller's own answer is taken; another id's stays on the ring."""
    path, front, back, ours, theirs = ring
    r = req(7)
    assert front.call_entry(r.id, r.vcpu, r.a, 0, ours) is CallStatus.WAITING
    assert front.await_entry(r.id, 0) is CallStatus.WAITING
    t = serve_one(back)
    a = answer(r)
    assert front.await_entry(r.id, LONG_NS) == (a.id, a.status, a.flags, *a.a)
    t.join()
    front.push(req(8))
    t = serve_one(back)
    t.join()
    assert front.await_entry(9, LONG_NS) is CallStatus.OTHER  # req 8's answer, left for pop
    assert front.pop() == answer(req(8))
