"""One test per rule of the mediator (issue 4, "Done when"), each driving
raw SMCs from a guest through Platform + EL2 placement + the real OP-TEE
model (isolation oracle with require_pins=True) and real guest memory."""

from __future__ import annotations

import uuid

import pytest

from stubdom.mediator import DomainLimits
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_EBADCMD,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FOREIGN_INTR,
    OPTEE_SMC_RPC_FUNC_FREE,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    build_page_list,
    is_rpc_return,
    list_pages_needed,
    make_buf_ptr,
    pack_header,
    rpc_func,
)
from stubdom.platform import DomainSpec, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.tee import REQUIRED_SEC_CAPS, TeeConfig
from stubdom.tee.tas import (
    INCREMENT_UUID,
    TA_INCREMENT_CMD_INC_VALUE,
    WAIT_CMD_BUSY,
    WAIT_CMD_GET_TIME,
    WAIT_UUID,
)
from stubdom.xen import PAGE_SIZE

M32 = 0xFFFFFFFF
CAPS = REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
THREADS = 4


class RawGuest:
    """A guest that writes its own messages and SMCs, hostile when asked."""

    def __init__(self, platform: Platform, domid: int) -> None:
        self.p = platform
        self.domid = domid
        self.dom = platform.domain(domid)
        self._free = list(self.dom.ram_gfns())
        self._cookie = 0x1000
        self.rpc_pages: dict[int, int] = {}

    def page(self) -> int:
        return self._free.pop(len(self._free) // 2) * PAGE_SIZE

    def cookie(self) -> int:
        self._cookie += 1
        return 0xC0DE_0000_0000 + self._cookie

    def smc(self, *regs: int) -> tuple[int, ...]:
        return self.p.trap(self.domid, 0, tuple(regs) + (0,) * (8 - len(regs)))

    def write_arg(self, ipa: int, msg: MsgArg) -> None:
        self.dom.write(ipa, msg.pack())

    def read_arg(self, ipa: int) -> MsgArg:
        return MsgArg.unpack(self.dom.read(ipa, PAGE_SIZE - (ipa % PAGE_SIZE)))

    def start(self, ipa: int, function: int = OPTEE_SMC_CALL_WITH_ARG) -> tuple[int, ...]:
        return self.smc(function, ipa >> 32, ipa & M32)

    def serve(self, r: tuple[int, ...], *, stop_on_intr: bool = False) -> tuple[int, ...]:
        """Serve OP-TEE's RPCs like a minimal driver until the call ends (or
        until the first FOREIGN_INTR when asked)."""
        while is_rpc_return(r[0]):
            f = rpc_func(r[0])
            if f == OPTEE_SMC_RPC_FUNC_FOREIGN_INTR and stop_on_intr:
                return r
            r = self.reply(r)
        return r

    def reply(self, r: tuple[int, ...], *, cookie: int | None = None) -> tuple[int, ...]:
        f, tid = rpc_func(r[0]), r[3]
        if f == OPTEE_SMC_RPC_FUNC_ALLOC:
            ipa, c = self.page(), cookie if cookie is not None else self.cookie()
            self.rpc_pages.setdefault(c, ipa)  # a reused cookie keeps naming the first page
            return self.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, ipa >> 32, ipa & M32, tid, c >> 32, c & M32)
        if f == OPTEE_SMC_RPC_FUNC_CMD:
            # Serve GET_TIME only (what the wait TA asks); refuse the rest.
            ipa = self.rpc_pages[(r[1] << 32) | r[2]]
            req = self.read_arg(ipa)
            if req.cmd == OPTEE_RPC_CMD_GET_TIME:
                out = req.replace(ret=0, params=(req.params[0].replace(a=1234, b=5678),))
            else:
                out = req.replace(ret=TEEC_ERROR_NOT_SUPPORTED)
            self.write_arg(ipa, out)
            return self.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid)
        assert f in (OPTEE_SMC_RPC_FUNC_FREE, OPTEE_SMC_RPC_FUNC_FOREIGN_INTR)
        if f == OPTEE_SMC_RPC_FUNC_FREE:
            self.rpc_pages.pop((r[1] << 32) | r[2], None)
        return self.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid)

    def call(self, msg: MsgArg) -> tuple[tuple[int, ...], MsgArg, int]:
        ipa = self.page()
        self.write_arg(ipa, msg)
        r = self.serve(self.start(ipa))
        return r, self.read_arg(ipa), ipa

    def open_session(self, ta: uuid.UUID) -> int:
        meta = OpenSessionMeta(ta, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params()
        r, out, _ = self.call(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta))
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0, (hex(r[0]), hex(out.ret))
        return out.session

    def page_list(self, pages: list[int], offset: int = 0) -> int:
        """Write a guest page list (IPAs) into fresh pages; its buf_ptr."""
        lists = [self.page() for _ in range(list_pages_needed(len(pages)))]
        for ipa, data in zip(lists, build_page_list(pages, lists)):
            self.dom.write(ipa, data)
        return make_buf_ptr(lists[0], offset)


