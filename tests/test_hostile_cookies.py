"""Hostile guests, cookies: one namespace per domain, claimed when accepted
(docs/security.md, "Cookies").

OP-TEE finds a guest's shared memory by cookie among every dynamic buffer of
the partition. If the mediator lets two buffers with one cookie reach
OP-TEE it tracks one of them: the other's pins are lost, a restarted daemon
drops them while OP-TEE still holds the registration, and OP-TEE writes
through it into whoever gets the frame next. Each test here parks a call
that claimed a cookie (OP-TEE suspends it in an RPC FREE of the thread's
cached RPC argument before it runs the command, as call_entry_std does with
the prealloc cache on) or races two vCPUs, then tries every other use of
that cookie; each must be refused without reaching OP-TEE. After every test
the attacker is destroyed and checked: nothing pinned, no partition, the
isolation oracle clean, the daemon alive.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from stubdom.hostile import (
    BASE_CAPS,
    M32,
    PLACEMENTS,
    HostileGuest,
    destroy_all_and_check,
    destroy_and_check,
    make_platform,
    tee_smcs_of,
)
from stubdom.mediator import DomainLimits
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_FREE,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_BUSY,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
    is_rpc_return,
    rpc_func,
)
from stubdom.optee.msg import MSG_ARG_HEADER_SIZE, OFFSET_RET, unpack_header
from stubdom.platform import DomainSpec
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    WAIT_CMD_GET_TIME,
    WAIT_UUID,
)
from stubdom.xen import PAGE_SIZE

CLIENT = 2  # OP-TEE client ID of domain 1
LIMITS = DomainLimits(max_calls=4, max_shm_buffers=24, max_pages_per_buffer=32, max_total_pages=512)
REFUSED = (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
RACE_ROUNDS = 24


@pytest.fixture(scope="module", params=PLACEMENTS)
def platform(request, tmp_path_factory):
    with make_platform(tmp_path_factory.mktemp(request.param), request.param, limits=LIMITS,
                       caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG) as p:
        yield p


@pytest.fixture
def world(platform):
    """Domain 1 (the attacker) with RPC_ARG negotiated, the prealloc RPC
    cache on and a session to the wait TA (whose GET_TIME makes OP-TEE
    allocate an RPC argument and keep it on the thread)."""
    p = platform
    p.create_domain(DomainSpec(1, nr_pages=1024, vcpus=2))
    g = HostileGuest(p, 1)
    g.negotiate()
    assert g.rpc_arg
    assert g.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
    g.wait_session = g.session(WAIT_UUID)
    yield p, g
    destroy_and_check(p, g)
    destroy_all_and_check(p)


# -- helpers ----------------------------------------------------------------------------

def registration(g: HostileGuest, cookie: int, pages: list[int]) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_REGISTER_SHM, params=(MsgParam.tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list(pages),
        len(pages) * PAGE_SIZE, cookie),))


def unregistration(cookie: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM, params=(
        MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, cookie),))


def get_time(g: HostileGuest, *extra: MsgParam) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=g.wait_session,
                  params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT), *extra))


def park(g: HostileGuest, msg: MsgArg) -> tuple[tuple, int]:
    """Start ``msg`` on vCPU 0 so that OP-TEE suspends it before it runs the
    command: a GET_TIME through CALL_WITH_ARG leaves an RPC argument cached
    on the thread, and the next call bringing its own (CALL_WITH_RPC_ARG)
    first hands that back with an RPC FREE. Returns (the FREE, the
    argument's IPA); everything the mediator validated is claimed by now."""
    r, out, _ = g.call(get_time(g))
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0, (r, out)
    ipa = g.page()
    g.write_arg(ipa, msg)
    r = g.start(ipa, OPTEE_SMC_CALL_WITH_RPC_ARG)
    assert is_rpc_return(r[0]) and rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_FREE, r
    return r, ipa


def finish(g: HostileGuest, r: tuple, ipa: int) -> MsgArg:
    """Resume a parked call and serve it to its end (vCPU 0)."""
    r = g.serve(g.reply(r))
    assert r[0] == OPTEE_SMC_RETURN_OK, r
    return g.read_arg(ipa)


def refused_unseen(p, g: HostileGuest, msg: MsgArg, *, vcpu: int = 1) -> None:
    """``msg`` is refused by the mediator (BAD_PARAMETERS, origin COMMS) and
    nothing of it reaches OP-TEE."""
    before = tee_smcs_of(p, 1)
    r, out, _ = g.call(msg, vcpu=vcpu)
    assert r[0] == OPTEE_SMC_RETURN_OK and (out.ret, out.ret_origin) == REFUSED, (r, out)
    assert tee_smcs_of(p, 1) == before, "the refused call reached OP-TEE"


def registered(p) -> int:
    return p.tee.partition_stats(CLIENT).registered_shm


def pins(p, g: HostileGuest, pages: list[int]) -> list[int]:
    return [p.machine.frame_refcount(g.frame_of(ipa)) for ipa in pages]


def rmem(cookie: int, size: int = 16, out: bool = False) -> MsgParam:
    return MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT if out else OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
                         0, size, cookie)


