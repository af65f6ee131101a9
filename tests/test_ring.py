"""The teeif ring (ring.FrontRing / ring.BackRing over ring._ring): layout,
full and empty, wrap-around, notification hold-off, batches, re-attach after
a restart, and a hostile shared page."""

import mmap
import os
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ring
from ring import (
    BackRing,
    EventChannel,
    FrontRing,
    Request,
    Response,
    RingClosed,
    RingCorrupted,
    RingFull,
    RingSizeError,
    TooManyResponses,
    create_ring_file,
    request_buffer,
    response_buffer,
)
from ring._lib import ffi

U32 = 2**32


def req(i, vcpu=0):
    return Request(id=i, vcpu=vcpu, flags=0, a=tuple(i * 8 + k for k in range(8)))


def rsp_for(q, status=0):
    return Response(id=q.id, status=status, flags=0, a=tuple(~x & (2**64 - 1) for x in q.a))


@pytest.fixture
def pair(tmp_path):
    """A fresh one-page ring with both ends attached."""
    path = tmp_path / "ring"
    with BackRing.create(path, 1) as back, FrontRing.attach(path) as front:
        yield front, back


def make_pair(tmp_path, pages=1, start=0):
    path = tmp_path / "ring"
    back = BackRing.create(path, pages, start=start)
    return FrontRing.attach(path), back


class SharedPage:
    """The ring file seen through an independent mapping: the hostile peer."""

    FIELDS = {"req_prod": 0, "req_event": 4, "rsp_prod": 8, "rsp_event": 12}

    def __init__(self, path):
        with open(path, "r+b") as f:
            self.mm = mmap.mmap(f.fileno(), 0)

    def __getitem__(self, name):
        return struct.unpack_from("<I", self.mm, self.FIELDS[name])[0]

    def __setitem__(self, name, value):
        struct.pack_into("<I", self.mm, self.FIELDS[name], value % U32)

    def close(self):
        self.mm.close()


@pytest.fixture
def hostile(tmp_path):
    pages = []

    def open_page(path):
        pages.append(SharedPage(path))
        return pages[-1]

    yield open_page
    for p in pages:
        p.close()


# -- layout -----------------------------------------------------------------


def test_the_package_exports_its_public_api():
    public = {
        "FrontRing", "BackRing", "Request", "Response", "request_buffer", "response_buffer",
        "EventChannel", "EventChannelListener", "connect", "ChannelStatistics",
        "RingStatistics", "SharedIndices", "create_ring_file", "ring_entries", "run_floor",
        "RING_FILE", "EVTCHN_FILE", "PAGE_SIZE", "HEADER_SIZE", "ENTRY_SIZE", "MAX_RING_PAGES",
        "RingError", "RingFull", "RingCorrupted", "TooManyResponses", "RingClosed",
        "RingSizeError", "RingTruncated", "PeerDied", "FloorMismatch",
    }
    assert public <= set(dir(ring))
    assert (ring.RING_FILE, ring.EVTCHN_FILE) == ("ring", "evtchn")  # docs/protocol.md
    for name in ("RingFull", "RingCorrupted", "TooManyResponses", "RingClosed", "RingSizeError",
                 "RingTruncated", "PeerDied", "FloorMismatch"):
        assert issubclass(getattr(ring, name), ring.RingError)



def test_entry_layout_matches_design():
    # DESIGN.md "Wire protocol: teeif": both entries are 80 bytes.
    assert ffi.sizeof("struct teeif_request") == 80
    assert [ffi.offsetof("struct teeif_request", f) for f in ("id", "vcpu", "flags", "a")] == [0, 8, 12, 16]
    assert ffi.sizeof("struct teeif_response") == 80
    assert [ffi.offsetof("struct teeif_response", f) for f in ("id", "status", "flags", "a")] == [0, 8, 12, 16]
    assert ffi.sizeof("union teeif_sring_entry") == ring.ENTRY_SIZE == 80
    assert ring.REQUEST_SIZE == ring.RESPONSE_SIZE == 80


def test_shared_header_layout_matches_io_ring_h():
    fields = ("req_prod", "req_event", "rsp_prod", "rsp_event", "pvt", "pad", "ring")
    assert [ffi.offsetof("struct teeif_sring", f) for f in fields] == [0, 4, 8, 12, 16, 20, 64]
    assert ffi.sizeof("struct teeif_sring") == ring.HEADER_SIZE == 64


