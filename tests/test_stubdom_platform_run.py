"""``run_platform``: the platform command, alone and beside a real
stubdom-teed process."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

from daemon_support import config_file
from stubdom.platform import run_platform
from stubdom.platform.run import EXIT_CONFIG, EXIT_NO_DAEMON

REPO = Path(__file__).resolve().parents[1]


def test_no_daemon_is_a_clear_message_and_nothing_left_behind(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    out = io.StringIO()
    assert run_platform(str(cfg), log_level="warning", daemon_wait=0.2, out=out) == EXIT_NO_DAEMON
    lines = out.getvalue().splitlines()
    assert lines[0] == (f"platform: machine at {tmp_path}/rt/machine, SMC gate at {tmp_path}/rt/xen/gate; "
                        f"start the daemon beside it: stubdom-teed --config {cfg}")
    assert lines[-1].startswith("platform: no stubdom-teed answered within 0.2 s (no such socket")
    assert lines[-1].endswith(f"start it with: stubdom-teed --config {cfg}")
    # what it created is gone: the machine, the gate's directory, its pid file
    assert sorted(p.name for p in (tmp_path / "rt").iterdir()) == []


def test_bad_config_exits_2_with_every_problem(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("mediator:\n  placement: nowhere\n  bogus: 1\n")
    assert run_platform(str(cfg), log_level="warning") == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 2 and all(line.startswith(f"platform: {cfg}:") for line in err)


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-P", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)


def test_platform_runs_the_workload_beside_a_real_daemon_and_stops_on_sigterm(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    platform = _spawn(["-c", "import sys; from stubdom.platform import run_platform; "
                             f"sys.exit(run_platform({str(cfg)!r}, log_level='warning', interval=0.05, "
                             "daemon_wait=30))"])
    daemon = None
    try:
        first = platform.stdout.readline()
        assert "start the daemon beside it" in first, first + platform.stderr.read()
        daemon = _spawn(["-m", "stubdom.daemon", "--config", str(cfg), "--log-level", "warning"])
        seen = []
        for line in platform.stdout:
            seen.append(line)
            if line.startswith("platform: round 2:"):
                break
        rounds = [line for line in seen if line.startswith("platform: round")]
        assert len(rounds) == 2, "".join(seen) + platform.stderr.read()
        for line in rounds:
            assert all(f"d{d} ok 4 workloads" in line for d in (0, 1, 2)), line
        platform.send_signal(signal.SIGTERM)
        rest, err = platform.communicate(timeout=60)
        assert platform.returncode == 0, rest + err
        assert rest.splitlines()[-1] == "platform: stopped; isolation oracle: 0 violations"
    finally:
        for proc in (platform, daemon):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            # the daemon ends by itself once the platform is gone: its pipes
            # must be closed either way (a ResourceWarning fails the test)
            proc.communicate(timeout=60)
