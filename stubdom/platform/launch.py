"""Start and stop a stubdom-teed daemon process beside this platform, as a
toolstack starts a stub domain: ``python -P -m stubdom.daemon --config X``
(``-P``: the installed package, never a source tree in the working
directory). Used by the demo, the benchmark and the tests that need the
real daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import PlatformError

__all__ = ["DaemonProcess", "DaemonExited"]

STOP_TIMEOUT_S = 15.0  # SIGTERM drains in-flight calls; past this, SIGKILL


class DaemonExited(PlatformError):
    """The daemon process ended before it answered on its control socket."""

    def __init__(self, returncode: int, log_path: Path) -> None:
        tail = ""
        try:
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-5:])
        except OSError:
            pass
        super().__init__(f"stubdom-teed exited with status {returncode} before it was ready; "
                         f"last lines of {log_path}:\n{tail}")
        self.returncode = returncode
        self.log_path = log_path


class DaemonProcess:
    """One daemon process; its stdout and stderr go to ``log_path``."""

    def __init__(self, config_path: Path, log_path: Path, *, cpu: int | None = None,
                 log_level: str | None = None) -> None:
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        argv = [sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(self.config_path)]
        if log_level:
            argv += ["--log-level", log_level]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, toolstack, timeout: float) -> dict:
        """Wait until the daemon answers ``hello`` (raises DaemonExited at
        once if it died, the toolstack's DaemonUnavailable on timeout)."""
        from .errors import DaemonUnavailable

        deadline_slices = max(1, int(timeout / 0.25))
        for i in range(deadline_slices):
            if self.proc.poll() is not None:
                raise DaemonExited(self.proc.returncode, self.log_path)
            try:
                return toolstack.wait_ready(0.25)
            except DaemonUnavailable:
                if i == deadline_slices - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> int:
        """SIGTERM (the daemon drains and removes its files), then SIGKILL
        past STOP_TIMEOUT_S; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