def make_platform(tmp_path, *, caps=CAPS, limits=None, record=None, threads=THREADS):
    def placement(p):
        if record is not None:
            real = p.tee.smc

            def smc(regs):
                record.append(tuple(regs))
                return real(regs)

            p.tee.smc = smc
        return El2Placement(p, limits=limits)

    return Platform(tmp_path / "machine", nr_frames=32768,
                    tee_config=TeeConfig(sec_caps=caps, threads_per_guest=threads, guest_count=8,
                                         ree_tas=frozenset()),  # early TAs: this raw guest has no supplicant
                    placement=placement, seed=5)


@pytest.fixture
def plat(tmp_path):
    with make_platform(tmp_path) as p:
        yield p
        p.oracle.assert_clean()


def domu(p: Platform, domid: int = 1, pages: int = 512) -> RawGuest:
    p.create_domain(DomainSpec(domid, nr_pages=pages))
    return RawGuest(p, domid)


def pinned(p: Platform, domid: int) -> dict[int, int]:
    return p.machine.pinned_frames(domid)


def mediator_pins(p: Platform, domid: int) -> int:
    return p.placement.mediator.context(domid).pinned_pages


# -- identity ----------------------------------------------------------------------


def test_guest_a7_never_reaches_the_tee(tmp_path):
    seen: list[tuple[int, ...]] = []
    with make_platform(tmp_path, record=seen) as p:
        g = domu(p, 3)
        start = len(seen)
        for a7 in (0, 1, 2, 0xFFFF, 1 << 63):
            r = p.trap(3, 0, (OPTEE_SMC_CALLS_REVISION, 0, 0, 0, 0, 0, 0, a7))
            assert r[:2] == (2, 0)
        # VM_CREATED / VM_DESTROYED from a guest never reach the TEE.
        for f in (OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED):
            before = len(seen)
            assert g.smc(f, 0, 0, 0, 0, 0, 0, 0) == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7
            assert len(seen) == before
        session = g.open_session(INCREMENT_UUID)
        ipa = g.page()
        g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=TA_INCREMENT_CMD_INC_VALUE,
                                session=session,
                                params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 41),)))
        r = p.trap(3, 0, (OPTEE_SMC_CALL_WITH_ARG, ipa >> 32, ipa & M32, 0, 0, 0, 0, 0))
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).params[0].a == 42
        guest_smcs = seen[start:]
        assert guest_smcs and all(regs[7] == 3 + 1 for regs in guest_smcs)
        p.destroy_domain(3)
        assert seen[-1][:2] == (OPTEE_SMC_VM_DESTROYED, 4) and seen[-1][7] == 0
        p.oracle.assert_clean()


# -- registers -----------------------------------------------------------------------


