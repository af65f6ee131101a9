"""An AF_UNIX address for any socket in the runtime directory.

sun_path holds 108 bytes with its NUL, and a runtime directory may sit
deeper than that (a test's temporary directory, a long $XDG_RUNTIME_DIR).
Linux resolves ``/proc/self/fd/<dirfd>/<name>`` on bind(2) and connect(2)
alike, so a long path is reached through a descriptor of its directory, as
the ring package does for event channels (ring keeps its own copy: it
imports nothing of stubdom). Every socket of stubdom goes through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["SUN_PATH_MAX", "sockaddr"]

SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), NUL included (unix(7))


@contextlib.contextmanager
def sockaddr(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The address to bind or connect for ``path``: the path itself when it
    fits, else its name under /proc/self/fd of its directory, which stays
    open until the block ends."""
    raw = os.fsencode(path)
    if len(raw) < SUN_PATH_MAX:
        yield raw
        return
    head, name = os.path.split(raw)
    dfd = os.open(head or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield b"/proc/self/fd/%d/%s" % (dfd, name)
    finally:
        os.close(dfd)
