"""Fuzz harness: the backend of a teeif ring (``ring.BackRing``) against a
frontend that writes anything into the shared page (indices, event
indices, entries) between the backend's operations, including a backend
re-attaching to a corrupted ring after a restart.

Property: every operation either works or raises the ring's defined errors
(``RingCorrupted`` for impossible indices — then the backend gives up on the
ring, as the daemon does — ``TooManyResponses`` for pushing more responses
than requests taken); a batch never holds more than a ring's worth of
requests, the backend never owes more than a ring's worth of responses, and
``unconsumed`` never claims more than a ring's worth.

    python tests/fuzz/ring_entries.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import sys
from pathlib import Path

from _runner import Reader, main

import ring

NAME = "ring_entries"
U32 = 0xFFFFFFFF


def make_one_input(workdir: Path):
    counter = itertools.count()

    def one_input(data: bytes) -> None:
        rd = Reader(data)
        pages = 1 + rd.u8() % 2
        start = rd.u32()
        path = workdir / f"ring-{next(counter)}"
        back = ring.BackRing.create(path, pages, start=start)
        size = ring.PAGE_SIZE * pages
        fd = os.open(path, os.O_RDWR)
        try:
            _ops(rd, back, path, fd, size)
        finally:
            os.close(fd)
            back.close()
            path.unlink()

    return one_input


def _ops(rd: Reader, back, path, fd: int, size: int) -> None:
    nr = back.size
    rings = [back]
    for _ in range(64):
        if not rd.remaining():
            return
        op = rd.u8() % 8
        b = rings[-1]
        try:
            if op == 0:  # the frontend writes anything anywhere in the shared pages (never past them)
                where = rd.u16() % size
                os.pwrite(fd, rd.take(rd.u8())[:size - where], where)
            elif op == 1:  # ... or a plausible req_prod
                (req_prod,) = struct.unpack_from("<I", os.pread(fd, 4, 0))
                os.pwrite(fd, struct.pack("<I", (req_prod + rd.u8() % (nr + 2) - 1) & U32), 0)
            elif op == 2:
                limit = rd.u8() % (nr + 4)
                batch = b.pop_batch(limit or None)
                assert len(batch) <= (limit or nr) and len(batch) <= nr
                for req in batch:
                    assert 0 <= req.id <= 2**64 - 1 and 0 <= req.vcpu <= U32 and len(req.a) == 8
            elif op == 3:
                n = rd.u8() % (nr + 2)
                owed = b.owed
                try:
                    b.push_batch([ring.Response(i, 0, 0, (i,) * 8) for i in range(n)])
                    assert n <= owed, (n, owed)
                except ring.TooManyResponses:
                    assert n > owed, (n, owed)
            elif op == 4:
                assert 0 <= b.unconsumed() <= nr
            elif op == 5:
                b.final_check()
            elif op == 6:
                b.poll(0)
            else:  # the daemon restarted: a new backend attaches to whatever is there
                rings.append(ring.BackRing.attach(path))
            assert 0 <= b.owed <= nr, b.owed
        except ring.RingCorrupted:
            return  # defined: the daemon closes this domain's channel


def seeds() -> list[bytes]:
    return [
        bytes([0, 0, 0, 0, 0]) + bytes([1, 3, 2, 0, 3, 3, 4, 5]),
        bytes([0]) + struct.pack("<I", 0xFFFFFFF0) + bytes([1, 34, 2, 0, 4]),
        bytes([1, 0, 0, 0, 0]) + bytes([0, 64, 0, 16]) + bytes(range(16)) + bytes([2, 0, 7, 2, 0]),
        bytes([0, 1, 0, 0, 0]) + bytes([1, 40, 2, 5, 3, 9]),
    ]


@contextlib.contextmanager
def target(workdir):
    yield make_one_input(Path(workdir))


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds, max_len=1024))