def test_registers_are_zero_where_nothing_was_returned(plat):
    g = domu(plat)
    junk = (0xDEAD_BEEF_0000_0001, 0xDEAD_BEEF_0000_0002, 0xDEAD_BEEF_0000_0003,
            0xDEAD_BEEF_0000_0004, 0xDEAD_BEEF_0000_0005, 0xDEAD_BEEF_0000_0006,
            0xDEAD_BEEF_0000_0007)
    assert g.smc(OPTEE_SMC_CALLS_REVISION, *junk) == (2, 0, 0, 0, 0, 0, 0, 0)
    r = g.smc(OPTEE_SMC_CALLS_UID, *junk)
    assert r[4:] == (0, 0, 0, 0) and r[0] == 0x384FB3E0
    r = g.smc(OPTEE_SMC_CALL_GET_OS_REVISION, *junk)
    assert r[:2] == (4, 10) and r[3:] == (0,) * 5
    assert g.smc(OPTEE_SMC_CALLS_COUNT, *junk)[1:] == (0,) * 7
    assert g.smc(0xB2000008, *junk) == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7  # L2CC
    assert g.smc(0xB2000010, *junk) == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7  # async notif
    # An error the mediator writes clears everything else.
    assert g.smc(OPTEE_SMC_CALL_WITH_ARG, 0, 0x4000_0010, *junk[2:]) == (
        OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
    # An RPC returned to the guest carries a0..a3 only.
    session = g.open_session(WAIT_UUID)
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.serve(g.smc(OPTEE_SMC_CALL_WITH_ARG, ipa >> 32, ipa & M32, *junk[2:]), stop_on_intr=True)
    assert r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR and r[1:3] == (0, 0) and r[4:] == (0,) * 4
    assert g.serve(r)[0] == OPTEE_SMC_RETURN_OK


@pytest.mark.parametrize("upper", [1, 0xFFFF_FFFF])
def test_the_function_id_is_w0(plat, upper):
    # SMC32 (DEN0028): the function ID and arguments are W0..W7; x0's upper
    # half is not part of the ID, as Xen's vsmc.c and optee_handle_call read it
    g = domu(plat)
    hi = upper << 32
    assert g.smc(hi | OPTEE_SMC_CALLS_REVISION) == (2, 0, 0, 0, 0, 0, 0, 0)
    assert g.smc(hi | OPTEE_SMC_EXCHANGE_CAPABILITIES, 0)[0] == OPTEE_SMC_RETURN_OK
    session = g.open_session(WAIT_UUID)
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    plain = g.smc
    g.smc = lambda a0, *rest: plain(hi | a0, *rest)  # every SMC of the call, RETURN_FROM_RPC too
    r = g.serve(g.start(ipa))
    g.smc = plain
    assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).params[0].a == 1234
    # W0 decides: an SMC64 ID (bit 30) or an unknown W0 stays unknown
    assert g.smc(hi | OPTEE_SMC_CALLS_REVISION | 1 << 30)[0] == OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
    assert g.smc(hi | 0xB2000008)[0] == OPTEE_SMC_RETURN_UNKNOWN_FUNCTION


def test_exchange_capabilities_filters_and_needs_dynamic_shm(tmp_path):
    with make_platform(tmp_path, caps=CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG) as p:
        g = domu(p)
        r = g.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0xFFFF_FFFF)  # unknown NS caps filtered
        assert r[0] == OPTEE_SMC_RETURN_OK
        assert r[1] == OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_RPC_ARG | 0x10  # MEMREF_NULL
        assert r[3] == 4 and r[4:] == (0,) * 4
        p.oracle.assert_clean()
    with make_platform(tmp_path / "static-only", caps=REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM) as p:
        g = domu(p)
        assert g.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0) == (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7


# -- static shared memory ------------------------------------------------------------------


def test_domu_get_shm_config_is_enotavail(plat):
    g = domu(plat)
    assert g.smc(OPTEE_SMC_GET_SHM_CONFIG) == (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7
    caps = g.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0)[1]
    assert not caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM


def test_hwdom_direct_mapped_gets_static_shm(plat):
    dom = plat.create_domain(DomainSpec(0, nr_pages=1024, hwdom=True, direct_mapped=True))
    g = RawGuest(plat, 0)
    assert g.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0)[1] & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
    assert not dom.static_shm_mapped
    shm = plat.machine.static_shm
    assert g.smc(OPTEE_SMC_GET_SHM_CONFIG) == (OPTEE_SMC_RETURN_OK, shm.base, shm.size, 1, 0, 0, 0, 0)
    assert dom.static_shm_mapped
    # The 2017 RFC's contiguous argument and tmem inside the static region work.
    arg = shm.base + 512
    meta = OpenSessionMeta(INCREMENT_UUID, uuid.UUID(int=0), OPTEE_MSG_LOGIN_PUBLIC).to_params()
    g.write_arg(arg, MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta))
    r = g.serve(g.start(arg))
    assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(arg).ret == 0


@pytest.mark.parametrize("hwdom,direct", [(False, True), (True, False)])
def test_static_shm_needs_hwdom_and_direct_map(plat, hwdom, direct):
    dom = plat.create_domain(DomainSpec(2, nr_pages=256, hwdom=hwdom, direct_mapped=direct))
    g = RawGuest(plat, 2)
    assert g.smc(OPTEE_SMC_GET_SHM_CONFIG) == (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7
    assert not g.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0)[1] & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
    assert not dom.static_shm_mapped
    # ... and a contiguous tmem pointing into the region is refused.
    session = g.open_session(INCREMENT_UUID)
    shm = plat.machine.static_shm
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, shm.base, 64, 1),)))
    assert r[0] == OPTEE_SMC_RETURN_OK
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)


