"""The transport floor: ping-pong of teeif entries between two processes
through the same C ring code and a real SOCK_SEQPACKET event channel, with
no Python in the loop (each process enters C once: teeif_floor_front_run /
teeif_floor_back_run in ring._ring). The benchmark reports it beside the
real paths as the cost no teeif implementation here can beat."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING

from ring._back import BackRing
from ring._evtchn import EventChannel, EventChannelListener
from ring._front import FrontRing
from ring._lib import check, ffi, lib

if TYPE_CHECKING:
    from _typeshed import StrPath

__all__ = ["run_floor", "serve_floor_back"]

RING_FILE = "ring"  # docs/protocol.md: <runtime_dir>/dom<domid>/ring
EVTCHN_FILE = "evtchn"  # docs/protocol.md: <runtime_dir>/dom<domid>/evtchn
_READY_TIMEOUT = 30.0  # seconds for the spawned backend to come up


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run this process on ``cpu`` for the duration (None: leave it be)."""
    if cpu is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def serve_floor_back(domdir: str, entries: int, spin_ns: int, ring_pages: int, start: int,
                     ready: Event, cpu: int | None = None) -> None:
    """The backend process: create the ring and channel, accept one
    frontend, echo ``entries`` requests in C, exit."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    where = Path(domdir)
    with BackRing.create(where / RING_FILE, ring_pages, start=start) as back, \
            EventChannelListener(where / EVTCHN_FILE) as listener:
        ready.set()
        with listener.accept(timeout=_READY_TIMEOUT) as chan:
            check(lib.teeif_floor_back_run(back._c, chan.fileno(), entries, spin_ns), "floor back")


def run_floor(domdir: StrPath, rounds: int, *, batch: int = 1, spin_ns: int = 0, ring_pages: int = 1,
              start: int = 0, cpus: tuple[int, int] | None = None) -> list[int]:
    """Run the floor in ``domdir`` (an empty directory): a spawned backend
    process and this process as the frontend. Returns the ``rounds`` round-trip
    times in nanoseconds; each round is ``batch`` requests pushed at once and
    all their responses received. ``spin_ns``: polling window on both sides
    before sleeping on the event channel. ``cpus``: (frontend CPU, backend
    CPU) to pin the two processes to, for figures that do not depend on where
    the scheduler happened to put them."""
    where = os.fspath(domdir)
    front_cpu, back_cpu = cpus or (None, None)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=serve_floor_back,
                       args=(where, rounds * batch, spin_ns, ring_pages, start, ready, back_cpu))
    proc.start()
    try:
        if not ready.wait(_READY_TIMEOUT):
            raise TimeoutError(f"floor backend not ready after {_READY_TIMEOUT} s")
        samples = ffi.new("uint64_t[]", rounds)
        with FrontRing.attach(Path(where) / RING_FILE) as front, \
                EventChannel.connect(Path(where) / EVTCHN_FILE) as chan, pinned(front_cpu):
            check(lib.teeif_floor_front_run(front._c, chan.fileno(), rounds, batch, spin_ns, samples),
                  "floor front")
        proc.join(_READY_TIMEOUT)
        if proc.exitcode != 0:
            raise RuntimeError(f"floor backend exited with {proc.exitcode}")
        return list(samples)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
