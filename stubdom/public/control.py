"""The control protocol of stubdom-teed, defined once for both ends
(docs/control-protocol.md): where the socket is, how large a message may
be, the protocol's version, the shape of requests and responses, and the
framing of a request stream, without I/O.

A connection carries a stream of msgpack maps in each direction, nothing
else between them. The reading side feeds whatever bytes arrived into a
:class:`FrameReader` and takes out complete requests; every message is at
most :data:`MAX_MESSAGE` bytes. The reader never buffers more than one
incomplete request plus one read. The error codes and exceptions are in
:mod:`.errors`; the client is :mod:`.control_client`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, overload

import msgpack

from .errors import ControlError, ErrorCode, ProtocolError

__all__ = [
    "MAX_MESSAGE",
    "READ_SIZE",
    "PROTOCOL_VERSION",
    "MAX_ERROR_MESSAGE",
    "control_socket_path",
    "FrameReader",
    "Request",
    "encode",
    "ok_response",
    "error_response",
    "quote",
]

MAX_MESSAGE = 64 * 1024  # bytes of one encoded message, either direction
READ_SIZE = 4096  # bytes per read; bounds what a reader holds beyond one message
PROTOCOL_VERSION = 1  # "version" in hello's answer


def control_socket_path(runtime_dir: str | os.PathLike[str]) -> Path:
    """``<runtime_dir>/stubdom-teed/control``: where the daemon listens."""
    return Path(runtime_dir) / "stubdom-teed" / "control"


class Request:
    """One well-formed request: ``op``, ``seq`` and the other keys as ``args``."""

    __slots__ = ("op", "seq", "args")

    def __init__(self, op: str, seq: int, args: dict[str, Any]) -> None:
        self.op = op
        self.seq = seq
        self.args = args

    @overload
    def int_arg(self, name: str, *, required: Literal[True] = ..., lo: int = ..., hi: int = ...) -> int: ...
    @overload
    def int_arg(self, name: str, *, required: bool, lo: int = ..., hi: int = ...) -> int | None: ...

    def int_arg(self, name: str, *, required: bool = True, lo: int = 0, hi: int = 0x7FEF) -> int | None:
        """An integer argument in [lo, hi] (domids: 0..DOMID_FIRST_RESERVED-1,
        xen/include/public/xen.h: DOMID_FIRST_RESERVED = 0x7FF0)."""
        if name not in self.args:
            if required:
                raise ControlError(ErrorCode.BAD_REQUEST, f"{self.op}: missing argument {name!r}")
            return None
        value = self.args[name]
        if type(value) is not int or not lo <= value <= hi:
            raise ControlError(ErrorCode.BAD_REQUEST,
                               f"{self.op}: {name} must be an int in [{lo}, {hi}], got {value!r}")
        return value

    @overload
    def str_arg(self, name: str, *, required: Literal[True] = ...) -> str: ...
    @overload
    def str_arg(self, name: str, *, required: bool) -> str | None: ...

    def str_arg(self, name: str, *, required: bool = True) -> str | None:
        if name not in self.args:
            if required:
                raise ControlError(ErrorCode.BAD_REQUEST, f"{self.op}: missing argument {name!r}")
            return None
        value = self.args[name]
        if type(value) is not str or not value or "\0" in value:
            raise ControlError(ErrorCode.BAD_REQUEST,
                               f"{self.op}: {name} must be a non-empty string, got {value!r}")
        return value


class FrameReader:
    """Turns received bytes into :class:`Request` values.

    ``feed(data)`` then iterate ``requests()``. A :class:`ProtocolError`
    (malformed msgpack, a message over :data:`MAX_MESSAGE`, a message that
    is not a map with an int ``seq`` and a str ``op``) ends the connection:
    the reader is unusable afterwards. ``error_seq`` is the seq of the
    offending message when it could be read, else None.
    """

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,  # request keys are strings
            max_buffer_size=MAX_MESSAGE + READ_SIZE,
        )
        self._fed = 0  # bytes fed so far
        # where the current message starts (tell() moves on OutOfData too)
        self._start = 0
        self.error_seq: int | None = None

    def feed(self, data: bytes) -> None:
        if len(data) > READ_SIZE:
            raise ValueError(f"feed at most READ_SIZE ({READ_SIZE}) bytes at a time, got {len(data)}")
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes") from None
        self._fed += len(data)

    def requests(self) -> Iterator[Request]:
        while True:
            self.error_seq = None
            try:
                obj = self._unpacker.unpack()
            except msgpack.OutOfData:
                if self._fed - self._start > MAX_MESSAGE:
                    raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes") from None
                return
            except (msgpack.UnpackException, ValueError, TypeError) as e:
                # FormatError, StackError, ExtraData; ValueError for non-str map keys
                raise ProtocolError(f"malformed msgpack: {type(e).__name__}: {e}") from None
            end = self._unpacker.tell()
            size, self._start = end - self._start, end
            if size > MAX_MESSAGE:
                raise ProtocolError(f"message of {size} bytes is larger than {MAX_MESSAGE}")
            yield self._request(obj)

    def _request(self, obj: object) -> Request:
        if not isinstance(obj, dict):
            raise ProtocolError(f"a request must be a map, got {type(obj).__name__}")
        seq = obj.get("seq")
        if type(seq) is int:
            self.error_seq = seq
        else:
            raise ProtocolError(f"a request needs an int 'seq', got {quote(seq)}")
        op = obj.get("op")
        if type(op) is not str:
            raise ProtocolError(f"a request needs a str 'op', got {quote(op)}")
        args = {k: v for k, v in obj.items() if k not in ("op", "seq")}
        return Request(op, seq, args)


def encode(message: dict) -> bytes:
    """One message on the wire; refuses to produce one over the limit."""
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise ControlError(ErrorCode.INTERNAL, f"response of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def ok_response(seq: int | None, result: dict) -> dict:
    return {"seq": seq, "ok": True, "result": result}


# An error message quotes what was wrong; bounded so that an error response
# always fits in MAX_MESSAGE whatever a peer sent.
MAX_ERROR_MESSAGE = 1024
_QUOTE = 64


def quote(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters: peer-supplied values are
    quoted in error messages but must not make them arbitrarily large."""
    text = repr(value)
    if len(text) <= _QUOTE:
        return text
    return f"{text[:_QUOTE]}… ({len(text)} characters)"


def error_response(seq: int | None, code: ErrorCode | int, message: str) -> dict:
    code = ErrorCode(code)
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + "…"
    return {"seq": seq, "ok": False, "error": {"code": int(code), "name": code.name, "message": message}}
