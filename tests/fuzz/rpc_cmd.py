"""Fuzz harness: the mediator's handling of a guest's answer to an RPC
command (the RPC argument buffer the guest writes before
CALL_RETURN_FROM_RPC: GET_TIME's value, SHM_ALLOC's tmem reply and the page
list it names, SHM_FREE, or anything else), through a real platform (el2).

A call that suspends in RPC CMDs is started (the wait TA's GET_TIME, or the
storage TA's WRITE, whose first RPC CMD is SHM_ALLOC); the k-th RPC CMD
gets the fuzzer's bytes as its "reply" (and a page list page of its
choosing), every other RPC is answered honestly.  After every input: the
call ends with eight registers and a defined code (or the guest walks
away), the isolation oracle is clean, no mediator internal error, limits
held, and the domain's teardown releases everything.

    python tests/fuzz/rpc_cmd.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import struct
import sys

from _platform import MAX_RPCS, rig
from _runner import Reader, main

from stubdom.hostile import GuestOutOfPages, UnexpectedRpc
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RPC_FUNC_CMD,
    MsgArg,
    MsgParam,
    build_page_list,
    is_rpc_return,
    make_buf_ptr,
    rpc_func,
)
from stubdom.tee.tas import STORAGE_CMD_WRITE, STORAGE_UUID, WAIT_CMD_GET_TIME, WAIT_UUID

NAME = "rpc_cmd"
PAGE = 4096
LIST_IPA, DATA_IPA = 0x4000_0000, 0x4000_1000  # fixed pages a fuzzed reply may name


def _setup(g) -> None:
    for ipa in (LIST_IPA, DATA_IPA):
        g._free.remove(ipa >> 12)
    g.fuzz_sessions = {}  # TA UUID -> session, kept across inputs


def _start(g, storage: bool):
    """Start the call (one session per TA, opened once per domain)."""
    arg = g.page()
    if storage:
        obj, data = g.page(), g.page()
        g.write(obj, b"fuzz-object")
        msg = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=_session(g, STORAGE_UUID), params=(
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([obj]), 11, 1),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([data]), 300, 2)))
    else:
        msg = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=_session(g, WAIT_UUID),
                     params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),))
    g.write_arg(arg, msg)
    return g.start(arg)


def _session(g, ta) -> int:
    if ta not in g.fuzz_sessions:
        g.fuzz_sessions[ta] = g.session(ta)
    return g.fuzz_sessions[ta]


def make_one_input(r_):
    def one_input(data: bytes) -> None:
        rd = Reader(data)
        sel = rd.u8()
        k = rd.u8() % 4  # which RPC CMD gets the fuzzed reply
        reply = rd.take(rd.u16() % (PAGE + 1))
        r_.guest.write(LIST_IPA, rd.take(rd.u16() % (PAGE + 1)).ljust(PAGE, b"\0")[:PAGE])
        g = r_.guest
        try:
            regs = _start(g, storage=bool(sel & 1))
            cmds = served = 0
            while is_rpc_return(regs[0]) and served < MAX_RPCS:
                served += 1
                if rpc_func(regs[0]) == OPTEE_SMC_RPC_FUNC_CMD:
                    if cmds == k:
                        ipa = g.rpc_arg_ipa(regs)
                        g.write(ipa, reply if sel & 2 else reply[:PAGE - (ipa % PAGE)])
                        regs = g.resume(regs[3])
                        cmds += 1
                        continue
                    cmds += 1
                regs = g.reply(regs)
        except (UnexpectedRpc, GuestOutOfPages):
            r_.recycle()
            r_.check()
            return
        assert len(regs) == 8 and all(0 <= x < 1 << 64 for x in regs)
        if not is_rpc_return(regs[0]):
            assert regs[0] == OPTEE_SMC_RETURN_OK, hex(regs[0])  # a reply is OP-TEE's to judge
            assert regs[4:] == (0, 0, 0, 0), regs
        r_.check()

    return one_input


def seeds() -> list[bytes]:
    def one(sel: int, k: int, reply: bytes, lst: bytes = b"") -> bytes:
        return bytes([sel, k]) + struct.pack("<H", len(reply)) + reply + struct.pack("<H", len(lst)) + lst

    time_reply = MsgArg(OPTEE_RPC_CMD_GET_TIME, params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 5, 6),))
    alloc_reply = MsgArg(OPTEE_RPC_CMD_SHM_ALLOC, params=(MsgParam.tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, make_buf_ptr(LIST_IPA, 0), 300, 0x99),))
    foreign = MsgArg(OPTEE_RPC_CMD_SHM_ALLOC, params=(MsgParam.tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, 0x4000_0000, 300, 0x98),))
    lst = build_page_list([DATA_IPA], [LIST_IPA])[0]
    return [
        one(0, 0, time_reply.pack()),
        one(1, 0, alloc_reply.pack(), lst),
        one(1, 0, foreign.pack()),
        one(1, 1, time_reply.pack(), lst),
        one(3, 0, bytes(PAGE)),
        one(0, 3, b""),
    ]


@contextlib.contextmanager
def target(workdir):
    with rig(workdir, _setup, max_sessions=2) as r_:
        yield make_one_input(r_)


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds, max_len=2 * PAGE + 8))
