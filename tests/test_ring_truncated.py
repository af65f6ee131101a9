"""A ring file truncated under its mapping fails that ring, never the process
(docs/protocol.md, "A peer that truncates the ring file").

Every access to a mapped ring is made in ring._ring's C code under a SIGBUS
guard: a fault in the guarded mapping becomes RingTruncated for that ring
end (sticky), with the offset that faulted; a SIGBUS anywhere else still
goes to the handler that was there before (faulthandler, or the default
action that kills the process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from ring import PAGE_SIZE, BackRing, BackSpinSet, FrontRing, Request, Response, RingTruncated


def req(i: int) -> Request:
    return Request(i, 0, 0, (i,) * 8)


@pytest.fixture
def pair(tmp_path):
    path = tmp_path / "ring"
    back = BackRing.create(path, 2)
    front = FrontRing.attach(path)
    yield path, front, back
    front.close()
    back.close()


def test_every_operation_on_a_ring_truncated_to_nothing_raises_ring_truncated(pair):
    path, front, back = pair
    for i in range(3):
        front.push(req(i))
    assert [r.id for r in back.pop_batch(1)] == [0]
    os.truncate(path, 0)
    msg = (f"backend: the ring file {path} shrank under its 8192-byte mapping (access at offset "
           f"0x0 faulted with SIGBUS; the file is now 0 bytes): the peer truncated it")
    with pytest.raises(RingTruncated) as e:
        back.pop_batch()
    assert str(e.value) == msg
    assert (e.value.side, e.value.path, e.value.offset, e.value.mapped) == ("backend", str(path), 0, 8192)
    for op in (back.pop, back.unconsumed, back.final_check, lambda: back.poll(1000),
               lambda: back.spin(1000), back.recheck_notify, lambda: back.push(Response(0, 0, 0, (0,) * 8))):
        with pytest.raises(RingTruncated, match=r"^backend: .*offset 0x0 faulted"):
            op()
    for op in (lambda: front.push(req(9)), front.pop_batch, front.unconsumed, front.final_check,
               lambda: front.poll(1000), lambda: front.spin(1000)):
        with pytest.raises(RingTruncated, match=r"^frontend: .*the file is now 0 bytes"):
            op()
    with pytest.raises(RingTruncated, match=r"^ring: .*at an unknown offset"):
        back.shared_indices()  # Python never reads the mapping itself


def test_a_ring_that_shrank_once_stays_failed_when_the_file_grows_back(pair):
    path, front, back = pair
    os.truncate(path, 0)
    with pytest.raises(RingTruncated):
        back.unconsumed()
    os.truncate(path, 2 * PAGE_SIZE)  # readable again, all zero: not the ring it was
    with pytest.raises(RingTruncated, match="offset 0x0"):  # the first fault's offset, not re-read
        back.unconsumed()
    assert front.unconsumed() == 0  # the other end never faulted: its mapping reads zeros now
    back.close()  # unmapping a truncated ring is fine
    assert back.closed


def test_a_partly_truncated_ring_fails_at_the_first_access_to_a_lost_page(pair):
    path, front, back = pair
    os.truncate(path, PAGE_SIZE)  # page 1 is gone: slots from 51 on ((4096 - 64) / 80 = 50.4)
    pushed = 0
    with pytest.raises(RingTruncated) as e:
        for i in range(front.size):
            front.push(req(i))
            pushed += 1
    assert pushed == 50  # slots 0..49 lie in page 0; slot 50 straddles the end of the file
    assert PAGE_SIZE <= e.value.offset < 2 * PAGE_SIZE and e.value.mapped == 2 * PAGE_SIZE
    assert e.value.side == "frontend"
    # the backend takes the 50 requests from page 0, then faults on slot 50 if it ever gets there
    assert [r.id for r in back.pop_batch(50)] == list(range(50))


def test_a_spin_over_many_rings_reports_the_truncated_one_to_its_owner(tmp_path):
    rings = []
    for i in range(3):
        back = BackRing.create(tmp_path / f"r{i}")
        rings.append((FrontRing.attach(tmp_path / f"r{i}"), back))
    spin = BackSpinSet()
    slots = [spin.add(back) for _, back in rings]
    try:
        os.truncate(tmp_path / "r1", 0)
        rings[2][0].push(req(7))
        assert sorted(spin.spin(10_000_000)) == [slots[1], slots[2]]  # work, and a ring to report
        with pytest.raises(RingTruncated, match="r1"):
            rings[1][1].pop_batch()
        assert [r.id for r in rings[2][1].pop_batch()] == [7]
        spin.discard(slots[1])
        rings[0][0].push(req(3))
        assert spin.spin(10_000_000) == [slots[0]]
    finally:
        for front, back in rings:
            front.close()
            back.close()


def test_the_guard_is_per_thread(tmp_path):
    """One thread's rings fault over and over while another thread's ring
    keeps working: each thread jumps back only into its own guarded call."""
    good = BackRing.create(tmp_path / "good")
    good_front = FrontRing.attach(tmp_path / "good")
    results = {"bad": [], "good": 0}
    barrier = threading.Barrier(2)

    def on_bad():
        barrier.wait()
        for i in range(300):
            path = tmp_path / f"bad{i}"
            with BackRing.create(path, 2) as bad:
                os.truncate(path, 0)
                try:
                    bad.pop_batch()
                except RingTruncated as e:
                    results["bad"].append(e.offset)
            path.unlink()

    def on_good():
        barrier.wait()
        for i in range(3000):
            good_front.push(req(i))
            got = good.pop_batch()
            good.push_batch([Response(r.id, 0, 0, r.a) for r in got])
            results["good"] += len(good_front.pop_batch())

    threads = [threading.Thread(target=on_bad), threading.Thread(target=on_good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["bad"] == [0] * 300 and results["good"] == 3000
    good.close()
    good_front.close()


# -- faults that are not ours ------------------------------------------------------------------

# A child process: map a ring (installs the guard's handler), then fault
# outside any guard: a mapping of another truncated file, read with ctypes.
_FOREIGN = textwrap.dedent("""\
    import ctypes, faulthandler, mmap, os, sys
    from ring import BackRing
    d = sys.argv[1]
    ring = BackRing.create(os.path.join(d, "ring"))
    with open(os.path.join(d, "other"), "wb") as f:
        f.write(b"x" * 4096)
    fd = os.open(os.path.join(d, "other"), os.O_RDWR)
    m = mmap.mmap(fd, 4096)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    os.truncate(os.path.join(d, "other"), 0)
    print("faulting", flush=True)
    ctypes.string_at(addr, 1)
    print("survived", flush=True)
    """)


def _child(tmp_path, code: str, *xopts: str) -> subprocess.CompletedProcess:
    # -P: the installed package, not the source tree the suite runs from (a
    # plain `pip install .` leaves no built extension in ring/ there)
    return subprocess.run([sys.executable, "-P", *xopts, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONFAULTHANDLER=""))


@pytest.mark.parametrize("xopts", [(), ("-X", "faulthandler")], ids=["default-action", "faulthandler"])
def test_a_sigbus_outside_any_ring_goes_to_the_handler_before_ours(tmp_path, xopts):
    r = _child(tmp_path, _FOREIGN, *xopts)
    assert r.returncode == -7, (r.returncode, r.stdout, r.stderr)  # killed by SIGBUS, as without us
    assert r.stdout == "faulting\n"
    # faulthandler, installed at start-up (before our handler), still reports it
    assert ("Fatal Python error: Bus error" in r.stderr) == bool(xopts), r.stderr


def test_faulthandler_enabled_after_the_first_ring_still_leaves_the_fault_to_us(tmp_path):
    """faulthandler.enable() after our handler puts its own in front: it
    reports the fault, then passes it on with raise(); we recognise a SIGBUS
    this process raised during a guarded access as ours (its address unknown)."""
    code = textwrap.dedent("""\
        import faulthandler, os, sys
        from ring import BackRing, RingTruncated
        path = os.path.join(sys.argv[1], "ring")
        ring = BackRing.create(path)
        faulthandler.enable()
        os.truncate(path, 0)
        for _ in range(2):
            try:
                ring.pop_batch()
            except RingTruncated as e:
                print("RingTruncated", e.offset, flush=True)
        """)
    r = _child(tmp_path, code)
    assert r.returncode == 0, (r.stdout, r.stderr)
    # the first fault went through faulthandler (its report on stderr); the
    # second never touched the mapping (the end is failed for good)
    assert r.stdout == "RingTruncated None\nRingTruncated None\n"
    assert r.stderr.count("Fatal Python error: Bus error") == 1, r.stderr
