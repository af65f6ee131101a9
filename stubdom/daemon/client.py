"""A blocking client of the control socket (what ``ctl`` uses; tests too)."""

from __future__ import annotations

import socket
from pathlib import Path

import msgpack

from stubdom.rundir import check_peer

from .control import sockaddr
from .errors import ControlError, ErrorCode
from .wire import MAX_MESSAGE, READ_SIZE, encode

__all__ = ["ControlClient"]


class ControlClient:
    """One connection; ``request`` returns the whole response map, ``call``
    the result or raises ControlError. ``timeout`` bounds every wait (s).
    A listener that runs as another user than this process's (or root) is
    :class:`~stubdom.rundir.PeerRefused` before anything is sent."""

    def __init__(self, path, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            with sockaddr(self.path) as addr:
                self._sock.connect(addr)
            check_peer(self._sock, self.path, "stubdom-teed")
        except BaseException:
            self._sock.close()
            raise
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=True,
                                          max_buffer_size=MAX_MESSAGE + READ_SIZE)
        self._seq = 0

    def send_raw(self, data: bytes) -> None:
        self._sock.sendall(data)

    def receive(self) -> dict | None:
        """The next response, or None when the daemon closed the connection."""
        while True:
            for message in self._unpacker:
                return message
            data = self._sock.recv(READ_SIZE)
            if not data:
                return None
            self._unpacker.feed(data)

    def request(self, op: str, **args) -> dict:
        self._seq += 1
        self.send_raw(encode({"op": op, "seq": self._seq, **args}))
        response = self.receive()
        if response is None:
            raise ConnectionError(f"{self.path}: the daemon closed the connection")
        return response

    def call(self, op: str, **args) -> dict:
        response = self.request(op, **args)
        if not response.get("ok"):
            error = response.get("error", {})
            raise ControlError(ErrorCode(error.get("code", ErrorCode.INTERNAL)), error.get("message", ""))
        return response["result"]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