# -- the argument -----------------------------------------------------------------------


@pytest.mark.parametrize("offset", [8, 0x800, 0xFF8])
def test_unaligned_argument_is_ebadaddr(plat, offset):
    seen_before = plat.oracle.accesses
    g = domu(plat)
    ipa = g.page() + offset
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=1))
    assert g.start(ipa) == (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
    assert plat.oracle.accesses == seen_before


@pytest.mark.parametrize("num_params", [127, 128, 0xFFFF_FFFF])
def test_num_params_overflow(plat, num_params):
    g = domu(plat)
    ipa = g.page()
    g.dom.write(ipa, pack_header(OPTEE_MSG_CMD_INVOKE_COMMAND, num_params=num_params))
    r = g.start(ipa)
    # 127 params fill the page exactly: structurally fine, but OP-TEE's INVOKE
    # takes at most 4, so it fails in the TEE and not in the mediator.
    if num_params == 127:
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret != 0
    else:
        assert r == (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7


def test_unknown_command_is_ebadcmd(plat):
    g = domu(plat)
    ipa = g.page()
    g.write_arg(ipa, MsgArg(6))  # DO_BOTTOM_HALF: async notif is hidden
    assert g.start(ipa) == (OPTEE_SMC_RETURN_EBADCMD,) + (0,) * 7


def _mmio_gfn(g: RawGuest) -> int:
    gfn = 0x10_0000  # far outside guest RAM
    g.dom.map_mmio(gfn, 0x0900_0)  # a UART-like device frame, outside machine RAM
    return gfn


def test_foreign_and_mmio_ipas_are_refused(plat):
    g = domu(plat)
    other = domu(plat, 2)
    session = g.open_session(INCREMENT_UUID)
    mmio = _mmio_gfn(g) * PAGE_SIZE
    # The other domain's RAM, named by an IPA: not in this p2m at all.
    foreign = other.dom.lookup(other.dom.ram_gfns()[0]).mfn * PAGE_SIZE
    for bad in (mmio, foreign, 0x7000_0000_0000):
        assert g.start(bad) == (OPTEE_SMC_RETURN_EBADADDR,) + (0,) * 7
        for pages in ([g.page(), bad], [bad]):
            before = dict(pinned(plat, 1))
            r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, session=session, params=(
                MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                              g.page_list(pages), 2 * PAGE_SIZE, 7),)))
            assert r[0] == OPTEE_SMC_RETURN_OK
            assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
            assert pinned(plat, 1) == before  # all or nothing
    # A page list whose list page itself is MMIO.
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, mmio, 16, 7),)))
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    # Contiguous (non-NONCONTIG) tmem from a domU is refused; NULL stays NULL.
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, g.page(), 16, 7),)))
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)


def test_rewriting_the_argument_during_an_rpc_changes_nothing(plat):
    g = domu(plat)
    session = g.open_session(WAIT_UUID)
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.serve(g.start(ipa), stop_on_intr=True)
    assert r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR
    # The guest scribbles over everything while OP-TEE is suspended.
    evil = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0x77, session=session ^ 0xFF, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, 0x4000_0000, 1 << 40, 9),
        MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 1, 2, 3)))
    g.write_arg(ipa, evil)
    r = g.serve(r)
    assert r[0] == OPTEE_SMC_RETURN_OK
    out = g.read_arg(ipa)
    # OP-TEE ran the command it was given: BUSY, preempted as configured.
    assert out.ret == 0 and out.params[0].a == plat.tee.config.wait_ta_foreign_intr
    # Only output fields came back: the guest's own scribbles elsewhere remain.
    assert out.func == 0x77 and out.params[0].attr == evil.params[0].attr
    assert out.params[1] == evil.params[1]


# -- RPC buffers and resume binding -----------------------------------------------------------


def _busy_call(g: RawGuest, session: int, cookie: int | None = None):
    """Start a BUSY invoke and stop at its first FOREIGN_INTR (the ALLOC,
    when OP-TEE asks, is answered with ``cookie``)."""
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.start(ipa)
    if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC:
        r = g.reply(r, cookie=cookie)
    return ipa, r


def _time_call(g: RawGuest, session: int, cookie: int | None = None):
    """Start a GET_TIME invoke: OP-TEE asks for an RPC buffer (ALLOC,
    answered with ``cookie``), then stops at its RPC CMD."""
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.start(ipa)
    if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC:
        r = g.reply(r, cookie=cookie)
    return ipa, r


