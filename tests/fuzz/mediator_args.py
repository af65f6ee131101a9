"""Fuzz harness: the mediator's validation of a guest's argument page
(optee_msg_arg, params, page lists) through a real platform (el2: the
mediator core in this process; the daemon runs the same core).

The input is the argument page, two more guest pages the params may point
at as page lists or data (their IPAs are fixed: the fuzzer can name them),
the function (CALL_WITH_ARG / CALL_WITH_RPC_ARG / CALL_WITH_REGD_ARG) and
the argument's offset.  The guest then serves OP-TEE's RPCs honestly (or
walks away).  After every input: the isolation oracle is clean, the
mediator hit no internal error, the domain's pins and buffers are within
its limits, and destroying the domain (whenever it holds anything) leaves
nothing pinned and no TEE partition.  The guest sees eight registers, and
the defined error codes only.

    python tests/fuzz/mediator_args.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import struct
import sys
import uuid

from _platform import MAX_RPCS, rig
from _runner import Reader, main

import stubdom.optee as optee
from stubdom.hostile import GuestOutOfPages, UnexpectedRpc
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_OK,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    build_page_list,
    is_rpc_return,
    make_buf_ptr,
)

NAME = "mediator_args"
PAGE = 4096
FUNCTIONS = (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG, OPTEE_SMC_CALL_WITH_REGD_ARG)
# What a standard call may end with: one of optee_smc.h's return codes.
FINAL = {v for k, v in vars(optee).items() if k.startswith("OPTEE_SMC_RETURN_") and not k.startswith(
    "OPTEE_SMC_RETURN_RPC")}
# Fixed IPAs the inputs name (the seeds use them): inside a 2048-page guest at 0x4000_0000.
ARG_IPA, LIST_IPA, DATA_IPA = 0x4000_0000, 0x4000_1000, 0x4000_2000
REGD_COOKIE = 0xF00D


def _setup(g) -> None:
    """Reserve the fixed pages; register the argument page itself as
    REGD_COOKIE so CALL_WITH_REGD_ARG has something real to name."""
    for ipa in (ARG_IPA, LIST_IPA, DATA_IPA):
        g._free.remove(ipa >> 12)
    lst = g.page()
    g.write(lst, build_page_list([ARG_IPA], [lst])[0])
    r, out = g.register(REGD_COOKIE, 1, buf_ptr=make_buf_ptr(lst, 0), size=PAGE)
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0, (hex(r[0]), hex(out.ret))


def make_one_input(r_):
    def one_input(data: bytes) -> None:
        rd = Reader(data)
        sel = rd.u8()
        raw_offset = rd.u16()
        offset = (raw_offset % PAGE) & ~7 if sel & 0x10 else 0
        g = r_.guest
        g.write(ARG_IPA, rd.take(rd.u16() % (PAGE + 1)).ljust(PAGE, b"\0")[:PAGE])
        g.write(LIST_IPA, rd.take(rd.u16() % (PAGE + 1)).ljust(PAGE, b"\0")[:PAGE])
        g.write(DATA_IPA, rd.take(rd.u16() % (PAGE + 1)).ljust(PAGE, b"\0")[:PAGE])
        function = FUNCTIONS[sel % 3]
        try:
            if function == OPTEE_SMC_CALL_WITH_REGD_ARG:
                regs = g.start_regd(rd.u64() if sel & 0x20 else REGD_COOKIE, offset, ARG_IPA + offset)
            else:
                regs = g.start(ARG_IPA + offset, function)
            served = 0
            while is_rpc_return(regs[0]) and served < MAX_RPCS:
                regs = g.reply(regs)
                served += 1
        except (UnexpectedRpc, GuestOutOfPages):
            r_.recycle()  # the guest cannot go on honestly: start from a clean domain
            r_.check()
            return
        assert len(regs) == 8 and all(0 <= x < 1 << 64 for x in regs)
        if not is_rpc_return(regs[0]):
            assert regs[0] in FINAL, hex(regs[0])
            assert regs[4:] == (0, 0, 0, 0), regs  # invariant 2: nothing else of the TEE's reply
        r_.check()

    return one_input


def seeds() -> list[bytes]:
    def one(sel: int, arg: MsgArg, lst: bytes = b"", data: bytes = b"", offset: int = 0) -> bytes:
        a = arg.pack()
        return (bytes([sel]) + struct.pack("<H", offset) + struct.pack("<H", len(a)) + a
                + struct.pack("<H", len(lst)) + lst + struct.pack("<H", len(data)) + data)

    inc = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")
    meta = OpenSessionMeta(inc, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params()
    lst = build_page_list([DATA_IPA], [LIST_IPA])[0]
    tmem = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                         make_buf_ptr(LIST_IPA, 16), 100, 5)
    return [
        one(0, MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta)),
        one(1, MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta)),
        one(0, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0, session=1, params=(
            MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 1), tmem)), lst, b"x" * 200),
        one(0, MsgArg(OPTEE_MSG_CMD_REGISTER_SHM, params=(MsgParam.tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, make_buf_ptr(LIST_IPA, 0), PAGE, 77),)),
            lst),
        one(0x12, MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta), offset=256),
        one(2, MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta)),
        one(0, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, params=(
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, DATA_IPA, 64, 1),))),
    ]


@contextlib.contextmanager
def target(workdir):
    with rig(workdir, _setup) as r_:
        yield make_one_input(r_)


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds, max_len=3 * PAGE + 16))
