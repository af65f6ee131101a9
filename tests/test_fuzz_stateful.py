"""Stateful property-based fuzzing: random interleavings of honest and
hostile operations by three domains on one platform, under each placement,
with DESIGN.md's invariants checked after every step.

Honest: open/invoke/close sessions, register/unregister shared memory,
SHA-256 digests over temporary and registered memory, calls suspended in
FOREIGN_INTR and resumed later.  Hostile: argument pages that are not the
guest's RAM, arbitrary fast-call registers (a7 included), resuming threads it
does not own, reusing its own and guessing other domains' cookies, closing
other domains' sessions, ballooning out pinned pages, floods past the
limits.  Every honest call must succeed with the right answer; every hostile
one gets its defined error.

After every step: every SMC that reached the TEE carried a live domain's
client ID (or 0 for the hypervisor's VM_CREATED/VM_DESTROYED) — invariant 1;
the isolation oracle is clean — 4; pins, buffers and calls in flight within
the domain's limits, no mediator bug hit — 7, 8; the TEE's sessions and
suspended threads are what the model expects.  After each example the
domains are destroyed: nothing pinned, no partition left — 6.

Bounded profile here (``test_interleavings``); the long one is
``-m slow`` (docs/fuzzing.md).
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from stubdom.hostile import (
    BASE_CAPS,
    M32,
    PLACEMENTS,
    HostileGuest,
    destroy_and_check,
    make_platform,
    tee_smcs,
    tee_smcs_of,
)
from stubdom.mediator import DomainLimits, client_id
from stubdom.optee import (
    ARM_SMCCC_OWNER_TRUSTED_APP,
    ARM_SMCCC_OWNER_TRUSTED_OS_END,
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    SMC_NAMES,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
    decode_function_id,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    INCREMENT_UUID,
    TA_INCREMENT_CMD_INC_VALUE,
    WAIT_CMD_BUSY,
    WAIT_UUID,
)
from stubdom.xen import DOMID_INVALID, PAGE_SIZE

DOMIDS = (1, 2, 3)
LIMITS = DomainLimits(max_calls=3, max_shm_buffers=8, max_pages_per_buffer=8, max_total_pages=32)
THREADS = 4
U64 = (1 << 64) - 1
ERESUME = (OPTEE_SMC_RETURN_ERESUME,) + (0,) * 7
EBADADDR = (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
# Yielding calls start or continue work the model tracks itself; the
# arbitrary-register rule leaves them to the rules that mean them.
STD_CALLS = {OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG, OPTEE_SMC_CALL_WITH_REGD_ARG,
             OPTEE_SMC_CALL_RETURN_FROM_RPC}
FAST_IDS = sorted(f for f in SMC_NAMES if f & M32 not in STD_CALLS)
HYP_CALLS = {OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED}
TAS = {"inc": INCREMENT_UUID, "digest": DIGEST_UUID, "wait": WAIT_UUID, "suspend": WAIT_UUID}
HONEST_REGISTRATIONS = 2  # per domain: leaves room under LIMITS for floods and temp buffers
HONEST_PAGES = 4


class Dom:
    """The model of one domain: what it holds, as the guest believes."""

    def __init__(self, guest: HostileGuest) -> None:
        self.g = guest
        self.sessions: dict[int, str] = {}  # session id -> TA kind
        self.regs: dict[int, tuple[list[int], bytes]] = {}  # cookie -> (page IPAs, data)
        self.ballooned: dict[int, dict[int, int]] = {}  # cookie -> {IPA: frame} ballooned out while registered
        self.suspended: dict[int, tuple[int, tuple, int]] = {}  # OP-TEE thread -> (vcpu, registers, session)
        self.flood_list = 0  # buf_ptr of a page list of LIMITS.max_pages_per_buffer pages, made once


def _value(func: int, session: int, attr: int, a: int = 0) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=func, session=session,
                  params=(MsgParam.value(attr, a),))


class Interleavings(RuleBasedStateMachine):
    """Three domains on ``platform`` (set by :func:`run`)."""

    platform = None  # the HostilePlatform shared by every example of a run

    def __init__(self) -> None:
        super().__init__()
        p = self.p = type(self).platform
        self.seen = len(tee_smcs(p))
        self.doms: dict[int, Dom] = {}
        for domid in DOMIDS:
            p.create_domain(DomainSpec(domid, nr_pages=4096))
            g = HostileGuest(p, domid, seed=len(tee_smcs(p)))
            g.negotiate()
            self.doms[domid] = Dom(g)

    def teardown(self) -> None:
        for domid in list(self.p.domids()):
            destroy_and_check(self.p, domid)

    # -- helpers ------------------------------------------------------------------

    def _session(self, d: Dom, kind: str) -> int:
        for s, k in d.sessions.items():
            if k == kind:
                return s
        s = d.g.session(TAS[kind])
        d.sessions[s] = kind
        return s

    def _digest(self, d: Dom, first: MsgParam, expected: bytes) -> None:
        out = d.g.page()
        r, res, _ = d.g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256,
                                    session=self._session(d, "digest"), params=(first, MsgParam.tmem(
                                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                        d.g.page_list([out]), 32, d.g.cookie()))))
        assert r[0] == OPTEE_SMC_RETURN_OK and res.ret == 0, (hex(r[0]), hex(res.ret))
        assert d.g.dom.read(out, 32) == hashlib.sha256(expected).digest()

    def _busy(self, d: Dom, vcpu: int, session: int) -> tuple:
        """A BUSY invoke stopped at its first FOREIGN_INTR (a session runs
        one call at a time: each suspended call has its own)."""
        ipa = d.g.page()
        d.g.write_arg(ipa, _value(WAIT_CMD_BUSY, session, OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT))
        return d.g.serve(d.g.start(ipa, vcpu=vcpu), vcpu=vcpu,
                         stop=lambda r: r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR)

    def _free_vcpu(self, d: Dom) -> int:
        used = {v for v, _, _ in d.suspended.values()}
        return next(v for v in range(1, 16) if v not in used)

    def _foreign_session(self, data, domid: int) -> int:
        d = self.doms[domid]
        theirs = [s for o, od in self.doms.items() if o != domid for s in od.sessions if s not in d.sessions]
        guess = st.integers(0, 64).filter(lambda s: s not in d.sessions)
        return data.draw(st.sampled_from(theirs) if theirs else guess)

    # -- honest -------------------------------------------------------------------

    @rule(domid=st.sampled_from(DOMIDS), kind=st.sampled_from(sorted(TAS)))
    def open_session(self, domid, kind):
        d = self.doms[domid]
        if len(d.sessions) < 4:
            s = d.g.session(TAS[kind])
            assert s not in d.sessions
            d.sessions[s] = kind

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def close_session(self, domid, data):
        d = self.doms[domid]
        busy = {s for _, _, s in d.suspended.values()}
        closable = sorted(set(d.sessions) - busy)
        if closable:
            s = data.draw(st.sampled_from(closable))
            r, out = d.g.close_session(s)
            assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
            del d.sessions[s]

    @rule(domid=st.sampled_from(DOMIDS), value=st.integers(0, M32 - 1))
    def invoke_increment(self, domid, value):
        d = self.doms[domid]
        r, out, _ = d.g.call(_value(TA_INCREMENT_CMD_INC_VALUE, self._session(d, "inc"),
                                    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, value))
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0 and out.params[0].a == value + 1

    @rule(domid=st.sampled_from(DOMIDS), size=st.integers(1, 3 * PAGE_SIZE), offset=st.integers(0, 64))
    def digest_temp(self, domid, size, offset):
        d = self.doms[domid]
        data = os.urandom(size)
        pages = d.g.pages(-(-(offset + size) // PAGE_SIZE))
        blob = bytes(offset) + data
        for i, ipa in enumerate(pages):
            d.g.write(ipa, blob[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        self._digest(d, MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                      d.g.page_list(pages, offset), size, d.g.cookie()), data)

    @rule(domid=st.sampled_from(DOMIDS), npages=st.integers(1, HONEST_PAGES))
    def register(self, domid, npages):
        d = self.doms[domid]
        if len(d.regs) >= HONEST_REGISTRATIONS:
            return
        pages = d.g.pages(npages)
        data = os.urandom(npages * PAGE_SIZE)
        for i, ipa in enumerate(pages):
            d.g.write(ipa, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        cookie = d.g.cookie()
        r, out = d.g.register(cookie, npages, buf_ptr=d.g.page_list(pages))
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0, hex(out.ret)
        d.regs[cookie] = (pages, data)

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def unregister(self, domid, data):
        d = self.doms[domid]
        if not d.regs:
            return
        cookie = data.draw(st.sampled_from(sorted(d.regs)))
        r, out = d.g.unregister(cookie)
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
        del d.regs[cookie]
        for mfn in d.ballooned.pop(cookie, {}).values():  # the last put freed the zombie
            assert self.p.machine.frame_owner(mfn) == DOMID_INVALID

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def digest_registered(self, domid, data):
        d = self.doms[domid]
        if not d.regs:
            return
        cookie = data.draw(st.sampled_from(sorted(d.regs)))
        blob = d.regs[cookie][1]
        offset = data.draw(st.integers(0, len(blob) - 1))
        size = data.draw(st.integers(1, len(blob) - offset))
        self._digest(d, MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, offset, size, cookie),
                     blob[offset:offset + size])

    @rule(domid=st.sampled_from(DOMIDS))
    def suspend_a_call(self, domid):
        d = self.doms[domid]
        if d.suspended:
            return
        vcpu = self._free_vcpu(d)
        session = self._session(d, "suspend")
        r = self._busy(d, vcpu, session)
        assert r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
        d.suspended[r[3]] = (vcpu, r, session)

    @rule(domid=st.sampled_from(DOMIDS))
    def resume_own_call(self, domid):
        d = self.doms[domid]
        if not d.suspended:
            return
        tid, (vcpu, r, _) = d.suspended.popitem()
        assert d.g.serve(r, vcpu=vcpu)[0] == OPTEE_SMC_RETURN_OK
        assert d.g.resume(tid, vcpu=vcpu) == ERESUME  # twice: the call is over

    # -- hostile ------------------------------------------------------------------

    @rule(domid=st.sampled_from(DOMIDS), function=st.sampled_from(
        [OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG]),
        kind=st.sampled_from(["unaligned", "unmapped", "mmio", "foreign", "zero", "beyond", "readonly"]))
    def bad_argument_page(self, domid, function, kind):
        d = self.doms[domid]
        other = self.doms[DOMIDS[(DOMIDS.index(domid) + 1) % len(DOMIDS)]]
        own = set(d.g.dom.ram_gfns())
        if kind == "unaligned":
            ipa = d.g.page() + 8
        elif kind == "unmapped":
            ipa = d.g.unmapped_page()
        elif kind == "mmio":
            ipa = d.g.mmio_page()
        elif kind == "foreign":
            frames = [other.g.frame_of(i) for i in other.g.pages(4)]
            ipa = next((m << 12 for m in frames if m not in own), 1 << 48)
        elif kind == "readonly":
            ipa = d.g.readonly_page()
        else:
            ipa = 0 if kind == "zero" else 1 << 48
        before = tee_smcs_of(self.p, domid)
        assert d.g.smc(function, ipa >> 32, ipa & M32) == EBADADDR, kind
        assert tee_smcs_of(self.p, domid) == before, kind

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def arbitrary_fast_call(self, domid, data):
        d = self.doms[domid]
        a0 = data.draw(st.one_of(
            st.sampled_from(FAST_IDS),
            st.tuples(st.sampled_from(FAST_IDS), st.integers(0, 0xFF), st.integers(0, M32)).map(
                lambda t: t[0] | (t[1] << 16) | (t[2] << 32)),
            st.integers(0, U64)).filter(lambda a: a & M32 not in STD_CALLS))
        rest = data.draw(st.lists(st.integers(0, U64), min_size=7, max_size=7))
        r = d.g.smc8((a0, *rest))
        assert len(r) == 8 and all(0 <= x <= U64 for x in r)
        owner = decode_function_id(a0).owner
        if ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
            assert r[4:] == (0, 0, 0, 0), (hex(a0), r)

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def resume_a_thread_it_does_not_own(self, domid, data):
        d = self.doms[domid]
        theirs = [t for o, od in self.doms.items() if o != domid for t in od.suspended]
        tid = data.draw(st.sampled_from(theirs) if theirs else st.integers(0, 2 * THREADS))
        if tid in d.suspended:
            return  # thread ids are per partition: that one is its own
        before = tee_smcs_of(self.p, domid)
        assert d.g.resume(tid, *data.draw(st.lists(st.integers(0, M32), min_size=4, max_size=4))) == ERESUME
        assert tee_smcs_of(self.p, domid) == before

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def reuse_a_live_cookie(self, domid, data):
        d = self.doms[domid]
        if not d.regs:
            return
        cookie = data.draw(st.sampled_from(sorted(d.regs)))
        pins = self.p.machine.pinned_frames(domid)
        r, out = d.g.register(cookie, 1)
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_BAD_PARAMETERS
        assert self.p.machine.pinned_frames(domid) == pins

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def use_another_domains_cookie(self, domid, data):
        d = self.doms[domid]
        theirs = [(o, c) for o, od in self.doms.items() if o != domid for c in od.regs]
        if not theirs:
            return
        owner, cookie = data.draw(st.sampled_from(theirs))
        pins = self.p.machine.pinned_frames(owner)
        if data.draw(st.booleans()):
            r, out = d.g.unregister(cookie)
            assert r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0
        else:
            before = tee_smcs_of(self.p, domid)
            assert d.g.start_regd(cookie, 0) == EBADADDR
            assert tee_smcs_of(self.p, domid) == before
        assert self.p.machine.pinned_frames(owner) == pins
        assert cookie in {b["cookie"] for b in self.p.mediator_state(owner)["shm_buffers"]}

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def close_another_domains_session(self, domid, data):
        d = self.doms[domid]
        s = self._foreign_session(data, domid)
        r, out = d.g.close_session(s)
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0

    @rule(domid=st.sampled_from(DOMIDS), data=st.data())
    def balloon_out_a_pinned_page(self, domid, data):
        d = self.doms[domid]
        if not d.regs:
            return
        cookie = data.draw(st.sampled_from(sorted(d.regs)))
        pages = d.regs[cookie][0]
        ipa = data.draw(st.sampled_from(pages))
        if ipa in d.ballooned.get(cookie, {}):
            return
        mfn = d.g.balloon_out(ipa)
        # Pinned: still allocated and still the domain's (a zombie) until the last put.
        assert self.p.machine.frame_owner(mfn) == domid and self.p.machine.frame_refcount(mfn) >= 1
        d.ballooned.setdefault(cookie, {})[ipa] = mfn

    @rule(domid=st.sampled_from(DOMIDS))
    def flood_buffers(self, domid):
        d = self.doms[domid]
        pins = self.p.machine.pinned_frames(domid)
        if not d.flood_list:  # the same pages each time: a guest may register a page twice
            d.flood_list = d.g.page_list(d.g.pages(LIMITS.max_pages_per_buffer))
        flood, refused = [], None
        for _ in range(LIMITS.max_total_pages // LIMITS.max_pages_per_buffer + 2):
            cookie = d.g.cookie()
            r, out = d.g.register(cookie, LIMITS.max_pages_per_buffer, buf_ptr=d.flood_list)
            assert r[0] == OPTEE_SMC_RETURN_OK
            if out.ret:
                refused = (out.ret, out.ret_origin)
                break
            flood.append(cookie)
        assert refused == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
        self._check_limits(domid)
        for cookie in flood:
            assert d.g.unregister(cookie)[1].ret == 0
        assert self.p.machine.pinned_frames(domid) == pins

    @rule(domid=st.sampled_from(DOMIDS))
    def flood_calls(self, domid):
        d = self.doms[domid]
        flood = []
        for _ in range(LIMITS.max_calls - len(d.suspended)):
            vcpu = self._free_vcpu(d) + len(flood)
            session = d.g.session(WAIT_UUID)
            flood.append((vcpu, self._busy(d, vcpu, session), session))
            assert flood[-1][1][0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
        before = tee_smcs_of(self.p, domid)
        assert d.g.start(d.g.page())[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT
        assert tee_smcs_of(self.p, domid) == before
        assert self.p.mediator_state(domid)["calls_in_flight"] == LIMITS.max_calls
        for vcpu, r, session in flood:
            assert d.g.serve(r, vcpu=vcpu)[0] == OPTEE_SMC_RETURN_OK
            assert d.g.close_session(session)[1].ret == 0

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def every_smc_at_the_tee_is_stamped(self):
        new = tee_smcs(self.p)[self.seen:]
        self.seen += len(new)
        live = {client_id(domid) for domid in self.p.domids()}
        for s in new:
            assert s[7] in live or (s[7] == 0 and s[0] in HYP_CALLS), [hex(x) for x in s]

    @invariant()
    def oracle_is_clean(self):
        self.p.oracle.assert_clean()
        self.p.check_daemon_alive()

    def _check_limits(self, domid: int) -> None:
        state = self.p.mediator_state(domid)
        assert state["internal_errors"] == 0, state
        assert state["pinned_pages"] <= LIMITS.max_total_pages, state
        assert state["buffers"] <= LIMITS.max_shm_buffers, state
        assert state["calls_in_flight"] <= LIMITS.max_calls, state

    @invariant()
    def limits_hold_and_the_model_agrees(self):
        for domid, d in self.doms.items():
            self._check_limits(domid)
            state = self.p.mediator_state(domid)
            assert set(d.regs) <= {b["cookie"] for b in state["shm_buffers"]}
            assert state["calls_in_flight"] == len(d.suspended)
            tee = self.p.tee.partition_stats(client_id(domid))
            assert (tee.sessions, tee.threads_suspended, tee.registered_shm) == (
                len(d.sessions), len(d.suspended), len(d.regs)), (domid, tee)
            # Pinned frames: the registered buffers' pages plus the shadow pool.
            pinned = sum(self.p.machine.pinned_frames(domid).values())
            assert pinned <= LIMITS.max_total_pages + state.get("shadow_pages", pinned), (pinned, state)


def run(platform, *, max_examples: int, steps: int) -> None:
    machine = type("Interleavings", (Interleavings,), {"platform": platform})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


@pytest.fixture(scope="module", params=PLACEMENTS)
def platform(request, tmp_path_factory):
    with make_platform(tmp_path_factory.mktemp(request.param), request.param, limits=LIMITS,
                       caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG, threads=THREADS) as p:
        yield p
        assert p.domids() == []
    if p.daemon is not None:
        assert p.daemon_exit == 0, p.daemon_log()


def test_interleavings(platform):
    run(platform, max_examples=6, steps=25)


@pytest.mark.slow
def test_interleavings_long(platform):
    run(platform, max_examples=int(os.environ.get("STUBDOM_FUZZ_EXAMPLES", "400")),
        steps=int(os.environ.get("STUBDOM_FUZZ_STEPS", "60")))