def test_reused_rpc_cookie_is_refused_and_freed_cookie_reusable(plat):
    g = domu(plat)
    ctx = plat.placement.mediator.context(1)
    session = g.open_session(WAIT_UUID)
    cookie = 0xABCD_0000_1234
    ipa_a, ra = _time_call(g, session, cookie)
    assert ra[0] == OPTEE_SMC_RETURN_RPC_CMD and set(ctx.rpc_buffers) == {cookie}
    shadow = ctx.rpc_buffers[cookie].shadow
    # Same cookie while A's buffer lives (another session: OP-TEE runs one
    # command per session at a time).
    ipa_b, rb = _time_call(g, g.open_session(WAIT_UUID), cookie)
    assert rb[0] != OPTEE_SMC_RETURN_RPC_CMD
    assert set(ctx.rpc_buffers) == {cookie} and ctx.rpc_buffers[cookie].shadow is shadow
    rb = g.serve(rb)  # OP-TEE saw a failed allocation: B fails, A is untouched
    assert rb[0] != OPTEE_SMC_RETURN_OK or g.read_arg(ipa_b).ret != 0
    assert g.serve(ra)[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa_a).ret == 0
    # A's buffer was freed by OP-TEE (no cache): forgotten, unpinned, cookie reusable.
    assert ctx.rpc_buffers == {}
    ipa_c, rc = _time_call(g, session, cookie)
    assert g.serve(rc)[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa_c).ret == 0
    assert ctx.rpc_buffers == {} and ctx.pinned_pages == 0


def test_resume_of_another_domains_thread_is_eresume(tmp_path):
    seen: list[tuple[int, ...]] = []
    with make_platform(tmp_path, record=seen) as p:
        g1, g2 = domu(p, 1), domu(p, 2)
        s1 = g1.open_session(WAIT_UUID)
        ipa, r = _busy_call(g1, s1)
        tid = r[3]
        before = len(seen)
        for t in (tid, tid + 1, 0xFFFF_FFFF):
            assert g2.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, t) == (OPTEE_SMC_RETURN_ERESUME,) + (0,) * 7
        assert len(seen) == before  # refused without reaching the TEE
        # The owner resumes fine; afterwards the thread is no longer resumable.
        assert g1.serve(r)[0] == OPTEE_SMC_RETURN_OK and g1.read_arg(ipa).ret == 0
        assert g1.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid) == (OPTEE_SMC_RETURN_ERESUME,) + (0,) * 7
        p.oracle.assert_clean()


# -- limits -------------------------------------------------------------------------------


def test_calls_in_flight_limit_then_recovered(tmp_path):
    seen: list[tuple[int, ...]] = []
    with make_platform(tmp_path, limits=DomainLimits(max_calls=2), record=seen) as p:
        g = domu(p)
        session = g.open_session(INCREMENT_UUID)
        calls = [_busy_call(g, g.open_session(WAIT_UUID)) for _ in range(2)]
        assert all(r[0] == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR for _, r in calls)
        before = len(seen)
        ipa = g.page()
        g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))
        assert g.start(ipa) == (OPTEE_SMC_RETURN_ETHREAD_LIMIT,) + (0,) * 7
        assert len(seen) == before
        ipa0, r0 = calls[0]
        assert g.serve(r0)[0] == OPTEE_SMC_RETURN_OK
        assert g.serve(g.start(ipa))[0] == OPTEE_SMC_RETURN_OK  # a slot is free again
        assert g.serve(calls[1][1])[0] == OPTEE_SMC_RETURN_OK
        p.oracle.assert_clean()


def _register(g: RawGuest, cookie: int, npages: int):
    buf = g.page_list([g.page() for _ in range(npages)])
    return g.call(MsgArg(OPTEE_MSG_CMD_REGISTER_SHM, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, buf,
                      npages * PAGE_SIZE, cookie),)))


def _unregister(g: RawGuest, cookie: int):
    return g.call(MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM, params=(
        MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, cookie),)))


