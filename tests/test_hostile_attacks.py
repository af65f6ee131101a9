"""The attack catalogue as loops (stubdom.hostile.attacks): every attack in
ATTACKS runs a few iterations under both placements beside an honest domain
(whose calls must all succeed), against that domain as the victim; then
destroying the attacker leaves nothing behind.  And the catalogue can fail:
a platform whose answers are changed makes a step raise AttackOutcomeWrong.
"""

from __future__ import annotations

import random

import pytest

from stubdom.hostile import (
    ATTACKS,
    BASE_CAPS,
    PLACEMENTS,
    AttackLoop,
    AttackOutcomeWrong,
    HonestLoad,
    HostileGuest,
    destroy_all_and_check,
    destroy_and_check,
    make_platform,
)
from stubdom.mediator import DomainLimits
from stubdom.optee import (
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
)
from stubdom.platform import DomainSpec

# Tight limits so the floods reach every limit in a few calls.
LIMITS = DomainLimits(max_calls=3, max_shm_buffers=6, max_pages_per_buffer=8, max_total_pages=24)
ITERATIONS = 3
NAMES = ("registers", "bad_arg_pages", "num_params", "page_lists", "race_arg", "resume_foreign", "cookies",
         "flood_calls", "flood_buffers", "heavy_calls", "close_foreign", "balloon")


@pytest.fixture(scope="module", params=PLACEMENTS)
def platform(request, tmp_path_factory):
    with make_platform(tmp_path_factory.mktemp(request.param), request.param, limits=LIMITS,
                       caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG) as p:
        yield p


@pytest.fixture
def plat(platform):
    """The module's platform; every domain a test made is destroyed and
    checked after it, whatever happened."""
    yield platform
    destroy_all_and_check(platform)


def test_the_catalogue_names_every_row():
    assert tuple(ATTACKS) == NAMES
    for name, attack in ATTACKS.items():
        assert attack.name == name and attack.outcome


@pytest.mark.parametrize("name", NAMES)
def test_attack_loops_beside_an_honest_domain(plat, name):
    p = plat
    p.create_domain(DomainSpec(1, nr_pages=512))
    evil = HostileGuest(p, 1)
    free = evil.free_page_count
    with HonestLoad(p, 2) as honest:
        with AttackLoop(p, evil, ATTACKS[name], seed=7, victim=2, max_iterations=ITERATIONS) as loop:
            loop.wait()
    assert loop.iterations == ITERATIONS and honest.rounds > 0
    assert evil.free_page_count == free  # every page back (ballooned ones populated again)
    # The loop gave back what it took: nothing pinned, no buffer, no call left
    # (teardown released what setup held).  The mediator's own shadow pages
    # for the domain stay until it is destroyed (destroy_and_check).
    state = p.mediator_state(1)
    assert (state["pinned_pages"], state["calls_in_flight"], state["nr_shm_buffers"]) == (0, 0, 0), state
    destroy_and_check(p, evil)


def test_a_loop_runs_until_the_with_ends(plat):
    """Without max_iterations the attack keeps going until exit, and an
    attacker can run attacks one after the other on the same guest."""
    p = plat
    p.create_domain(DomainSpec(1, nr_pages=512))
    evil = HostileGuest(p, 1)
    free = evil.free_page_count
    with HonestLoad(p, 2):
        for name in ("close_foreign", "flood_calls", "balloon"):
            with AttackLoop(p, evil, ATTACKS[name], victim=2) as loop:
                while loop.iterations < 2:
                    loop._thread.join(0.01)
            assert loop.iterations >= 2 and loop.iterations_per_s
    assert evil.free_page_count == free  # every page came back (ballooned ones repopulated)
    destroy_and_check(p, evil)


class _Liar:
    """A platform whose trap entry changes the answer: every EBADADDR and
    ERESUME comes back as OK."""

    def __init__(self, platform) -> None:
        self._p = platform

    def __getattr__(self, name):
        return getattr(self._p, name)

    def trap_entry(self, domid):
        real = self._p.trap_entry(domid)

        def entry(vcpu, regs):
            r = real(vcpu, regs)
            if r[0] in (OPTEE_SMC_RETURN_EBADADDR, OPTEE_SMC_RETURN_ERESUME):
                return (OPTEE_SMC_RETURN_OK,) + tuple(r[1:])
            return r

        return entry


@pytest.mark.parametrize("name", ["bad_arg_pages", "num_params", "resume_foreign"])
def test_a_wrong_outcome_is_detected(plat, name):
    p = plat
    p.create_domain(DomainSpec(1, nr_pages=256))
    evil = HostileGuest(_Liar(p), 1)
    attack = ATTACKS[name]
    state = attack.setup(evil, None)
    with pytest.raises(AttackOutcomeWrong) as e:
        attack.step(evil, state, random.Random(1))
    assert e.value.attack == name and "got (0," in str(e.value)
    attack.teardown(evil, state)


def test_a_wrong_outcome_in_a_loop_is_raised_on_exit(plat):
    p = plat
    p.create_domain(DomainSpec(1, nr_pages=256))
    with pytest.raises(AttackOutcomeWrong):
        with AttackLoop(p, HostileGuest(_Liar(p), 1), ATTACKS["bad_arg_pages"]):
            pass


def test_every_attack_under_default_caps_and_limits(tmp_path):
    """Without RPC_ARG offered (REGD_ARG is then no call for the guest) and
    under the default limits (floods reach the buffer count and OP-TEE's
    thread count), one attacker guest runs every attack in turn and gets
    every page back.  el2 only: placement parity is the tests' above."""
    with make_platform(tmp_path / "m", "el2") as p:
        p.create_domain(DomainSpec(1, nr_pages=1024))
        evil = HostileGuest(p, 1)
        free = evil.free_page_count
        with HonestLoad(p, 2):
            for name in NAMES:
                with AttackLoop(p, evil, ATTACKS[name], victim=2, max_iterations=2) as loop:
                    loop.wait()
                assert evil.free_page_count == free, name
        destroy_all_and_check(p)
