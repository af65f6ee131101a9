"""`stubdom-teed demo`: the same workload under pass-through, el2 and
stubdom (a real daemon process), a row per domain, exit 0 only when clean."""

from __future__ import annotations

import io

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
