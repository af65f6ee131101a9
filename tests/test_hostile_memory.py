"""Hostile guests, memory: argument pages and page lists that no honest
driver would send.  Each attack runs beside an honest domain (Linux-like
driver, its own thread) and asserts the defined error, that the isolation
oracle recorded nothing, that the honest domain's calls all succeeded, and
that destroying the attacker leaves no pin and no TEE partition.

Parametrised over the placement (``PLACEMENTS``: el2, and stubdom with the
mediator in a real stubdom-teed process); one platform (and daemon) per
placement for the whole module, every domain destroyed and checked after
each test."""

from __future__ import annotations

import hashlib

import pytest

from stubdom.hostile import (
    BASE_CAPS,
    PLACEMENTS,
    HonestLoad,
    HostileGuest,
    destroy_all_and_check,
    destroy_and_check,
    make_platform,
    tee_smcs_of,
)
from stubdom.mediator import DomainLimits
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
    make_buf_ptr,
    pack_header,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import DIGEST_CMD_SHA256, DIGEST_UUID
from stubdom.xen import PAGE_SIZE, P2mType

EBADADDR = (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
REFUSED = (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)


@pytest.fixture(scope="module", params=PLACEMENTS)
def platform(request, tmp_path_factory):
    """RPC_ARG offered; buffers up to 1024 pages so a list can loop over
    its second page."""
    with make_platform(tmp_path_factory.mktemp(request.param), request.param,
                       caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG,
                       limits=DomainLimits(max_pages_per_buffer=1024)) as p:
        yield p


@pytest.fixture
def world(platform):
    """Attacker d1 and a victim d3 whose frames the attacker names; the
    honest load (d2) is started by each test."""
    p = platform
    p.create_domain(DomainSpec(1, nr_pages=512))
    p.create_domain(DomainSpec(3, nr_pages=256))
    evil, victim = HostileGuest(p, 1), HostileGuest(p, 3)
    own = set(evil.dom.ram_gfns())
    # Victim frames whose addresses are not also attacker IPAs (RAM and
    # guest RAM both start at 0x4000_0000, so they could coincide).
    evil.foreign = [victim.frame_of(ipa) << 12 for ipa in victim.pages(8)
                    if victim.frame_of(ipa) not in own][:4]
    assert evil.foreign
    yield p, evil
    destroy_and_check(p, evil)
    destroy_all_and_check(p)


def _digest(g: HostileGuest, session: int, buf_ptr: int, size: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, buf_ptr, size, 1),
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                      g.page_list([g.page()]), 32, 2)))


def test_argument_pages_that_are_not_the_guests_ram(world):
    p, evil = world
    shm = p.machine.static_shm
    bad = {
        "unaligned": evil.page() + 8,
        "unmapped": evil.unmapped_page(),
        "never_mapped": 0x7000_0000_0000,
        "mmio": evil.mmio_page(),
        "foreign_frame": evil.foreign[0],
        "static_shm": shm.base,  # not a hwdom: the region is not in its p2m
        "address_0": 0,
        "beyond_ipa_space": 1 << 48,
    }
    with HonestLoad(p, 2):
        for function in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG):
            evil.negotiate()
            for name, ipa in bad.items():
                before = tee_smcs_of(p, 1)
                assert evil.smc(function, ipa >> 32, ipa & 0xFFFFFFFF) == EBADADDR, name
                assert tee_smcs_of(p, 1) == before, name
        # A read-only argument page: results could not go back, so it is
        # refused up front (Xen's get_domain_ram_page wants p2m_ram_rw).
        ro = evil.page()
        evil.write_arg(ro, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=0x1234))
        evil.dom.set_type(ro >> 12, P2mType.p2m_ram_ro)
        before = tee_smcs_of(p, 1)
        assert evil.start(ro) == EBADADDR and tee_smcs_of(p, 1) == before
    assert p.mediator_state(1)["internal_errors"] == 0


