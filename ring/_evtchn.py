"""Event channels modelled on sockets (docs/protocol.md, "Event channel").

One connected pair of AF_UNIX SOCK_SEQPACKET sockets per domain. The daemon
listens at ``<runtime_dir>/dom<domid>/evtchn``; the frontend connects. A
notification is one one-byte message; the receiver drains every pending
message on wake-up, so notifications coalesce as Xen's pending bit does;
end-of-file means the peer died (PeerDied).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ring._lib import check, lib
from ring.errors import RingClosed

if TYPE_CHECKING:
    from _typeshed import StrPath

__all__ = ["EventChannel", "EventChannelListener", "ChannelStatistics", "connect"]

# sizeof(sockaddr_un.sun_path) on Linux, including the terminating NUL.
_SUN_PATH_MAX = 108
# A listener's socket file: connect(2) needs write permission on it (unix(7)).
SOCKET_MODE = 0o600


@contextlib.contextmanager
def _sockaddr(path: StrPath) -> Iterator[bytes]:
    """A sockaddr path for ``path`` even when it is longer than sun_path:
    reach the directory through /proc/self/fd (Linux resolves it on bind and
    connect alike)."""
    raw = os.fsencode(path)
    if len(raw) < _SUN_PATH_MAX:
        yield raw
        return
    head, name = os.path.split(raw)
    dfd = os.open(head or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield b"/proc/self/fd/%d/%s" % (dfd, name)
    finally:
        os.close(dfd)


def _seqpacket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """Counters of one end of an event channel."""

    sent: int  # notifications that went out as a message
    coalesced: int  # notifications absorbed by one already pending at the peer
    received: int  # messages drained
    wakeups: int  # drains that found at least one message


class EventChannel:
    """One end of a domain's event channel. ``close()`` is idempotent; the
    object is also a context manager."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._sent = self._coalesced = self._received = self._wakeups = 0

    @classmethod
    def connect(cls, path: StrPath) -> EventChannel:
        """Connect to the listener at ``path`` (the frontend's side)."""
        sock = _seqpacket()
        try:
            with _sockaddr(path) as addr:
                sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def pair(cls) -> tuple[EventChannel, EventChannel]:
        """Two connected ends in this process (threads, tests)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        return cls(a), cls(b)

    def fileno(self) -> int:
        """The descriptor to wait on: readable when a notification (or EOF) is pending."""
        self._check_open()
        return self._fd

    def notify(self) -> bool:
        """Send one notification. Returns False when the peer already has
        notifications pending (the socket buffer is full): nothing is lost,
        it coalesced. Raises PeerDied when the peer is gone."""
        self._check_open()
        if check(lib.teeif_evtchn_notify(self._fd), "notify"):
            self._sent += 1
            return True
        self._coalesced += 1
        return False

    def _count_notify(self, rc: int) -> None:
        """Count a notification C sent on this channel for the ring
        (FrontRing.call): ``rc`` is TEEIF_NOTIFY_SENT or _PENDING, or the
        send's error (nothing counted; the next ``notify`` raises it)."""
        if rc == lib.TEEIF_NOTIFY_SENT:
            self._sent += 1
        elif rc == lib.TEEIF_NOTIFY_PENDING:
            self._coalesced += 1

    def drain(self) -> int:
        """Read every pending notification without blocking; returns how many
        (0: a spurious wake-up). Raises PeerDied on end-of-file, once the
        notifications sent before it have been drained (EOF is sticky)."""
        self._check_open()
        n = check(lib.teeif_evtchn_drain(self._fd), "drain")
        if n:
            self._received += n
            self._wakeups += 1
        return n

    def wait(self, timeout: float | None = None) -> int:
        """Block until notified (or ``timeout`` seconds pass), then drain.
        Returns the number of notifications drained, 0 on timeout. For
        thread-based peers; trio code uses ``wait_readable``."""
        self._check_open()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if not poller.poll(None if timeout is None else max(0, int(timeout * 1000))):
            return 0
        return self.drain()

    async def wait_readable(self) -> None:
        """Wait (trio) until the channel is readable; then call ``drain()``."""
        import trio  # imported here: the ring is also used from trio-free processes

        await trio.lowlevel.wait_readable(self._check_open())

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(self._sent, self._coalesced, self._received, self._wakeups)

    def _check_open(self) -> socket.socket:
        if self._sock is None:
            raise RingClosed("event channel is closed")
        return self._sock

    def close(self) -> None:
        """Close this end; the peer sees end-of-file. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> EventChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventChannelListener:
    """The daemon's side: a listening socket at ``path``, removed by
    ``close()``. An existing file at ``path`` is OSError EADDRINUSE unless
    ``replace`` is true: a restarted daemon replaces its predecessor's socket
    (the frontend then sees EOF on its old channel and reconnects).

    The socket file gets ``mode`` (default 0600: only its owner, and root,
    may connect) whatever the umask."""

    def __init__(self, path: StrPath, *, replace: bool = False, backlog: int = 1, mode: int = SOCKET_MODE) -> None:
        self.path = os.fspath(path)
        if replace:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        sock = _seqpacket()
        try:
            # Linux creates the file with the socket inode's mode less the
            # umask: set it first, so the file is never born wider than mode
            os.fchmod(sock.fileno(), mode)
            with _sockaddr(self.path) as addr:
                sock.bind(addr)
                os.chmod(addr, mode)  # the umask may have narrowed it: exactly mode
            sock.listen(backlog)
            self._ino = os.stat(self.path).st_ino
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def fileno(self) -> int:
        """Readable when a frontend is waiting to be accepted."""
        return self._live().fileno()

    def accept(self, timeout: float | None = None) -> EventChannel:
        """Accept one frontend (blocking; TimeoutError after ``timeout`` s)."""
        sock = self._live()
        sock.settimeout(timeout)
        conn, _ = sock.accept()
        conn.setblocking(True)
        return EventChannel(conn)

    async def wait_readable(self) -> None:
        """Wait (trio) until ``accept()`` will not block."""
        import trio

        await trio.lowlevel.wait_readable(self._live())

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise RingClosed(f"event channel listener {self.path} is closed")
        return self._sock

    def close(self) -> None:
        """Stop listening and remove the socket file if it is still ours.
        Idempotent; accepted channels stay open."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> EventChannelListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(path: StrPath) -> EventChannel:
    """Connect a frontend to the event channel listening at ``path``."""
    return EventChannel.connect(path)

