"""Reading traces: merge the documents of several processes, find each
sampled call's spans in every process, and the per-stage table
(docs/performance.md, "Tracing a call").

A call's spans are found by what its processes share: the platform's spans
carry the sample number (``call``), the teeif request id the frontend chose
(``id`` on its "ring push") and the scope; the daemon's carry the same
request id and domid; the gate thread's carry the hypercall id the daemon's
"gate push" names.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .tracer import trace_document

__all__ = ["STAGES", "HANDOFFS", "CallTrace", "load_trace", "merge_documents", "calls_in", "stage_table"]

#: (thread, span name, what it is), in the order of a call.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("vCPU", "trap", "the guest's trapped SMC, trap to resume (the whole call as the guest sees it)"),
    ("vCPU", "mediate", "el2: the mediator core in the vCPU's thread"),
    ("vCPU", "translate", "el2: copy-in, checks and translation of a standard call's argument"),
    ("vCPU", "OP-TEE", "el2: the OP-TEE model's execution of the SMC"),
    ("vCPU", "RPC", "el2: the mediator's handling of an RPC return"),
    ("vCPU", "copy back", "el2: output fields copied back to the guest"),
    ("vCPU", "ring push", "stubdom: teeif request pushed (+ notification if the daemon sleeps)"),
    ("vCPU", "wait", "stubdom: from the push to the answer popped (spinning or asleep)"),
    ("vCPU", "sleep", "stubdom: asleep on the event channel within the wait"),
    ("vCPU", "ring pop", "stubdom: teeif response popped by the receiving vCPU thread"),
    ("vCPU", "resume", "stubdom: from the pop to the guest resuming"),
    ("daemon", "ring pop", "the daemon's pop of the request batch"),
    ("daemon", "serve", "the daemon's handling of the call: policy, mediator, statistics"),
    ("daemon", "policy", "policy check (rate, function class)"),
    ("daemon", "mediate", "the mediator core, gate hypercalls included"),
    ("daemon", "translate", "copy-in, checks and translation of a standard call's argument"),
    ("daemon", "gate hypercall", "one SMC-gate hypercall, as the daemon waits for it"),
    ("daemon", "gate push", "gate request pushed (+ notification)"),
    ("daemon", "gate wait", "from the gate push to the gate's answer popped"),
    ("daemon", "RPC", "the mediator's handling of an RPC return"),
    ("daemon", "copy back", "output fields copied back to the guest"),
    ("daemon", "journal", "journal records of a call that changes state"),
    ("daemon", "stats", "per-domain statistics"),
    ("daemon", "reply push", "teeif response pushed (+ notification if the vCPU sleeps)"),
    ("gate", "gate pop", "the gate thread's pop of the hypercall"),
    ("gate", "hypercall", "the gate's checks, client ID stamped, and the SMC"),
    ("gate", "OP-TEE", "the OP-TEE model's execution of the SMC"),
    ("gate", "gate push", "the gate's answer pushed (+ notification)"),
    ("vCPU", "guest RPC", "the guest's own handling of an RPC, from its return to the resume's trap"),
)

#: The four handoffs between Python threads of a stub-domain call:
#: (name, (thread, span) whose end sends, (thread, span) whose end receives).
HANDOFFS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("vCPU → daemon", ("vCPU", "ring push"), ("daemon", "ring pop")),
    ("daemon → gate thread", ("daemon", "gate push"), ("gate", "gate pop")),
    ("gate thread → daemon", ("gate", "gate push"), ("daemon", "gate wait")),
    ("daemon → vCPU", ("daemon", "reply push"), ("vCPU", "ring pop")),
)

_WHERE = {"vcpu": "vCPU", "daemon": "daemon", "gate": "gate"}


def load_trace(path: str | os.PathLike[str]) -> dict:
    """A Trace Event JSON document (object form) from ``path``."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise ValueError(f"{path}: not a Trace Event JSON document (no traceEvents list)")
    return doc


def merge_documents(docs: Sequence[dict], labels: Sequence[str | None] | None = None) -> dict:
    """One document of several processes' documents. ``labels[i]``, when
    given, is the scope of every call in ``docs[i]`` (a daemon serving one
    placement): it is added to its process names, its spans' args and its
    flow ids, as the platform's tracer does for its own scopes."""
    labels = list(labels) if labels is not None else [None] * len(docs)
    events: list[dict] = []
    dropped = 0
    for doc, label in zip(docs, labels):
        dropped += doc.get("otherData", {}).get("dropped_events", 0)
        for ev in doc["traceEvents"]:
            if label is not None:
                ev = dict(ev)
                if ev.get("ph") == "M" and ev.get("name") == "process_name":
                    ev["args"] = {"name": f"{ev['args']['name']} [{label}]"}
                elif ev.get("ph") == "X":
                    ev["args"] = {**ev.get("args", {}), "scope": label}
                elif ev.get("ph") in ("s", "f"):
                    ev["id"] = f"{label}/{ev['id']}"
            events.append(ev)
    return trace_document(events, dropped=dropped)