@pytest.mark.parametrize(
    ("pages", "entries"),
    # docs/protocol.md's table, at both ends of every range it lists
    [(1, 32), (2, 64), (3, 128), (5, 128), (6, 256), (10, 256), (11, 512), (20, 512),
     (21, 1024), (40, 1024), (641, 32768), (1024, 32768)],
)
def test_entry_count_is_largest_power_of_two_that_fits(pages, entries):
    assert ring.ring_entries(pages) == entries


def test_entry_count_formula_for_every_page_count():
    for pages in range(1, ring.MAX_RING_PAGES + 1):
        fit = (pages * 4096 - 64) // 80
        n = ring.ring_entries(pages)
        assert n <= fit < 2 * n and n & (n - 1) == 0, pages


@pytest.mark.parametrize("pages", [0, ring.MAX_RING_PAGES + 1])
def test_ring_pages_out_of_range(tmp_path, pages):
    with pytest.raises(ValueError, match=f"got {pages}"):
        BackRing.create(tmp_path / "ring", pages)
    assert not (tmp_path / "ring").exists()


def test_file_bytes_are_io_ring_h_little_endian(tmp_path):
    start = U32 - 1
    front, back = make_pair(tmp_path, pages=2, start=start)
    with front, back:
        assert os.path.getsize(tmp_path / "ring") == 2 * 4096
        front.push_batch([Request(0x1122334455667788, 3, 0, tuple(range(100, 108))), req(1)])
        raw = (tmp_path / "ring").read_bytes()
        # header: req_prod, req_event, rsp_prod, rsp_event; pvt and pad zero
        assert struct.unpack_from("<4I", raw, 0) == ((start + 2) % U32, start + 1 & 0xFFFFFFFF, start, 0)
        assert raw[16:64] == bytes(48)
        # index start = 0xffffffff lives in slot 63 of 64; the next wraps to slot 0
        slot = 64 + (start & 63) * 80
        assert struct.unpack_from("<QII8Q", raw, slot) == (0x1122334455667788, 3, 0, *range(100, 108))
        assert struct.unpack_from("<Q", raw, 64)[0] == 1


# -- full, empty, wrap -------------------------------------------------------


def test_empty_ring(pair):
    front, back = pair
    assert back.pop() is None and back.pop_batch() == [] and back.unconsumed() == 0
    assert front.pop() is None and front.pop_batch() == [] and front.unconsumed() == 0
    assert front.free_requests == front.size == 32 and front.in_flight == 0


def test_full_ring_refuses_and_pushes_nothing(pair):
    front, back = pair
    front.push_batch([req(i) for i in range(31)])
    with pytest.raises(RingFull, match="2 requests to push, 1 free slots") as e:
        front.push_batch([req(31), req(32)])
    assert (e.value.wanted, e.value.free) == (2, 1)
    assert front.shared_indices().req_prod == 31
    front.push(req(31))
    assert front.free_requests == 0
    with pytest.raises(RingFull, match="1 requests to push, 0 free slots"):
        front.push(req(32))
    assert [q.id for q in back.pop_batch()] == list(range(32))
    # popping requests frees nothing: a slot is free once its response is consumed
    with pytest.raises(RingFull):
        front.push(req(32))
    back.push(rsp_for(req(0)))
    assert front.pop().id == 0
    front.push(req(32))


def test_wrap_around_of_free_running_indices(tmp_path):
    start = U32 - 40
    front, back = make_pair(tmp_path, start=start)
    with front, back:
        for round_ in range(4):  # 4 × 32 entries cross 2**32 once
            batch = [req(round_ * 32 + i, vcpu=i) for i in range(32)]
            front.push_batch(batch)
            got = back.pop_batch()
            assert got == batch
            back.push_batch([rsp_for(q, -i) for i, q in enumerate(got)])
            assert front.pop_batch() == [rsp_for(q, -i) for i, q in enumerate(batch)]
        idx = front.shared_indices()
        assert idx.req_prod == idx.rsp_prod == (start + 128) % U32 == 88


# -- notification hold-off ----------------------------------------------------


