"""The attack catalogue as loops: each row of docs/security.md's attack table
as an :class:`Attack` whose :meth:`~Attack.step` runs one iteration, checks
the mediator's answer against the row's defined outcome and gives back what
it took, so a soak run or the benchmark's bystander sweep can repeat it for
as long as it likes.

    with HonestLoad(p, 2), AttackLoop(p, HostileGuest(p, 1), ATTACKS["cookies"], victim=2) as a:
        ...                       # the attack runs on its own thread meanwhile
    a.iterations                  # errors (AttackOutcomeWrong, ...) re-raised on exit

What an attacker knows is what a malicious guest kernel could know.  Two
*harness hints* stand in for side channels and are used only where the row
needs them: the machine frames of the victim (``foreign`` pages: a guest
learns a frame number from a side channel and names it; it never maps it),
and, on a :class:`~stubdom.hostile.HostilePlatform`, the domain's own limits
and the victim's cookies from ``mediator_state`` (a flood learns the limits
anyway; a cookie guessed right is the worst case of guessing).  Observations
that need a :class:`~stubdom.hostile.HostilePlatform` (the TEE's SMC record:
"the TEE was not reached", the a7 check) are made when the platform has
them and skipped otherwise; the machine's pins and the isolation oracle are
on every platform.

One attack per guest at a time: an attack assumes nobody else uses its
guest (``close_foreign`` expects it to own no session); run attacks on one
guest one after the other (``teardown`` releases what ``setup`` took).
"""

from __future__ import annotations

import abc
import hashlib
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    SMC_NAMES,
    TEE_NUM_PARAMS,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    TEEC_ORIGIN_TEE,
    MsgArg,
    MsgParam,
    build_page_list,
    decode_function_id,
    get_arg_size,
    is_rpc_return,
    make_buf_ptr,
    pack_header,
    rpc_func,
)
from stubdom.tee.tas import DIGEST_CMD_SHA256, DIGEST_UUID, WAIT_CMD_BUSY, WAIT_CMD_GET_TIME, WAIT_UUID
from stubdom.xen import PAGE_SIZE, P2mType

from .errors import AttackOutcomeWrong, HostileError
from .guest import M32, HostileGuest, Regs
from .race import Scribbler

if TYPE_CHECKING:
    from .platforms import SmcRecord

__all__ = ["Attack", "ATTACKS", "AttackLoop", "attack_names"]

