"""Hostile guests, lifetimes: cookies reused, guessed and never freed;
OP-TEE threads resumed by a domain that does not own them, twice, or never;
floods past every per-domain limit; another domain's sessions closed; pinned
pages ballooned out mid-call.  Beside each attack an honest domain runs the
Linux-like driver; after it, destroying the attacker leaves no pin and no
TEE partition (the fixture checks)."""

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
from stubdom.mediator import DomainLimits, client_id
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
    rpc_func,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    INCREMENT_UUID,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    TA_INCREMENT_CMD_INC_VALUE,
    WAIT_CMD_BUSY,
    WAIT_CMD_GET_TIME,
    WAIT_UUID,
)
from stubdom.xen import DOMID_INVALID, PAGE_SIZE

LIMITS = DomainLimits(max_calls=3, max_shm_buffers=6, max_pages_per_buffer=8, max_total_pages=24)
ERESUME = (OPTEE_SMC_RETURN_ERESUME,) + (0,) * 7


@pytest.fixture(scope="module", params=PLACEMENTS)
def platform(request, tmp_path_factory):
    with make_platform(tmp_path_factory.mktemp(request.param), request.param, limits=LIMITS,
                       caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG) as p:
        yield p


@pytest.fixture
def world(platform):
    """Attacker d1 and victim d3 under tight limits (the honest load, d2, is
    started by each test)."""
    p = platform
    p.create_domain(DomainSpec(1, nr_pages=512))
    p.create_domain(DomainSpec(3, nr_pages=256))
    evil, victim = HostileGuest(p, 1), HostileGuest(p, 3)
    yield p, evil, victim
    destroy_and_check(p, evil)
    destroy_all_and_check(p)


def _cookies(state: dict, kind: str) -> set[int]:
    return {b["cookie"] for b in state[kind]}


def _busy(g: HostileGuest, session: int, *, vcpu: int = 0):
    """A BUSY invoke stopped at its first FOREIGN_INTR: a suspended call."""
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.serve(g.start(ipa, vcpu=vcpu), vcpu=vcpu,
                stop=lambda r: r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR)
    assert r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
    return ipa, r


def _get_time(g: HostileGuest, session: int, *, cookie: int):
    """A GET_TIME invoke whose RPC ALLOC is answered with ``cookie``,
    stopped at its RPC CMD (or wherever OP-TEE went after a refusal)."""
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.start(ipa)
    if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC:
        r = g.reply(r, cookie=cookie)
    return ipa, r


def _inc(g: HostileGuest, session: int, value: int) -> int:
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=TA_INCREMENT_CMD_INC_VALUE, session=session,
                              params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, value),)))
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
    return out.params[0].a


def test_resuming_threads_it_does_not_own_twice_or_never(world):
    p, evil, victim = world
    _, vr = _busy(victim, victim.session(WAIT_UUID))
    with HonestLoad(p, 2):
        before = tee_smcs_of(p, 1)
        # Every thread id, the victim's included, and junk in every other register.
        for tid in list(range(8)) + [vr[3], 0xFFFF_FFFF]:
            assert evil.resume(tid, 0xDEAD, 0xBEEF, 0xF00D, 0xCAFE) == ERESUME
        assert tee_smcs_of(p, 1) == before  # refused without reaching the TEE
        # Its own call resumed twice: once, then ERESUME.
        ipa, r = _busy(evil, evil.session(WAIT_UUID))
        assert evil.serve(r)[0] == OPTEE_SMC_RETURN_OK
        assert evil.resume(r[3]) == ERESUME
        # Never resumed: as many suspended calls as it may have, then walk away.
        for vcpu in range(LIMITS.max_calls):
            _busy(evil, evil.session(WAIT_UUID), vcpu=vcpu)
        assert evil.start(evil.page()) == (OPTEE_SMC_RETURN_ETHREAD_LIMIT,) + (0,) * 7
    # The victim's call is intact and resumable by the victim only.
    assert victim.serve(vr)[0] == OPTEE_SMC_RETURN_OK
    assert p.tee.partition_stats(client_id(1)).threads_suspended == LIMITS.max_calls


