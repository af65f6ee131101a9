"""Microbenchmark of the teeif transport (not a test): ``python -m ring.microbench``.

Ping-pong between two processes through a one-page ring and a real event
channel: the backend echoes every request. For each path it prints round-trip
latency percentiles (batch of 1) and batched throughput (a full ring per
round), each with the consumers sleeping on the event channel at once and with
adaptive polling (spin on the ring before sleeping, Xen netfront "smartpoll"):

- ``C floor``: both ends in C, each process entering C once (ring.run_floor);
- ``Python``: both ends in Python over the raw batch APIs, so the figures are
  the Python ring API's cost with no per-entry work beyond setting the ids.

Percentiles come from an HdrHistogram (the ``bench`` extra: hdrhistogram).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING

from ring._back import BackRing
from ring._entries import request_buffer, response_buffer
from ring._evtchn import EventChannel, EventChannelListener
from ring._floor import EVTCHN_FILE, RING_FILE, pinned, run_floor
from ring._front import FrontRing
from ring._lib import ffi

if TYPE_CHECKING:
    from _typeshed import StrPath

__all__ = ["run_python_pingpong", "main"]

_READY_TIMEOUT = 30.0
_WARMUP = 200  # rounds dropped from the front of every run (page faults, caches)


def serve_python_back(domdir: str, entries: int, spin_ns: int, ready: Event, cpu: int | None = None) -> None:
    """The Python backend process: echo ``entries`` requests, one memmove per batch."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    where = Path(domdir)
    with BackRing.create(where / RING_FILE, 1) as back, \
            EventChannelListener(where / EVTCHN_FILE) as listener:
        ready.set()
        with listener.accept(timeout=_READY_TIMEOUT) as chan:
            reqs = request_buffer(back.size)
            rsps = response_buffer(back.size)
            size, served = back.size, 0
            while served < entries:
                n = back.pop_raw(reqs, size)
                if n:
                    # struct teeif_response shares teeif_request's layout up to
                    # status/vcpu: an echo, with status = the request's vcpu (0).
                    ffi.memmove(rsps, reqs, n * 80)
                    if back.push_raw(rsps, n):
                        chan.notify()
                    served += n
                elif not back.poll(spin_ns):
                    chan.wait()


def run_python_pingpong(domdir: StrPath, rounds: int, *, batch: int = 1, spin_ns: int = 0,
                        cpus: tuple[int, int] | None = None) -> list[int]:
    """Python frontend here, Python backend in a spawned process. Returns the
    round-trip time of each round in ns (``batch`` requests out, all back).
    ``cpus``: (frontend CPU, backend CPU), as for ``ring.run_floor``."""
    front_cpu, back_cpu = cpus or (None, None)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=serve_python_back,
                       args=(str(domdir), rounds * batch, spin_ns, ready, back_cpu))
    proc.start()
    try:
        if not ready.wait(_READY_TIMEOUT):
            raise TimeoutError("python backend not ready")
        samples = [0] * rounds
        with FrontRing.attach(Path(domdir) / RING_FILE) as front, \
                EventChannel.connect(Path(domdir) / EVTCHN_FILE) as chan, pinned(front_cpu):
            reqs = request_buffer(batch)
            rsps = response_buffer(batch)
            clock = time.perf_counter_ns
            next_id = 0
            for r in range(rounds):
                t0 = clock()
                for i in range(batch):
                    reqs[i].id = next_id + i
                if front.push_raw(reqs, batch):
                    chan.notify()
                got = 0
                while got < batch:
                    n = front.pop_raw(rsps + got, batch - got)
                    if n:
                        got += n
                    elif not front.poll(spin_ns):
                        chan.wait()
                if rsps[batch - 1].id != next_id + batch - 1:
                    raise RuntimeError(f"round {r}: response out of order")
                next_id += batch
                samples[r] = clock() - t0
        proc.join(_READY_TIMEOUT)
        return samples
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def _summarise(name: str, batch: int, samples: list[int]) -> str:
    from hdrh.histogram import HdrHistogram  # the bench extra

    kept = samples[_WARMUP:] if len(samples) > 2 * _WARMUP else samples
    hist = HdrHistogram(1, 60 * 10**9, 3)
    for s in kept:
        hist.record_value(s)
    pct = [hist.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)]
    rate = batch * len(kept) / (sum(kept) / 1e9)
    return (f"{name:<26} {batch:>5} " + " ".join(f"{v:>9.1f}" for v in pct)
            + f" {hist.get_max_value() / 1000:>9.1f} {rate:>13,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ring.microbench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="ping-pong rounds per latency run")
    parser.add_argument("--batch-rounds", type=int, default=5_000, help="rounds per throughput run")
    # The window must outlast the peer's wake-up from sleep (~50-100 µs on the
    # development VM), or both ends settle into sleeping on every round.
    parser.add_argument("--spin-us", type=float, default=200.0, help="polling window before sleeping")
    parser.add_argument("--cpus", default="0,1",
                        help="FRONT,BACK CPUs to pin the two processes to, or 'none'")
    parser.add_argument("--only", choices=("floor", "python"), help="run one path only")
    args = parser.parse_args(argv)
    spin = int(args.spin_us * 1000)
    cpus = None if args.cpus == "none" else tuple(int(c) for c in args.cpus.split(","))
    if cpus is not None and (len(cpus) != 2 or not set(cpus) <= os.sched_getaffinity(0)):
        parser.error(f"--cpus wants two CPUs of {sorted(os.sched_getaffinity(0))}, got {args.cpus}")
    batch_full = 32  # one page: the whole ring per round
    print(f"teeif ping-pong, 1-page ring ({batch_full} slots), two processes; "
          f"latency in µs per round trip, throughput in entries/s; polling window {args.spin_us:g} µs; "
          f"CPUs (front, back): {cpus or 'unpinned'}")
    print(f"{'path':<26} {'batch':>5} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>9} {'entries/s':>13}")
    runs = []
    for path, runner in (("C floor", run_floor), ("Python", run_python_pingpong)):
        if args.only and not path.lower().startswith(args.only[:5]):
            continue
        for mode, spin_ns in (("sleep", 0), ("poll", spin)):
            runs.append((f"{path}, {mode}", runner, 1, args.rounds, spin_ns))
            runs.append((f"{path}, {mode}", runner, batch_full, args.batch_rounds, spin_ns))
    for name, runner, batch, rounds, spin_ns in runs:
        with tempfile.TemporaryDirectory(prefix="teeif-bench-") as d:
            samples = runner(d, rounds, batch=batch, spin_ns=spin_ns, cpus=cpus)
        print(_summarise(name, batch, samples), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