@pytest.mark.parametrize("num_params", [128, 1000, 0xFFFF_FFFF])
def test_num_params_overflowing_the_page(world, num_params):
    p, evil = world
    with HonestLoad(p, 2):
        for function in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG):
            evil.negotiate()
            ipa = evil.page()
            evil.write(ipa, pack_header(OPTEE_MSG_CMD_INVOKE_COMMAND, num_params=num_params))
            before = tee_smcs_of(p, 1)
            assert evil.start(ipa, function) == EBADADDR
            assert tee_smcs_of(p, 1) == before
        # With the trailing RPC argument, fewer params fit: 127 would, 124 would not leave room.
        ipa = evil.page()
        evil.write(ipa, pack_header(OPTEE_MSG_CMD_INVOKE_COMMAND, num_params=124))
        assert evil.start(ipa, OPTEE_SMC_CALL_WITH_RPC_ARG) == EBADADDR


def test_page_lists_that_lie(world):
    p, evil = world
    session = evil.session(DIGEST_UUID)
    data = [evil.page() for _ in range(3)]
    cases = {}
    # A next pointer that loops back to the first list page (needs > 511 entries).
    loop = evil.page()
    evil.raw_list_page(data * 170 + data[:1], next_ptr=loop, at=loop)
    cases["loop"] = (make_buf_ptr(loop, 0), 600 * PAGE_SIZE)
    # A size that runs past the entries given: the rest of the list is 0.
    cases["past_length"] = (make_buf_ptr(evil.raw_list_page(data), 0), 5 * PAGE_SIZE)
    # Entries naming another domain's frames, MMIO, a ballooned-out page.
    cases["foreign"] = (make_buf_ptr(evil.raw_list_page([data[0]] + evil.foreign), 0), 3 * PAGE_SIZE)
    cases["mmio"] = (make_buf_ptr(evil.raw_list_page([data[0], evil.mmio_page()]), 0), 2 * PAGE_SIZE)
    cases["unmapped"] = (make_buf_ptr(evil.raw_list_page([evil.unmapped_page()]), 0), PAGE_SIZE)
    cases["readonly"] = (make_buf_ptr(evil.raw_list_page([evil.readonly_page()]), 0), PAGE_SIZE)
    cases["unaligned_entry"] = (make_buf_ptr(evil.raw_list_page([data[0] + 8]), 0), PAGE_SIZE)
    cases["list_is_mmio"] = (make_buf_ptr(evil.mmio_page(), 0), PAGE_SIZE)
    cases["list_is_foreign"] = (make_buf_ptr(evil.foreign[0], 0), PAGE_SIZE)
    cases["static_shm"] = (make_buf_ptr(evil.raw_list_page([p.machine.static_shm.base]), 0), PAGE_SIZE)
    with HonestLoad(p, 2):
        for name, (buf_ptr, size) in cases.items():
            before = dict(p.machine.pinned_frames(1))
            r, out, _ = evil.call(_digest(evil, session, buf_ptr, size))
            assert r[0] == OPTEE_SMC_RETURN_OK, name
            assert (out.ret, out.ret_origin) == REFUSED, name
            assert p.machine.pinned_frames(1) == before, name  # all or nothing
        # Too many entries for the domain's policy: OUT_OF_MEMORY, nothing read.
        r, out, _ = evil.call(_digest(evil, session, make_buf_ptr(evil.page(), 0), 1 << 30))
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)


def test_a_page_list_pointing_at_itself_is_just_data(world):
    """An entry naming the list page itself is the guest's own page: legal.
    OP-TEE reads the mediator's translated list, and the TA hashes the guest's
    list page as data (pinned for the call, so the oracle stays clean)."""
    p, evil = world
    session = evil.session(DIGEST_UUID)
    lst = evil.page()
    evil.raw_list_page([lst], at=lst)
    content = evil.dom.read(lst, PAGE_SIZE)
    with HonestLoad(p, 2):
        r, out, ipa = evil.call(_digest(evil, session, make_buf_ptr(lst, 0), PAGE_SIZE))
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
        out_list = out.params[1].a & ~0xFFF
        digest_page = int.from_bytes(evil.dom.read(out_list, 8), "little")
        assert evil.dom.read(digest_page, 32) == hashlib.sha256(content).digest()
