"""DomainLink, the trap path's end of a domain's teeif ring, against a
backend the test plays itself: the cases its fast path (one C call:
FrontRing.call) hands over to the Python receiver — a late answer of a
call that timed out at the head of the ring, an impossible index, a
notification the dead daemon cannot take — end as they did before it
existed. Nothing is timed; a call that should not wait has a minute's
timeout, and its statistics say whether it waited."""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time

import pytest

from ring import BackRing, EventChannelListener, PeerDied, Request, Response
from stubdom.platform import UNAVAILABLE_REGS, DomainLink

LONG_S = 60.0
ANSWER = (0, 1, 2, 3, 4, 5, 6, 7)


def regs(x0: int) -> tuple[int, ...]:
    return (x0,) + (0,) * 7


class Peer:
    """A backend on the test's own thread(s): the ring, the channel."""

    def __init__(self, tmp_path, *, poll_window_ns: int, timeout_s: float = LONG_S) -> None:
        self.ring_path, evtchn = tmp_path / "ring", tmp_path / "evtchn"
        self.back = BackRing.create(self.ring_path, 1)
        self.listener = EventChannelListener(evtchn)
        self.link = DomainLink(1, self.ring_path, evtchn, 1, poll_window_ns=poll_window_ns, timeout_s=timeout_s)
        self.chan = self.listener.accept(timeout=LONG_S)

    def answer_next(self, a=ANSWER) -> Request:
        """Wait for the next request and answer it (and notify if told)."""
        assert self.back.spin(int(LONG_S * 1e9))
        req = self.back.pop()
        assert req is not None
        if self.back.push(Response(req.id, 0, 0, a)):
            self.chan.notify()
        return req

    def call_in_thread(self, x0: int) -> tuple[threading.Thread, list]:
        out: list = []
        t = threading.Thread(target=lambda: out.append(self.link.call(0, regs(x0))))
        t.start()
        return t, out

    def close(self) -> None:
        self.link.close()
        self.chan.close()
        self.listener.close()
        self.back.close()


@pytest.fixture
def peer(tmp_path):
    p = Peer(tmp_path, poll_window_ns=1_000_000)
    yield p
    p.close()


def test_calls_one_at_a_time_are_answered_and_counted(peer):
    for i in range(3):
        t, out = peer.call_in_thread(i)
        assert peer.answer_next().a == regs(i)
        t.join()
        assert out == [ANSWER]
    st = peer.link.statistics()
    assert (st.requests, st.responses, st.dropped, st.timeouts, st.unavailable) == (3, 3, 0, 0, 0)
    # the fresh ring's backend slept: the first push notified; it never re-armed req_event
    assert (st.notifications_sent, st.notifications_suppressed) == (1, 2)
    assert peer.chan.drain() == 1


def test_a_late_answer_at_the_head_of_the_ring_is_dropped_and_the_call_answered(tmp_path):
    peer = Peer(tmp_path, poll_window_ns=1_000_000, timeout_s=0.2)
    try:
        assert peer.link.call(0, regs(1)) == UNAVAILABLE_REGS  # nobody answers: it times out
        late = peer.back.pop()
        assert late is not None and late.a == regs(1)
        peer.back.push(Response(late.id, 0, 0, (9,) * 8))  # the answer comes after all
        # the next call finds it at the head of the ring, before its own
        t, out = peer.call_in_thread(2)
        assert peer.answer_next().a == regs(2)
        t.join()
        assert out == [ANSWER]
        st = peer.link.statistics()
        assert (st.requests, st.responses, st.timeouts, st.dropped) == (2, 1, 1, 1)
    finally:
        peer.close()


def test_an_impossible_rsp_prod_cuts_the_domain_off(peer, caplog):
    fd = os.open(peer.ring_path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            struct.pack_into("<I", m, 8, struct.unpack_from("<I", m, 8)[0] + 3)  # answers nobody asked for
            with caplog.at_level(logging.ERROR, logger="stubdom.platform.stubdom"):
                assert peer.link.call(0, regs(1)) == UNAVAILABLE_REGS
                assert peer.link.call(0, regs(2)) == UNAVAILABLE_REGS  # for good: nothing pushed
    finally:
        os.close(fd)
    st = peer.link.statistics()
    assert (st.requests, st.responses, st.timeouts, st.unavailable) == (1, 0, 0, 2)
    assert [r.a for r in peer.back.pop_batch()] == [regs(1)]
    assert "stubdom-teed corrupted the teeif ring" in caplog.text
    assert peer.chan.drain() == 1  # the push's notification, then ...
    with pytest.raises(PeerDied):
        peer.chan.drain()  # ... the trap path hung up on the daemon


def test_a_daemon_gone_while_idle_fails_the_next_call_at_once(peer):
    t, out = peer.call_in_thread(1)
    peer.answer_next()
    t.join()
    assert not peer.back.final_check()  # the daemon sleeps: the next push must notify ...
    peer.listener.close()
    peer.chan.close()  # ... and it is gone
    assert peer.link.call(0, regs(2)) == UNAVAILABLE_REGS
    st = peer.link.statistics()
    assert (st.requests, st.timeouts, st.unavailable) == (2, 0, 1)  # pushed, not waited for
    assert peer.link.call(0, regs(3)) == UNAVAILABLE_REGS  # nobody listens: not even pushed
    st = peer.link.statistics()
    assert (st.requests, st.timeouts, st.unavailable) == (2, 0, 2)



def test_a_second_vcpu_waits_for_the_first_then_the_receiver_sorts_the_answers(tmp_path):
    """The fast path waits out its polling window with the domain's lock
    held: a second vCPU's request reaches the ring only once the first's
    window is spun (here 1 ms, with no answer), when the first becomes the
    receiver. Answered in the other order, each vCPU resumes with its own."""
    p = Peer(tmp_path, poll_window_ns=1_000_000)
    try:
        first, out1 = p.call_in_thread(1)
        while p.back.unconsumed() < 1:
            pass
        second, out2 = p.call_in_thread(2)
        deadline = time.monotonic() + LONG_S  # a hang guard, not a measurement
        while p.back.unconsumed() < 2:
            assert time.monotonic() < deadline, "the second vCPU never pushed"
        reqs = [p.back.pop(), p.back.pop()]
        assert [r.a[0] for r in reqs if r is not None] == [1, 2]
        for r in reversed(reqs):
            assert r is not None
            if p.back.push(Response(r.id, 0, 0, (r.a[0] + 100,) + ANSWER[1:])):
                p.chan.notify()
        first.join()
        second.join()
        assert out1 == [(101,) + ANSWER[1:]] and out2 == [(102,) + ANSWER[1:]]
        assert p.link.statistics().timeouts == 0
    finally:
        p.close()