U64 = (1 << 64) - 1
EBADADDR: Regs = (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
ERESUME: Regs = (OPTEE_SMC_RETURN_ERESUME,) + (0,) * 7
UNKNOWN: Regs = (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7
REFUSED = (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
TOO_BIG = (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
# Pages a flood may take from its guest in one iteration; a limit needing
# more is flooded only up to the count it can reach (documented per attack).
FLOOD_PAGE_BUDGET = 256
# How many suspended calls a calls flood tries before deciding the limit is
# not enforced (far above any sane max_calls and OP-TEE thread count).
FLOOD_CALLS_CAP = 256
_CACHE_DRAIN_MAX = 64  # DISABLE_SHM_CACHE answers per drain: one per OP-TEE thread at most


# -- what every attack shares ----------------------------------------------------------


@dataclass(frozen=True)
class Attack(abc.ABC):
    """One row of docs/security.md's attack table, loopable.  ``setup``
    returns the attacker's state (negotiated caps, pages, sessions);
    ``step`` runs one iteration and raises :class:`AttackOutcomeWrong`
    when the answer is not ``outcome``; after it returns the attacker holds
    no more than before (every page it took is back in the guest's
    allocator, ballooned ones populated again).  ``teardown`` releases what
    ``setup`` took.  Subclasses write ``_setup``/``_step``/``_teardown``.
    ``threads``: the attacker's vCPU threads the attack keeps running (a
    racing second vCPU makes it 2)."""

    name: str
    outcome: str
    threads: int = 1
    # The attacker's own limits (a domain with its own policy), where the
    # attack needs more room than a harness's tight default gives; None:
    # whatever the harness gives every domain.
    limits: DomainLimits | None = None

    def setup(self, guest: HostileGuest, victim: int | None) -> _State:
        with guest.scope(free=False) as taken:
            inner = self._setup(guest, victim)
        return _State(inner, taken)

    def step(self, guest: HostileGuest, state: _State, rng: random.Random) -> None:
        with guest.scope():
            self._step(guest, state.inner, rng)

    def teardown(self, guest: HostileGuest, state: _State) -> None:
        with guest.scope():
            self._teardown(guest, state.inner)
        guest.free_pages(state.pages)

    def _setup(self, guest: HostileGuest, victim: int | None) -> object:
        return None

    @abc.abstractmethod
    def _step(self, guest: HostileGuest, state, rng: random.Random) -> None: ...

    def _teardown(self, guest: HostileGuest, state) -> None:
        return None

    def expect(self, ok: bool, what: str, got: object) -> None:
        """Raise AttackOutcomeWrong unless ``ok``."""
        if not ok:
            raise AttackOutcomeWrong(self.name, what, got)


@dataclass
class _State:
    inner: object  # what the attack's _setup returned
    pages: list[int]  # the pages setup took, given back by teardown


class _TeeWatch:
    """What reached the TEE since it was made, from the platform's SMC record
    (``HostilePlatform.tee_smcs``; nothing to say without one)."""

    def __init__(self, guest: HostileGuest, *, live: bool = False) -> None:
        self._guest = guest
        self._smcs: SmcRecord | None = getattr(guest.platform, "tee_smcs", None)
        self._cid = client_id(guest.domid)
        self._mark = len(self._smcs) if self._smcs is not None else 0
        self._mine = self._smcs.of_client(self._cid) if self._smcs is not None else 0
        # (total, counts per live client ID and the hypervisor's 0), for the a7 check
        self._live = self._snapshot(self._smcs) if live and self._smcs is not None else None

    def _snapshot(self, smcs: SmcRecord) -> tuple[int, dict[int, int]]:
        """The total and the per-client counts (live domains and the
        hypervisor's 0) as of one moment (SmcRecord.counts is atomic)."""
        ids = [0] + [client_id(d) for d in self._guest.platform.domids()]
        total, per_client = smcs.counts()
        return total, {c: per_client.get(c, 0) for c in ids}

    def reached(self) -> int | None:
        """SMCs stamped with the guest's client ID since (None: unknown)."""
        if self._smcs is None:
            return None
        return self._smcs.of_client(self._cid) - self._mine

    def foreign_stamps(self) -> int | None:
        """SMCs since that carried no live domain's client ID (nor the
        hypervisor's 0), by counts: no copy of the record (None: unknown,
        or the set of domains changed meanwhile)."""
        live, smcs = self._live, self._smcs
        if live is None or smcs is None:  # both or neither: __init__ snapshots only with a record
            return None
        now = self._snapshot(smcs)
        if now[1].keys() != live[1].keys():
            return None
        (t0, before), (t1, after) = live, now
        return (t1 - t0) - sum(after[c] - before[c] for c in after)


def _not_reached(attack: Attack, watch: _TeeWatch, what: str) -> None:
    n = watch.reached()
    attack.expect(not n, f"{what}: the TEE must not be reached", f"{n} SMC(s) stamped with the attacker's ID")


def _oracle_clean(attack: Attack, guest: HostileGuest) -> None:
    v = guest.platform.oracle.violations
    attack.expect(not v, "the isolation oracle must stay clean", [x.describe() for x in v[:3]])


def _pins(guest: HostileGuest, ipas) -> dict[int, int]:
    """{frame: pins} of the frames behind these IPAs of the guest's RAM (a
    cheap, targeted look: a full frame-table scan would cost the attacker's
    thread milliseconds of the platform's interpreter lock per check)."""
    m, out = guest.platform.machine, {}
    for ipa in ipas:
        e = guest.dom.lookup(ipa >> 12)
        if e.type in (P2mType.p2m_ram_rw, P2mType.p2m_ram_ro):
            out[e.mfn] = m.frame_refcount(e.mfn)
    return out


def _limits(guest: HostileGuest) -> DomainLimits | None:
    """Harness hint: the limits the policy gave the domain (None when the
    platform cannot say; floods then check only what a guest can see)."""
    state = getattr(guest.platform, "mediator_state", None)
    if state is None:
        return None
    lim = state(guest.domid)["limits"]
    return DomainLimits(max_calls=lim["max_calls"], max_shm_buffers=lim["max_shm_buffers"],
                        max_pages_per_buffer=lim["max_pages_per_buffer"], max_total_pages=lim["max_total_pages"])


def _foreign(guest: HostileGuest, victim: int | None, n: int) -> list[int]:
    """Harness hint: up to ``n`` machine addresses of the victim's frames that
    are not also IPAs of the attacker's RAM (RAM and guest RAM both start at
    0x4000_0000, so they could coincide)."""
    if victim is None:
        return []
    own = set(guest.dom.ram_gfns())
    vdom = guest.platform.domain(victim)
    out = []
    for gfn in vdom.ram_gfns()[:4 * n + 16]:
        mfn = vdom.lookup(gfn).mfn
        if mfn not in own:
            out.append(mfn << 12)
        if len(out) == n:
            break
    return out


def _run(guest: HostileGuest, ipa: int, msg: MsgArg, function: int = OPTEE_SMC_CALL_WITH_ARG,
         *, vcpu: int = 0) -> tuple[Regs, MsgArg]:
    """A whole standard call with its argument at ``ipa`` (reused page)."""
    guest.write_arg(ipa, msg)
    r = guest.serve(guest.start(ipa, function, vcpu=vcpu), vcpu=vcpu)
    return r, guest.read_arg(ipa)


def _drain_shm_cache(guest: HostileGuest) -> None:
    """DISABLE_SHM_CACHE until OP-TEE has no cached RPC buffer left, freeing
    each one it hands back (what Linux does when the driver goes away)."""
    for _ in range(_CACHE_DRAIN_MAX):
        r = guest.smc(OPTEE_SMC_DISABLE_SHM_CACHE)
        if r[0] != OPTEE_SMC_RETURN_OK:
            return
        ipa = guest.rpc_pages.pop(((r[1] & M32) << 32) | (r[2] & M32), None)
        if ipa is not None:
            guest.free_pages([ipa])


def _digest_arg(session: int, buf_ptr: int, size: int, out_ptr: int, *, attr: int | None = None) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG if attr is None else attr,
                      buf_ptr, size, 1),
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, out_ptr, 32, 2)))


def _busy_arg(session: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=session,
                  params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),))


def _get_time_arg(session: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                  params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),))


def _park(guest: HostileGuest, ipa: int, vcpu: int) -> Regs:
    """Start the BUSY call at ``ipa`` and stop at its first FOREIGN_INTR (a
    suspended call), or return whatever refused it."""
    return guest.serve(guest.start(ipa, vcpu=vcpu), vcpu=vcpu,
                       stop=lambda r: r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR)


def _close(guest: HostileGuest, session: int | None) -> None:
    if session is not None:
        guest.close_session(session)


