"""Real `stubdom-teed` processes for the tests of the commands as a user
runs them (tests/test_by_hand.py, tests/test_processes.py): started as
`python -P -m stubdom ...` (the installed command), their output in files
the test reads as it grows, real signals.

Every wait here is bounded by HANG_GUARD_S: only a wedged process reaches
it, and then the test fails with what the process printed; no bound is a
speed assertion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 120.0  # a liveness bound, never a latency assertion


def config_file(tmp_path: Path, name: str = "xen.yaml") -> Path:
    """configs/xen.yaml with its runtime directory under ``tmp_path``."""
    text = (REPO / "configs" / "xen.yaml").read_text()
    assert "runtime_dir: null " in text
    path = tmp_path / name
    path.write_text(text.replace("runtime_dir: null ", f"runtime_dir: {tmp_path / 'rt'} "))
    return path


def command(*args: str) -> list[str]:
    """`stubdom-teed ARGS` as the installed package runs it."""
    return [sys.executable, "-P", "-m", "stubdom", *args]


class Proc:
    """One background process; stdout and stderr in files."""

    def __init__(self, argv: list[str], logdir: Path, name: str) -> None:
        self.name = name
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- {self.name} stdout:\n{self.out()}\n--- {self.name} stderr:\n{self.err()}"

    def wait_for(self, text: str, *, stream: str = "out", count: int = 1, after: int = 0) -> int:
        """Until ``text`` occurs ``count`` times in the stream past offset
        ``after``; returns the offset just past the last one."""
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            got = (self.out() if stream == "out" else self.err())[after:]
            n, pos = 0, 0
            while (i := got.find(text, pos)) >= 0:
                n, pos = n + 1, i + len(text)
                if n == count:
                    return after + pos
            if self.proc.poll() is not None:
                got = (self.out() if stream == "out" else self.err())[after:]
                if got.count(text) >= count:
                    continue
                raise AssertionError(f"{self.name} exited {self.proc.returncode} before printing {text!r} "
                                     f"×{count}\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not print {text!r} ×{count} within the hang guard\n"
                                     f"{self.describe()}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self) -> int:
        try:
            return self.proc.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after the hang guard\n{self.describe()}") from None

    def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL past the hang guard."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(HANG_GUARD_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(*args: str) -> subprocess.CompletedProcess:
    """`stubdom-teed ARGS` in the foreground."""
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=REPO)


def left_in(runtime: Path) -> list[str]:
    """What is left in a runtime directory (nothing when it is gone)."""
    return sorted(p.name for p in runtime.iterdir()) if runtime.exists() else []