# -- a cookie claimed by a parked call ---------------------------------------------------

def test_a_pending_registration_holds_its_cookie(world):
    """REGISTER_SHM of X parked: X is claimed (its pages pinned, OP-TEE has
    nothing yet). A second REGISTER_SHM of X with other pages, UNREGISTER_SHM
    of X, an RMEM naming X, a REGD_ARG naming X and an RPC ALLOC answered
    with X are all refused, none reaching OP-TEE; then the parked call ends
    and X is one registration, released by one UNREGISTER_SHM."""
    p, g = world
    x = g.cookie()
    mine, theirs = g.pages(2), g.pages(3)
    r, ipa = park(g, registration(g, x, mine))
    assert pins(p, g, mine) == [1, 1] and registered(p) == 0
    refused_unseen(p, g, registration(g, x, theirs))
    assert pins(p, g, theirs) == [0, 0, 0]
    refused_unseen(p, g, unregistration(x))
    refused_unseen(p, g, get_time(g, rmem(x)))
    before = tee_smcs_of(p, 1)
    assert g.start_regd(x, 0, vcpu=1)[0] == OPTEE_SMC_RETURN_EBADADDR
    assert tee_smcs_of(p, 1) == before
    # another thread's RPC ALLOC answered with X: OP-TEE's allocation fails
    arg = g.page()
    g.write_arg(arg, get_time(g))
    r2 = g.start(arg, vcpu=1)
    assert is_rpc_return(r2[0]) and rpc_func(r2[0]) == OPTEE_SMC_RPC_FUNC_ALLOC, r2
    r2 = g.serve(g.reply(r2, vcpu=1, cookie=x), vcpu=1)
    assert r2[0] == OPTEE_SMC_RETURN_OK and g.read_arg(arg).ret != 0
    assert x not in {b["cookie"] for b in p.mediator_state(1)["rpc_buffers"]}
    out = finish(g, r, ipa)
    assert out.ret == 0 and registered(p) == 1 and pins(p, g, mine) == [1, 1]
    r, out, _ = g.call(unregistration(x), vcpu=1)
    assert out.ret == 0 and registered(p) == 0 and pins(p, g, mine) == [0, 0]


def test_a_pending_unregistration_holds_its_cookie(world):
    """UNREGISTER_SHM of a live X parked: X is claimed until OP-TEE answers.
    A second UNREGISTER_SHM, a REGISTER_SHM of X, an RMEM and a REGD_ARG
    naming X are refused unseen; the parked one ends and releases X once."""
    p, g = world
    x = g.cookie()
    mine = g.pages(2)
    r, out, _ = g.call(registration(g, x, mine), vcpu=1)
    assert out.ret == 0 and registered(p) == 1
    r, ipa = park(g, unregistration(x))
    refused_unseen(p, g, unregistration(x))
    refused_unseen(p, g, registration(g, x, g.pages(1)))
    refused_unseen(p, g, get_time(g, rmem(x)))
    assert g.start_regd(x, 0, vcpu=1)[0] == OPTEE_SMC_RETURN_EBADADDR
    assert pins(p, g, mine) == [1, 1]
    out = finish(g, r, ipa)
    assert out.ret == 0 and registered(p) == 0 and pins(p, g, mine) == [0, 0]
    refused_unseen(p, g, unregistration(x))  # gone: nothing left to name