def _data_pages(guest: HostileGuest, n: int, fill: int = 1) -> tuple[list[int], bytes]:
    pages = guest.pages(n)
    data = b"".join(bytes([(fill + i) & 0xFF]) * PAGE_SIZE for i in range(n))
    for i, ipa in enumerate(pages):
        guest.write(ipa, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
    return pages, data


# -- the catalogue ------------------------------------------------------------------------


@dataclass(frozen=True)
class Registers(Attack):
    """Arbitrary registers: known function IDs with reserved bits set, any
    a0, any a1..a7; half the time a standard call naming a real argument
    page with a random command header and random parameters."""

    def _setup(self, guest, victim):
        ipa = guest.page()
        return {"arg": ipa, "ids": sorted(SMC_NAMES)}

    def _step(self, guest, state, rng):
        watch = _TeeWatch(guest, live=True)
        if rng.random() < 0.5:
            known = rng.choice(state["ids"])
            a0 = rng.choice([known, rng.getrandbits(64),
                             known | (rng.getrandbits(8) << 16) | (rng.getrandbits(32) << 32)
                             | (rng.getrandbits(1) << 30)])
            regs = (a0, *(rng.choice([rng.getrandbits(64), rng.getrandbits(32), 0, 1, 7, M32, U64, 1 << 63])
                          for _ in range(7)))
            r = guest.smc8(regs, vcpu=rng.randrange(4))
            self.expect(len(r) == 8 and all(type(x) is int and 0 <= x <= U64 for x in r),
                        f"eight u64 back for {a0:#x}", r)
            owner = decode_function_id(a0).owner
            if ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END:
                self.expect(r[4:] == (0, 0, 0, 0), f"a Trusted-OS call {a0:#x} returns nothing in a4..a7", r)
            if is_rpc_return(r[0]):
                guest.serve(r)
        else:
            cmd = rng.choice([OPTEE_MSG_CMD_INVOKE_COMMAND, OPTEE_MSG_CMD_CLOSE_SESSION, OPTEE_MSG_CMD_CANCEL])
            n = rng.randrange(5)
            guest.write(state["arg"], pack_header(cmd, func=rng.getrandbits(32), session=rng.getrandbits(32),
                                                  num_params=n) + rng.randbytes(32 * n))
            r = guest.serve(guest.start(state["arg"]))
            self.expect(r[0] in (OPTEE_SMC_RETURN_OK, OPTEE_SMC_RETURN_EBADADDR),
                        "a standard call with random parameters ends (OK or EBADADDR)", r)
        _drain_shm_cache(guest)  # a random ENABLE_SHM_CACHE would keep RPC buffers
        bad = watch.foreign_stamps()
        self.expect(not bad, "every SMC at the TEE carries a live domain's client ID (or the hypervisor's)",
                    f"{bad} SMC(s) with another a7")
        _oracle_clean(self, guest)

    def _teardown(self, guest, state):
        guest.free_pages([state["arg"]])


@dataclass(frozen=True)
class BadArgPages(Attack):
    """Argument pages that are not the guest's RAM, with CALL_WITH_ARG and
    (when negotiated) CALL_WITH_RPC_ARG."""

    def _setup(self, guest, victim):
        guest.negotiate()
        ro = guest.page()
        guest.write_arg(ro, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=0x1234))
        guest.dom.set_type(ro >> 12, P2mType.p2m_ram_ro)
        bad = {
            "unaligned": guest.page() + 8,
            "unmapped": guest.unmapped_page(),
            "never_mapped": 0x7000_0000_0000,
            "mmio": guest.mmio_page(),
            "static_shm": guest.platform.machine.static_shm.base,  # not in a domU's p2m
            "address_0": 0,
            "beyond_ipa_space": 1 << 48,
            "readonly": ro,
        }
        for i, f in enumerate(_foreign(guest, victim, 2)):
            bad[f"foreign_frame_{i}"] = f
        functions = [OPTEE_SMC_CALL_WITH_ARG] + ([OPTEE_SMC_CALL_WITH_RPC_ARG] if guest.rpc_arg else [])
        return {"bad": bad, "functions": functions}

    def _step(self, guest, state, rng):
        for _ in range(4):
            name = rng.choice(sorted(state["bad"]))
            ipa, function = state["bad"][name], rng.choice(state["functions"])
            watch = _TeeWatch(guest)
            r = guest.smc(function, ipa >> 32, ipa & M32, vcpu=rng.randrange(2))
            self.expect(r == EBADADDR, f"{name} argument ({SMC_NAMES.get(function, function)}) is EBADADDR", r)
            _not_reached(self, watch, name)

    def _teardown(self, guest, state):
        bad = state["bad"]
        guest.free_pages([bad["unaligned"] & ~0xFFF, bad["unmapped"], bad["mmio"], bad["readonly"]])


@dataclass(frozen=True)
class NumParams(Attack):
    """num_params overflowing the argument page, or (with RPC_ARG) leaving
    no room for the trailing RPC argument."""

    def _setup(self, guest, victim):
        guest.negotiate()
        first_refused = None
        if guest.rpc_arg:  # smallest n whose argument plus the RPC argument overflow the page
            first_refused = next(n for n in range(128) if get_arg_size(n) + get_arg_size(guest._rpc_param_count)
                                 > PAGE_SIZE)
        return {"arg": guest.page(), "first_refused": first_refused}

    def _step(self, guest, state, rng):
        cases = [(OPTEE_SMC_CALL_WITH_ARG, rng.choice([128, 1000, M32, rng.randrange(128, 1 << 32)]))]
        if state["first_refused"] is not None:
            cases.append((OPTEE_SMC_CALL_WITH_RPC_ARG, rng.choice([128, M32, rng.randrange(128, 1 << 32)])))
            cases.append((OPTEE_SMC_CALL_WITH_RPC_ARG, rng.randrange(state["first_refused"], 128)))
        for function, n in cases:
            guest.write(state["arg"], pack_header(OPTEE_MSG_CMD_INVOKE_COMMAND, num_params=n))
            watch = _TeeWatch(guest)
            r = guest.smc(function, state["arg"] >> 32, state["arg"] & M32)
            self.expect(r == EBADADDR, f"num_params {n} ({SMC_NAMES.get(function)}) is EBADADDR", r)
            _not_reached(self, watch, f"num_params {n}")

    def _teardown(self, guest, state):
        guest.free_pages([state["arg"]])


