"""`stubdom-teed demo`: the same workload under pass-through, el2 and
stubdom (a real daemon process), a row per domain, exit 0 only when clean."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from stubdom.demo import run_demo


def test_demo_runs_clean(tmp_path):
    out = io.StringIO()
    assert run_demo(runtime_dir=str(tmp_path / "rt"), seed=3, out=out) == 0
    text = out.getvalue()
    assert "every answer matched, no isolation violation" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("passthrough ", "el2 ", "stubdom "))]
    assert [(r[0], r[1]) for r in rows] == [("passthrough", "d0")] + [
        (placement, f"d{domid}") for placement in ("el2", "stubdom") for domid in (0, 1, 2)
    ]
    assert "stubdom-teed pid" in text  # the stubdom rows came through a real daemon process
    for r in rows:
        assert int(r[2]) > 0 and r[3:5] == ["0", "0"]  # calls made, no errors, no oracle violations


def _demo(tmp_path, config: str) -> subprocess.CompletedProcess:
    """`stubdom-teed demo --config FILE`, as a user runs it."""
    return subprocess.run([sys.executable, "-P", "-m", "stubdom", "demo", "--config", config,
                           "--runtime-dir", str(tmp_path / "rt")],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("text, problem", [
    # a value out of range and an unknown key: every problem, at the user's file's own lines
    ("mediator:\n  ring_pages: 0\n  placment: el2\n",
     ["{f}:2: mediator.ring_pages: 0 is out of range 1..1024",
      "{f}:3: mediator.placment: unknown key (did you mean 'placement'?)"]),
    ("# nothing yet\n", ["{f}:1: (top level): the file is empty (no key, only whitespace or comments); "
                         "write the sections you mean, or {{}} for every default"]),
])
def test_demo_config_errors_as_the_daemon_gives_them(tmp_path, text, problem):
    """Issue 15, item 6: the daemon's `file:line: key: message` lines for
    the file the user gave (not a rewritten copy), exit 2, nothing started."""
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    got = _demo(tmp_path, str(f))
    assert got.returncode == 2, got
    lines = got.stderr.splitlines()
    assert lines[:-1] == [p.format(f=f) for p in problem], got.stderr
    assert lines[-1] == f"stubdom-teed demo: {len(problem)} problem(s) in the configuration; nothing started"
    assert got.stdout == "" and "Traceback" not in got.stderr
    assert not (tmp_path / "rt").exists()


def test_demo_missing_config_is_one_line(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    got = _demo(tmp_path, str(missing))
    assert got.returncode == 2, got
    assert got.stderr.splitlines()[0].startswith(f"{missing}: cannot read the configuration: ")
    assert "Traceback" not in got.stderr and got.stdout == ""
    assert not (tmp_path / "rt").exists()
