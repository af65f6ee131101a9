"""``stubdom-teed soak``: short runs of the real command (a subprocess; under
stubdom a real daemon), a run that passes under each placement and runs
that must fail because the real system was broken mid-run from outside —
a frame pinned behind the mediator's back through the machine, the daemon
killed — and name what broke.  The memory-flat rule on its own figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stubdom.hostile.soak_memory import MAX_SLOPE_KIB_PER_MIN, MIN_WINDOW_S, flatness
from stubdom.xen import Machine

# Not a timing assertion: only keeps a wedged soak from hanging the suite.
RUN_TIMEOUT_S = 240


def soak(out: Path, *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-P", "-m", "stubdom", "soak", "--out", str(out), "--work-dir", str(out.parent),
            *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, out: Path) -> tuple[int, str, dict]:
    text, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    doc = json.loads((out / "soak.json").read_text())
    return proc.returncode, text, doc


def live(out: Path, proc: subprocess.Popen, want=lambda d: True) -> dict:
    """The run's soak.live.json once it satisfies ``want``."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            doc = json.loads((out / "soak.live.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            doc = None
        if doc is not None and want(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError("the soak never got there")


@pytest.mark.parametrize("placement", ["el2", "stubdom"])
def test_a_short_soak_passes(tmp_path, placement):
    out = tmp_path / "out"
    rc, text, doc = finish(soak(out, "--placement", placement, "--domains", "3", "--hostile", "1",
                                "--minutes", "0.12", "--sample-every", "1", "--churn-every", "3",
                                "--attack-every", "1"), out)
    assert rc == 0, text
    assert doc["violations"]["count"] == 0, doc["violations"]
    assert doc["verdicts"] == {"invariants": "pass", "memory": "too_short", "overall": "pass"}
    assert len(doc["samples"]) >= 5
    t = doc["totals"]
    assert t["churns"] >= 1 and t["attack_iterations"] > 0
    assert t["honest_calls_per_domain"]["min"] > 0
    assert t["smcs_checked"] > 0 and t["oracle_accesses"] > 0
    honest = [d for d in doc["domains"] if d["role"] == "honest"]
    assert all(set(d["calls"]) == {"increment", "digest_temp", "digest_registered", "storage"} for d in honest)
    assert all(d["latency_ns"]["storage"]["count"] == d["calls"]["storage"] for d in honest)
    assert doc["final"]["pinned_frames"] == 0 and doc["final"]["tee_partitions"] == []
    if placement == "stubdom":
        assert doc["samples"][0]["daemon_anon_kib"] > 0 and doc["samples"][0]["journal_bytes"] is not None
        assert doc["final"]["daemon_exit"] == 0
    else:
        assert doc["memory"]["daemon_anon_kib"] == {"verdict": "absent"}
    assert not (out / "soak.live.json").exists()
    assert "overall pass" in (out / "soak.md").read_text()


def test_a_frame_pinned_behind_the_mediators_back_fails_the_soak(tmp_path):
    """Another process pins a frame of a hostile domain through the machine
    itself: the next churn's destroy_and_check finds it still pinned (and
    the next sample may already see more pins than the mediator holds). The
    teardown still finishes — the broken invariant is reported, the lost pin
    dropped after VM_DESTROYED — so nothing is left pinned at the end."""
    out = tmp_path / "out"
    proc = soak(out, "--placement", "el2", "--domains", "2", "--hostile", "1", "--minutes", "0.12",
                "--sample-every", "1", "--churn-every", "2", "--attack-every", "1")
    pinned = None
    while pinned is None:
        state = live(out, proc, lambda d: "hostile" in d["domains"].values())
        domid = next(int(d) for d, role in state["domains"].items() if role == "hostile")
        with Machine.attach(Path(state["machine"])) as m:
            try:
                dom = m.domain(domid)
                mfn = dom.lookup(dom.ram_gfns()[0]).mfn
                m.get_page(mfn, domid)
                pinned = (domid, mfn)
            except Exception:
                continue  # churned between the read and the pin: the next incarnation
    rc, text, doc = finish(proc, out)
    assert rc == 1, text
    kinds = doc["violations"]["by_kind"]
    assert kinds.get("churn_destroy_check", 0) >= 1, kinds
    assert "final_pinned" not in kinds, kinds
    first = next(e for e in doc["violations"]["entries"] if e["what"] == "churn_destroy_check")
    assert f"d{pinned[0]}" in first["detail"] and f"{pinned[1]:#x}" in first["detail"], first
    assert doc["final"]["pinned_frames"] == 0
    assert doc["verdicts"]["invariants"] == "fail" and doc["verdicts"]["overall"] == "fail"
    assert "churn_destroy_check" in (out / "soak.md").read_text()


def test_a_killed_daemon_fails_the_soak(tmp_path):
    out = tmp_path / "out"
    proc = soak(out, "--placement", "stubdom", "--domains", "2", "--hostile", "1", "--minutes", "0.5",
                "--sample-every", "0.5", "--churn-every", "30", "--call-timeout-ms", "3000")
    state = live(out, proc, lambda d: d["t_s"] >= 1)
    os.kill(state["daemon_pid"], signal.SIGKILL)
    rc, text, doc = finish(proc, out)
    assert rc == 1, text
    kinds = doc["violations"]["by_kind"]
    assert kinds.get("daemon_died") == 1, kinds
    died = next(e for e in doc["violations"]["entries"] if e["what"] == "daemon_died")
    assert f"pid {state['daemon_pid']}" in died["detail"] and "status -9" in died["detail"], died
    assert doc["ended"] == "daemon_died"  # the run stopped at the death, it did not soak on


def test_memory_flat_rule():
    minutes = 10
    steps = [(t * 5.0, 50_000 + (t % 3) * 40) for t in range(minutes * 12 + 1)]  # noise, no trend
    flat = flatness([{"t_s": t, "k": v} for t, v in steps], "k", minutes * 60)
    assert flat["verdict"] == "pass" and abs(flat["slope_kib_per_min"]) < 5
    # a leak just above the slope bound, starting after the warm-up
    leak = [{"t_s": t, "k": v + max(0.0, t - 120) / 60 * (MAX_SLOPE_KIB_PER_MIN + 10)} for t, v in steps]
    assert flatness(leak, "k", minutes * 60)["verdict"] == "fail"
    # a step of 32 MiB halfway: no slope bound catches it, the spread does
    step = [{"t_s": t, "k": v + (32768 if t > 300 else 0)} for t, v in steps]
    assert flatness(step, "k", minutes * 60)["verdict"] == "fail"
    # growth during the warm-up is not judged
    warm = [{"t_s": t, "k": v + (30_000 if t >= 100 else t * 300)} for t, v in steps]
    assert flatness(warm, "k", minutes * 60)["verdict"] == "pass"
    short = [{"t_s": t, "k": 1} for t in range(0, int(MIN_WINDOW_S), 5)]
    assert flatness(short, "k", MIN_WINDOW_S)["verdict"] == "too_short"
    assert flatness([{"t_s": 0, "k": None}], "k", 1)["verdict"] == "absent"


def test_bad_options_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-P", "-m", "stubdom", "soak", "--domains", "2", "--hostile", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "honest victim" in r.stderr, r.stderr