@dataclass(frozen=True)
class PageLists(Attack):
    """Page lists that lie: run past their length, name another domain's
    frames, MMIO, a ballooned-out or read-only page, an unaligned entry, the
    static region; a list page that is MMIO or foreign; a loop (next pointer
    back to itself) when the domain may have a buffer over 511 pages; and a
    list longer than the policy allows."""

    def _setup(self, guest, victim):
        session = guest.session(DIGEST_UUID)
        with guest.scope(free=False) as own:  # every page of its own the lists name
            return self._cases(guest, victim, session, own)

    def _cases(self, guest, victim, session, own):
        data = guest.pages(3)
        foreign = _foreign(guest, victim, 2)
        c = {}
        lim = _limits(guest) or DomainLimits()
        if min(lim.max_pages_per_buffer, lim.max_total_pages - 1) >= 600:
            loop = guest.page()
            guest.raw_list_page(data * 170 + data[:1], next_ptr=loop, at=loop)
            c["loop"] = (make_buf_ptr(loop, 0), 600 * PAGE_SIZE)
        c["past_length"] = (make_buf_ptr(guest.raw_list_page(data), 0), 5 * PAGE_SIZE)
        if foreign:
            c["foreign"] = (make_buf_ptr(guest.raw_list_page([data[0]] + foreign), 0), 3 * PAGE_SIZE)
            c["list_is_foreign"] = (make_buf_ptr(foreign[0], 0), PAGE_SIZE)
        c["mmio"] = (make_buf_ptr(guest.raw_list_page([data[0], guest.mmio_page()]), 0), 2 * PAGE_SIZE)
        c["unmapped"] = (make_buf_ptr(guest.raw_list_page([guest.unmapped_page()]), 0), PAGE_SIZE)
        c["readonly"] = (make_buf_ptr(guest.raw_list_page([guest.readonly_page()]), 0), PAGE_SIZE)
        c["unaligned_entry"] = (make_buf_ptr(guest.raw_list_page([data[0] + 8]), 0), PAGE_SIZE)
        c["list_is_mmio"] = (make_buf_ptr(guest.mmio_page(), 0), PAGE_SIZE)
        c["static_shm"] = (make_buf_ptr(guest.raw_list_page([guest.platform.machine.static_shm.base]), 0),
                           PAGE_SIZE)
        out = guest.page()
        return {"session": session, "cases": c, "arg": guest.page(), "out_ptr": guest.page_list([out]),
                "too_long": make_buf_ptr(guest.page(), 0), "own": own}

    def _step(self, guest, state, rng):
        for name in rng.sample(sorted(state["cases"]), 3) + ["too_long"]:
            if name == "too_long":
                buf_ptr, size, want = state["too_long"], 1 << 30, TOO_BIG
            else:
                (buf_ptr, size), want = state["cases"][name], REFUSED
            before = _pins(guest, state["own"])
            r, out = _run(guest, state["arg"], _digest_arg(state["session"], buf_ptr, size, state["out_ptr"]))
            self.expect(r[0] == OPTEE_SMC_RETURN_OK and (out.ret, out.ret_origin) == want,
                        f"page list {name}: {want[0]:#x} origin COMMS", (hex(r[0]), hex(out.ret), out.ret_origin))
            after = _pins(guest, state["own"])
            self.expect(after == before, f"page list {name}: nothing pinned (all or nothing)", after)
        _oracle_clean(self, guest)

    def _teardown(self, guest, state):
        _close(guest, state["session"])


@dataclass(frozen=True)
class RaceArg(Attack):
    """Another vCPU rewriting, while the mediator reads them, the argument
    page (foreign frames, MMIO, contiguous foreign tmem in place of a good
    digest), the page list (foreign, MMIO, self-pointing entries), or —
    while the call is suspended in an RPC — the argument and the RPC
    request (an SHM_ALLOC "reply" naming foreign frames)."""

    threads: int = 2  # the calling vCPU and the Scribbler
    calls_per_race: int = 3

    def _setup(self, guest, victim):
        session = guest.session(DIGEST_UUID)
        wait = guest.session(WAIT_UUID)
        pages, data = _data_pages(guest, 3)
        out = guest.page()
        out_ptr = guest.page_list([out])
        foreign = _foreign(guest, victim, 2) or [guest.mmio_page(), guest.mmio_page()]
        good = _digest_arg(session, guest.page_list(pages), len(data), out_ptr)
        bads = [_digest_arg(session, guest.page_list(foreign), 2 * PAGE_SIZE, out_ptr),
                _digest_arg(session, guest.page_list([guest.mmio_page()]), PAGE_SIZE, out_ptr),
                good.replace(params=(good.params[0].replace(attr=OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, a=foreign[0]),
                                     good.params[1]))]
        size = len(good.pack())
        lst = guest.page()
        list_versions = [build_page_list(pages, [lst])[0],
                         build_page_list(foreign + [pages[2]], [lst])[0],
                         build_page_list([pages[0], guest.mmio_page(), pages[2]], [lst])[0],
                         build_page_list([pages[0], pages[1], lst], [lst])[0]]  # points at itself
        head = data[:2 * PAGE_SIZE]
        return {
            "session": session, "wait": wait, "out": out, "foreign": foreign,
            "arg": guest.page(), "good": good.pack(),
            "bads": [b.pack() + bytes(max(0, size - len(b.pack()))) for b in bads],
            "want": hashlib.sha256(data).digest(),
            "list_arg": guest.page(), "list": lst, "list_versions": list_versions,
            "list_msg": _digest_arg(session, make_buf_ptr(lst, 0), len(data), out_ptr),
            "list_ok": {hashlib.sha256(data).digest()} | {hashlib.sha256(head + v).digest() for v in list_versions},
            "rpc_arg": guest.page(),
        }

    def _step(self, guest, state, rng):
        kind = rng.choice(["arg", "list", "rpc"])
        getattr(self, f"_{kind}")(guest, state, rng)
        _oracle_clean(self, guest)

    def _arg(self, guest, state, rng):
        arg, zero = state["arg"], bytes(32)
        guest.write(arg, state["good"])
        with Scribbler(guest.dom, arg, [state["good"], rng.choice(state["bads"])]):
            for _ in range(self.calls_per_race):
                guest.write(state["out"], zero)
                r = guest.serve(guest.start(arg))
                self.expect(r[0] in (OPTEE_SMC_RETURN_OK, OPTEE_SMC_RETURN_EBADADDR),
                            "a raced argument runs or is EBADADDR", r)
                digest = guest.dom.read(state["out"], 32)
                self.expect(digest in (zero, state["want"]), "one validated version ran in full, or nothing",
                            digest.hex())

    def _list(self, guest, state, rng):
        guest.write_arg(state["list_arg"], state["list_msg"])
        with Scribbler(guest.dom, state["list"], state["list_versions"]):
            for _ in range(self.calls_per_race):
                guest.write(state["out"], bytes(32))
                r = guest.serve(guest.start(state["list_arg"]))
                got = guest.read_arg(state["list_arg"])
                digest = guest.dom.read(state["out"], 32)
                self.expect(r[0] == OPTEE_SMC_RETURN_OK, "a raced page list ends with OK", r)
                if got.ret == 0:
                    self.expect(digest in state["list_ok"], "the TA hashed one version's pages", digest.hex())
                else:
                    self.expect((got.ret, got.ret_origin) == REFUSED and digest == bytes(32),
                                "a refused raced list: BAD_PARAMETERS origin COMMS, nothing ran",
                                (hex(got.ret), got.ret_origin))

    def _rpc(self, guest, state, rng):
        arg = state["rpc_arg"]
        guest.write_arg(arg, _get_time_arg(state["wait"]))
        r = guest.start(arg)
        if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC:
            r = guest.reply(r)
        self.expect(r[0] == OPTEE_SMC_RETURN_RPC_CMD, "GET_TIME suspends in an RPC CMD", r)
        rpc = guest.rpc_arg_ipa(r)
        self.expect(guest.read_arg(rpc).cmd == OPTEE_RPC_CMD_GET_TIME, "the RPC is OP-TEE's GET_TIME",
                    guest.read_arg(rpc).cmd)
        scribble = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0x99, session=state["wait"] ^ 1, params=(
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, state["foreign"][0], 1 << 20, 5),
            MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 1, 2, 3)))
        fake = MsgArg(6, ret=0, params=(MsgParam.tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            guest.page_list(state["foreign"]), 2 * PAGE_SIZE, 0x666).replace(a=0x1234, b=0x5678),))
        scribble2 = scribble.replace(func=0x98, params=(scribble.params[1], scribble.params[0]))
        with Scribbler(guest.dom, arg, [scribble.pack(), scribble2.pack()]):
            guest.write_arg(rpc, fake)
        r = guest.serve(guest.resume(r[3]))
        out = guest.read_arg(arg)
        self.expect(r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0
                    and (out.params[0].a, out.params[0].b) == (0x1234, 0x5678),
                    "OP-TEE saw its own GET_TIME, only the output fields merged",
                    (hex(r[0]), hex(out.ret), out.params[0].a if out.params else None))

    def _teardown(self, guest, state):
        _close(guest, state["session"])
        _close(guest, state["wait"])