def test_floods_past_every_per_domain_limit(world):
    p, evil, victim = world
    with HonestLoad(p, 2):
        # Calls in flight: the limit, then ETHREAD_LIMIT without the TEE.
        calls = [_busy(evil, evil.session(WAIT_UUID), vcpu=v) for v in range(LIMITS.max_calls)]
        before = tee_smcs_of(p, 1)
        for _ in range(50):
            assert evil.start(evil.page())[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT
        assert tee_smcs_of(p, 1) == before
        for v, (_, r) in enumerate(calls):
            assert evil.serve(r, vcpu=v)[0] == OPTEE_SMC_RETURN_OK
        # Buffers: pages per buffer, total pages, number of buffers.
        assert evil.register(0x100, LIMITS.max_pages_per_buffer + 1)[1].ret == TEEC_ERROR_OUT_OF_MEMORY
        cookies = []
        for i in range(10):
            r, out = evil.register(0x200 + i, LIMITS.max_pages_per_buffer)
            if out.ret:
                assert (out.ret, out.ret_origin) == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
            else:
                cookies.append(0x200 + i)
        assert len(cookies) == LIMITS.max_total_pages // LIMITS.max_pages_per_buffer
        assert p.mediator_state(1)["pinned_pages"] == LIMITS.max_total_pages
        pins = p.machine.pinned_frames(1)
        for i in range(10):
            assert evil.register(0x300 + i, 1)[1].ret == TEEC_ERROR_OUT_OF_MEMORY
        state = p.mediator_state(1)
        assert state["pinned_pages"] == LIMITS.max_total_pages
        assert _cookies(state, "shm_buffers") == {0x200 + i for i in range(len(cookies))}
        assert p.machine.pinned_frames(1) == pins  # nothing partial
        # Number of buffers: one-page registrations stay far below the page
        # limit, so only max_shm_buffers can stop them.
        for cookie in cookies:
            assert evil.unregister(cookie)[1].ret == 0
        assert p.mediator_state(1)["pinned_pages"] == 0
        small = []
        for i in range(LIMITS.max_shm_buffers + 4):
            out = evil.register(0x400 + i, 1)[1]
            if out.ret:
                assert (out.ret, out.ret_origin) == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
            else:
                small.append(0x400 + i)
        assert small == [0x400 + i for i in range(LIMITS.max_shm_buffers)]
        assert p.mediator_state(1)["pinned_pages"] == LIMITS.max_shm_buffers < LIMITS.max_total_pages
        # The victim is not starved by any of it.
        assert _inc(victim, victim.session(INCREMENT_UUID), 1) == 2
        assert victim.register(0x200, LIMITS.max_pages_per_buffer)[1].ret == 0
    assert p.mediator_state(2)["internal_errors"] == p.mediator_state(1)["internal_errors"] == 0


def test_cookies_reused_guessed_and_never_freed(world):
    p, evil, victim = world
    victim_pages = victim.pages(2)
    assert victim.register(0xC0FFEE, 2, buf_ptr=victim.page_list(victim_pages))[1].ret == 0
    victim_frames = [victim.frame_of(ipa) for ipa in victim_pages]
    victim_pins = p.machine.pinned_frames(3)
    with HonestLoad(p, 2):
        # Reused: its own live cookie again.
        assert evil.register(0x42, 1)[1].ret == 0
        assert evil.register(0x42, 1)[1].ret == TEEC_ERROR_BAD_PARAMETERS
        # Guessed: the victim's cookie, to unregister it, to use it as a
        # REGD argument, to reference it as a registered memref.
        r, out = evil.unregister(0xC0FFEE)
        assert out.ret != 0
        assert 0xC0FFEE in _cookies(p.mediator_state(3), "shm_buffers")
        assert all(p.machine.frame_refcount(m) == 1 for m in victim_frames)
        assert p.machine.pinned_frames(3) == victim_pins
        evil.negotiate()
        before = tee_smcs_of(p, 1)
        assert evil.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, 0, 0xC0FFEE, 0) == (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
        assert tee_smcs_of(p, 1) == before
        session = evil.session(DIGEST_UUID)
        r, out, _ = evil.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
            MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 16, 0xC0FFEE),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                          evil.page_list([evil.page()]), 32, 9))))
        assert out.ret != 0  # OP-TEE looks the cookie up in the attacker's own partition only
        # An RPC buffer cookie reused while live: refused, the live one intact.
        assert evil.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
        ipa_a, ra = _get_time(evil, evil.session(WAIT_UUID), cookie=0xAB)
        assert ra[0] == OPTEE_SMC_RETURN_RPC_CMD
        ipa_b, rb = _get_time(evil, evil.session(WAIT_UUID), cookie=0xAB)
        assert evil.serve(rb)[0] == OPTEE_SMC_RETURN_OK
        assert evil.read_arg(ipa_b).ret == TEEC_ERROR_OUT_OF_MEMORY
        assert evil.serve(ra)[0] == OPTEE_SMC_RETURN_OK and evil.read_arg(ipa_a).ret == 0
        assert 0xAB in _cookies(p.mediator_state(1), "rpc_buffers")  # cached, never disabled
        # An SHM_ALLOC answered with its live registration's cookie: refused
        # (the guest is asked to free what it offered, OP-TEE's allocation
        # fails), the registration intact and still pinned.
        pins = p.machine.pinned_frames(1)
        storage = evil.session(STORAGE_UUID)  # before the hook: the TA's load allocates too
        evil.shm_alloc_hook = lambda g, req: MsgParam.tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            g.page_list(g.pages(-(-req.params[0].b // PAGE_SIZE))), req.params[0].b, 0x42)
        name, blob = evil.pages(2)
        evil.write(name, b"object-1")
        evil.write(blob, b"x" * 100)
        r, out, _ = evil.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE,
                                     session=storage, params=(
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, evil.page_list([name]), 8, 1),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, evil.page_list([blob]), 100, 2))))
        evil.shm_alloc_hook = None
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_OUT_OF_MEMORY
        assert (OPTEE_RPC_SHM_TYPE_APPL, 0x42) in evil.shm_frees
        assert 0x42 in _cookies(p.mediator_state(1), "shm_buffers")
        assert {m: n for m, n in p.machine.pinned_frames(1).items() if m in pins} == pins
        # Never freed: registrations and cached RPC buffers left behind.
        for c in (0x50, 0x51, 0x52):
            assert evil.register(c, 2)[1].ret == 0
    # The victim's buffer still works for the victim.
    assert victim.unregister(0xC0FFEE)[1].ret == 0
    assert p.machine.pinned_frames(3) == {m: n for m, n in victim_pins.items() if m not in victim_frames}
    assert all(p.machine.frame_refcount(m) == 0 for m in victim_frames)


