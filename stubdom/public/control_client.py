"""The client of stubdom-teed's control socket: the one the toolstack
(stubdom.platform.Toolstack) and ``stubdom-teed ctl`` use, and any Python
program that drives the daemon (docs/control-protocol.md).

msgpack maps over an AF_UNIX stream socket: ``{"op", "seq", ...}`` out,
``{"seq", "ok", "result" | "error"}`` back, each at most
:data:`~.control.MAX_MESSAGE` bytes. One request at a time per client (a
lock serialises threads); every wait is bounded by ``timeout``. Every
answer is checked before it is handed on: a map with the request's ``seq``
and a bool ``ok`` (else :class:`ControlProtocolError` and the connection
is dropped). A listener that runs as another user than this process's (or
root) is refused before anything is sent (:class:`DaemonRefused`,
SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

import msgpack

from stubdom.rundir import PeerRefused, check_peer, sockaddr

from .control import MAX_MESSAGE, READ_SIZE
from .errors import ControlError, ControlProtocolError, DaemonRefused, DaemonUnavailable

__all__ = ["ControlClient"]


class ControlClient:
    """A connection to the daemon's control socket at ``path``.

    ``connect=True`` connects at once (a missing daemon is
    :class:`DaemonUnavailable` here); ``connect=False`` on the first
    request, so that the toolstack can be built before the daemon runs.
    Either way a connection the daemon closed is opened again by the next
    request, and a request whose send finds a kept connection dead (the
    daemon restarted) is sent once more on a new one: it never left.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0, connect: bool = True) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.path = os.fspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._seq = 0
        if connect:
            with self._lock:
                self._connect()

    def request(self, op: str, **args: Any) -> dict:
        """Send one request; return the daemon's whole answer, ``ok: false``
        included (``{"seq", "ok", "result" | "error"}``)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            data = msgpack.packb({"op": op, "seq": seq, **args}, use_bin_type=True)
            if len(data) > MAX_MESSAGE:
                raise ValueError(f"{op}: request of {len(data)} bytes exceeds {MAX_MESSAGE}")
            reused = self._sock is not None
            sock = self._connect()
            try:
                try:
                    sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    if not reused:
                        raise
                    # the daemon behind a kept connection died (and may have
                    # been restarted): the request never left; connect once more
                    self._drop()
                    sock = self._connect()
                    sock.sendall(data)
                answer = self._read(sock)
            except TimeoutError as e:
                self._drop()
                raise DaemonUnavailable(self.path, f"{op}: no answer within {self.timeout:g} s",
                                        strerror=e.strerror or str(e)) from None
            except OSError as e:
                self._drop()
                raise DaemonUnavailable(self.path, f"{op}: {e.strerror or e}", strerror=e.strerror) from None
            except ControlProtocolError:
                self._drop()
                raise
            if not isinstance(answer, dict) or answer.get("seq") != seq or type(answer.get("ok")) is not bool:
                self._drop()
                raise ControlProtocolError(self.path, f"{op} (seq {seq}) answered with {answer!r:.200}")
        return answer

    def call(self, op: str, **args: Any) -> dict:
        """Send one request; return its ``result`` map, or raise the
        :class:`ControlError` subclass of the answer's error code."""
        answer = self.request(op, **args)
        if answer["ok"]:
            result = answer.get("result", {})
            if not isinstance(result, dict):
                raise ControlProtocolError(self.path, f"{op}: result is not a map: {result!r:.200}")
            return result
        error = answer.get("error")
        if not isinstance(error, dict) or type(error.get("code")) is not int:
            raise ControlProtocolError(self.path, f"{op}: malformed error {error!r:.200}")
        raise ControlError.for_answer(op, error["code"], str(error.get("name", "?")),
                                      str(error.get("message", "")))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the connection (lock held) ---------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            with sockaddr(self.path) as addr:
                sock.connect(addr)
        except FileNotFoundError as e:
            sock.close()
            raise DaemonUnavailable(self.path, "no such socket: is stubdom-teed running?",
                                    strerror=e.strerror) from None
        except OSError as e:
            sock.close()
            raise DaemonUnavailable(self.path, e.strerror or str(e), strerror=e.strerror or str(e)) from None
        try:
            check_peer(sock, self.path, "stubdom-teed")
        except PeerRefused as e:
            sock.close()
            raise DaemonRefused(e) from None
        self._sock = sock
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=True,
                                          max_buffer_size=MAX_MESSAGE + READ_SIZE)
        return sock

    def _read(self, sock: socket.socket) -> object:
        assert self._unpacker is not None
        while True:
            try:
                return self._unpacker.unpack()
            except msgpack.OutOfData:
                pass
            except (msgpack.UnpackException, ValueError, TypeError) as e:
                raise ControlProtocolError(self.path, f"malformed msgpack: {e}") from None
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionResetError(0, "the daemon closed the connection")
            try:
                self._unpacker.feed(data)
            except msgpack.BufferFull:
                raise ControlProtocolError(self.path, f"answer larger than {MAX_MESSAGE} bytes") from None

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._unpacker = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