def test_notify_only_when_the_consumer_went_to_sleep(pair):
    front, back = pair
    # A fresh ring's event index asks for the first request.
    assert front.push(req(0)) is True
    # The backend is awake (it has not done a final check): no notifications.
    assert front.push(req(1)) is False
    assert front.push_batch([req(2), req(3)]) is False
    assert len(back.pop_batch()) == 4
    assert front.push(req(4)) is False  # still awake: it will look again
    assert len(back.pop_batch()) == 1
    # Nothing left: the final check re-arms req_event and says "sleep".
    assert back.final_check() is False
    assert back.shared_indices().req_event == 6
    assert front.push(req(5)) is True
    assert front.push(req(6)) is False
    # Work present: the final check does not re-arm, the backend stays awake.
    assert back.final_check() is True
    st = front.statistics()
    assert (st.notifications_sent, st.notifications_suppressed, st.pushes, st.batches) == (2, 4, 7, 6)
    bst = back.statistics()
    assert (bst.final_checks, bst.sleeps) == (1, 1)


def test_response_notify_only_when_the_frontend_went_to_sleep(pair):
    front, back = pair
    front.push_batch([req(i) for i in range(4)])
    qs = back.pop_batch()
    # A fresh ring's rsp_event asks for the first response; after that the
    # frontend is awake until its final check.
    assert back.push(rsp_for(qs[0])) is True
    assert back.push(rsp_for(qs[1])) is False
    front.pop_batch()
    assert front.final_check() is False  # asleep, rsp_event armed
    assert back.push_batch([rsp_for(qs[2]), rsp_for(qs[3])]) is True  # one decision per batch
    st = back.statistics()
    assert (st.notifications_sent, st.notifications_suppressed) == (2, 1)


def test_final_check_sees_work_pushed_while_the_consumer_was_awake(pair):
    front, back = pair
    # A push the awake backend was not notified of must not be slept through.
    front.push(req(0))
    back.pop()
    front.push(req(1))  # suppressed: the backend had not re-armed
    assert back.final_check() is True
    assert back.statistics().sleeps == 0


def test_poll_finds_work_or_says_sleep(pair):
    front, back = pair
    assert back.poll(200_000) is False  # nothing arrived while spinning: sleep
    assert back.statistics().sleeps == 1
    front.push(req(0))
    assert back.poll(10**9) is True
    assert back.statistics().poll_hits == 1


def test_poll_releases_the_gil(pair):
    front, back = pair
    result = []
    t = threading.Thread(target=lambda: result.append(back.poll(60 * 10**9)))
    t.start()
    front.push(req(0))  # runs while the other thread spins in C
    t.join()
    assert result == [True]


# -- batches -----------------------------------------------------------------


@pytest.mark.parametrize("pages", [1, 2])
def test_every_batch_size_up_to_the_ring_size(tmp_path, pages):
    front, back = make_pair(tmp_path, pages=pages, start=U32 - 7)
    with front, back:
        ident = 0
        for n in range(1, front.size + 1):
            assert back.final_check() is False
            batch = [req(ident + i, vcpu=n) for i in range(n)]
            ident += n
            assert front.push_batch(batch) is True  # one notification for the batch
            assert back.pop_batch() == batch
            assert front.final_check() is False
            assert back.push_batch([rsp_for(q) for q in batch]) is True
            assert front.pop_batch() == [rsp_for(q) for q in batch]
        total = front.size * (front.size + 1) // 2
        assert front.statistics().pushes == back.statistics().pops == total
        assert front.statistics().notifications_sent == front.size


def test_pop_batch_limit_and_raw_buffers(pair):
    front, back = pair
    buf = request_buffer(10)
    for i in range(10):
        buf[i].id = i
        buf[i].a = list(range(8))
    assert front.push_raw(buf, 10) is True
    assert [q.id for q in back.pop_batch(3)] == [0, 1, 2]
    out = request_buffer(32)
    assert back.pop_raw(out, 32) == 7 and out[6].id == 9
    rbuf = response_buffer(10)
    for i in range(10):
        rbuf[i].id = 100 + i
    back.push_raw(rbuf, 10)
    got = response_buffer(4)
    assert front.pop_raw(got, 4) == 4 and [got[i].id for i in range(4)] == [100, 101, 102, 103]
    assert front.unconsumed() == 6


def test_raw_counts_larger_than_the_buffer_are_refused(pair):
    front, back = pair
    with pytest.raises(ValueError, match="3 entries do not fit a buffer of 2"):
        front.push_raw(request_buffer(2), 3)
    front.push(req(0))
    with pytest.raises(ValueError, match="5 entries do not fit a buffer of 4"):
        back.pop_raw(request_buffer(4), 5)
    assert back.unconsumed() == 1


