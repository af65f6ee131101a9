"""Hostile guests, registers: arbitrary values in every SMC, a7 and the
reserved bits included (hypothesis; a bounded profile by default, a long one
behind ``-m slow``).  After every SMC: the guest got eight 64-bit registers,
a Trusted-OS call returned nothing in a4..a7 (DESIGN.md invariant 2), every
SMC that reached the TEE carried a live domain's own client ID (invariant 1:
a guest's a7 never does), no mediator bug was hit, the isolation oracle is
clean; all the while an honest domain's calls succeed, and destroying the
attacker leaves nothing behind. Four well-formed standard calls run before
the random ones and must each reach the TEE: the proof that the fuzz is not
all refusals, whatever the random draws are."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stubdom.hostile import (
    BASE_CAPS,
    PLACEMENTS,
    PROFILES,
    HonestLoad,
    HostileGuest,
    destroy_all_and_check,
    destroy_and_check,
    make_platform,
    tee_smcs,
    tee_smcs_of,
)
from stubdom.mediator import client_id
from stubdom.optee import (
    ARM_SMCCC_OWNER_TRUSTED_APP,
    ARM_SMCCC_OWNER_TRUSTED_OS_END,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    SMC_NAMES,
    MsgArg,
    decode_function_id,
)
from stubdom.platform import DomainSpec

U64 = (1 << 64) - 1
FUNCTION_IDS = sorted(SMC_NAMES)


def _a0() -> st.SearchStrategy[int]:
    known = st.sampled_from(FUNCTION_IDS)
    return st.one_of(
        known,
        # Reserved bits: SMC64 flag, bits 23:16 of a fast call, bits 63:32.
        st.tuples(known, st.integers(0, 0xFF), st.integers(0, U64 >> 32), st.booleans()).map(
            lambda t: t[0] | (t[1] << 16) | (t[2] << 32) | (t[3] << 30)),
        st.integers(0, U64),
    )


def _reg(guest_ipas: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, U64),
        st.integers(0, 0xFFFFFFFF),
        st.sampled_from([0, 1, 7, 0xFFFFFFFF, U64, 1 << 63]),
        # Halves of real guest addresses, so calls also start for real.
        st.sampled_from(guest_ipas).map(lambda ipa: ipa & 0xFFFFFFFF),
        st.sampled_from(guest_ipas).map(lambda ipa: ipa >> 32),
    )


def _fuzz(tmp_path, placement: str, max_examples: int, profile: str = "strict") -> None:
    with make_platform(tmp_path / "m", placement, caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG,
                       profile=profile) as p:
        p.create_domain(DomainSpec(1, nr_pages=512))
        evil = HostileGuest(p, 1)
        evil.negotiate()
        # Argument pages with plausible headers and random bodies at known IPAs.
        ipas = evil.pages(16)
        for i, ipa in enumerate(ipas):
            evil.write_arg(ipa, MsgArg(i % 8, func=i, session=i))
        # Well-formed standard calls (an INVOKE on a page whose header says
        # so, no parameters, reserved registers zero), one per vCPU: run
        # first, in every profile each reaches the TEE. They keep the
        # check that the fuzz is not all refusals independent of what the
        # random draws happen to be (a draw can leave every random call
        # refused: measured 2 runs in 30 with fewer than 11 reaching).
        good = [ipa for i, ipa in enumerate(ipas) if i % 8 == OPTEE_MSG_CMD_INVOKE_COMMAND]
        explicit = [dict(a0=0, rest=[0] * 7, vcpu=v, body=b"", where=good[v % len(good)],
                         call=OPTEE_SMC_CALL_WITH_ARG) for v in range(4)]
        with HonestLoad(p, 2) as honest:
            live = {client_id(1), client_id(2)}
            seen = len(tee_smcs(p))
            runs = 0

            @settings(max_examples=max_examples, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(a0=_a0(), rest=st.lists(_reg(ipas), min_size=7, max_size=7),
                   vcpu=st.integers(0, 3), body=st.binary(max_size=256), where=st.sampled_from(ipas),
                   call=st.sampled_from([None, None, OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG]))
            def one_smc(a0, rest, vcpu, body, where, call):
                nonlocal seen, runs
                runs += 1
                evil.write(where + 32, body)  # random params behind a plausible header
                if call is not None:  # half the time a standard call naming a real argument page
                    a0, rest[0], rest[1] = call, where >> 32, where & 0xFFFFFFFF
                regs = (a0, *rest)
                before = tee_smcs_of(p, 1)
                r = evil.smc8(regs, vcpu=vcpu)
                assert len(r) == 8 and all(0 <= x <= U64 for x in r)
                owner = decode_function_id(a0).owner
                if ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
                    assert r[4:] == (0, 0, 0, 0), (hex(a0), r)
                new = tee_smcs(p)[seen:]
                seen += len(new)
                assert all(s[7] in live for s in new), [hex(s[7]) for s in new]
                p.oracle.assert_clean()
                if runs <= len(explicit):  # hypothesis runs the @example calls first
                    assert tee_smcs_of(p, 1) > before, f"a well-formed call was refused: {r}"

            for kw in reversed(explicit):
                one_smc = example(**kw)(one_smc)
            one_smc()
        assert runs > len(explicit)  # the random calls ran too
        assert honest.rounds > 0
        assert p.mediator_state(1)["internal_errors"] == p.mediator_state(2)["internal_errors"] == 0
        destroy_and_check(p, evil)
        destroy_all_and_check(p)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_arbitrary_registers_in_every_smc(tmp_path, placement, profile):
    _fuzz(tmp_path, placement, max_examples=200, profile=profile)


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_arbitrary_registers_in_every_smc_long(tmp_path, placement, profile):
    _fuzz(tmp_path, placement, max_examples=20000, profile=profile)