@dataclass(frozen=True)
class ResumeForeign(Attack):
    """RETURN_FROM_RPC naming OP-TEE threads it does not own (every small
    tid, the victim's included, junk in the other registers), and its own
    call resumed twice."""

    def _setup(self, guest, victim):
        return {"wait": guest.session(WAIT_UUID), "arg": guest.page()}

    def _step(self, guest, state, rng):
        watch = _TeeWatch(guest)
        for tid in rng.sample(range(16), 4) + [M32, rng.getrandbits(32)]:
            r = guest.resume(tid, *(rng.getrandbits(32) for _ in range(4)), vcpu=rng.randrange(2))
            self.expect(r == ERESUME, f"resume of tid {tid:#x} it does not own is ERESUME", r)
        _not_reached(self, watch, "foreign resume")
        guest.write_arg(state["arg"], _busy_arg(state["wait"]))
        r = _park(guest, state["arg"], 0)
        self.expect(r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, "its own BUSY call suspends", r)
        tid = r[3]
        r = guest.serve(r)
        self.expect(r[0] == OPTEE_SMC_RETURN_OK, "its own call resumes to the end", r)
        watch = _TeeWatch(guest)
        r = guest.resume(tid)
        self.expect(r == ERESUME, "its own call resumed a second time is ERESUME", r)
        _not_reached(self, watch, "second resume")

    def _teardown(self, guest, state):
        _close(guest, state["wait"])


@dataclass(frozen=True)
class Cookies(Attack):
    """Cookies reused (its own live registration again; an RPC buffer's
    cookie while live, with the SHM cache on), guessed (the victim's, to
    unregister it, as a REGD argument, as a registered memref) and never
    freed (one registration held for the whole loop)."""

    def _setup(self, guest, victim):
        guest.negotiate()  # REGD_ARG is a call of a guest that negotiated capabilities
        live = guest.cookie()
        r, out = guest.register(live, 1)
        self.expect(out.ret == 0, "registering a fresh cookie succeeds", hex(out.ret))
        out_page = guest.page()
        theirs: list[int] = []
        if victim is not None and hasattr(guest.platform, "mediator_state"):
            # Harness hint, read once: guesses that hit the victim's live cookies.
            theirs = [b["cookie"] for b in guest.platform.mediator_state(victim)["shm_buffers"]]
        return {"live": live, "theirs": theirs, "session": guest.session(DIGEST_UUID),
                "waits": [guest.session(WAIT_UUID), guest.session(WAIT_UUID)],
                "arg": guest.page(), "arg2": guest.page(),
                "out_ptr": guest.page_list([out_page])}

    def _guesses(self, guest, state, rng) -> list[int]:
        g = [rng.getrandbits(64), rng.getrandbits(32), rng.randrange(1, 4096)]
        g += rng.sample(state["theirs"], min(2, len(state["theirs"])))
        return [c for c in g if c != state["live"]]

    def _step(self, guest, state, rng):
        r, out = guest.register(state["live"], 1)
        self.expect((out.ret, out.ret_origin) == REFUSED, "re-registering a live cookie: BAD_PARAMETERS",
                    (hex(out.ret), out.ret_origin))
        for c in self._guesses(guest, state, rng):
            r, out = _run(guest, state["arg"], MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM, params=(
                MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, c),)))
            self.expect(r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0, f"unregistering cookie {c:#x} fails",
                        (hex(r[0]), hex(out.ret)))
            watch = _TeeWatch(guest)
            r = guest.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, c >> 32, c & M32, 0)
            # without RPC_ARG negotiated (the TEE did not offer it) REGD_ARG
            # is no call at all for this guest
            want = EBADADDR if guest.rpc_arg else UNKNOWN
            self.expect(r == want, f"REGD_ARG with cookie {c:#x} is {SMC_NAMES.get(want[0], want[0])}", r)
            _not_reached(self, watch, "REGD_ARG with a guessed cookie")
            r, out = _run(guest, state["arg"], MsgArg(
                OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=state["session"], params=(
                    MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 16, c),
                    MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                  state["out_ptr"], 32, 9))))
            self.expect(out.ret != 0, f"cookie {c:#x} as a registered memref fails", hex(out.ret))
        self._rpc_cookie_reused(guest, state)
        _oracle_clean(self, guest)

    def _rpc_cookie_reused(self, guest, state):
        self.expect(guest.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK, "ENABLE_SHM_CACHE", None)
        try:
            cookie = guest.cookie()
            runs = []
            for ipa, wait in zip((state["arg"], state["arg2"]), state["waits"]):
                guest.write_arg(ipa, _get_time_arg(wait))
                r = guest.start(ipa)
                alloc = rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
                if alloc:
                    r = guest.reply(r, cookie=cookie)
                runs.append((ipa, r, alloc))
            (ipa_a, ra, alloc_a), (ipa_b, rb, alloc_b) = runs
            rb = guest.serve(rb)
            ra = guest.serve(ra)
            self.expect(ra[0] == rb[0] == OPTEE_SMC_RETURN_OK, "both GET_TIME calls end", (ra, rb))
            self.expect(guest.read_arg(ipa_a).ret == 0, "the live RPC buffer is intact",
                        hex(guest.read_arg(ipa_a).ret))
            if alloc_a and alloc_b:  # the second ALLOC was answered with the live cookie
                self.expect(guest.read_arg(ipa_b).ret == TEEC_ERROR_OUT_OF_MEMORY,
                            "an RPC buffer cookie reused while live is refused (OP-TEE's allocation fails)",
                            hex(guest.read_arg(ipa_b).ret))
        finally:
            _drain_shm_cache(guest)

    def _teardown(self, guest, state):
        guest.unregister(state["live"])
        for session in [state["session"], *state["waits"]]:
            _close(guest, session)


