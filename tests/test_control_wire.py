"""The control protocol's framing (stubdom.daemon.wire), without sockets."""

import msgpack
import pytest

from stubdom.public.control import MAX_MESSAGE, READ_SIZE, FrameReader, encode, error_response, ok_response
from stubdom.public.errors import ControlError, ErrorCode, ProtocolError


def feed_all(reader: FrameReader, data: bytes) -> list:
    out = []
    for i in range(0, len(data), READ_SIZE):
        reader.feed(data[i:i + READ_SIZE])
        out.extend(reader.requests())
    return out


def test_requests_split_and_coalesced_across_reads():
    stream = b"".join(encode({"op": "hello", "seq": i, "x": "y" * i}) for i in range(200))
    reader = FrameReader()
    # one byte at a time: every split point is exercised
    got = []
    for b in stream[:3000]:
        reader.feed(bytes([b]))
        got.extend(reader.requests())
    got.extend(feed_all(reader, stream[3000:]))
    assert [r.seq for r in got] == list(range(200))
    assert all(r.op == "hello" and r.args == {"x": "y" * r.seq} for r in got)


def test_message_of_exactly_the_limit_passes_and_one_more_byte_fails():
    def message(size):
        # a map with one bin value, padded so that the encoding is ``size`` bytes
        base = len(encode({"op": "hello", "seq": 1, "pad": b""}))
        pad = size - base
        m = {"op": "hello", "seq": 1, "pad": b"x" * pad}
        data = msgpack.packb(m, use_bin_type=True)
        while len(data) != size:  # bin8/16/32 headers differ in length
            pad -= len(data) - size
            m["pad"] = b"x" * pad
            data = msgpack.packb(m, use_bin_type=True)
        return data

    ok = message(MAX_MESSAGE)
    assert len(ok) == MAX_MESSAGE
    assert [r.seq for r in feed_all(FrameReader(), ok + encode({"op": "list", "seq": 2}))] == [1, 2]
    with pytest.raises(ProtocolError, match=f"larger than {MAX_MESSAGE}"):
        feed_all(FrameReader(), message(MAX_MESSAGE + 1))


def test_huge_declared_length_is_refused_before_it_arrives():
    # a bin32 header announcing 1 GiB: refused once the buffered part passes the limit
    reader = FrameReader()
    head = b"\x82\xa2op\xa5hello\xa3seq\xc6" + (1 << 30).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="larger than"):
        feed_all(reader, head + b"\0" * (MAX_MESSAGE + READ_SIZE))


@pytest.mark.parametrize("data, match", [
    (b"\xc1", "malformed msgpack"),  # 0xc1 is never used
    (msgpack.packb([1, 2, 3]), "must be a map, got list"),
    (msgpack.packb("hello"), "must be a map, got str"),
    (msgpack.packb({"op": "hello"}), "needs an int 'seq', got None"),
    (msgpack.packb({"op": "hello", "seq": "1"}), "needs an int 'seq', got '1'"),
    (msgpack.packb({"seq": 7, "op": 3}), "needs a str 'op', got 3"),
    (msgpack.packb({1: 2}), "malformed msgpack"),  # int keys
])
def test_malformed_messages(data, match):
    reader = FrameReader()
    with pytest.raises(ProtocolError, match=match) as e:
        feed_all(reader, data)
    assert e.value.code is ErrorCode.BAD_REQUEST


def test_error_seq_is_the_offending_messages_own():
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        feed_all(reader, encode({"op": "hello", "seq": 5}) + msgpack.packb({"seq": 6, "op": 1}))
    assert reader.error_seq == 6
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        feed_all(reader, encode({"op": "hello", "seq": 5}) + msgpack.packb([1]))
    assert reader.error_seq is None


def test_argument_checks():
    (req,) = feed_all(FrameReader(), encode({"op": "dump", "seq": 1, "domid": -1, "path": ""}))
    with pytest.raises(ControlError, match=r"dump: domid must be an int in \[0, 32751\], got -1"):
        req.int_arg("domid")
    with pytest.raises(ControlError, match="path must be a non-empty string"):
        req.str_arg("path")
    with pytest.raises(ControlError, match="missing argument 'x'"):
        req.int_arg("x")
    assert req.int_arg("x", required=False) is None
    (req,) = feed_all(FrameReader(), encode({"op": "dump", "seq": 1, "domid": True}))
    with pytest.raises(ControlError, match="got True"):  # bool is not a domid
        req.int_arg("domid")


def test_responses():
    assert ok_response(3, {"a": 1}) == {"seq": 3, "ok": True, "result": {"a": 1}}
    assert error_response(None, ErrorCode.UNKNOWN_OP, "no") == {
        "seq": None, "ok": False, "error": {"code": 2, "name": "UNKNOWN_OP", "message": "no"}}
    with pytest.raises(ControlError) as e:
        encode({"big": b"x" * MAX_MESSAGE})
    assert e.value.code is ErrorCode.INTERNAL


def test_error_codes_are_the_contracts():
    assert {c.name: int(c) for c in ErrorCode} == {
        "BAD_REQUEST": 1, "UNKNOWN_OP": 2, "NO_SUCH_DOMAIN": 3, "DOMAIN_EXISTS": 4, "TEE_REFUSED": 5,
        "POLICY_REFUSED": 6, "CONFIG_INVALID": 7, "SHUTTING_DOWN": 8, "INTERNAL": 9}
