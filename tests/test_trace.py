"""The per-call trace (stubdom.trace, docs/performance.md "Tracing a
call"): the file is Trace Event JSON, the spans of one sampled call nest and
follow each other as the call goes, under el2 and across the two processes
of stubdom and stubdom-poll, and sampling off records and writes nothing.
No timing is asserted: only order and nesting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stubdom.bench.layout import Layout
from stubdom.bench.placements import make_placement
from stubdom.optee.smc import OPTEE_SMC_CALL_GET_OS_REVISION
from stubdom.trace import TRACE_ID_BIT, TRACER, calls_in, load_trace, merge_documents, stage_table, write_document
from stubdom.workloads import increment


@pytest.fixture
def tracer():
    TRACER.clear()
    yield TRACER
    TRACER.disable()
    TRACER.scope, TRACER.labels = None, {}
    TRACER.clear()


def _check_format(doc: dict) -> None:
    """What chrome://tracing and Perfetto need of the JSON object format."""
    assert isinstance(doc["traceEvents"], list) and doc["traceEvents"]
    json.loads(json.dumps(doc))  # plain JSON values only
    starts, finishes = set(), set()
    for ev in doc["traceEvents"]:
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
        if ev["ph"] == "X":
            assert {"name", "cat", "ts", "dur", "args"} <= set(ev), ev
            assert ev["dur"] >= 0 and isinstance(ev["args"], dict)
        elif ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name") and "name" in ev["args"]
        else:
            assert ev["ph"] in ("s", "f") and isinstance(ev["id"], str), ev
            (starts if ev["ph"] == "s" else finishes).add(ev["id"])
    assert starts == finishes  # every handoff arrow has both ends
    assert doc["otherData"]["clock"]


def _inside(inner, outer) -> bool:
    # µs as floats from ns (ts + dur): spans that end together may differ in the last bit
    eps = 1e-3
    return outer.t0 - eps <= inner.t0 and inner.t1 <= outer.t1 + eps


def _one(call, where, name):
    got = [s for s in call.spans if (s.where, s.name) == (where, name)]
    assert len(got) == 1, (where, name, [(s.where, s.name) for s in call.spans])
    return got[0]


def _el2_platform(tmp_path):
    placement = make_placement("el2", tmp_path / "el2", Layout(1, 1), seed=3)
    placement.start()
    return placement


def test_el2_spans_of_a_fast_call_and_a_standard_call_nest(tmp_path, tracer):
    pl = _el2_platform(tmp_path)
    try:
        tracer.enable(1, process_name="platform")
        driver = pl.drivers[1]
        driver.smc(0, OPTEE_SMC_CALL_GET_OS_REVISION)
        from stubdom.guest import Context

        with Context(driver) as ctx:
            assert increment(ctx, 4) == 5
        tracer.disable()
    finally:
        pl.close()
    path = write_document(tracer.document(), tmp_path / "el2.json")
    doc = load_trace(path)
    _check_format(doc)
    calls = calls_in(doc)
    fast = next(c for c in calls if c.fn == "OPTEE_SMC_CALL_GET_OS_REVISION")
    trap, mediate, optee = (_one(fast, "vCPU", n) for n in ("trap", "mediate", "OP-TEE"))
    assert _inside(mediate, trap) and _inside(optee, mediate)
    # a standard call: translation before OP-TEE, the copy back after; RPC
    # round trips (the guest's part between two traps of the same call)
    std = [c for c in calls if c.fn.startswith("OPTEE_SMC_CALL_WITH")]
    assert std
    for c in std:
        traps = [s for s in c.spans if s.name == "trap"]
        for s in c.spans:
            if s.name in ("mediate", "translate", "OP-TEE", "RPC", "RPC reply", "copy back"):
                assert any(_inside(s, t) for t in traps), s
        for a, b in zip(traps, traps[1:]):
            assert a.t1 <= b.t0
        guest_rpcs = [s for s in c.spans if s.name == "guest RPC"]
        assert len(guest_rpcs) == len(traps) - 1
        tr = next(s for s in c.spans if s.name == "translate")
        assert tr.t1 <= min(s.t0 for s in c.spans if s.name == "OP-TEE")
    rows = {(w, n) for w, n, _, _ in stage_table([fast])}
    assert {("vCPU", "trap"), ("vCPU", "mediate"), ("vCPU", "OP-TEE")} <= rows