@dataclass(frozen=True)
class FloodCalls(Attack):
    """Calls in flight past the limit: suspended BUSY calls on as many vCPUs
    as it takes to get ETHREAD_LIMIT, more starts refused without reaching
    the TEE (when the mediator's own limit is what refused), then every
    suspended call resumed to its end."""

    extra: int = 5

    def _setup(self, guest, victim):
        # One session per suspended call (a TA session runs one command at a
        # time: a second one would park in the normal world, NOTIFICATION
        # WAIT); opened as the flood needs them, kept for the next iterations.
        return {"sessions": [], "limits": _limits(guest)}

    def _step(self, guest, state, rng):
        parked: list[tuple[int, Regs]] = []
        try:
            sessions = state["sessions"]
            for vcpu in range(FLOOD_CALLS_CAP):
                if vcpu == len(sessions):
                    r, out = guest.open_session(WAIT_UUID)
                    if r[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT:  # an OPEN past the limit: refused too
                        break
                    self.expect(r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0, "OPEN_SESSION under the limit",
                                (hex(r[0]), hex(out.ret)))
                    sessions.append(out.session)
                ipa = guest.page()
                guest.write_arg(ipa, _busy_arg(sessions[vcpu]))
                r = _park(guest, ipa, vcpu)
                if r[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT:
                    break
                self.expect(r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, "a BUSY call under the limit suspends", r)
                parked.append((vcpu, r))
            lim = state["limits"]
            self.expect(0 < len(parked) and (lim is None or len(parked) <= lim.max_calls),
                        "calls in flight stop at the limit", len(parked))
            watch = _TeeWatch(guest)
            for i in range(self.extra):
                ipa = guest.page()
                guest.write_arg(ipa, _busy_arg(sessions[-1]))
                r = guest.start(ipa, vcpu=len(parked) + i)
                self.expect(r[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT and r[1:] == (0,) * 7,
                            "a call past the limit is ETHREAD_LIMIT", r)
            if lim is not None and len(parked) == lim.max_calls:
                _not_reached(self, watch, "calls past the mediator's limit")
            while parked:
                vcpu, r = parked.pop()
                r = guest.serve(r, vcpu=vcpu)
                self.expect(r[0] == OPTEE_SMC_RETURN_OK, "a suspended call resumes to its end", r)
        finally:
            for vcpu, r in parked:  # an outcome went wrong: still give the threads back
                try:
                    guest.serve(r, vcpu=vcpu)
                except HostileError:
                    pass

    def _teardown(self, guest, state):
        for session in state["sessions"]:
            _close(guest, session)


@dataclass(frozen=True)
class HeavyCalls(Attack):
    """INVOKEs that make the mediator translate and pin as much as the
    attacker's limits allow: as many temporary memrefs as OP-TEE takes
    (TEE_NUM_PARAMS), each of the most pages a buffer may have, each call
    refused by OP-TEE only at the end (no such session); and one memref
    more than OP-TEE takes, refused before anything is read or pinned. The
    domain's calls stay within its limits: what it costs is the mediator's
    time, which every domain shares (docs/daemon.md, "Fair service")."""

    def _setup(self, guest, victim):
        lim = _limits(guest) or DomainLimits()
        n = min(TEE_NUM_PARAMS, lim.max_shm_buffers)
        pages = min(lim.max_pages_per_buffer, lim.max_total_pages // n)
        return {"lists": [guest.page_list(guest.pages(pages)) for _ in range(n)], "pages": pages}

    def _step(self, guest, state, rng):
        size = state["pages"] * PAGE_SIZE
        params = tuple(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, lst, size,
                                     guest.cookie()) for lst in state["lists"])
        session = 0x5E55_0000 | rng.randrange(1 << 16)  # never opened: OP-TEE's BAD_PARAMETERS
        r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0, session=session, params=params))
        self.expect(r[0] == OPTEE_SMC_RETURN_OK and (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS,
                                                                                TEEC_ORIGIN_TEE),
                    "a heavy call runs and OP-TEE refuses its session", (r, out))
        if len(params) == TEE_NUM_PARAMS:
            watch = _TeeWatch(guest)
            more = params + (params[0].replace(c=guest.cookie()),)
            r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0, session=session, params=more))
            self.expect(r[0] == OPTEE_SMC_RETURN_OK and (out.ret, out.ret_origin) == REFUSED,
                        "one memref more than OP-TEE takes: BAD_PARAMETERS origin COMMS", (r, out))
            _not_reached(self, watch, "a call with more params than OP-TEE takes")

    def _teardown(self, guest, state):
        return None  # its page lists and pages were setup's: the loop gives them back