def test_a_temporary_memref_holds_its_cookie_while_its_call_is_parked(world):
    """A parked INVOKE's temporary memref T: OP-TEE would find it by cookie
    too, so T cannot be registered, named by an RMEM or used by a second
    temporary memref until that call ends."""
    p, g = world
    t = g.cookie()
    page = g.pages(1)
    tmem = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list(page), 64, t)
    r, ipa = park(g, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=g.session(DIGEST_UUID),
                            params=(tmem, MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                        g.page_list(g.pages(1)), 32, g.cookie()))))
    refused_unseen(p, g, registration(g, t, g.pages(1)))
    refused_unseen(p, g, get_time(g, rmem(t)))
    other = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list(g.pages(1)), 8, t)
    refused_unseen(p, g, get_time(g, other))
    out = finish(g, r, ipa)
    assert out.ret == 0 and pins(p, g, page) == [0]
    r, out, _ = g.call(registration(g, t, page), vcpu=1)  # free again
    assert out.ret == 0
    assert g.call(unregistration(t), vcpu=1)[1].ret == 0


# -- one namespace, whatever the kind ----------------------------------------------------

def test_one_namespace_for_every_kind_of_buffer(world):
    """A live registration's cookie cannot become a temporary memref, an RPC
    argument buffer or an SHM_ALLOC reply; a cached RPC argument buffer's
    cookie cannot be registered or named by an RMEM."""
    p, g = world
    x = g.cookie()
    r, out, _ = g.call(registration(g, x, g.pages(1)), vcpu=1)
    assert out.ret == 0
    refused_unseen(p, g, get_time(g, MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                    g.page_list(g.pages(1)), 8, x)))
    # OP-TEE's RPC ALLOC answered with it (vCPU 1's thread has no argument cached)
    ipa = g.page()
    g.write_arg(ipa, get_time(g))
    r = g.start(ipa, vcpu=1)
    assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC, r
    r = g.serve(g.reply(r, vcpu=1, cookie=x), vcpu=1)
    assert g.read_arg(ipa).ret != 0
    assert x not in {b["cookie"] for b in p.mediator_state(1)["rpc_buffers"]}
    # the storage TA's SHM_ALLOC answered with it: handed back (SHM_FREE), the
    # write fails (the session is opened first: its TA load allocates too)
    storage = g.session(STORAGE_UUID)
    g.shm_alloc_hook = lambda guest, req: MsgParam.tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, guest.page_list(guest.pages(1)),
        req.params[0].b, x)
    try:
        name, data = g.page(), g.page()
        g.write(name, b"obj")
        write = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=storage,
                       params=(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                             g.page_list([name]), 3, g.cookie()),
                               MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                             g.page_list([data]), 64, g.cookie())))
        r, out, _ = g.call(write, vcpu=1)
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0, out
        assert any(cookie == x for _type, cookie in g.shm_frees), g.shm_frees
    finally:
        g.shm_alloc_hook = None
    assert {b["cookie"] for b in p.mediator_state(1)["shm_buffers"]} == {x}
    # a GET_TIME through CALL_WITH_ARG: OP-TEE keeps its RPC argument (cache on)
    assert g.call(get_time(g), vcpu=1)[1].ret == 0
    cached = [b["cookie"] for b in p.mediator_state(1)["rpc_buffers"]]
    assert cached, p.mediator_state(1)
    refused_unseen(p, g, registration(g, cached[0], g.pages(1)))
    refused_unseen(p, g, get_time(g, rmem(cached[0])))
    assert g.call(unregistration(x), vcpu=1)[1].ret == 0


def test_an_rpc_alloc_answered_with_cookie_0_is_refused(world):
    """Cookie 0 is OP-TEE's "no buffer": an RPC ALLOC answered with it would
    never be handed back (no RPC FREE for 0) and block the next one. The
    mediator refuses it: OP-TEE's allocation fails, nothing is pinned."""
    p, g = world
    for _ in range(2):
        ipa, page = g.page(), g.page()
        g.write_arg(ipa, get_time(g))
        r = g.start(ipa, vcpu=1)
        assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC, r
        r = g.serve(g.reply(r, vcpu=1, cookie=0, alloc_ipa=page), vcpu=1)
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret != 0
        assert pins(p, g, [page]) == [0]
        assert 0 not in {b["cookie"] for b in p.mediator_state(1)["rpc_buffers"]}
    r, out, _ = g.call(get_time(g), vcpu=1)  # a real cookie works
    assert out.ret == 0


def test_cookie_0_is_refused_everywhere(world):
    p, g = world
    refused_unseen(p, g, registration(g, 0, g.pages(1)))
    refused_unseen(p, g, get_time(g, MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                    g.page_list(g.pages(1)), 8, 0)))
    refused_unseen(p, g, get_time(g, rmem(0)))


