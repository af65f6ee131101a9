"""CALL_WITH_REGD_ARG: the argument lives in a registration named by cookie
and offset.  OP-TEE's get_msg_arg (thread_optee_smc.c) requires the cookie to
name a registration, the offset to be 8-byte aligned, and the argument plus
the RPC argument after it to lie inside the registration; the mediator
checks the same on its own copy, before anything reaches the TEE."""

from __future__ import annotations

import pytest

from stubdom.hostile import BASE_CAPS, HostileGuest, make_platform, tee_smcs
from stubdom.optee import (
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    MsgArg,
    MsgParam,
    pack_header,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import INCREMENT_UUID, TA_INCREMENT_CMD_INC_VALUE
from stubdom.xen import PAGE_SIZE

COOKIE = 0x4E6_0000_0001
EBADADDR = (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7


@pytest.fixture
def regd(tmp_path):
    """A guest with RPC_ARG, one session, and a two-page registration of
    ``size`` bytes whose pages it knows."""
    with make_platform(tmp_path / "m", "el2", caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG) as p:
        p.create_domain(DomainSpec(1, nr_pages=512))
        g = HostileGuest(p, 1)
        g.negotiate()
        assert g.rpc_arg
        g.session_id = g.session(INCREMENT_UUID)

        def register(size: int) -> list[int]:
            pages = g.pages(2)
            r, out = g.register(COOKIE, 2, buf_ptr=g.page_list(pages), size=size)
            assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
            return pages

        yield p, g, register
        p.oracle.assert_clean()


def _inc(g: HostileGuest, value: int = 41) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=TA_INCREMENT_CMD_INC_VALUE, session=g.session_id,
                  params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, value),))


def test_regd_arg_inside_the_registration_works(regd):
    p, g, register = regd
    pages = register(2 * PAGE_SIZE)
    for offs in (0, 0x100, PAGE_SIZE + 0x40):
        ipa = pages[offs // PAGE_SIZE] + offs % PAGE_SIZE
        g.write_arg(ipa, _inc(g, offs))
        r = g.serve(g.start_regd(COOKIE, offs, ipa))
        assert r[0] == OPTEE_SMC_RETURN_OK
        out = g.read_arg(ipa)
        assert out.ret == 0 and out.params[0].a == offs + 1


@pytest.mark.parametrize("case", ["unknown_cookie", "unaligned", "past_the_end", "header_crosses_end",
                                  "params_cross_end", "rpc_arg_crosses_end", "crosses_a_page",
                                  "num_params_huge"])
def test_regd_arg_outside_the_registration_is_ebadaddr(regd, case):
    p, g, register = regd
    size = 0x200
    pages = register(size)
    cookie, offs, msg = COOKIE, 0x100, _inc(g)
    if case == "unknown_cookie":
        cookie = COOKIE + 1
    elif case == "unaligned":
        offs = 0x104
    elif case == "past_the_end":
        offs = size
    elif case == "header_crosses_end":
        offs = size - 0x18
    elif case == "params_cross_end":  # 32 + 4 * 32 = 160 bytes from 0x180 end at 0x220
        offs = 0x180
        msg = msg.replace(params=msg.params * 4)
    elif case == "rpc_arg_crosses_end":  # the arg fits, the RPC arg after it does not
        offs = 0x140
    elif case == "crosses_a_page":  # inside a bigger registration, but split over two pages
        r, out = g.unregister(COOKIE)
        assert out.ret == 0
        pages = register(2 * PAGE_SIZE)
        offs = PAGE_SIZE - 0x40
    ipa = pages[offs // PAGE_SIZE] + offs % PAGE_SIZE
    if case == "num_params_huge":
        g.write(ipa, pack_header(OPTEE_MSG_CMD_INVOKE_COMMAND, num_params=0xFFFF))
    elif case != "crosses_a_page":
        g.write(ipa, msg.pack()[: PAGE_SIZE - ipa % PAGE_SIZE])
    else:
        g.write(ipa, msg.pack())  # spills into the next guest page, not the next registered one
    before = len(tee_smcs(p))
    assert g.start_regd(cookie, offs) == EBADADDR
    assert len(tee_smcs(p)) == before  # refused without reaching the TEE
    # The registration itself is untouched and still usable.
    g.write_arg(pages[0], _inc(g, 7))
    assert g.serve(g.start_regd(COOKIE, 0, pages[0]))[0] == OPTEE_SMC_RETURN_OK
    assert g.read_arg(pages[0]).params[0].a == 8


def test_regd_arg_needs_a_registered_buffer_not_a_temporary_one(regd):
    p, g, register = regd
    register(PAGE_SIZE)
    before = len(tee_smcs(p))
    # The cookie of a buffer that is not (or no longer) a registration.
    assert g.unregister(COOKIE)[1].ret == 0
    assert g.start_regd(COOKIE, 0) == EBADADDR
    assert len(tee_smcs(p)) > before  # (the UNREGISTER itself reached the TEE)
    n = len(tee_smcs(p))
    assert g.start_regd(0, 0) == EBADADDR and len(tee_smcs(p)) == n