@dataclass(frozen=True)
class FloodBuffers(Attack):
    """Shared buffers past each limit: one buffer of more pages than allowed,
    then registrations until OUT_OF_MEMORY (alternately 1-page buffers: the
    buffer count; and buffers of the most pages allowed: the total pages,
    when that fits in FLOOD_PAGE_BUDGET), more refused; nothing partial; all
    unregistered again."""

    extra: int = 3

    def _setup(self, guest, victim):
        return {"limits": _limits(guest), "round": 0}

    def _step(self, guest, state, rng):
        lim: DomainLimits | None = state["limits"]
        state["round"] += 1
        # Alternate: 1-page buffers (the buffer count) and, when the total
        # fits the budget, buffers of the most pages allowed (total pages).
        k = 1
        if lim and state["round"] % 2 == 0 and lim.max_total_pages <= FLOOD_PAGE_BUDGET:
            k = lim.max_pages_per_buffer
        cap = max(1, FLOOD_PAGE_BUDGET // (k + 1))  # registrations this iteration may make
        registered: list[int] = []
        try:
            if lim and lim.max_pages_per_buffer < FLOOD_PAGE_BUDGET:
                out, pages = self._register(guest, guest.cookie(), lim.max_pages_per_buffer + 1)
                self.expect((out.ret, out.ret_origin) == TOO_BIG,
                            f"a buffer of {lim.max_pages_per_buffer + 1} pages: OUT_OF_MEMORY origin COMMS",
                            (hex(out.ret), out.ret_origin))
                self._pins_nothing(guest, pages, "an oversized buffer pins nothing")
            refused = False
            while len(registered) < cap:
                c = guest.cookie()
                out, pages = self._register(guest, c, k)
                if out.ret:
                    self._pins_nothing(guest, pages, "a refused registration pins nothing")
                    self.expect((out.ret, out.ret_origin) == TOO_BIG,
                                f"a registration of {k} page(s) past the limit: OUT_OF_MEMORY origin COMMS",
                                (hex(out.ret), out.ret_origin))
                    refused = True
                    break
                registered.append(c)
            if lim is not None and refused:
                want = min(lim.max_shm_buffers, lim.max_total_pages // k)
                self.expect(len(registered) == want, f"registrations of {k} page(s) stop at the limit ({want})",
                            len(registered))
            if refused:  # at the limit: more are refused and change nothing
                for _ in range(self.extra):
                    out, pages = self._register(guest, guest.cookie(), 1)
                    self.expect((out.ret, out.ret_origin) == TOO_BIG,
                                "more registrations past the limit are refused", (hex(out.ret), out.ret_origin))
                    self._pins_nothing(guest, pages, "nothing partial: refused buffers pin nothing")
        finally:
            while registered:
                c = registered.pop()
                r, out = guest.unregister(c)
                self.expect(out.ret == 0, f"unregistering its own cookie {c:#x}", hex(out.ret))
        _oracle_clean(self, guest)


    @staticmethod
    def _register(guest, cookie: int, npages: int):
        """REGISTER_SHM of ``npages`` fresh pages: (answer, every page it named)."""
        pages = guest.pages(npages)
        buf_ptr = guest.page_list(pages)
        r, out = guest.register(cookie, npages, buf_ptr=buf_ptr)
        return out, pages + [buf_ptr & ~0xFFF]

    def _pins_nothing(self, guest, pages, what: str) -> None:
        pinned = {f: n for f, n in _pins(guest, pages).items() if n}
        self.expect(not pinned, what, pinned)


@dataclass(frozen=True)
class CloseForeign(Attack):
    """CLOSE_SESSION of session ids it does not have (guessed: small ids,
    the victim's among them, and random ones)."""

    def _step(self, guest, state, rng):
        for sid in rng.sample(range(64), 4) + [M32, rng.getrandbits(32)]:
            r, out = guest.close_session(sid)
            self.expect(r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0,
                        f"closing session {sid:#x} it does not own fails", (hex(r[0]), hex(out.ret)))


@dataclass(frozen=True)
class Balloon(Attack):
    """Ballooning out the pages of a registered buffer (then digesting it)
    and the RPC buffer while OP-TEE waits for its reply; the pages are
    populated again afterwards."""

    def _setup(self, guest, victim):
        return {"digest": guest.session(DIGEST_UUID), "wait": guest.session(WAIT_UUID), "arg": guest.page(),
                "out": guest.page()}

    def _step(self, guest, state, rng):
        m = guest.platform.machine
        pages, data = _data_pages(guest, 3, fill=rng.randrange(256))
        cookie = guest.cookie()
        r, out = guest.register(cookie, 3, buf_ptr=guest.page_list(pages))
        self.expect(out.ret == 0, "registering 3 pages", hex(out.ret))
        frames = [guest.frame_of(ipa) for ipa in pages]
        for ipa in pages:
            guest.balloon_out(ipa)
        self.expect(all(m.frame_owner(f) == guest.domid and m.frame_refcount(f) >= 1 for f in frames),
                    "ballooned-out pinned frames stay the attacker's (zombies)",
                    [(m.frame_owner(f), m.frame_refcount(f)) for f in frames])
        guest.write(state["out"], bytes(32))
        r, res = _run(guest, state["arg"], MsgArg(
            OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=state["digest"], params=(
                MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, len(data), cookie),
                MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                              guest.page_list([state["out"]]), 32, 9))))
        self.expect(res.ret == 0 and guest.dom.read(state["out"], 32) == hashlib.sha256(data).digest(),
                    "OP-TEE digests the zombie frames, still pinned", hex(res.ret))
        r, out = guest.unregister(cookie)
        self.expect(out.ret == 0, "unregistering the ballooned buffer", hex(out.ret))
        self.expect(all(m.frame_owner(f) != guest.domid for f in frames), "zombies freed at the last put",
                    [m.frame_owner(f) for f in frames])
        arg = state["arg"]
        guest.write_arg(arg, _get_time_arg(state["wait"]))
        r = guest.start(arg)
        if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC:
            r = guest.reply(r)
        self.expect(r[0] == OPTEE_SMC_RETURN_RPC_CMD, "GET_TIME suspends in an RPC CMD", r)
        rpc_page = guest.rpc_arg_ipa(r) & ~0xFFF
        rpc_frame = guest.balloon_out(rpc_page)
        self.expect(m.frame_owner(rpc_frame) == guest.domid, "the pinned RPC buffer is a zombie",
                    m.frame_owner(rpc_frame))
        r = guest.serve(guest.resume(r[3]))
        self.expect(r[0] == OPTEE_SMC_RETURN_OK and guest.read_arg(arg).ret != 0,
                    "a reply that cannot be read fails OP-TEE's request", (hex(r[0]), hex(guest.read_arg(arg).ret)))
        # Freed once unpinned (the driver's FREE handling may have populated
        # the gfn again, possibly with that very frame: then it is mapped).
        self.expect(m.frame_owner(rpc_frame) != guest.domid or guest.frame_of(rpc_page) == rpc_frame,
                    "the RPC buffer's frame freed once unpinned", m.frame_owner(rpc_frame))
        guest.free_pages([rpc_page])
        _oracle_clean(self, guest)

    def _teardown(self, guest, state):
        _close(guest, state["digest"])
        _close(guest, state["wait"])


