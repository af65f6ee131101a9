"""Our ring is Xen's io/ring.h ring: a C peer written only against
/usr/include/xen/io/ring.h (tests/c/teeif_xen_peer.c) exchanges 1,000,000
entries with the Python ends, indices starting near 2**32 so they wrap, every
field of every entry checked on both sides."""

import shutil
import subprocess
from pathlib import Path

import pytest

from ring import (
    BackRing,
    EventChannel,
    EventChannelListener,
    FrontRing,
    PeerDied,
    create_ring_file,
    request_buffer,
    response_buffer,
)

XEN_RING_H = Path("/usr/include/xen/io/ring.h")
PEER_SRC = Path(__file__).parent / "c" / "teeif_xen_peer.c"
COUNT = 1_000_000
START = 2**32 - 1000  # the indices wrap after 1000 entries
HANG_GUARD = 120.0  # seconds without a notification: the peer is stuck, not slow
M64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15  # the same entry functions as teeif_xen_peer.c
RSP_MASK = 0xA5A5A5A5A5A5A5A5


def req_a(e):
    base = e * GOLDEN
    return [(base + k) & M64 for k in range(8)]


def rsp_a(e):
    return [((e * GOLDEN + k) & M64) ^ RSP_MASK ^ k for k in range(8)]


def rsp_status(e):
    return -22 if e % 5 == 0 else 0


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    if not XEN_RING_H.exists():
        pytest.skip(f"{XEN_RING_H} is missing: apt-get install libxen-dev (Xen's public headers)")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: apt-get install gcc")
    exe = tmp_path_factory.mktemp("peer") / "teeif_xen_peer"
    subprocess.run([gcc, "-O2", "-std=gnu11", "-Wall", "-o", str(exe), str(PEER_SRC)], check=True)
    return exe


@pytest.fixture
def domdir(tmp_path):
    d = tmp_path / "dom1"
    d.mkdir()
    return d


def finish(proc):
    try:
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def python_back_serves(back, chan, count):
    """Answer ``count`` requests, checking each; the raw batch API."""
    reqs = request_buffer(back.size)
    rsps = response_buffer(back.size)
    e = 0
    while e < count:
        n = back.pop_raw(reqs, min(back.size, count - e))
        if n == 0:
            if not back.final_check() and chan.wait(timeout=HANG_GUARD) == 0:
                pytest.fail(f"no request for {HANG_GUARD} s after entry {e}")
            continue
        for i in range(n):
            q = reqs[i]
            assert (q.id, q.vcpu, q.flags) == (e, e % 7, 0), f"request {e}"
            assert list(q.a) == req_a(e), f"request {e} registers"
            r = rsps[i]
            r.id = e
            r.status = rsp_status(e)
            r.flags = 0
            r.a = rsp_a(e)
            e += 1
        if back.push_raw(rsps, n):
            chan.notify()
    return e


def python_front_drives(front, chan, count):
    """Push ``count`` requests and check every response; the raw batch API."""
    reqs = request_buffer(front.size)
    rsps = response_buffer(front.size)
    sent = got = 0
    while got < count:
        k = min(front.free_requests, count - sent)
        for i in range(k):
            q = reqs[i]
            q.id = sent + i
            q.vcpu = (sent + i) % 7
            q.flags = 0
            q.a = req_a(sent + i)
        if k:
            sent += k
            if front.push_raw(reqs, k):
                chan.notify()
        n = front.pop_raw(rsps, front.size)
        for i in range(n):
            r = rsps[i]
            assert (r.id, r.status, r.flags) == (got, rsp_status(got), 0), f"response {got}"
            assert list(r.a) == rsp_a(got), f"response {got} registers"
            got += 1
        if k == 0 and n == 0 and not front.final_check():
            if chan.wait(timeout=HANG_GUARD) == 0:
                pytest.fail(f"no response for {HANG_GUARD} s after entry {got}")
    return got


def test_entry_functions_agree_with_the_c_peer():
    # The Python copies of the peer's entry functions, on a hand-computed value.
    assert req_a(1)[3] == (GOLDEN + 3) & M64
    assert rsp_a(1)[3] == ((GOLDEN + 3) & M64) ^ RSP_MASK ^ 3


def test_c_frontend_python_backend(peer, domdir):
    with BackRing.create(domdir / "ring", 1, start=START) as back, \
            EventChannelListener(domdir / "evtchn") as listener:
        proc = subprocess.Popen([str(peer), "front", str(domdir), str(COUNT)],
                                stderr=subprocess.PIPE, text=True)
        try:
            with listener.accept(timeout=HANG_GUARD) as chan:
                assert python_back_serves(back, chan, COUNT) == COUNT
        finally:
            rc, err = finish(proc)
        assert rc == 0, err
        idx = back.shared_indices()
        assert idx.req_prod == idx.rsp_prod == (START + COUNT) % 2**32
        st = back.statistics()
        assert st.pops == st.pushes == COUNT
        assert st.notifications_sent + st.notifications_suppressed == st.batches // 2


def test_python_frontend_c_backend(peer, domdir):
    create_ring_file(domdir / "ring", 1, start=START)
    proc = subprocess.Popen([str(peer), "back", str(domdir), str(COUNT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        with FrontRing.attach(domdir / "ring") as front, \
                EventChannel.connect(domdir / "evtchn") as chan:
            assert python_front_drives(front, chan, COUNT) == COUNT
            idx = front.shared_indices()
            assert idx.req_prod == idx.rsp_prod == (START + COUNT) % 2**32
    finally:
        rc, err = finish(proc)
    assert rc == 0, err


def test_c_backend_death_is_eof_for_python_frontend(peer, domdir):
    create_ring_file(domdir / "ring", 1, start=START)
    proc = subprocess.Popen([str(peer), "back", str(domdir), str(10**12)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        with FrontRing.attach(domdir / "ring") as front, \
                EventChannel.connect(domdir / "evtchn") as chan:
            assert python_front_drives(front, chan, 100) == 100
            proc.kill()
            proc.wait()
            with pytest.raises(PeerDied):
                # notifications the backend sent before it died come first
                # (EOF is reported once they are drained); a timeout (0)
                # ends the loop without PeerDied and fails the test
                while chan.wait(timeout=HANG_GUARD):
                    pass
            with pytest.raises(PeerDied):
                chan.notify()
    finally:
        finish(proc)


def test_c_frontend_death_is_eof_for_python_backend(peer, domdir):
    with BackRing.create(domdir / "ring", 1, start=START) as back, \
            EventChannelListener(domdir / "evtchn") as listener:
        proc = subprocess.Popen([str(peer), "front", str(domdir), str(10**12)],
                                stderr=subprocess.PIPE, text=True)
        try:
            with listener.accept(timeout=HANG_GUARD) as chan:
                assert python_back_serves(back, chan, 100) == 100
                proc.kill()
                proc.wait()
                with pytest.raises(PeerDied):
                    # the dead frontend may have left requests on the ring
                    while True:
                        back.pop_batch()
                        chan.wait(timeout=HANG_GUARD)
        finally:
            finish(proc)
