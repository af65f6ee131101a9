"""Start and stop a stubdom-teed daemon process beside this platform, as a
toolstack starts a stub domain: ``python -P -m stubdom.daemon --config X``
(``-P``: the installed package, never a source tree in the working
directory). Used by the demo, the benchmark and the tests that need the
real daemon.

``PrivateTmpfs``: a small tmpfs only the daemon sees (its journal's
directory), for a real full disk (docs/faults.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stubdom.public.errors import DaemonRefused, DaemonUnavailable

from .errors import PlatformError

__all__ = ["DaemonProcess", "DaemonExited", "PrivateTmpfs", "TmpfsUnavailable"]

STOP_TIMEOUT_S = 15.0  # SIGTERM drains in-flight calls; past this, SIGKILL
CAP_SYS_ADMIN = 21  # linux/capability.h


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


class TmpfsUnavailable(PlatformError):
    """The private tmpfs could not be set up (no unshare(1), or no right to
    create a mount namespace or mount in it); names the failing step."""

    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"cannot set up a private tmpfs: {step}: {why.strip()}")
        self.step = step
        self.why = why


class PrivateTmpfs:
    """A mount namespace in which ``path`` is a tmpfs of ``size`` bytes; the
    rest of the filesystem is the caller's (mounts private: nothing is seen
    outside). A holder process keeps the namespace, so the tmpfs outlives
    the daemons started in it (``argv_prefix``) as a disk outlives a killed
    process. From outside, ``outside(p)`` reaches ``p`` as the namespace sees
    it (``/proc/<holder>/root``). Needs CAP_SYS_ADMIN, or else unprivileged
    user namespaces (then the daemon is uid 0 in one, mapped to the caller).

    unshare(1) and nsenter(1) rather than a preexec_fn: the caller has
    threads (the platform), and only exec is safe in the child of a threaded
    fork; both tools exec in place, so the daemon's pid is the child's pid
    (signals, prlimit, /proc/<pid> reach the daemon itself).
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = Path(path).resolve()
        self.size = size
        self._user = not _has_capability(CAP_SYS_ADMIN)  # else a user namespace gives it
        for tool in ("unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise TmpfsUnavailable(f"{tool}(1)", "not found on PATH (util-linux)")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mount point
        ns = ["--user", "--map-root-user"] if self._user else []
        # the holder: mounts, says ready, then waits for end-of-file on its
        # stdin (close(), or this process dying) and exits
        script = 'mount -t tmpfs -o "size=$1,mode=0700" tmpfs "$2" && echo ready && read _ignored'
        self.holder = subprocess.Popen(
            ["unshare", *ns, "--mount", "--propagation", "private", "--",
             "sh", "-c", script, "sh", str(size), str(self.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.holder.stdout is not None and self.holder.stderr is not None  # PIPE: both exist
        try:
            line = self.holder.stdout.readline()  # EOF if unshare or mount failed
        except BaseException:
            self.close()
            raise
        if line != b"ready\n":
            why = self.holder.stderr.read().decode(errors="replace")  # it has exited
            self.close()
            step = ("mount(2) of the tmpfs" if "mount:" in why else
                    "unshare(2) of a user and mount namespace" if self._user else
                    "unshare(2) of a mount namespace")
            raise TmpfsUnavailable(step, why or f"exit status {self.holder.returncode}")

    def argv_prefix(self) -> list[str]:
        """Put before a command to run it in the namespace."""
        ns = ["--user", "--preserve-credentials"] if self._user else []
        return ["nsenter", f"--target={self.holder.pid}", *ns, "--mount", "--"]

    def outside(self, path: Path) -> Path:
        """``path`` as the namespace sees it, for this process (not resolved
        here: a symlink on this side may point anywhere, even in)."""
        return Path(f"/proc/{self.holder.pid}/root") / Path(os.path.abspath(path)).relative_to("/")

    def close(self) -> None:
        """End the holder; the tmpfs goes when the last process in the
        namespace (a daemon still running in it) is gone."""
        if self.holder.stdin and not self.holder.stdin.closed:
            self.holder.stdin.close()
        try:
            self.holder.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        for f in (self.holder.stdout, self.holder.stderr):
            if f and not f.closed:
                f.close()

    def __enter__(self) -> PrivateTmpfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _has_capability(cap: int) -> bool:
    """Whether this process holds ``cap`` in its effective set (CapEff in
    /proc/self/status, a hex mask)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


class DaemonProcess:
    """One daemon process; its stdout and stderr go to ``log_path``.
    ``argv_prefix`` runs it through a wrapper (``PrivateTmpfs.argv_prefix``)
    that must exec it in place."""

    def __init__(self, config_path: Path, log_path: Path, *, cpu: int | None = None,
                 log_level: str | None = None, argv_prefix: Sequence[str] = ()) -> None:
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        argv = [*argv_prefix, sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(self.config_path)]
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
        once if it died, DaemonRefused at once if another user listens on
        its socket, the toolstack's DaemonUnavailable on timeout)."""
        deadline_slices = max(1, int(timeout / 0.25))
        for i in range(deadline_slices):
            if self.proc.poll() is not None:
                raise DaemonExited(self.proc.returncode, self.log_path)
            try:
                return toolstack.wait_ready(0.25)
            except DaemonRefused:
                raise
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

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