def test_shm_limits_exhausted_then_recovered(tmp_path):
    limits = DomainLimits(max_shm_buffers=2, max_pages_per_buffer=4, max_total_pages=6)
    with make_platform(tmp_path, limits=limits) as p:
        g = domu(p)
        r, out, _ = _register(g, 1, 5)  # more pages than one buffer may have
        assert (r[0], out.ret, out.ret_origin) == (0, TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
        assert pinned(p, 1) == {} or mediator_pins(p, 1) == 0
        assert _register(g, 1, 4)[1].ret == 0
        r, out, _ = _register(g, 2, 3)  # 4 + 3 > max_total_pages
        assert out.ret == TEEC_ERROR_OUT_OF_MEMORY and mediator_pins(p, 1) == 4
        assert _register(g, 2, 2)[1].ret == 0
        r, out, _ = _register(g, 3, 1)  # a third buffer
        assert out.ret == TEEC_ERROR_OUT_OF_MEMORY and mediator_pins(p, 1) == 6
        # A duplicate cookie is refused, not merged.
        assert _register(g, 2, 1)[1].ret == TEEC_ERROR_BAD_PARAMETERS
        assert _unregister(g, 1)[1].ret == 0 and mediator_pins(p, 1) == 2
        assert _register(g, 3, 4)[1].ret == 0 and mediator_pins(p, 1) == 6
        for c in (2, 3):
            assert _unregister(g, c)[1].ret == 0
        assert mediator_pins(p, 1) == 0
        p.destroy_domain(1)
        assert p.machine.pinned_frames() == {}
        p.oracle.assert_clean()


def test_registered_pages_stay_pinned_until_unregister(plat):
    g = domu(plat)
    r, out, _ = _register(g, 0x55, 3)
    assert out.ret == 0
    ctx = plat.placement.mediator.context(1)
    buf = ctx.shm_buffers[0x55]
    assert all(plat.machine.frame_refcount(m) == 1 for m in buf.mfns)
    assert buf.list_pages == []  # OP-TEE copied the list; the mediator's copy is gone
    # A failed UNREGISTER (unknown cookie) unpins nothing.
    assert _unregister(g, 0x56)[1].ret != 0
    assert all(plat.machine.frame_refcount(m) == 1 for m in buf.mfns)
    assert _unregister(g, 0x55)[1].ret == 0
    assert all(plat.machine.frame_refcount(m) == 0 for m in buf.mfns)


def test_disable_shm_cache_releases_the_right_buffer(plat):
    g = domu(plat)
    ctx = plat.placement.mediator.context(1)
    assert g.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
    # Two calls suspended at once run on two OP-TEE threads: two cached buffers.
    ipa_a, ra = _time_call(g, g.open_session(WAIT_UUID))
    ipa_b, rb = _time_call(g, g.open_session(WAIT_UUID))
    assert ra[0] == rb[0] == OPTEE_SMC_RETURN_RPC_CMD
    for r in (ra, rb):
        assert g.serve(r)[0] == OPTEE_SMC_RETURN_OK
    cached = dict(ctx.rpc_buffers)
    assert len(cached) >= 2
    released = []
    while True:
        r = g.smc(OPTEE_SMC_DISABLE_SHM_CACHE)
        if r[0] == OPTEE_SMC_RETURN_ENOTAVAIL:
            break
        assert r[0] == OPTEE_SMC_RETURN_OK and r[3:] == (0,) * 5
        cookie = (r[1] << 32) | r[2]
        assert cookie in cached and cookie not in ctx.rpc_buffers
        assert plat.machine.frame_refcount(cached[cookie].mfn) == 0
        for other in set(cached) - set(released) - {cookie}:
            assert plat.machine.frame_refcount(cached[other].mfn) == 1
        released.append(cookie)
    assert sorted(released) == sorted(cached) and ctx.rpc_buffers == {}


def test_resume_of_a_call_already_in_flight_is_eresume(tmp_path):
    """Another vCPU resumes the same OP-TEE thread while the first resume is
    still inside the TEE: ERESUME, and the TEE never sees the second one."""
    nested: list[tuple[int, ...]] = []
    seen: list[tuple[int, ...]] = []
    with make_platform(tmp_path, record=seen) as p:
        g = domu(p)
        ipa, r = _busy_call(g, g.open_session(WAIT_UUID))
        tid = r[3]
        real = p.tee.smc

        def racing_smc(regs):
            if regs[0] == OPTEE_SMC_CALL_RETURN_FROM_RPC and not nested:
                nested.append(p.trap(1, 1, (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0, 0, tid, 0, 0, 0, 0)))
            return real(regs)

        p.tee.smc = racing_smc
        assert g.serve(r)[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret == 0
        assert nested == [(OPTEE_SMC_RETURN_ERESUME,) + (0,) * 7]
        p.oracle.assert_clean()
