"""The per-call tracer: sampled calls, each stage a span, written as Trace
Event JSON (docs/performance.md, "Tracing a call").

One :data:`TRACER` per process. Code on the hot path reads one attribute,
``TRACER.on``, and does nothing else while it is False: sampling off costs
that check per stage boundary.

Sampling is decided once, by the platform, at the trap of a call's first
SMC (1 in ``every``; a call's RETURN_FROM_RPC traps follow it). The other
threads and processes do not sample: they trace what they are told is
sampled. Across the teeif ring the platform's frontend chooses the request
id (the protocol lets it choose any id, docs/protocol.md) and sets
:data:`TRACE_ID_BIT` in the id of a sampled call; the daemon traces a
request whose id has it. Across the SMC gate the daemon does the same with
the id of a hypercall it makes for a sampled call, and the gate thread
traces that hypercall. Nothing else crosses: the wire formats are unchanged.

Timestamps are ``time.perf_counter_ns()``, which is
``clock_gettime(CLOCK_MONOTONIC)`` on Linux (``time.get_clock_info``): one
clock for every process of the machine, so the spans of the platform and
of the daemon are on one time axis. The document records the clock.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TRACE_ID_BIT", "DEFAULT_EVERY", "DEFAULT_MAX_EVENTS", "TracedCall", "Tracer", "TRACER",
           "clock_description", "now_ns", "trace_document", "write_document"]

#: Set in a teeif request id (by the platform's frontend) or an SMC-gate
#: hypercall id (by the daemon's gate client) when the call is sampled.
TRACE_ID_BIT = 1 << 63
#: Sample one call in this many unless told otherwise.
DEFAULT_EVERY = 100
#: Events a process keeps at most; later ones are counted as dropped.
DEFAULT_MAX_EVENTS = 200_000

now_ns = time.perf_counter_ns


def clock_description() -> str:
    """What ``time.perf_counter_ns`` reads here, e.g.
    ``clock_gettime(CLOCK_MONOTONIC)``."""
    return time.get_clock_info("perf_counter").implementation


class TracedCall:
    """One sampled call, as one thread of one process sees it. ``key`` names
    the call across processes: ("teeif", domid, request id) or ("gate",
    hypercall id); ``seq`` is the platform's sample number (None elsewhere)."""

    __slots__ = ("key", "seq", "scope", "args")

    def __init__(self, key: tuple, *, seq: int | None = None, scope: str | None = None,
                 args: dict | None = None) -> None:
        self.key = key
        self.seq = seq
        self.scope = scope
        self.args = args or {}