ATTACKS: dict[str, Attack] = {a.name: a for a in (
    Registers("registers", "eight u64 back; a Trusted-OS call returns nothing in a4..a7; every SMC at the TEE "
                           "carries a live domain's client ID or the hypervisor's 0 (never the guest's a7); "
                           "oracle clean"),
    BadArgPages("bad_arg_pages", "EBADADDR, the TEE not reached"),
    NumParams("num_params", "EBADADDR, the TEE not reached"),
    PageLists("page_lists", "BAD_PARAMETERS origin COMMS (a list over the policy: OUT_OF_MEMORY origin COMMS); "
                            "nothing pinned"),
    RaceArg("race_arg", "each call runs one validated version in full or is refused; OP-TEE sees only its own "
                        "request with the output fields merged; oracle clean"),
    ResumeForeign("resume_foreign", "ERESUME, the TEE not reached; its own call resumes once"),
    Cookies("cookies", "a live cookie reused: BAD_PARAMETERS / refused ALLOC (OUT_OF_MEMORY); a guessed one: "
                       "error (REGD_ARG: EBADADDR, or UNKNOWN_FUNCTION without RPC_ARG; the TEE not reached); "
                       "the live one intact"),
    FloodCalls("flood_calls", "ETHREAD_LIMIT past the calls limit (the TEE not reached); every suspended call "
                              "resumes"),
    FloodBuffers("flood_buffers", "OUT_OF_MEMORY origin COMMS past each buffer limit, never partial"),
    HeavyCalls("heavy_calls", "each call translated in full in bounded steps, then BAD_PARAMETERS origin TEE (no "
                              "such session); one memref more than OP-TEE takes: BAD_PARAMETERS origin COMMS, the "
                              "TEE not reached; other domains served between the steps",
               limits=DomainLimits()),
    CloseForeign("close_foreign", "error: sessions live in the caller's TEE partition"),
    Balloon("balloon", "pinned frames stay the attacker's until the last put; OP-TEE touches only them; an "
                       "unreadable reply fails OP-TEE's request"),
)}


def attack_names() -> list[str]:
    return list(ATTACKS)


# -- the loop -------------------------------------------------------------------------------


class AttackLoop:
    """Run ``attack`` against ``guest`` on its own thread until the ``with``
    ends: ``setup`` once, then ``step`` again and again.  ``__enter__``
    returns once the first iteration completed (so the attack overlaps the
    caller's work); ``__exit__`` stops the loop, runs ``teardown`` and
    re-raises the first error (AttackOutcomeWrong, a dead daemon, ...)."""

    # Keeps a wedged platform from hanging the caller; not a timing assertion.
    START_TIMEOUT_S = 120.0

    def __init__(self, platform, guest: HostileGuest, attack: Attack, *, seed: int = 0,
                 victim: int | None = None, max_iterations: int | None = None) -> None:
        self.platform = platform
        self.guest = guest
        self.attack = attack
        self.victim = victim
        self.max_iterations = max_iterations
        self.iterations = 0
        self.errors: list[BaseException] = []
        self._rng = random.Random(f"attack:{attack.name}:{guest.domid}:{seed}")
        self._stop = threading.Event()
        self._first = threading.Event()
        self._started_ns = 0
        self._stopped_ns = 0
        self._thread = threading.Thread(target=self._run, name=f"attack-{attack.name}-d{guest.domid}",
                                        daemon=True)

    def _run(self) -> None:
        state: _State | None = None  # set once setup returned: then teardown is due
        try:
            state = self.attack.setup(self.guest, self.victim)
            self._started_ns = time.perf_counter_ns()
            while not self._stop.is_set() and (self.max_iterations is None
                                               or self.iterations < self.max_iterations):
                self.attack.step(self.guest, state, self._rng)
                self.iterations += 1
                self._first.set()
                if self.iterations % 256 == 0:
                    self.guest.forget_history()
        except BaseException as e:  # re-raised by __exit__ in the caller's thread
            self.errors.append(e)
        finally:
            self._stopped_ns = time.perf_counter_ns()
            self._first.set()
            if state is not None:
                try:
                    self.attack.teardown(self.guest, state)
                except BaseException as e:
                    self.errors.append(e)

    @property
    def elapsed_s(self) -> float:
        """Seconds of looping (setup excluded), so far or until it stopped."""
        if not self._started_ns:
            return 0.0
        end = self._stopped_ns if self._stopped_ns else time.perf_counter_ns()
        return (end - self._started_ns) / 1e9

    @property
    def iterations_per_s(self) -> float | None:
        t = self.elapsed_s
        return self.iterations / t if t > 0 else None

    def __enter__(self) -> AttackLoop:
        self._thread.start()
        if not self._first.wait(timeout=self.START_TIMEOUT_S):
            self._stop.set()
            raise TimeoutError(f"attack {self.attack.name}: no iteration in {self.START_TIMEOUT_S} s")
        if self.errors:
            self._thread.join()
            raise self.errors[0]
        return self

    def wait(self) -> None:
        """Wait for a loop with ``max_iterations`` to finish them (errors
        re-raised)."""
        if self.max_iterations is None:
            raise ValueError(f"attack {self.attack.name}: wait() needs max_iterations")
        self._thread.join()
        if self.errors:
            raise self.errors[0]

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.errors:
            raise self.errors[0]