def test_backend_cannot_answer_more_than_it_took(pair):
    front, back = pair
    front.push_batch([req(0), req(1)])
    back.pop()
    with pytest.raises(TooManyResponses, match="2 responses to push but only 1 requests await one"):
        back.push_batch([rsp_for(req(0)), rsp_for(req(1))])
    assert back.owed == 1 and back.shared_indices().rsp_prod == 0


def test_entries_are_checked_before_they_reach_the_ring(pair):
    front, _ = pair
    with pytest.raises(ValueError, match="exactly 8 registers, got 2"):
        front.push(Request(0, 0, 0, (1, 2)))
    with pytest.raises(OverflowError):
        front.push(Request(2**64, 0, 0, (0,) * 8))
    assert front.shared_indices().req_prod == 0


# -- attach after a restart ---------------------------------------------------


def test_backend_restart_takes_unanswered_requests_again(tmp_path):
    front, back = make_pair(tmp_path, start=U32 - 2)
    with front:
        front.push_batch([req(i) for i in range(5)])
        got = back.pop_batch(3)
        back.push_batch([rsp_for(q) for q in got[:2]])
        back.close()  # died with request 2 taken but unanswered
        with BackRing.attach(tmp_path / "ring") as back2:
            assert back2.size == 32 and back2.ring_pages == 1
            assert [q.id for q in back2.pop_batch()] == [2, 3, 4]
            back2.push_batch([rsp_for(req(i)) for i in (2, 3, 4)])
        assert [r.id for r in front.pop_batch()] == [0, 1, 2, 3, 4]


def test_frontend_restart_resumes_at_the_shared_indices(tmp_path):
    front, back = make_pair(tmp_path, start=U32 - 2)
    with back:
        front.push_batch([req(i) for i in range(4)])
        back.push_batch([rsp_for(q) for q in back.pop_batch(2)])
        front.close()  # died with two requests answered-but-unread, two in flight
        with FrontRing.attach(tmp_path / "ring", ring_pages=1) as front2:
            assert front2.in_flight == 2 and front2.free_requests == 30
            back.push_batch([rsp_for(q) for q in back.pop_batch()])
            assert [r.id for r in front2.pop_batch()] == [2, 3]  # callers drop unknown ids
            front2.push(req(10))
            assert [q.id for q in back.pop_batch()] == [10]


def test_recheck_notify_says_whether_a_new_frontend_sleeps_on_published_responses(tmp_path):
    """BackRing.recheck_notify: the push's notify decision taken again for
    every response on the ring (for a frontend that connected after the
    notification went to its dead predecessor's channel)."""
    front, back = make_pair(tmp_path, start=U32 - 2)
    with front, back:
        assert back.recheck_notify() is False  # a fresh ring: nothing published
        front.push_batch([req(i) for i in range(3)])
        assert front.final_check() is False  # the frontend sleeps: rsp_event armed
        qs = back.pop_batch()
        assert back.push_batch([rsp_for(q) for q in qs]) is True  # the notification that gets lost
        front.close()  # ... because the frontend died
        with FrontRing.attach(tmp_path / "ring") as front2:
            assert back.recheck_notify() is True  # a sleeper's rsp_event lies in the published range
            assert front2.final_check() is False  # a newcomer that consumed nothing new re-arms past them
            assert back.recheck_notify() is False
            front2.push(req(7))
            back.push_batch([rsp_for(q) for q in back.pop_batch()])  # notified as usual
            assert back.recheck_notify() is True  # armed for it, not consumed yet
            assert [r.id for r in front2.pop_batch()] == [7]
            assert front2.final_check() is False
            assert back.recheck_notify() is False


