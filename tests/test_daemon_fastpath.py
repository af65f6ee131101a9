"""The identity queries answered in C (docs/daemon.md, "Answered in C"),
against a real daemon process and the real gate: the same answers as the
interpreter gives, counted as the domain's calls and as gate SMCs, never
for a call policy refuses, and recompiled on reload. Nothing here is timed."""

from __future__ import annotations

import pytest

from daemon_support import Daemon, client, write_config
from stubdom.config import load_config
from stubdom.daemon import control_socket_path
from stubdom.optee.smc import (
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_GET_THREAD_COUNT,
)
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec
from stubdom.policy.refusal import REASON_CLASS_DENIED

IDENTITY = (OPTEE_SMC_CALLS_COUNT, OPTEE_SMC_CALLS_UID, OPTEE_SMC_CALLS_REVISION, OPTEE_SMC_CALL_GET_OS_UUID,
            OPTEE_SMC_CALL_GET_OS_REVISION)
FORWARDED = len(IDENTITY) - 1  # CALLS_COUNT is the mediator's own answer: no SMC
HIGH = 0xDEAD_BEEF << 32  # bits 63:32 of x0 do not name the function (SMC32)

DOMAINS = """\
domains:
  - domid: 1
    nr_pages: 256
    vcpus: 2
  - domid: 2
    nr_pages: 256
    vcpus: 1
    deny_classes: [info]
"""


def _calls(platform: Platform, domid: int) -> list[tuple[int, ...]]:
    """Every identity query, then one the table does not hold, then the
    identity queries again with junk in x0's high half and x1..x6."""
    out = [platform.trap(domid, 0, (f, 0, 0, 0, 0, 0, 0, 0)) for f in IDENTITY]
    out.append(platform.trap(domid, 1, (OPTEE_SMC_GET_THREAD_COUNT, 0, 0, 0, 0, 0, 0, 0)))
    out += [platform.trap(domid, 1, (HIGH | f, 1, 2, 3, 4, 5, 6, 7)) for f in IDENTITY]
    return out


def _run(tmp_path, fast_path: bool, body):
    path = write_config(tmp_path, domains=DOMAINS)
    text = path.read_text()
    assert "  poll_window_us: 50\n" in text
    path.write_text(text.replace("  poll_window_us: 50\n",
                                 f"  poll_window_us: 50\n  fast_path: {str(fast_path).lower()}\n"))
    config = load_config(path)
    platform = Platform.for_config(config)
    daemon = Daemon(path, tmp_path)
    try:
        line = daemon.wait_listening()
        assert str(control_socket_path(tmp_path / "run")) in line, daemon.log()
        for domid in (1, 2):
            platform.create_domain(domain_spec(config.domain(domid)))
        with client(config) as c:
            out = body(platform, c, path)
        for domid in platform.domids():
            platform.destroy_domain(domid)
        assert daemon.stop() == 0, daemon.log()
        return out
    finally:
        daemon.stop()
        platform.close()


def _observe(platform, c, path):
    s0 = c.call("stats")
    answers = {d: _calls(platform, d) for d in (1, 2)}
    s1 = c.call("stats")
    return answers, s0, s1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same calls with the fast path (C) and without it (interpreter)."""
    return {on: _run(tmp_path_factory.mktemp(f"fast-{on}"), on, _observe) for on in (True, False)}


def test_answers_are_the_interpreters(runs):
    (fast, _, _), (slow, _, _) = runs[True], runs[False]
    assert fast == slow
    # and they are answers, not refusals: OP-TEE's UID reached domain 1
    assert fast[1][1][0] != slow[2][1][0]


def _smcs(run) -> int:
    _, s0, s1 = run
    return s1["gate"]["smc_calls"] - s0["gate"]["smc_calls"]


def test_c_answers_count_as_the_domains_calls_and_as_gate_smcs(runs):
    _, s0, s1 = runs[True]
    assert s1["fast_path"]["enabled"] is True
    # domain 1: every identity query twice, answered in C; each forwarded one is one SMC
    assert s1["fast_path"]["forwarded"] - s0["fast_path"]["forwarded"] == 2 * FORWARDED
    # the gate SMCs the stub domain counts are the interpreter's count exactly
    assert _smcs(runs[True]) == _smcs(runs[False]) >= 2 * FORWARDED
    calls0, calls1 = s0["domains"]["1"]["calls"], s1["domains"]["1"]["calls"]
    for name in ("CALLS_COUNT", "CALLS_UID", "CALLS_REVISION", "CALL_GET_OS_UUID", "CALL_GET_OS_REVISION"):
        assert calls1.get(name, 0) - calls0.get(name, 0) == 2, name
    # their service times joined the domain's sample (the figures themselves are the benchmark's)
    assert set(s1["domains"]["1"]["latency_us"]) == {"p50", "p90", "p99", "max"}


def test_a_refused_class_is_never_answered_in_c(runs):
    _, s0, s1 = runs[True]
    # domain 2 denies class info: the interpreter refuses each one and counts it
    refused = s1["domains"]["2"]["refusals"].get(REASON_CLASS_DENIED, 0) - \
        s0["domains"]["2"]["refusals"].get(REASON_CLASS_DENIED, 0)
    assert refused == 2 * len(IDENTITY)


def test_without_the_fast_path_nothing_is_answered_in_c(runs):
    _, _, s1 = runs[False]
    assert s1["fast_path"] == {"enabled": False}


def test_a_reload_that_denies_the_class_stops_c_at_once(tmp_path):
    def body(platform, c, path):
        uid = (OPTEE_SMC_CALLS_UID, 0, 0, 0, 0, 0, 0, 0)
        before = platform.trap(1, 0, uid)
        f0 = c.call("stats")["fast_path"]["forwarded"]
        text = path.read_text().replace("  - domid: 1\n    nr_pages: 256\n",
                                        "  - domid: 1\n    nr_pages: 256\n    deny_classes: [info]\n")
        path.write_text(text)
        c.call("reload")
        after = platform.trap(1, 0, uid)
        s = c.call("stats")
        return before, after, f0, s

    before, after, f0, s = _run(tmp_path, True, body)
    assert before[0] != after[0]  # answered, then refused
    assert s["fast_path"]["forwarded"] == f0  # the refusal was the interpreter's
    assert s["domains"]["1"]["refusals"] == {REASON_CLASS_DENIED: 1}