def test_closing_another_domains_sessions(world):
    p, evil, victim = world
    session = victim.session(INCREMENT_UUID)
    with HonestLoad(p, 2):
        for guess in list(range(64)) + [session, 0xFFFF_FFFF]:
            r, out = evil.close_session(guess)  # it has no session of its own
            assert r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0
    # Sessions live in the caller's partition: the victim's is untouched.
    assert _inc(victim, session, 41) == 42
    assert p.tee.partition_stats(client_id(3)).sessions == 1


def test_ballooning_out_pinned_pages_mid_call(world):
    p, evil, _ = world
    session = evil.session(DIGEST_UUID)
    pages = evil.pages(3)
    data = b"".join(bytes([0x10 + i]) * PAGE_SIZE for i in range(3))
    for i, ipa in enumerate(pages):
        evil.write(ipa, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
    with HonestLoad(p, 2):
        assert evil.register(0x77, 3, buf_ptr=evil.page_list(pages))[1].ret == 0
        frames = [evil.frame_of(ipa) for ipa in pages]
        # Give every registered page back to Xen: pinned, so they stay
        # allocated (zombies, still the attacker's) until the last put.
        for ipa in pages:
            evil.balloon_out(ipa)
        assert all(p.machine.frame_owner(m) == 1 and p.machine.frame_refcount(m) == 1 for m in frames)
        out = evil.page()
        r, res, _ = evil.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
            MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, len(data), 0x77),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                          evil.page_list([out]), 32, 9))))
        # OP-TEE read frames that are still the attacker's and still pinned.
        assert res.ret == 0 and evil.dom.read(out, 32) == hashlib.sha256(data).digest()
        p.oracle.assert_clean()
        assert evil.unregister(0x77)[1].ret == 0
        assert all(p.machine.frame_owner(m) == DOMID_INVALID for m in frames)  # freed at the last put
        # An RPC buffer ballooned out while OP-TEE waits for the reply.
        wait = evil.session(WAIT_UUID)
        ipa = evil.page()
        evil.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=wait,
                                   params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
        r = evil.start(ipa)
        if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC:
            r = evil.reply(r)
        assert r[0] == OPTEE_SMC_RETURN_RPC_CMD
        rpc_page = evil.rpc_arg_ipa(r)
        rpc_frame = evil.balloon_out(rpc_page & ~0xFFF)
        assert p.machine.frame_owner(rpc_frame) == 1  # pinned by the mediator: a zombie
        r = evil.serve(evil.resume(r[3]))
        assert r[0] == OPTEE_SMC_RETURN_OK and evil.read_arg(ipa).ret != 0  # no reply could be read
        assert p.machine.frame_owner(rpc_frame) == DOMID_INVALID  # OP-TEE freed it; unpinned, gone
        p.oracle.assert_clean()
    assert p.mediator_state(1)["pinned_pages"] == 0