@pytest.mark.parametrize("name", ["stubdom", "stubdom-poll"])
def test_stubdom_spans_of_one_call_cross_both_processes_in_order(tmp_path, tracer, name):
    pl = make_placement(name, tmp_path / name, Layout(1, 1), seed=3, poll_window_us=200, trace=True)
    pl.trace_scope = name
    try:
        tracer.enable(1, process_name="platform")
        tracer.scope = name
        pl.start()
        driver = pl.drivers[1]
        for _ in range(3):
            driver.smc(0, OPTEE_SMC_CALL_GET_OS_REVISION)
        tracer.disable()
    finally:
        pl.close()
    (daemon_doc, label), = pl.trace_documents()
    assert label == name
    doc = merge_documents([tracer.document(), daemon_doc], [None, label])
    _check_format(doc)
    names = {ev["args"]["name"] for ev in doc["traceEvents"] if ev["ph"] == "M" and ev["name"] == "thread_name"}
    assert "smc-gate" in names
    fast = [c for c in calls_in(doc) if c.fn == "OPTEE_SMC_CALL_GET_OS_REVISION"]
    assert len(fast) >= 3  # the probe's too
    in_c = 0
    for call in fast[-3:]:
        trap = _one(call, "vCPU", "trap")
        push, wait, pop, resume = (_one(call, "vCPU", n) for n in ("ring push", "wait", "ring pop", "resume"))
        d_pop, serve, d_hyp, d_gpush, d_gwait, reply = (
            _one(call, "daemon", n) for n in ("ring pop", "serve", "gate hypercall", "gate push", "gate wait",
                                              "reply push"))
        g_pop, g_hyp, optee, g_push = (_one(call, "gate", n) for n in ("gate pop", "hypercall", "OP-TEE",
                                                                          "gate push"))
        # sampled calls take the paths every call takes: the vCPU's push and
        # the gate's pop are C's (FrontRing.call, GateTable.next)
        assert push.args.get("in") == "C" and g_pop.args.get("in") == "C"
        # the vCPU thread: push, wait, pop, resume, all inside the trap
        for s in (push, wait, pop, resume):
            assert _inside(s, trap)
        assert push.t0 <= wait.t0 and pop.t0 >= push.t1 and resume.t0 >= pop.t0
        # handoff 1: the daemon pops the request after the vCPU began pushing it
        assert d_pop.t1 >= push.t0 and serve.t0 >= d_pop.t1 - 1e-3
        if serve.args.get("in") == "C":
            # an identity query answered in C (docs/daemon.md, "Answered in C"): no
            # policy or mediator spans, the reply pushed inside the serve
            in_c += 1
            assert d_pop.args.get("in") == "C"
            assert not [s for s in call.spans if s.where == "daemon" and s.name in ("policy", "mediate")]
            assert _inside(d_hyp, serve) and _inside(reply, serve) and reply.t0 >= d_hyp.t1
        else:
            # one the interpreter popped (it came after C's last look): policy,
            # then the mediator, the gate hypercall inside it, the reply after
            policy, mediate = _one(call, "daemon", "policy"), _one(call, "daemon", "mediate")
            assert _inside(policy, serve) and _inside(mediate, serve) and policy.t1 <= mediate.t0
            assert _inside(d_hyp, mediate) and reply.t0 >= serve.t1
        assert _inside(d_gpush, d_hyp) and _inside(d_gwait, d_hyp) and d_gpush.t0 <= d_gwait.t0
        # handoffs 2 and 3: the gate thread between the daemon's push and its answer popped
        assert g_pop.t1 >= d_gpush.t0 and g_hyp.t0 >= g_pop.t1 and _inside(optee, g_hyp)
        assert g_push.t0 >= g_hyp.t1 and d_gwait.t1 >= g_push.t0
        # handoff 4: the vCPU pops the answer after the daemon began pushing it
        assert pop.t1 >= reply.t0
        assert set(call.handoffs()) == {"vCPU → daemon", "daemon → gate thread", "gate thread → daemon",
                                        "daemon → vCPU"}
        assert all(v >= 0 for v in call.handoffs().values())
    assert in_c, "no sampled identity query was answered in C"


def test_sampling_off_records_and_writes_nothing(tmp_path, tracer):
    assert not tracer.on
    pl = make_placement("stubdom-poll", tmp_path / "sd", Layout(1, 1), seed=3, poll_window_us=200)
    try:
        pl.start()
        pl.drivers[1].smc(0, OPTEE_SMC_CALL_GET_OS_REVISION)
    finally:
        pl.close()
    assert pl.trace_documents() == []
    assert not list(tmp_path.rglob("*trace*.json"))
    assert tracer.document()["traceEvents"] == []


def test_sampling_one_in_n(tracer):
    tracer.enable(4)
    got = [tracer.sample() for _ in range(12)]
    assert [n for n in got if n is not None] == [0, 4, 8]
    assert TRACE_ID_BIT == 1 << 63
    with pytest.raises(ValueError):
        tracer.enable(0)


def test_the_trace_command_prints_the_stage_table(tmp_path, tracer):
    pl = _el2_platform(tmp_path)
    try:
        tracer.enable(1, process_name="platform")
        pl.drivers[1].smc(0, OPTEE_SMC_CALL_GET_OS_REVISION)
        tracer.disable()
    finally:
        pl.close()
    path = write_document(tracer.document(), tmp_path / "t.json")
    r = subprocess.run([sys.executable, "-P", "-m", "stubdom", "trace", str(path), "--fn", "GET_OS_REVISION",
                        "--merge", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| vCPU | trap |" in r.stdout and "| vCPU | OP-TEE |" in r.stdout
    _check_format(load_trace(tmp_path / "m.json"))
