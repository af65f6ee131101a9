"""Fuzz harness: the daemon's control-socket decoder (``FrameReader``)
and what the control server does with each outcome: argument accessors on a
decoded request, and encoding the answer — including the answer to a
framing error, which the server sends before closing the connection.

Property: bytes fed in chunks of at most READ_SIZE either yield Requests or
raise ``ProtocolError`` (after which the reader is not used again); a
request's ``int_arg``/``str_arg`` return a value of the right type or raise
``ControlError``; every answer the server would send encodes within
MAX_MESSAGE (control.py's fallback included).

    python tests/fuzz/control_wire.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import sys

import msgpack
from _runner import Reader, main

from stubdom.public.control import MAX_MESSAGE, READ_SIZE, FrameReader, encode, error_response
from stubdom.public.errors import ControlError, ProtocolError

NAME = "control_wire"


def _answer_bytes(seq, code, message) -> bytes:
    """What ControlServer sends for an error: the answer, or its short
    INTERNAL fallback when the answer does not fit (control.py _answer)."""
    try:
        return encode(error_response(seq, code, message))
    except ControlError as e:
        return encode(error_response(seq, e.code, e.message))


def one_input(data: bytes) -> None:
    rd = Reader(data)
    chunk = 1 + rd.u16() % READ_SIZE
    stream = rd.rest()
    reader = FrameReader()
    try:
        for i in range(0, len(stream), chunk):
            reader.feed(stream[i:i + chunk])
            for req in reader.requests():
                assert type(req.op) is str and type(req.seq) is int
                for name in ("domid", "path"):
                    for required in (True, False):
                        try:
                            v = req.int_arg(name, required=required)
                            assert v is None or type(v) is int
                            v = req.str_arg(name, required=required)
                            assert v is None or type(v) is str
                        except ProtocolError:
                            raise AssertionError("an argument error is not a framing error") from None
                        except ControlError as e:
                            assert len(_answer_bytes(req.seq, e.code, e.message)) <= MAX_MESSAGE
    except ProtocolError as e:
        # control.py sends exactly this before closing the connection
        answer = encode(error_response(reader.error_seq, e.code, e.message))
        assert len(answer) <= MAX_MESSAGE


def seeds() -> list[bytes]:
    def frames(*msgs) -> bytes:
        return b"".join(msgpack.packb(m, use_bin_type=True) for m in msgs)

    return [
        b"\x00\x10" + frames({"op": "hello", "seq": 1}, {"op": "domain_create", "seq": 2, "domid": 1}),
        b"\x01\x00" + frames({"op": "reload", "seq": 3, "path": "/tmp/x.yaml"}, {"op": "stats", "seq": 4}),
        b"\x00\x03" + frames({"op": "dump", "seq": 5, "domid": "one"}, [1, 2], {"seq": 6}),
        b"\x00\x10" + b"\xc1",
        b"\xff\x0f" + frames({"op": "x", "seq": 7, "domid": 2**63}),
    ]


@contextlib.contextmanager
def target(workdir):
    yield one_input


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds, max_len=MAX_MESSAGE + 2 * READ_SIZE))
