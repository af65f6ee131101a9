"""The mediator's policy hook on OPEN_SESSION: ``open_session_filter(domid,
ta_uuid, login)`` returns None (allow) or (ret, ret_origin), which the guest
gets in its argument with a0 = OK; nothing reaches the TEE and nothing is
pinned.  It decides on the mediator's own copy of the meta params."""

from __future__ import annotations

import uuid

import pytest

from stubdom.hostile import HostileGuest, Scribbler, make_platform, tee_smcs
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_MSG_LOGIN_USER,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_RETURN_OK,
    TEEC_ERROR_ACCESS_DENIED,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ORIGIN_COMMS,
    TEEC_ORIGIN_TEE,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import DIGEST_UUID, INCREMENT_UUID

DENIED = (TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_TEE)


@pytest.fixture
def policed(tmp_path):
    asked: list[tuple[int, uuid.UUID, int]] = []

    def only_increment_for_d1(domid, ta, login):
        asked.append((domid, ta, login))
        if domid == 1 and ta != INCREMENT_UUID:
            return DENIED
        return None

    with make_platform(tmp_path / "m", "el2", open_session_filter=only_increment_for_d1) as p:
        for domid in (1, 2):
            p.create_domain(DomainSpec(domid, nr_pages=256))
        yield p, asked
        p.oracle.assert_clean()


def test_refused_open_session_never_reaches_the_tee(policed):
    p, asked = policed
    g1, g2 = HostileGuest(p, 1), HostileGuest(p, 2)
    before = len(tee_smcs(p))
    ipa = g1.page()
    meta = OpenSessionMeta(DIGEST_UUID, uuid.UUID(int=0), OPTEE_MSG_LOGIN_USER).to_params()
    # A tmem param too: refused before it could be translated or pinned.
    tmem = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                         g1.page_list([g1.page()]), 16, 3)
    g1.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta + (tmem,)))
    r = g1.start(ipa)
    assert r == (OPTEE_SMC_RETURN_OK,) + (0,) * 7
    out = g1.read_arg(ipa)
    assert (out.ret, out.ret_origin, out.session) == (*DENIED, 0)
    assert len(tee_smcs(p)) == before
    assert p.machine.pinned_frames(1).keys() == p.placement.mediator.context(1).pool.idle_mfns
    assert asked == [(1, DIGEST_UUID, OPTEE_MSG_LOGIN_USER)]
    # Allowed ones go through, per domain.
    assert g1.session(INCREMENT_UUID) and g2.session(DIGEST_UUID)
    assert asked[1:] == [(1, INCREMENT_UUID, OPTEE_MSG_LOGIN_PUBLIC), (2, DIGEST_UUID, OPTEE_MSG_LOGIN_PUBLIC)]


def test_malformed_meta_is_refused_when_a_policy_is_in_place(policed):
    p, asked = policed
    g = HostileGuest(p, 2)
    before = len(tee_smcs(p))
    meta = OpenSessionMeta(DIGEST_UUID, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params()
    for params in ((), meta[:1], (meta[0].replace(attr=0x1), meta[1]), (meta[0], meta[1].replace(c=1 << 32))):
        r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=params))
        assert r[0] == OPTEE_SMC_RETURN_OK
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    assert len(tee_smcs(p)) == before and asked == []


def test_policy_decides_on_the_shadow_copy_not_on_guest_memory(policed):
    """Another vCPU flips the TA UUID between a refused and an allowed one
    while the call is trapped: whatever the filter was shown is what the TEE
    got (the isolation is the shadow copy; the filter never re-reads)."""
    p, asked = policed
    g = HostileGuest(p, 1)
    ipa = g.page()
    allowed = MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=OpenSessionMeta(
        INCREMENT_UUID, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params())
    refused = MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=OpenSessionMeta(
        DIGEST_UUID, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params())
    g.write_arg(ipa, allowed)
    opened = []
    with Scribbler(g.dom, ipa, [allowed.pack(), refused.pack()]) as race:
        for _ in range(30):
            del asked[:]
            r = g.serve(g.smc(OPTEE_SMC_CALL_WITH_ARG, ipa >> 32, ipa & 0xFFFFFFFF))
            assert r[0] == OPTEE_SMC_RETURN_OK and len(asked) == 1
            # The guest's page is being scribbled: ask OP-TEE what it did.
            sessions = p.tee.partition_stats(2).sessions
            opened.append((asked[0][1], sessions))
    assert race.writes > 60 and race.error is None
    # Every allowed verdict opened exactly one more session; no refused one did.
    count = 0
    for ta, sessions in opened:
        if ta == INCREMENT_UUID:
            count += 1
        assert sessions == count
    assert {ta for ta, _ in opened} <= {INCREMENT_UUID, DIGEST_UUID}
