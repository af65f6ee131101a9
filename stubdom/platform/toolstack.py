"""The platform's client of stubdom-teed's control socket (the toolstack's
side of docs/control-protocol.md).

msgpack maps over an AF_UNIX stream socket: ``{"op", "seq", ...}`` out,
``{"seq", "ok", "result" | "error"}`` back, each at most 64 KiB. One request
at a time per client (a lock serialises threads); every wait is bounded.
An ``ok: false`` answer raises the ControlError subclass of its code. A
listener that runs as another user than the platform's (or root) is refused
before anything is sent (:class:`DaemonRefused`, SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from stubdom.rundir import PeerRefused, check_peer

from .errors import CONTROL_ERRORS, ControlError, ControlProtocolError, DaemonRefused, DaemonUnavailable

__all__ = ["MAX_MESSAGE", "Toolstack", "control_path"]

MAX_MESSAGE = 64 * 1024  # bytes of one control message, either direction
_READ_SIZE = 4096


def control_path(runtime_dir: str | os.PathLike[str]) -> Path:
    """``<runtime_dir>/stubdom-teed/control``: where the daemon listens."""
    return Path(runtime_dir) / "stubdom-teed" / "control"


def _connect_unix(sock: socket.socket, path: str) -> None:
    """connect() even when ``path`` is longer than sun_path (108 bytes with
    its NUL): reach the directory through /proc/self/fd, as ring does."""
    raw = os.fsencode(path)
    if len(raw) < 108:
        sock.connect(raw)
        return
    head, name = os.path.split(raw)
    dfd = os.open(head or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(b"/proc/self/fd/%d/%s" % (dfd, name))
    finally:
        os.close(dfd)


class Toolstack:
    """A connection to the daemon's control socket, opened on first use and
    re-opened after the daemon closed it. ``timeout`` bounds connecting and
    each answer, in seconds."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.path = os.fspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._seq = 0

    # -- operations (the contract's ops) ------------------------------------------

    def hello(self) -> dict:
        return self.request("hello")

    def domain_create(self, domid: int) -> dict:
        """The daemon maps the domain, applies its policy, sends VM_CREATED
        through the gate and creates the ring and event channel: returns
        ``{"domid", "dir", "ring", "evtchn", "ring_pages"}``."""
        return self.request("domain_create", domid=domid)

    def domain_destroy(self, domid: int) -> dict:
        return self.request("domain_destroy", domid=domid)

    def list(self) -> dict:
        return self.request("list")

    def stats(self, domid: int | None = None) -> dict:
        return self.request("stats") if domid is None else self.request("stats", domid=domid)

    # -- transport -------------------------------------------------------------------

    def wait_ready(self, timeout: float, *, interval: float = 0.05) -> dict:
        """Retry ``hello`` until the daemon answers or ``timeout`` seconds
        pass (then the last DaemonUnavailable is raised)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.hello()
            except DaemonRefused:
                raise  # someone else's listener: waiting will not make it ours
            except DaemonUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(interval)

    def request(self, op: str, **args: Any) -> dict:
        """Send one request and return its ``result`` map."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            message = {"op": op, "seq": seq, **args}
            data = msgpack.packb(message, use_bin_type=True)
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
            except (socket.timeout, TimeoutError):
                self._drop()
                raise DaemonUnavailable(self.path, f"{op}: no answer within {self.timeout:g} s") from None
            except OSError as e:
                self._drop()
                raise DaemonUnavailable(self.path, f"{op}: {e.strerror or e}") from None
            except ControlProtocolError:
                self._drop()
                raise
        return self._result(op, seq, answer)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            _connect_unix(sock, self.path)
        except FileNotFoundError:
            sock.close()
            raise DaemonUnavailable(self.path, "no such socket: is stubdom-teed running?") from None
        except OSError as e:
            sock.close()
            raise DaemonUnavailable(self.path, e.strerror or str(e)) from None
        try:
            check_peer(sock, self.path, "stubdom-teed")
        except PeerRefused as e:
            sock.close()
            raise DaemonRefused(self.path, e.pid, e.uid, e.detail) from None
        self._sock = sock
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE + _READ_SIZE)
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
            data = sock.recv(_READ_SIZE)
            if not data:
                raise ConnectionResetError(0, "the daemon closed the connection")
            try:
                self._unpacker.feed(data)
            except msgpack.BufferFull:
                raise ControlProtocolError(self.path, f"answer larger than {MAX_MESSAGE} bytes") from None

    def _result(self, op: str, seq: int, answer: object) -> dict:
        if not isinstance(answer, dict) or answer.get("seq") != seq or type(answer.get("ok")) is not bool:
            with self._lock:
                self._drop()
            raise ControlProtocolError(self.path, f"{op} (seq {seq}) answered with {answer!r:.200}")
        if answer["ok"]:
            result = answer.get("result", {})
            if not isinstance(result, dict):
                raise ControlProtocolError(self.path, f"{op}: result is not a map: {result!r:.200}")
            return result
        error = answer.get("error")
        if not isinstance(error, dict) or type(error.get("code")) is not int:
            raise ControlProtocolError(self.path, f"{op}: malformed error {error!r:.200}")
        cls = CONTROL_ERRORS.get(error["code"], ControlError)
        raise cls(op, error["code"], str(error.get("name", "?")), str(error.get("message", "")))

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._unpacker = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> "Toolstack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
