"""Fuzz harness: ``MsgArg.unpack`` (and the OPEN_SESSION meta params) over
guest-controlled argument bytes.

Property: an input either raises one of the ABI's defined errors
(``AbiError``), or parses into a message that packs back to exactly the
bytes it was read from (nothing invented, nothing dropped); its params'
accessors never fail; OPEN_SESSION meta params parse or raise AbiError.

    python tests/fuzz/msgarg.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import sys
import uuid

from _runner import Reader, main

from stubdom.optee import (
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_MSG_MAX_NUM_PARAMS,
    AbiError,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    get_arg_size,
)

NAME = "msgarg"


def one_input(data: bytes) -> None:
    r = Reader(data)
    offset = r.u8() % 64
    max_params = r.u8() % (OPTEE_MSG_MAX_NUM_PARAMS + 2)
    buf = r.rest()
    try:
        msg = MsgArg.unpack(buf, offset=offset, max_params=max_params)
    except AbiError:
        return
    n = len(msg.params)
    assert n <= max_params
    size = get_arg_size(n)
    assert msg.pack() == buf[offset:offset + size], "unpack/pack is not byte-exact"
    for p in msg.params:
        p.type, p.is_meta, p.is_noncontig, p.cache_attr  # noqa: B018 - accessors must not fail
    if msg.cmd == OPTEE_MSG_CMD_OPEN_SESSION:
        with contextlib.suppress(AbiError):
            meta = OpenSessionMeta.from_params(msg.params)
            # params[0].c is not part of the meta (OP-TEE ignores it); the rest is read exactly
            ta, client = meta.to_params()
            assert (ta.a, ta.b, client.a, client.b, client.c) == (
                msg.params[0].a, msg.params[0].b, msg.params[1].a, msg.params[1].b, msg.params[1].c)


def seeds() -> list[bytes]:
    ta = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")
    meta = OpenSessionMeta(ta, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params()
    return [
        b"\0\x04" + MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta).pack(),
        b"\0\x06" + MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=1, session=7, params=(
            MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 41),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, 0x4000_1000, 64, 9))).pack(),
        b"\x08\x06" + bytes(8) + MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND).pack(),
        b"\0\x06" + bytes(32),
        b"",
    ]


@contextlib.contextmanager
def target(workdir):
    yield one_input


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds))