def test_attach_refuses_a_file_that_is_not_a_ring(tmp_path):
    create_ring_file(tmp_path / "ring", 2)
    with pytest.raises(RingSizeError, match="not the number of pages expected"):
        FrontRing.attach(tmp_path / "ring", ring_pages=1)
    (tmp_path / "odd").write_bytes(bytes(4097))
    with pytest.raises(RingSizeError):
        BackRing.attach(tmp_path / "odd")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(RingSizeError):
        BackRing.attach(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        BackRing.attach(tmp_path / "missing")
    with pytest.raises(FileExistsError):
        BackRing.create(tmp_path / "ring", 2)


# -- the shared page is hostile ---------------------------------------------------


def test_request_producer_more_than_a_ring_ahead_is_corruption(pair, hostile, tmp_path):
    front, back = pair
    front.push_batch([req(i) for i in range(3)])
    page = hostile(tmp_path / "ring")
    page["req_prod"] = 33  # RING_REQUEST_PROD_OVERFLOW: 33 > 32 with nothing answered
    msg = (r"backend: shared req_prod=0x00000021 is impossible"
           r" \(req_cons=0x00000000, rsp_prod_pvt=0x00000000, nr_ents=0x00000020\)")
    with pytest.raises(RingCorrupted, match=msg) as e:
        back.pop_batch()
    assert (e.value.prod, e.value.indices["req_cons"]) == (33, 0)
    for call in (back.pop, back.final_check, back.unconsumed, lambda: back.poll(1000)):
        with pytest.raises(RingCorrupted):
            call()
    assert back.statistics().pops == 0  # nothing was read past the bad index
    page["req_prod"] = 32  # a full ring is legitimate
    assert len(back.pop_batch()) == 32


def test_request_producer_moving_backwards_is_corruption(pair, hostile, tmp_path):
    front, back = pair
    front.push_batch([req(i) for i in range(5)])
    assert len(back.pop_batch()) == 5
    hostile(tmp_path / "ring")["req_prod"] = 2
    with pytest.raises(RingCorrupted, match="req_prod=0x00000002"):
        back.pop()


def test_response_producer_beyond_the_outstanding_requests_is_corruption(pair, hostile, tmp_path):
    front, back = pair
    front.push_batch([req(i) for i in range(2)])
    hostile(tmp_path / "ring")["rsp_prod"] = 3
    with pytest.raises(RingCorrupted, match=r"frontend: shared rsp_prod=0x00000003 is impossible"
                                            r" \(rsp_cons=0x00000000, req_prod_pvt=0x00000002"):
        front.pop()
    assert front.statistics().pops == 0


def test_attach_to_a_corrupted_page_is_refused(tmp_path, hostile):
    create_ring_file(tmp_path / "ring", 1, start=100)
    hostile(tmp_path / "ring")["req_prod"] = 100 + 40
    with pytest.raises(RingCorrupted, match="req_prod=0x0000008c"):
        BackRing.attach(tmp_path / "ring")
    with pytest.raises(RingCorrupted):
        FrontRing.attach(tmp_path / "ring")


@settings(max_examples=200, deadline=None)
@given(cons=st.integers(0, U32 - 1), answered=st.integers(0, 32), taken=st.integers(0, 32),
       prod=st.integers(0, U32 - 1))
def test_any_req_prod_is_either_served_within_bounds_or_refused(tmp_path_factory, cons, answered, taken, prod):
    """Whatever a hostile frontend writes, the backend reads only slots the
    frontend may legitimately have filled."""
    taken = max(taken, answered)
    d = tmp_path_factory.mktemp("h")
    create_ring_file(d / "ring", 1, start=(cons - taken) % U32)
    page = SharedPage(d / "ring")
    try:
        page["req_prod"] = cons
        with BackRing.attach(d / "ring") as back:
            back.pop_batch(taken)
            back.push_batch([Response(0, 0, 0, (0,) * 8)] * answered)
            page["req_prod"] = prod
            ahead = (prod - (cons - taken + answered)) % U32
            if ahead > 32 or (prod - cons) % U32 > ahead:
                with pytest.raises(RingCorrupted):
                    back.pop_batch()
            else:
                assert len(back.pop_batch()) == (prod - cons) % U32
    finally:
        page.close()


# -- lifetime -----------------------------------------------------------------------


def test_close_is_idempotent_and_final(tmp_path):
    front, back = make_pair(tmp_path)
    front.close()
    front.close()
    with pytest.raises(RingClosed, match="FrontRing on .* is closed"):
        front.push(req(0))
    with pytest.raises(RingClosed):
        front.shared_indices()
    assert front.closed and "closed" in repr(front)
    back.close()
    with pytest.raises(RingClosed):
        back.pop()


def test_nothing_leaks(tmp_path):
    def fds():
        return len(os.listdir("/proc/self/fd"))

    def maps():
        with open("/proc/self/maps") as f:
            return sum(str(tmp_path) in line for line in f)

    before = fds()
    for i in range(50):
        d = tmp_path / f"d{i}"
        d.mkdir()
        front, back = make_pair(d)
        a, b = EventChannel.pair()
        front.push(req(0))
        for x in (front, back, a, b):
            x.close()
    assert fds() == before
    assert maps() == 0