@dataclass
class Span:
    where: str  # vCPU | daemon | gate
    name: str
    t0: float  # µs
    t1: float
    pid: int
    tid: int
    args: dict

    @property
    def dur(self) -> float:
        return self.t1 - self.t0


@dataclass
class CallTrace:
    """One sampled call, every process's spans of it."""

    scope: str | None
    seq: int
    fn: str
    spans: list[Span] = field(default_factory=list)

    @property
    def start(self) -> float:
        return min(s.t0 for s in self.spans)

    def first(self, where: str, name: str) -> Span | None:
        got = [s for s in self.spans if s.where == where and s.name == name]
        return min(got, key=lambda s: s.t0) if got else None

    def stages(self) -> dict[tuple[str, str], float]:
        """(thread, span) -> µs, summed over the call's spans of that name
        (a call with RPCs traps several times)."""
        out: dict[tuple[str, str], float] = defaultdict(float)
        for s in self.spans:
            out[(s.where, s.name)] += s.dur
        return dict(out)

    def handoffs(self) -> dict[str, float]:
        """µs from the sender starting its push to the receiver holding the
        entry (its pop's end), for each handoff of the call's first crossing
        that the trace has. (From the push's start: a spinning receiver may
        pop the entry before the sender's push span, which includes its
        notification decision, has ended.)"""
        out = {}
        for name, send, recv in HANDOFFS:
            a = self.first(*send)
            if a is None:
                continue
            after = [s for s in self.spans if (s.where, s.name) == recv and s.t1 >= a.t0]
            if after:
                out[name] = min(after, key=lambda s: s.t1).t1 - a.t0
        return out


def calls_in(doc: dict) -> list[CallTrace]:
    """The sampled calls of a (merged) document, by start time."""
    events = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
    # which thread is what: its spans' categories
    where_of: dict[tuple[int, int], str] = {}
    for e in events:
        w = _WHERE.get(e.get("cat", ""))
        if w is not None:
            where_of.setdefault((e["pid"], e["tid"]), w)

    def span(e: dict) -> Span:
        return Span(where_of.get((e["pid"], e["tid"]), "vCPU"), e["name"], e["ts"], e["ts"] + e["dur"],
                    e["pid"], e["tid"], e.get("args", {}))

    platform: dict[tuple, CallTrace] = {}
    daemon: dict[tuple, list[Span]] = defaultdict(list)  # (scope, domid, teeif id) -> spans
    gate: dict[tuple, list[Span]] = defaultdict(list)  # (scope, gate id) -> spans
    for e in events:
        s = span(e)
        a = s.args
        if "call" in a:  # the platform's vCPU-side spans (and el2's mediator and OP-TEE)
            key = (a.get("scope"), e["pid"], a["call"])
            ct = platform.get(key)
            if ct is None:
                ct = platform[key] = CallTrace(a.get("scope"), a["call"], "")
            ct.spans.append(s)
            if s.name == "trap" and not ct.fn:
                ct.fn = a.get("fn", "")
        elif s.where == "gate":
            gate[(a.get("scope"), a.get("gate_id"))].append(s)
        elif "id" in a:
            daemon[(a.get("scope"), a.get("domid"), a.get("id"))].append(s)
    out = []
    for ct in platform.values():
        domid = next((s.args.get("domid") for s in ct.spans), None)
        for rid in {s.args.get("id") for s in ct.spans if s.name == "ring push"}:
            for d in daemon.get((ct.scope, domid, rid), []):
                ct.spans.append(d)
                if d.name == "gate push":
                    ct.spans.extend(gate.get((ct.scope, d.args.get("gate_id")), []))
        ct.spans.sort(key=lambda s: (s.t0, -s.t1))
        out.append(ct)
    out.sort(key=lambda c: c.start)
    return out


def stage_table(calls: Iterable[CallTrace]) -> list[tuple[str, str, float, int]]:
    """(thread, stage, median µs, calls) over ``calls``: the STAGES they
    have, then the handoffs (thread "handoff")."""
    calls = list(calls)
    rows = []
    per = [c.stages() for c in calls]
    for where, name, _ in STAGES:
        vals = [p[(where, name)] for p in per if (where, name) in p]
        if vals:
            rows.append((where, name, statistics.median(vals), len(vals)))
    hand = [c.handoffs() for c in calls]
    for name, _, _ in HANDOFFS:
        vals = [h[name] for h in hand if name in h]
        if vals:
            rows.append(("handoff", name, statistics.median(vals), len(vals)))
    return rows
