"""optee_msg_arg / optee_msg_param layouts at their real byte offsets, the
optee_msg.h constants, hostile-input parsing, and UUID / OPEN_SESSION meta."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stubdom.optee as optee
from stubdom.optee import (
    BadMetaParam,
    BadParamAttr,
    BadUuid,
    FieldOutOfRange,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    TooManyParams,
    TruncatedMessage,
    get_arg_size,
    octets_to_uuid,
    pack_header,
    param_offset,
    unpack_header,
    uuid_to_octets,
)
from stubdom.optee import msg as msg_mod

U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1

MSG_LITERALS = {
    "OPTEE_MSG_ATTR_TYPE_NONE": 0x0,
    "OPTEE_MSG_ATTR_TYPE_VALUE_INPUT": 0x1,
    "OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT": 0x2,
    "OPTEE_MSG_ATTR_TYPE_VALUE_INOUT": 0x3,
    "OPTEE_MSG_ATTR_TYPE_RMEM_INPUT": 0x5,
    "OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT": 0x6,
    "OPTEE_MSG_ATTR_TYPE_RMEM_INOUT": 0x7,
    "OPTEE_MSG_ATTR_TYPE_FMEM_INPUT": 0x5,
    "OPTEE_MSG_ATTR_TYPE_FMEM_OUTPUT": 0x6,
    "OPTEE_MSG_ATTR_TYPE_FMEM_INOUT": 0x7,
    "OPTEE_MSG_ATTR_TYPE_TMEM_INPUT": 0x9,
    "OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT": 0xA,
    "OPTEE_MSG_ATTR_TYPE_TMEM_INOUT": 0xB,
    "OPTEE_MSG_ATTR_TYPE_MASK": 0xFF,
    "OPTEE_MSG_ATTR_META": 0x100,
    "OPTEE_MSG_ATTR_NONCONTIG": 0x200,
    "OPTEE_MSG_ATTR_CACHE_SHIFT": 16,
    "OPTEE_MSG_ATTR_CACHE_MASK": 0x7,
    "OPTEE_MSG_ATTR_CACHE_PREDEFINED": 0,
    "OPTEE_MSG_LOGIN_PUBLIC": 0x00000000,
    "OPTEE_MSG_LOGIN_USER": 0x00000001,
    "OPTEE_MSG_LOGIN_GROUP": 0x00000002,
    "OPTEE_MSG_LOGIN_APPLICATION": 0x00000004,
    "OPTEE_MSG_LOGIN_APPLICATION_USER": 0x00000005,
    "OPTEE_MSG_LOGIN_APPLICATION_GROUP": 0x00000006,
    "OPTEE_MSG_LOGIN_REE_KERNEL": 0x80000000,
    "OPTEE_MSG_LOGIN_TRUSTED_APP": 0xF0000000,
    "OPTEE_MSG_CMD_OPEN_SESSION": 0,
    "OPTEE_MSG_CMD_INVOKE_COMMAND": 1,
    "OPTEE_MSG_CMD_CLOSE_SESSION": 2,
    "OPTEE_MSG_CMD_CANCEL": 3,
    "OPTEE_MSG_CMD_REGISTER_SHM": 4,
    "OPTEE_MSG_CMD_UNREGISTER_SHM": 5,
    "OPTEE_MSG_CMD_DO_BOTTOM_HALF": 6,
    "OPTEE_MSG_CMD_STOP_ASYNC_NOTIF": 7,
    "OPTEE_MSG_CMD_LEND_PROTMEM": 8,
    "OPTEE_MSG_CMD_RECLAIM_PROTMEM": 9,
    "OPTEE_MSG_CMD_GET_PROTMEM_CONFIG": 10,
    "OPTEE_MSG_CMD_ASSIGN_PROTMEM": 11,
    "OPTEE_MSG_NONCONTIG_PAGE_SIZE": 4096,
    "OPTEE_MSG_FMEM_INVALID_GLOBAL_ID": 0xFFFFFFFFFFFFFFFF,
    "OPTEE_MSG_MAX_NUM_PARAMS": 127,
    "MSG_ARG_HEADER_SIZE": 32,
    "MSG_PARAM_SIZE": 32,
    "PARAM_OCTETS_SIZE": 24,
    "OFFSET_CMD": 0,
    "OFFSET_FUNC": 4,
    "OFFSET_SESSION": 8,
    "OFFSET_CANCEL_ID": 12,
    "OFFSET_PAD": 16,
    "OFFSET_RET": 20,
    "OFFSET_RET_ORIGIN": 24,
    "OFFSET_NUM_PARAMS": 28,
    "OFFSET_PARAMS": 32,
    "PARAM_OFFSET_ATTR": 0,
    "PARAM_OFFSET_U": 8,
    "PARAM_OFFSET_A": 8,
    "PARAM_OFFSET_B": 16,
    "PARAM_OFFSET_C": 24,
    "PARAM_OFFSET_TMEM_BUF_PTR": 8,
    "PARAM_OFFSET_TMEM_SIZE": 16,
    "PARAM_OFFSET_TMEM_SHM_REF": 24,
    "PARAM_OFFSET_RMEM_OFFS": 8,
    "PARAM_OFFSET_RMEM_SIZE": 16,
    "PARAM_OFFSET_RMEM_SHM_REF": 24,
    "PARAM_OFFSET_FMEM_OFFS_LOW": 8,
    "PARAM_OFFSET_FMEM_OFFS_HIGH": 12,
    "PARAM_OFFSET_FMEM_INTERNAL_OFFS": 14,
    "PARAM_OFFSET_FMEM_SIZE": 16,
    "PARAM_OFFSET_FMEM_GLOBAL_ID": 24,
}


@pytest.mark.parametrize(("name", "value"), sorted(MSG_LITERALS.items()))
def test_msg_constant(name: str, value: int) -> None:
    assert getattr(optee, name) == value


def test_every_msg_constant_is_pinned() -> None:
    non_int = {"OPTEE_MSG_CMD_NAMES"}
    names = {n for n in msg_mod.__all__ if n.isupper() and not n.endswith("_TYPES")} - non_int
    assert names == set(MSG_LITERALS)
    assert optee.OPTEE_MSG_CMD_NAMES[4] == "OPTEE_MSG_CMD_REGISTER_SHM"
    assert len(optee.OPTEE_MSG_CMD_NAMES) == 12


@pytest.mark.parametrize(
    ("n", "size"), [(0, 32), (1, 64), (2, 96), (3, 128), (4, 160), (5, 192), (6, 224), (8, 288), (127, 4096)]
)
def test_get_arg_size(n: int, size: int) -> None:
    assert get_arg_size(n) == size


def test_get_arg_size_rejects_bad_count() -> None:
    with pytest.raises(FieldOutOfRange, match="num_params = -1"):
        get_arg_size(-1)
    assert get_arg_size(128) == 4128  # representable, beyond one page


def test_param_offset() -> None:
    assert [param_offset(i) for i in range(4)] == [32, 64, 96, 128]


# -- Byte offsets, checked with distinct sentinels -----------------------------------------


def u32_at(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def u64_at(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


def test_header_field_offsets() -> None:
    arg = MsgArg(
        cmd=0x11111111, func=0x22222222, session=0x33333333, cancel_id=0x44444444,
        pad=0x55555555, ret=0x66666666, ret_origin=0x77777777,
        params=(MsgParam(1), MsgParam(2), MsgParam(3)),
    )
    buf = arg.pack()
    assert len(buf) == 128
    assert u32_at(buf, 0) == 0x11111111
    assert u32_at(buf, 4) == 0x22222222
    assert u32_at(buf, 8) == 0x33333333
    assert u32_at(buf, 12) == 0x44444444
    assert u32_at(buf, 16) == 0x55555555
    assert u32_at(buf, 20) == 0x66666666
    assert u32_at(buf, 24) == 0x77777777
    assert u32_at(buf, 28) == 3
    # little-endian: lowest byte first
    assert pack_header(0x01020304)[:4] == b"\x04\x03\x02\x01"


def test_param_field_offsets() -> None:
    p0 = MsgParam(0x0101010101010101, 0x0A0A0A0A0A0A0A0A, 0x0B0B0B0B0B0B0B0B, 0x0C0C0C0C0C0C0C0C)
    p1 = MsgParam.tmem(optee.OPTEE_MSG_ATTR_TYPE_TMEM_INOUT, 0x1111_2222_3333_4000, 0x5555, 0x6666_7777)
    p2 = MsgParam.rmem(optee.OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, 0x88, 0x99, 0xAAAA_BBBB_CCCC_DDDD)
    buf = MsgArg(cmd=1, params=(p0, p1, p2)).pack()
    assert len(buf) == 32 + 3 * 32
    base = 32
    assert u64_at(buf, base + 0) == 0x0101010101010101
    assert u64_at(buf, base + 8) == 0x0A0A0A0A0A0A0A0A
    assert u64_at(buf, base + 16) == 0x0B0B0B0B0B0B0B0B
    assert u64_at(buf, base + 24) == 0x0C0C0C0C0C0C0C0C
    base = 64
    assert u64_at(buf, base + 0) == 0xB
    assert u64_at(buf, base + 8) == 0x1111_2222_3333_4000  # tmem.buf_ptr
    assert u64_at(buf, base + 16) == 0x5555  # tmem.size
    assert u64_at(buf, base + 24) == 0x6666_7777  # tmem.shm_ref
    base = 96
    assert u64_at(buf, base + 0) == 0x6
    assert u64_at(buf, base + 8) == 0x88  # rmem.offs
    assert u64_at(buf, base + 16) == 0x99  # rmem.size
    assert u64_at(buf, base + 24) == 0xAAAA_BBBB_CCCC_DDDD  # rmem.shm_ref


def test_fmem_view_offsets() -> None:
    raw = bytearray(32)
    struct.pack_into("<Q", raw, 0, 0x5)
    struct.pack_into("<I", raw, 8, 0x11223344)  # offs_low
    struct.pack_into("<H", raw, 12, 0x5566)  # offs_high
    struct.pack_into("<H", raw, 14, 0x7788)  # internal_offs
    struct.pack_into("<Q", raw, 16, 0x1000)  # size
    struct.pack_into("<Q", raw, 24, U64)  # global_id
    p = MsgParam.unpack(bytes(raw))
    assert (p.fmem_offs_low, p.fmem_offs_high, p.fmem_internal_offs) == (0x11223344, 0x5566, 0x7788)
    assert p.size == 0x1000 and p.fmem_global_id == optee.OPTEE_MSG_FMEM_INVALID_GLOBAL_ID


def test_octets_view() -> None:
    data = bytes(range(24))
    p = MsgParam.from_octets(0x101, data)
    assert p.octets == data
    assert p.pack()[8:32] == data
    assert p.a == int.from_bytes(data[0:8], "little")
    with pytest.raises(TruncatedMessage, match="got 16"):
        MsgParam.from_octets(0x101, data[:16])


def test_param_views() -> None:
    p = MsgParam(optee.OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | optee.OPTEE_MSG_ATTR_NONCONTIG | (1 << 16), 0x1000, 2, 3)
    assert p.type == 0xA and p.is_tmem and not p.is_rmem and not p.is_value
    assert p.is_noncontig and not p.is_meta and p.cache_attr == 1
    assert (p.buf_ptr, p.size, p.shm_ref) == (0x1000, 2, 3)
    meta = MsgParam.value(0x101, 1, 2, 3)
    assert meta.is_meta and meta.is_value and meta.type == 1
    r = MsgParam.rmem(optee.OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 7, 8, 9)
    assert (r.offs, r.size, r.shm_ref) == (7, 8, 9) and r.is_rmem
    assert MsgParam.none() == MsgParam(0, 0, 0, 0)
    assert r.replace(b=10).size == 10


def test_typed_constructors_check_attr_family() -> None:
    with pytest.raises(BadParamAttr, match="attr 0x9 has type 0x9, not a value type"):
        MsgParam.value(optee.OPTEE_MSG_ATTR_TYPE_TMEM_INPUT)
    with pytest.raises(BadParamAttr, match="attr 0x101 has type 0x1, not a tmem type"):
        MsgParam.tmem(0x101, 0, 0, 0)
    with pytest.raises(BadParamAttr, match="attr 0xa has type 0xa, not a rmem type"):
        MsgParam.rmem(0xA, 0, 0, 0)


@pytest.mark.parametrize("field", ["attr", "a", "b", "c"])
@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_param_words_must_be_u64(field: str, bad: int) -> None:
    kwargs = {"attr": 0, "a": 0, "b": 0, "c": 0, field: bad}
    with pytest.raises(FieldOutOfRange, match=str(bad)):
        MsgParam(**kwargs)


@pytest.mark.parametrize("field", ["cmd", "func", "session", "cancel_id", "pad", "ret", "ret_origin"])
def test_header_fields_must_be_u32(field: str) -> None:
    with pytest.raises(FieldOutOfRange, match=f"{field} = 4294967296"):
        MsgArg(**{"cmd": 0, field: 1 << 32})
    with pytest.raises(FieldOutOfRange, match=f"{field} = 4294967296"):
        pack_header(**{"cmd": 0, field: 1 << 32})


def test_params_must_be_msgparams() -> None:
    with pytest.raises(TypeError, match="params\\[1\\]"):
        MsgArg(0, params=(MsgParam(0), (1, 2, 3, 4)))  # type: ignore[arg-type]  # the wrong type under test
    assert MsgArg(0, params=[MsgParam(1)]).params == (MsgParam(1),)  # list -> tuple


# -- Hostile unpacking -------------------------------------------------------------------------


def test_unpack_whole_page_reads_only_announced_params() -> None:
    page = bytearray(b"\xEE" * 4096)
    MsgArg(cmd=1, session=5, params=(MsgParam.value(1, 1, 2, 3),)).pack_into(page)
    arg = MsgArg.unpack(page)
    assert arg.num_params == 1 and arg.session == 5
    assert arg.params[0] == MsgParam(1, 1, 2, 3)


def test_unpack_refuses_too_many_params() -> None:
    buf = pack_header(0, num_params=128) + bytes(128 * 32)
    with pytest.raises(TooManyParams, match="num_params = 128 exceeds the maximum of 127"):
        MsgArg.unpack(buf)
    with pytest.raises(TooManyParams, match="num_params = 5 exceeds the maximum of 4"):
        MsgArg.unpack(pack_header(0, num_params=5) + bytes(5 * 32), max_params=4)
    # 0xFFFFFFFF params: refused on the count, before any size arithmetic
    with pytest.raises(TooManyParams, match="4294967295"):
        MsgArg.unpack(pack_header(0, num_params=U32))


def test_unpack_refuses_truncated_buffers() -> None:
    with pytest.raises(TruncatedMessage, match="31-byte buffer"):
        MsgArg.unpack(bytes(31))
    buf = pack_header(0, num_params=2) + bytes(63)
    with pytest.raises(TruncatedMessage, match="announces 2 params \\(96 bytes\\) but the buffer is 95 bytes"):
        MsgArg.unpack(buf)
    with pytest.raises(TruncatedMessage, match="at offset 4072 does not fit a 4096-byte buffer"):
        unpack_header(bytes(4096), 4064 + 8)
    with pytest.raises(TruncatedMessage):
        MsgParam.unpack(bytes(31))


def test_unpack_at_offset_for_trailing_rpc_arg() -> None:
    # CALL_WITH_RPC_ARG: the RPC arg sits right after the first one.
    first = MsgArg(cmd=1, params=(MsgParam(1), MsgParam(2)))
    rpc = MsgArg(cmd=optee.OPTEE_RPC_CMD_GET_TIME, ret=optee.TEEC_ERROR_GENERIC, params=(MsgParam(2),) * 4)
    page = bytearray(4096)
    first.pack_into(page)
    rpc.pack_into(page, first.size)
    assert first.size == 96
    assert MsgArg.unpack(page) == first
    assert MsgArg.unpack(page, offset=96, max_params=optee.THREAD_RPC_MAX_NUM_PARAMS) == rpc
    with pytest.raises(TruncatedMessage, match="does not fit a 100-byte buffer"):
        rpc.pack_into(bytearray(100), 0)


def test_unpack_accepts_memoryview_and_is_independent_of_later_writes() -> None:
    page = bytearray(MsgArg(cmd=2, session=9).pack() + bytes(64))
    arg = MsgArg.unpack(memoryview(page))
    page[8] = 0xFF
    assert arg.session == 9


params_st = st.builds(
    MsgParam,
    attr=st.integers(0, U64),
    a=st.integers(0, U64),
    b=st.integers(0, U64),
    c=st.integers(0, U64),
)
u32_st = st.integers(0, U32)


@given(
    st.builds(
        MsgArg,
        cmd=u32_st, func=u32_st, session=u32_st, cancel_id=u32_st, pad=u32_st, ret=u32_st,
        ret_origin=u32_st, params=st.lists(params_st, max_size=8).map(tuple),
    ),
    st.binary(max_size=64),
)
def test_msg_arg_round_trip(arg: MsgArg, trailing: bytes) -> None:
    packed = arg.pack()
    assert len(packed) == get_arg_size(arg.num_params)
    assert MsgArg.unpack(packed + trailing) == arg
    assert unpack_header(packed)[7] == arg.num_params


@given(params_st)
def test_msg_param_round_trip(p: MsgParam) -> None:
    assert MsgParam.unpack(p.pack()) == p
    assert MsgParam.from_octets(p.attr, p.octets) == p


@given(st.binary(min_size=0, max_size=512))
def test_unpack_arbitrary_bytes_never_escapes_abi_error(data: bytes) -> None:
    try:
        arg = MsgArg.unpack(data)
    except (TruncatedMessage, TooManyParams):
        return
    assert arg.size <= len(data)


# -- UUIDs and OPEN_SESSION meta -----------------------------------------------------------------

EXAMPLE_TA = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")


def test_uuid_octets_are_rfc4122_order() -> None:
    octets = uuid_to_octets(EXAMPLE_TA)
    assert octets == bytes.fromhex("8aaaf200245011e4abe20002a5d5c51b")
    assert octets_to_uuid(octets) == EXAMPLE_TA
    with pytest.raises(BadUuid, match="got 15"):
        octets_to_uuid(octets[:15])
    with pytest.raises(BadUuid, match="'8aaaf200'"):
        uuid_to_octets("8aaaf200")  # type: ignore[arg-type]  # the wrong type under test


def test_worked_example_from_the_fact_sheet() -> None:
    client = uuid.UUID("11111111-2222-3333-4444-555555555555")
    p0, p1 = OpenSessionMeta(EXAMPLE_TA, client, optee.OPTEE_MSG_LOGIN_USER).to_params()
    assert p0.attr == 0x101 and p1.attr == 0x101
    assert p0.a == 0xE411502400F2AA8A
    assert p0.b == 0x1BC5D5A50200E2AB
    assert p0.c == 0
    assert p1.c == optee.OPTEE_MSG_LOGIN_USER
    # bytes as they sit in the message: the UUID octets at param offsets 8..23
    buf = MsgArg(cmd=0, params=(p0, p1)).pack()
    assert buf[32 + 8 : 32 + 24] == uuid_to_octets(EXAMPLE_TA)
    assert buf[64 + 8 : 64 + 24] == uuid_to_octets(client)
    assert u64_at(buf, 64 + 24) == 1


@given(st.uuids(), st.uuids(), st.integers(0, U32))
def test_meta_round_trip(ta: uuid.UUID, client: uuid.UUID, login: int) -> None:
    meta = OpenSessionMeta(ta, client, login)
    params = meta.to_params() + (MsgParam.value(1, 7),)
    arg = MsgArg.unpack(MsgArg(cmd=0, params=params).pack())
    assert OpenSessionMeta.from_params(arg.params) == meta


def test_meta_missing_params() -> None:
    with pytest.raises(BadMetaParam, match="needs 2 meta params, got 1 param"):
        OpenSessionMeta.from_params((MsgParam.value(0x101),))
    with pytest.raises(BadMetaParam, match="got 0 param"):
        OpenSessionMeta.from_params(())


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("attr", [0x1, 0x100, 0x103, 0x301, 0x10101])
def test_meta_wrong_attr(index: int, attr: int) -> None:
    params = [MsgParam.value(0x101), MsgParam.value(0x101)]
    params[index] = MsgParam(attr)
    with pytest.raises(BadMetaParam, match=f"params\\[{index}\\].attr is {attr:#x}, expected 0x101"):
        OpenSessionMeta.from_params(params)


def test_meta_login_must_fit_32_bits() -> None:
    params = (MsgParam.value(0x101), MsgParam.value(0x101, c=1 << 32))
    with pytest.raises(BadMetaParam, match="login 0x100000000"):
        OpenSessionMeta.from_params(params)
    with pytest.raises(FieldOutOfRange, match="login = 4294967296"):
        OpenSessionMeta(EXAMPLE_TA, EXAMPLE_TA, 1 << 32)


def test_int_subclasses_accepted_bool_refused() -> None:
    import enum

    class Cmd(enum.IntEnum):
        INVOKE = 1

    assert MsgArg(cmd=Cmd.INVOKE).pack()[:4] == b"\x01\x00\x00\x00"
    with pytest.raises(FieldOutOfRange, match="cmd = True"):
        MsgArg(cmd=True)
