"""The machine lock: one writer at a time across processes and threads.

Every mutation of shared machine state (frame table, registry, p2m files)
happens under it.  ``fcntl.flock`` excludes other open file descriptions —
other processes, and other :class:`Machine` instances of this process — but
not two threads sharing one descriptor, hence the threading.Lock taken
first.  The kernel drops the flock if the holder dies, so a crashed process
cannot wedge the machine.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["MachineLock"]


class MachineLock:
    """An exclusive, non-reentrant lock on ``<machine>/lock``."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
