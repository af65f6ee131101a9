"""The transport floor: C ping-pong between two processes through the same
ring code and a real event channel, run from Python."""

import threading

import pytest

from ring import BackRing, EventChannel, FloorMismatch, FrontRing, PeerDied, Response, run_floor
from ring._lib import check, ffi, lib

HANG_GUARD = 60.0  # seconds: a stuck test, not a timing assertion


@pytest.mark.parametrize(("batch", "spin_ns"), [(1, 0), (32, 0), (4, 200_000)])
def test_floor_runs_and_returns_one_sample_per_round(tmp_path, batch, spin_ns):
    samples = run_floor(tmp_path, 300, batch=batch, spin_ns=spin_ns, start=2**32 - 100)
    assert len(samples) == 300
    assert all(s > 0 for s in samples)


def test_floor_refuses_a_batch_larger_than_the_ring(tmp_path):
    with pytest.raises(OSError, match="Invalid argument"):
        run_floor(tmp_path, 1, batch=33)


def test_floor_checks_every_response(tmp_path):
    # The C front against a Python back that answers one register wrong.
    with BackRing.create(tmp_path / "ring") as back, FrontRing.attach(tmp_path / "ring") as front:
        a, b = EventChannel.pair()
        samples = ffi.new("uint64_t[]", 3)
        result = []

        def frontend():
            result.append(lib.teeif_floor_front_run(front._c, a.fileno(), 3, 2, 0, samples))
            a.close()  # the backend loop below ends on end-of-file

        t = threading.Thread(target=frontend)
        t.start()
        with b, pytest.raises(PeerDied):
            while True:
                for q in back.pop_batch():
                    regs = [~x & (2**64 - 1) for x in q.a]
                    if q.id == 3:
                        regs[5] ^= 1
                    if back.push(Response(q.id, 0, 0, tuple(regs))):
                        b.notify()
                if not back.final_check():
                    b.wait(timeout=HANG_GUARD)
        t.join(HANG_GUARD)
    with pytest.raises(FloorMismatch):
        check(result[0], "floor front")
    assert samples[0] > 0 and samples[1] == 0  # the bad round was not recorded