# -- two vCPUs at once ------------------------------------------------------------------

@pytest.fixture
def fine_switching():
    """Switch Python threads as often as possible, so two vCPUs' calls
    interleave inside the mediator (el2: both run in this process)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_two_vcpus_racing_one_cookie_register_it_once(world, fine_switching):
    """Both vCPUs REGISTER_SHM one cookie, each with its own 24 pages, at
    once: exactly one registration reaches OP-TEE, exactly its pages are
    pinned, the other gets BAD_PARAMETERS; one UNREGISTER_SHM releases all."""
    p, g = world
    for _ in range(RACE_ROUNDS):
        x = g.cookie()
        sets = [g.pages(24), g.pages(24)]
        msgs = [registration(g, x, s) for s in sets]
        results: list = [None, None]
        go = threading.Barrier(2)

        def run(i: int, go: threading.Barrier, results: list, msgs: list) -> None:
            go.wait()
            results[i] = g.call(msgs[i], vcpu=i)[1]

        threads = [threading.Thread(target=run, args=(i, go, results, msgs)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rets = sorted(out.ret for out in results)
        assert rets == [0, TEEC_ERROR_BAD_PARAMETERS], rets
        assert registered(p) == 1
        won = sets[[out.ret for out in results].index(0)]
        lost = sets[1 - sets.index(won)]
        assert pins(p, g, won) == [1] * 24 and pins(p, g, lost) == [0] * 24
        assert g.call(unregistration(x))[1].ret == 0
        assert registered(p) == 0 and pins(p, g, won) == [0] * 24
        g.free_pages(sets[0] + sets[1])


# -- the same cookie in an OUTPUT through a stale registration -------------------------

def test_no_second_registration_to_write_through(world):
    """The issue's attack, end to end: a parked REGISTER_SHM of X, a second
    one of X with pages the guest then gives back (ballooned out), the first
    completed, X unregistered, then an RMEM OUTPUT through X. Whatever the
    mediator kept, OP-TEE must never write a frame the domain no longer
    owns: the isolation oracle stays clean (checked by the fixture)."""
    p, g = world
    x = g.cookie()
    mine, theirs = g.pages(1), g.pages(1)
    r, ipa = park(g, registration(g, x, mine))
    g.call(registration(g, x, theirs), vcpu=1)
    for page in theirs:
        g.balloon_out(page)
    assert finish(g, r, ipa).ret == 0
    assert g.call(unregistration(x), vcpu=1)[1].ret == 0
    r, out, _ = g.call(get_time(g, rmem(x, out=True)), vcpu=1)
    assert out.ret != 0  # X names nothing any more
    assert registered(p) == 0


# -- SIGKILL and recovery (stubdom) ----------------------------------------------------

@pytest.fixture
def restartable(tmp_path):
    """A stubdom world of its own (its daemon is killed and restarted)."""
    with make_platform(tmp_path, "stubdom", limits=LIMITS, caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG,
                       call_timeout_ms=RESTART_LEASE_MS) as p:
        p.create_domain(DomainSpec(1, nr_pages=1024, vcpus=2))
        g = HostileGuest(p, 1)
        g.negotiate()
        assert g.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
        g.wait_session = g.session(WAIT_UUID)
        yield p, g
        destroy_and_check(p, g)


# The lease of a call restored suspended (and a guest's bound on waiting for
# the daemon): long enough for a loaded CI box to resume it in time.
RESTART_LEASE_MS = 20_000


def _journal(p) -> dict:
    return p.placement.toolstack.request("stats")["journal"]


def test_a_pending_registration_survives_a_daemon_kill(restartable):
    """REGISTER_SHM of X parked, the daemon SIGKILLed and restarted: the
    journal knew the claim, so the new daemon still refuses a second
    REGISTER_SHM of X (and every other use of it) and the parked call, once
    resumed, makes X one registration."""
    p, g = restartable
    x = g.cookie()
    mine, theirs = g.pages(2), g.pages(2)
    r, ipa = park(g, registration(g, x, mine))
    p.restart_daemon()
    assert _journal(p)["recovered"]["restored"] == [1]
    assert {b["cookie"] for b in p.mediator_state(1)["shm_buffers"]} == {x}
    refused_unseen(p, g, registration(g, x, theirs))
    refused_unseen(p, g, unregistration(x))
    refused_unseen(p, g, get_time(g, rmem(x)))
    assert pins(p, g, mine) == [1, 1] and pins(p, g, theirs) == [0, 0]
    assert finish(g, r, ipa).ret == 0 and registered(p) == 1
    assert g.call(unregistration(x), vcpu=1)[1].ret == 0
    assert registered(p) == 0 and pins(p, g, mine) == [0, 0]


def _busy_unregister(p, state: dict):
    """Wrap the platform's TEE: once ``state["busy"]`` is set, domain 1's
    UNREGISTER_SHM is answered TEE_ERROR_BUSY (OP-TEE still uses the memory)
    without running; ``state["told"]`` counts them. Returns the real smc."""
    inner = p.tee.smc
    machine = p.machine

    def smc(regs):
        if state.get("busy") and regs[7] == CLIENT and regs[0] & M32 in (OPTEE_SMC_CALL_WITH_ARG,
                                                                         OPTEE_SMC_CALL_WITH_RPC_ARG):
            maddr = ((regs[1] & M32) << 32) | (regs[2] & M32)
            if unpack_header(machine.read_machine(maddr, MSG_ARG_HEADER_SIZE))[0] == OPTEE_MSG_CMD_UNREGISTER_SHM:
                state["told"] = state.get("told", 0) + 1
                machine.write_machine(maddr + OFFSET_RET, TEEC_ERROR_BUSY.to_bytes(4, "little"))
                return (OPTEE_SMC_RETURN_OK,) + (0,) * 7
        return inner(regs)

    p.tee.smc = smc
    return inner


@pytest.mark.parametrize("busy", [False, True], ids=["undone", "busy"])
def test_a_pending_registration_its_guest_gives_up_is_undone_before_unpinning(restartable, busy):
    """Same, but the guest never resumes the parked call: when its lease
    ends the daemon completes it in OP-TEE (failing its RPCs) and, OP-TEE
    having made the registration, unregisters it — and only then unpins. If
    OP-TEE will not let go (busy), it stays registered and pinned until the
    domain is destroyed."""
    p, g = restartable
    x = g.cookie()
    mine = g.pages(2)
    park(g, registration(g, x, mine))
    state = {"busy": busy}
    inner = _busy_unregister(p, state)
    try:
        p.restart_daemon()
        # not a timing assertion: the lease ends by itself; this only bounds a wedged daemon
        for _ in range(int(RESTART_LEASE_MS / 50) * 4):
            if _journal(p)["leases_expired"]:
                break
            time.sleep(0.05)
        assert _journal(p)["leases_expired"] == 1
        if busy:
            assert state["told"] >= 1
            assert registered(p) == 1 and pins(p, g, mine) == [1, 1]
            assert [b["cookie"] for b in p.mediator_state(1)["shm_buffers"]] == [x]
        else:
            assert registered(p) == 0 and pins(p, g, mine) == [0, 0]
            assert p.mediator_state(1)["shm_buffers"] == []
    finally:
        p.tee.smc = inner


@pytest.mark.parametrize("busy", [False, True], ids=["undone", "busy"])
def test_a_registration_lost_with_the_daemon_keeps_its_frames_until_optee_lets_go(restartable, busy):
    """The daemon is SIGKILLed the moment OP-TEE has made a registration
    (its ``begin`` is on file, its answer is not). The new daemon undoes it
    with UNREGISTER_SHM before anything is unpinned; if OP-TEE will not let
    go (busy), the frames stay pinned — held for the domain until
    VM_DESTROYED — and are released only with the domain."""
    p, g = restartable
    x = g.cookie()
    mine = g.pages(2)
    state: dict = {}
    inner = _busy_unregister(p, state)
    busy_smc = p.tee.smc
    machine = p.machine

    def smc(regs):
        out = busy_smc(regs)
        if "killed" not in state and regs[7] == CLIENT and regs[0] & M32 in (OPTEE_SMC_CALL_WITH_ARG,
                                                                             OPTEE_SMC_CALL_WITH_RPC_ARG):
            maddr = ((regs[1] & M32) << 32) | (regs[2] & M32)
            if unpack_header(machine.read_machine(maddr, MSG_ARG_HEADER_SIZE))[0] == OPTEE_MSG_CMD_REGISTER_SHM:
                state["killed"] = True
                state["busy"] = busy  # from now on: the undo
                os.kill(p.daemon.pid, signal.SIGKILL)  # before it learns the answer
        return out

    p.tee.smc = smc
    try:
        result: list = []
        t = threading.Thread(target=lambda: result.append(g.call(registration(g, x, mine), vcpu=1)))
        t.start()
        p.daemon.proc.wait()
        t.join()
        p.restart_daemon()
        assert _journal(p)["lost_calls_settled"] == 1
        if busy:
            assert state["told"] >= 1
            assert registered(p) == 1 and pins(p, g, mine) == [1, 1]  # held for OP-TEE
        else:
            assert registered(p) == 0 and pins(p, g, mine) == [0, 0]
        refused_unseen(p, g, get_time(g, rmem(x)))  # the guest never learnt of it
    finally:
        p.tee.smc = inner
    # destroy_and_check (the fixture): VM_DESTROYED, then nothing pinned


# -- el2: an unanswered registration, a broken teardown ---------------------------------

@pytest.fixture
def el2(tmp_path):
    with make_platform(tmp_path, "el2", limits=LIMITS, caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG) as p:
        p.create_domain(DomainSpec(1, nr_pages=512, vcpus=2))
        yield p, HostileGuest(p, 1)


def test_a_registration_whose_answer_is_lost_stays_pinned(el2):
    """The port fails after OP-TEE made the registration (a gate that dies
    with the answer): the mediator cannot know, so the registration stays
    claimed and pinned; OP-TEE's own UNREGISTER_SHM answer releases it."""
    p, g = el2
    g.negotiate()
    x = g.cookie()
    mine = g.pages(3)
    inner = p.tee.smc
    lost = []

    def smc(regs):
        out = inner(regs)
        if not lost and regs[7] == CLIENT and regs[0] & M32 == OPTEE_SMC_CALL_WITH_ARG:
            lost.append(out)
            raise ConnectionError("the answer is lost on the way back")
        return out

    p.tee.smc = smc
    try:
        r, _, _ = g.call(registration(g, x, mine))
    finally:
        p.tee.smc = inner
    assert lost and r[0] != OPTEE_SMC_RETURN_OK  # the mediator answered an error
    assert registered(p) == 1 and pins(p, g, mine) == [1, 1, 1]
    assert p.mediator_state(1)["internal_errors"] == 1
    refused_unseen(p, g, registration(g, x, g.pages(1)))
    assert g.call(unregistration(x))[1].ret == 0
    assert registered(p) == 0 and pins(p, g, mine) == [0, 0, 0]
    p.placement.mediator.context(1).internal_errors = 0  # counted, and expected here
    destroy_and_check(p, g)


