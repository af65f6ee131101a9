"""One platform per runtime directory (docs/smc-gate.md, "`stubdom-teed
platform`").

``stubdom-teed platform`` claims its runtime directory for its whole life:
an exclusive ``flock`` on ``<runtime_dir>/platform.pid``, which holds its
pid. The kernel drops the lock when the process ends, however it ends, so:

- a second platform finds the lock taken and refuses, naming the running
  one's pid (:class:`PlatformRunning`);
- a platform that finds the lock free but a ``machine/`` or ``xen/`` there
  knows that they are a dead platform's (killed with -9: it removed
  nothing) and replaces them, with a log line;
- on the way out (a signal, the end of its rounds, an error) it removes
  what it created: ``machine/``, ``xen/`` and the lock file.

What the daemon keeps in the runtime directory (``stubdom-teed/``,
``dom<N>/``) is the daemon's and is never touched here. A platform of this
library built without the command (a test's, the benchmark's) takes no
claim; so that one of those serving the directory is not taken for a dead
one, a live listener on the gate's event channel counts as a running
platform too (its pid from SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
from pathlib import Path

from ring import EVTCHN_FILE, EventChannel
from stubdom.public.gate import gate_dir
from stubdom.public.logformat import event
from stubdom.rundir import FILE_MODE, peer_credentials

from .errors import PlatformError

__all__ = ["PLATFORM_PID_FILE", "PlatformRunning", "RuntimeClaim"]

log = logging.getLogger("stubdom.platform.claim")

PLATFORM_PID_FILE = "platform.pid"
# What a platform creates in its runtime directory (removed when it stops).
_CREATED = ("machine", "xen")


class PlatformRunning(PlatformError):
    """Another platform serves this runtime directory: stop it first."""

    def __init__(self, runtime_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "pid unknown"
        stop = f"stop it first (kill -TERM {pid})" if pid else "stop it first"
        super().__init__(f"another platform ({who}) is running in {runtime_dir}; {stop}, or set "
                         f"mediator.runtime_dir to another directory")
        self.runtime_dir = runtime_dir
        self.pid = pid


class RuntimeClaim:
    """The claim of one platform process on ``runtime_dir`` (which must
    exist and have been checked: ``stubdom.rundir.ensure_runtime_dir``).
    ``acquire()`` raises :class:`PlatformRunning`; ``release()`` removes
    what the platform created. A context manager."""

    def __init__(self, runtime_dir: str | os.PathLike[str]) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.path = self.runtime_dir / PLATFORM_PID_FILE
        self._fd = -1

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise PlatformRunning(self.runtime_dir, _read_pid(self.path)) from None
            # a platform stopping unlinks the file while it holds the lock:
            # a lock on a file no longer at the path claims nothing
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        try:
            self._replace_stale(fd)
            os.fchmod(fd, FILE_MODE)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            self._unlock()
            raise

    def _replace_stale(self, fd: int) -> None:
        """Leftovers with no live owner: a platform killed with -9."""
        left = [name for name in _CREATED if (self.runtime_dir / name).exists()]
        if not left:
            return
        listener = _gate_listener_pid(self.runtime_dir)
        if listener is not None:  # a platform without the claim (a library user) serves here
            raise PlatformRunning(self.runtime_dir, listener or None)
        previous = _read_fd_pid(fd)
        for name in left:
            shutil.rmtree(self.runtime_dir / name, ignore_errors=True)
        event(log, logging.WARNING, "stale_platform_replaced", runtime_dir=self.runtime_dir,
              previous_pid=previous if previous else "unknown", removed=",".join(left),
              why="no live owner (the platform that made them was killed)")

    def release(self) -> None:
        """Remove ``machine/``, ``xen/`` and the pid file; drop the lock."""
        if self._fd < 0:
            return
        for name in _CREATED:
            shutil.rmtree(self.runtime_dir / name, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._unlock()

    def _unlock(self) -> None:
        os.close(self._fd)  # drops the flock
        self._fd = -1

    def __enter__(self) -> RuntimeClaim:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_fd_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _gate_listener_pid(runtime_dir: Path) -> int | None:
    """The pid of whoever listens on the gate's event channel (0 if it
    cannot be told), None if nobody does."""
    path = gate_dir(runtime_dir) / EVTCHN_FILE
    if not path.exists():
        return None
    try:
        chan = EventChannel.connect(path)
    except OSError:
        return None
    try:
        return peer_credentials(chan.fileno()).pid
    except OSError:
        return 0
    finally:
        chan.close()
