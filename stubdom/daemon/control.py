"""The control server: msgpack requests over a Unix stream socket
(docs/control-protocol.md). The protocol — framing, limits, error codes —
is stubdom.public.control; the operations are :class:`.daemon.Daemon`'s;
this module only moves bytes."""

from __future__ import annotations

import contextlib
import logging
import os
import socket as _socket
from pathlib import Path

import trio

from stubdom.public.control import READ_SIZE, FrameReader, encode, error_response, ok_response
from stubdom.public.errors import ControlError, ErrorCode, ProtocolError
from stubdom.rundir import SOCKET_MODE, PeerRefused, check_peer, sockaddr

from .errors import StartupError
from .logs import event

__all__ = ["ControlServer"]

_BACKLOG = 16


def _claim(path: Path) -> None:
    """Remove a stale socket left by a daemon that died; refuse if a live one
    answers there."""
    if not path.exists():
        return
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        with sockaddr(path) as addr:
            probe.connect(addr)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except OSError as e:
        raise StartupError(f"stubdom-teed: cannot use {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"stubdom-teed: another daemon is already listening on {path}")


class ControlServer:
    """Listens on ``path``; one task per connection in ``conn_nursery``.
    ``stop_accepting()`` closes the listening socket (and removes it);
    connections already open keep being served until their nursery ends."""

    def __init__(self, path: Path, daemon, logger: logging.Logger) -> None:
        self.path = Path(path)
        self._daemon = daemon
        self._logger = logger
        self._scope = trio.CancelScope()
        self._ino: int | None = None
        self.connections = 0

    async def serve(self, conn_nursery: trio.Nursery, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        _claim(self.path)
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            # the file takes the socket inode's mode less the umask (Linux):
            # never born wider than SOCKET_MODE, then exactly that
            os.fchmod(sock.fileno(), SOCKET_MODE)
            with sockaddr(self.path) as addr:
                await sock.bind(addr)
                os.chmod(addr, SOCKET_MODE)
            self._ino = os.stat(self.path).st_ino
            sock.listen(_BACKLOG)
            listener = trio.SocketListener(sock)
        except BaseException:
            sock.close()
            raise
        try:
            with self._scope:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    self.connections += 1
                    conn_nursery.start_soon(self._connection, stream, self.connections)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            self._unlink()

    def stop_accepting(self) -> None:
        self._scope.cancel()

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    async def _connection(self, stream: trio.SocketStream, number: int) -> None:
        reader = FrameReader()
        async with stream:
            try:
                # before reading a byte: another user's process gets nothing
                # but end-of-file (docs/security.md)
                check_peer(stream.socket, self.path, "control client")
            except PeerRefused as e:
                event(self._logger, logging.WARNING, "control_peer_refused", connection=number,
                      path=self.path, pid=e.pid, uid=e.uid, gid=e.gid)
                return
            while True:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                try:
                    reader.feed(data)
                    for req in reader.requests():
                        response = await self._answer(req)
                        await stream.send_all(response)
                except ProtocolError as e:
                    event(self._logger, logging.WARNING, "control_bad_message", connection=number,
                          error=e.message)
                    # ControlError: the answer could not be encoded; closing says enough
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, ControlError):
                        await stream.send_all(encode(error_response(reader.error_seq, e.code, e.message)))
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    async def _answer(self, req) -> bytes:
        try:
            message = ok_response(req.seq, await self._daemon.dispatch(req))
        except ControlError as e:
            message = error_response(req.seq, e.code, e.message)
        except Exception as e:  # a daemon bug: say so, keep serving
            event(self._logger, logging.ERROR, "control_internal_error", op=req.op,
                  error=f"{type(e).__name__}: {e}")
            message = error_response(req.seq, ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        try:
            return encode(message)
        except ControlError as e:
            return encode(error_response(req.seq, e.code, e.message))