def test_teardown_finishes_and_reports_a_broken_invariant(el2):
    """A frame pinned on the domain's behalf behind the mediator's back (a
    mediator bug, simulated): destroying the domain reports it
    (TeardownInvariantBroken) but finishes — VM_DESTROYED, no partition, the
    pin dropped, the domain gone — and the domid can be used again."""
    from stubdom.mediator import TeardownInvariantBroken
    from stubdom.mediator.port import client_id

    p, g = el2
    g.negotiate()
    mfn = g.frame_of(g.page())
    p.machine.get_page(mfn, 1)
    with pytest.raises(TeardownInvariantBroken, match=f"{mfn:#x}"):
        p.destroy_domain(1)
    assert 1 not in p.domids() and p.tee.partition_stats(client_id(1)) is None
    assert p.machine.frame_refcount(mfn) == 0 and p.machine.pinned_frames(1) == {}
    p.create_domain(DomainSpec(1, nr_pages=64))
    destroy_and_check(p, 1)


def test_a_call_optee_would_refuse_for_its_shape_pins_nothing(el2):
    """An INVOKE with more memrefs than OP-TEE takes (TEE_NUM_PARAMS), each
    a full buffer: refused before a single page is read or pinned."""
    p, g = el2
    g.negotiate()
    pinned = []
    inner = p.machine.get_pages

    def get_pages(mfns, domid):
        pinned.extend(mfns)
        return inner(mfns, domid)

    p.machine.get_pages = get_pages
    try:
        params = tuple(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                     g.page_list(g.pages(8)), 8 * PAGE_SIZE, g.cookie()) for _ in range(5))
        refused_unseen(p, g, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0, session=1, params=params), vcpu=0)
    finally:
        p.machine.get_pages = inner
    assert pinned == []