class Tracer:
    """Spans of sampled calls in this process, kept in memory until written.

    ``on`` is the only attribute the hot path reads while tracing is off.
    ``scope`` labels the calls sampled from now on (the benchmark sets it to
    the placement whose block runs): each scope becomes a process of its own
    in the document.
    """

    def __init__(self) -> None:
        self.on = False
        self.every = DEFAULT_EVERY
        self.scope: str | None = None
        self.labels: dict[str, object] = {}  # added to the args of every call sampled from now on
        self.max_events = DEFAULT_MAX_EVENTS
        self.dropped = 0
        self._count = itertools.count()
        self._events: list[tuple] = []
        self._local = threading.local()
        self._threads: dict[int, str] = {}
        self._pid = os.getpid()
        self.process_name = "process"

    # -- switching -----------------------------------------------------------------

    def enable(self, every: int = DEFAULT_EVERY, *, process_name: str | None = None,
               max_events: int = DEFAULT_MAX_EVENTS) -> None:
        """Start tracing: sample 1 call in ``every`` (this process samples
        only if it is the platform; the others trace what is marked)."""
        if type(every) is not int or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.every = every
        self.max_events = max_events
        self._pid = os.getpid()
        if process_name is not None:
            self.process_name = process_name
        self._count = itertools.count()
        self.on = True

    def disable(self) -> None:
        self.on = False

    def clear(self) -> None:
        """Forget every event recorded (tracing stays as it is)."""
        self._events = []
        self._threads = {}
        self.dropped = 0

    # -- sampling and the current call -----------------------------------------------

    def sample(self) -> int | None:
        """The platform's decision for a new call: its sample number, or None."""
        n = next(self._count)  # atomic under the interpreter lock
        return n if n % self.every == 0 else None

    def current(self) -> TracedCall | None:
        """The sampled call this thread is working on, if any."""
        return getattr(self._local, "call", None)

    def set_current(self, call: TracedCall | None) -> TracedCall | None:
        """Make ``call`` this thread's current call; returns the previous one."""
        prev = getattr(self._local, "call", None)
        self._local.call = call
        return prev

    @property
    def local(self) -> threading.local:
        """Per-thread state of the trap path (a call waiting for its RPC's resume)."""
        return self._local

    # -- recording -------------------------------------------------------------------

    def _tid(self) -> int:
        tid = getattr(self._local, "tid", None)
        if tid is None:
            tid = self._local.tid = threading.get_native_id()
            self._threads[tid] = threading.current_thread().name
        return tid

    def span(self, call: TracedCall, name: str, cat: str, t0: int, t1: int, args: dict | None = None) -> None:
        """A complete span ("X") of ``call`` on this thread, ``t0``..``t1`` in
        perf_counter_ns. Kept as is (the args are merged when written), so
        that a sampled call pays little for its own spans."""
        if len(self._events) >= self.max_events:
            self.dropped += 1
            return
        self._events.append(("X", name, cat, t0, t1 - t0, self._tid(), call, args, None))

    def flow(self, call: TracedCall, phase: str, flow_id: str, name: str, ts: int) -> None:
        """One end of an arrow between threads: ``phase`` "s" (start, at the
        end of the sending span) or "f" (finish, inside the receiving span)."""
        if len(self._events) >= self.max_events:
            self.dropped += 1
            return
        self._events.append((phase, name, "handoff", ts, 0, self._tid(), call, None, flow_id))

    # -- output ----------------------------------------------------------------------

    def events(self) -> list[dict]:
        """The Trace Event objects recorded, with metadata events naming each
        process (one per scope) and thread."""
        scopes: dict[str | None, int] = {}
        out: list[dict] = []
        used: set[tuple[int, int]] = set()
        for ph, name, cat, t0, dur, tid, call, args, fid in list(self._events):
            scope = call.scope
            pid = scopes.get(scope)
            if pid is None:
                pid = scopes[scope] = self._pid if scope is None else _scoped_pid(self._pid, len(scopes) + 1)
            used.add((pid, tid))
            ev: dict[str, Any] = {"name": name, "cat": cat, "ph": ph, "ts": t0 / 1000, "pid": pid, "tid": tid}
            if ph == "X":
                ev["dur"] = dur / 1000
                a = dict(call.args)
                if scope is not None:
                    a["scope"] = scope
                if args:
                    a.update(args)
                ev["args"] = {k: v() if callable(v) else v for k, v in a.items()}
            else:
                ev["id"] = fid if scope is None else f"{scope}/{fid}"
                if ph == "f":
                    ev["bp"] = "e"  # bound to the enclosing span at its timestamp
            out.append(ev)
        meta = []
        for scope, pid in scopes.items():
            label = self.process_name if scope is None else f"{self.process_name} [{scope}]"
            meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                         "args": {"name": f"{label} (pid {self._pid})"}})
        for pid, tid in sorted(used):
            meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                         "args": {"name": self._threads.get(tid, str(tid))}})
        return meta + out

    def document(self) -> dict:
        """This process's events as a Trace Event JSON document."""
        return trace_document(self.events(), dropped=self.dropped)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`document` to ``path`` (atomically: a reader never
        sees half a file)."""
        return write_document(self.document(), path)


def _scoped_pid(pid: int, k: int) -> int:
    # a process per scope: distinct from real pids (Linux's pid_max is at most 2**22)
    return (k << 22) | pid


def trace_document(events: Iterable[dict], *, dropped: int = 0) -> dict:
    return {"traceEvents": list(events), "displayTimeUnit": "ns",
            "otherData": {"clock": clock_description(), "ts_unit": "us (perf_counter_ns / 1000)",
                          "dropped_events": dropped}}


def write_document(doc: dict, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return path


#: The tracer of this process.
TRACER = Tracer()
