"""Spinning without the final check (FrontRing.spin / BackRing.spin) and one
spin over many back rings (BackSpinSet): work is found, the event index is
left alone so the peer keeps not notifying, and a hostile index is reported
by its ring's owner."""

import mmap
import os
import struct
import threading

import pytest

from ring import BackRing, BackSpinSet, FrontRing, Request, Response, RingCorrupted


def req(i):
    return Request(id=i, vcpu=0, flags=0, a=tuple(range(8)))


def make(tmp_path, name):
    back = BackRing.create(tmp_path / name, 1)
    return FrontRing.attach(tmp_path / name), back


def test_spin_times_out_without_rearming(tmp_path):
    front, back = make(tmp_path, "r")
    before = back.shared_indices().req_event
    assert back.spin(50_000) is False
    assert back.shared_indices().req_event == before  # not re-armed
    assert back.statistics().final_checks == 0
    front.push(req(0))
    assert back.spin(10**9) is True
    assert back.statistics().poll_hits == 1


def test_front_spin_leaves_rsp_event_so_the_back_does_not_notify(tmp_path):
    front, back = make(tmp_path, "r")
    front.push(req(0))
    back.pop()
    assert front.final_check() is False  # armed for the first response
    assert back.push(Response(0, 0, 0, (0,) * 8)) is True
    assert front.spin(10**9) is True
    front.pop()
    front.push(req(1))
    back.pop()
    assert front.spin(20_000) is False  # window over, event index untouched ...
    assert back.push(Response(1, 0, 0, (0,) * 8)) is False  # ... so no notification
    assert front.poll(0) is True


def test_front_spin_releases_the_gil(tmp_path):
    front, back = make(tmp_path, "r")
    front.push(req(0))
    back.pop()
    out = []
    t = threading.Thread(target=lambda: out.append(front.spin(60 * 10**9)))
    t.start()
    back.push(Response(0, 0, 0, (0,) * 8))
    t.join()
    assert out == [True]


def test_spin_set_finds_the_rings_with_requests(tmp_path):
    pairs = [make(tmp_path, f"r{i}") for i in range(5)]
    s = BackSpinSet(capacity=2)  # grows
    slots = [s.add(b) for _, b in pairs]
    assert len(s) == 5 and len(set(slots)) == 5
    assert s.spin(20_000) == []
    pairs[1][0].push(req(1))
    pairs[4][0].push(req(4))
    assert sorted(s.spin(10**9)) == sorted([slots[1], slots[4]])
    s.discard(slots[4])
    s.discard(slots[4])  # idempotent
    assert s.spin(10**9) == [slots[1]]
    assert len(s) == 4
    assert all(b.statistics().final_checks == 0 for _, b in pairs)
    slot = s.add(pairs[4][1])  # a free slot is reused
    assert slot == slots[4]


def test_spin_set_reports_a_corrupt_ring_for_its_owner(tmp_path):
    front, back = make(tmp_path, "r")
    s = BackSpinSet()
    slot = s.add(back)
    fd = os.open(tmp_path / "r", os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096) as m:
            struct.pack_into("<I", m, 0, 40)  # req_prod more than a ring ahead
            assert s.spin(10**9) == [slot]
            with pytest.raises(RingCorrupted):
                back.pop()
    finally:
        os.close(fd)
