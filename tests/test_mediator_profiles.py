"""One test per row of docs/mediator.md, "Profiles": every guest-visible
difference between the ``xen`` profile (upstream Xen's optee.c at
RELEASE-4.22.0, its defects made safe), the ``strict`` profile and upstream,
each run under both profiles and — where the placement could matter (the
daemon's policy, journal and configuration sit in its path) — under both
placements, through the hostile harness (stubdom/hostile), against the real
OP-TEE model with the isolation oracle requiring pins.

A platform per (placement, profile) serves the module; each test gets a
domain of its own, destroyed and checked (nothing pinned, no partition, no
mediator error, the daemon alive) at its end."""

from __future__ import annotations

import itertools

import pytest
import yaml

from stubdom.config import ConfigError, parse_config
from stubdom.hostile import (
    BASE_CAPS,
    PLACEMENTS,
    PROFILES,
    HostileGuest,
    destroy_and_check,
    make_platform,
    tee_smcs,
    tee_smcs_of,
)
from stubdom.mediator import STRICT, XEN, BadSnapshot, DomainLimits, Mediator, client_id
from stubdom.optee import (
    OPTEE_MSG_ATTR_META,
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_RETURN_EBADADDR,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FREE,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FOREIGN_INTR,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    TEEC_ORIGIN_TEE,
    MsgArg,
    MsgParam,
    is_rpc_return,
    pack_header,
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
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, P2mType

M32 = 0xFFFFFFFF
CAPS = BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG  # what OP-TEE offers; each profile passes its own part
THREADS = 4
ZEROS = (0,) * 7
# domains whose policy has limits of their own
DOMID_BIG = 40  # pages_per_buffer raised (strict honours it; xen bounds it to Xen's 129)
DOMID_TIGHT = 41  # 2 pages in all: whether an RPC argument page counts shows
BIG = DomainLimits(max_pages_per_buffer=513)
TIGHT = DomainLimits(max_pages_per_buffer=2, max_total_pages=2)

COMBOS = [(placement, profile) for placement in PLACEMENTS for profile in PROFILES]


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{a}-{b}" for a, b in COMBOS])
def plat(request, tmp_path_factory):
    placement, profile = request.param
    p = make_platform(tmp_path_factory.mktemp(f"{placement}-{profile}"), placement, caps=CAPS,
                      threads=THREADS, profile=profile,
                      domain_limits={DOMID_BIG: BIG, DOMID_TIGHT: TIGHT})
    p.next_domid = itertools.count(1)
    yield p
    p.close()


@pytest.fixture(scope="module", params=PROFILES)
def el2(request, tmp_path_factory):
    """el2 only: a row the placement cannot change (same core code, and the
    stub domain's policy would have to be configured for it)."""
    p = make_platform(tmp_path_factory.mktemp(f"el2-only-{request.param}"), "el2", caps=CAPS,
                      threads=THREADS, profile=request.param)
    p.next_domid = itertools.count(1)
    yield p
    p.close()


def _guest(p, domid: int | None = None, *, vcpus: int = 1, **spec) -> HostileGuest:
    domid = next(p.next_domid) if domid is None else domid
    p.create_domain(DomainSpec(domid, nr_pages=spec.pop("nr_pages", 1024), vcpus=vcpus, **spec))
    g = HostileGuest(p, domid)
    g.negotiate()
    return g


@pytest.fixture
def guest(plat):
    g = _guest(plat)
    yield g
    destroy_and_check(plat, g)


def xen(p) -> bool:
    return p.profile_name == "xen"


def reached(p, g: HostileGuest) -> int:
    """SMCs that reached OP-TEE on the guest's behalf so far."""
    return tee_smcs_of(p, g.domid)


def tmem(g: HostileGuest, pages: list[int], size: int, cookie: int,
         attr: int = OPTEE_MSG_ATTR_TYPE_TMEM_INPUT) -> MsgParam:
    return MsgParam.tmem(attr | OPTEE_MSG_ATTR_NONCONTIG, g.page_list(pages), size, cookie)


def digest(g: HostileGuest, session: int, data_list_ptr: int, size: int) -> tuple:
    out_page = g.page()
    return g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, data_list_ptr, size, g.cookie()),
        tmem(g, [out_page], 32, g.cookie(), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))))


def increment(session: int, value: int, attr: int = OPTEE_MSG_ATTR_TYPE_VALUE_INOUT) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=TA_INCREMENT_CMD_INC_VALUE, session=session,
                  params=(MsgParam(attr, value, 0, 0),))


def get_time(session: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                  params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),))


def disable_shm_cache(g: HostileGuest) -> None:
    """Linux's loop: DISABLE_SHM_CACHE until ENOTAVAIL, freeing each buffer."""
    for _ in range(64):
        r = g.smc(OPTEE_SMC_DISABLE_SHM_CACHE)
        if r[0] == OPTEE_SMC_RETURN_ENOTAVAIL:
            return
        assert r[0] == OPTEE_SMC_RETURN_OK, hex(r[0])
        ipa = g.rpc_pages.pop((r[1] << 32) | r[2], None)
        if ipa is not None:
            g.free_pages([ipa])
    raise AssertionError("DISABLE_SHM_CACHE never emptied the cache")


# == the function set ====================================================================


def test_calls_count(plat, guest):
    # Xen: OPTEE_MEDIATOR_SMC_COUNT, the 11 IDs optee_handle_call handles
    assert guest.smc(OPTEE_SMC_CALLS_COUNT) == ((11 if xen(plat) else 14),) + ZEROS


def test_get_thread_count(plat, guest):
    before = reached(plat, guest)
    r = guest.smc(OPTEE_SMC_GET_THREAD_COUNT, 0xDEAD, 0xBEEF)
    if xen(plat):  # not handled by optee_handle_call: vsmc.c's UNKNOWN_FUNCTION
        assert r == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + ZEROS
    else:  # the calls the domain may have in flight: min(policy 64, OP-TEE's threads)
        assert r == (OPTEE_SMC_RETURN_OK, THREADS) + (0,) * 6
    assert reached(plat, guest) == before  # answered by the mediator either way


def test_rpc_arg_and_regd_arg(plat, guest):
    r = guest.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0)
    if xen(plat):  # OPTEE_KNOWN_SEC_CAPS has no RPC_ARG: a3 carries nothing
        assert r == (OPTEE_SMC_RETURN_OK, OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_MEMREF_NULL, 0, 0,
                     0, 0, 0, 0)
    else:
        assert r == (OPTEE_SMC_RETURN_OK, OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_MEMREF_NULL
                     | OPTEE_SMC_SEC_CAP_RPC_ARG, 0, 4, 0, 0, 0, 0)
    session = guest.session(INCREMENT_UUID)
    before = reached(plat, guest)
    r, out, _ = guest.call(increment(session, 41), function=OPTEE_SMC_CALL_WITH_RPC_ARG)
    regd = guest.start_regd(0xC0FFEE, 0)
    if xen(plat):
        assert r == regd == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + ZEROS
        assert reached(plat, guest) == before
    else:
        assert r[0] == OPTEE_SMC_RETURN_OK and (out.ret, out.params[0].a) == (0, 42)
        assert regd == (OPTEE_SMC_RETURN_EBADADDR,) + ZEROS  # no such registration: mediated
    guest.close_session(session)


def test_get_os_revision(tmp_path):
    # Xen returns a0, a1; strict also a2, the build id
    from stubdom.platform import Platform
    from stubdom.platform.el2 import El2Placement
    from stubdom.tee import TeeConfig

    for profile, want in ((XEN, (4, 10, 0)), (STRICT, (4, 10, 0xABCD1234))):
        with Platform(tmp_path / profile.name, nr_frames=32768,
                      tee_config=TeeConfig(sec_caps=CAPS, os_build_id=0xABCD1234),
                      placement=lambda p, profile=profile: El2Placement(p, profile=profile)) as p:
            p.create_domain(DomainSpec(1, nr_pages=64))
            assert p.trap(1, 0, (OPTEE_SMC_CALL_GET_OS_REVISION,) + ZEROS) == want + (0,) * 5


def test_static_shm_for_the_hardware_domain(el2):
    # xen: HAVE_RESERVED_SHM dropped and GET_SHM_CONFIG ENOTAVAIL for every
    # domain; strict: the direct-mapped hwdom gets the region
    p = el2
    g = _guest(p, 0, hwdom=True, direct_mapped=True, static_shm=True)
    shm = p.machine.static_shm
    before = reached(p, g)
    caps = g.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, 0)[1]
    config = g.smc(OPTEE_SMC_GET_SHM_CONFIG)
    # an argument 8-byte aligned inside the region, and a contiguous tmem there
    session = g.session(INCREMENT_UUID)
    arg = shm.base + 512
    g.write_arg(arg, increment(session, 1))
    r = g.serve(g.start(arg))
    r2, out2, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session,
                                params=(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, shm.base + PAGE_SIZE, 64, 1),)))
    # an RPC argument buffer in the region (8-byte aligned is OP-TEE's rule)
    wait = g.session(WAIT_UUID)
    ipa = g.page()
    g.write_arg(ipa, get_time(wait))
    ra = g.start(ipa)
    assert rpc_func(ra[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
    c = g.cookie()
    ra = g.serve(g.reply(ra, alloc_ipa=shm.base + 2 * PAGE_SIZE + 64, cookie=c))
    if xen(p):
        assert not caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
        assert config == (OPTEE_SMC_RETURN_ENOTAVAIL,) + ZEROS
        assert r == (OPTEE_SMC_RETURN_EBADADDR,) + ZEROS  # not page aligned: Xen's only rule
        assert (out2.ret, out2.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)  # "old tmem arg"
        assert g.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY  # the RPC buffer refused
    else:
        assert caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
        assert config == (OPTEE_SMC_RETURN_OK, shm.base, shm.size, 1, 0, 0, 0, 0)
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(arg).params[0].a == 2
        # reached OP-TEE (which refuses the digest's shape, not the memory)
        assert out2.ret_origin != TEEC_ORIGIN_COMMS
        assert g.read_arg(ipa).params[0].a == 1234  # GET_TIME through the region
    assert ra[0] == OPTEE_SMC_RETURN_OK and reached(p, g) > before
    destroy_and_check(p, g)


# == limits ================================================================================


def test_sixteen_buffers_under_xen(plat, guest):
    # Xen's MAX_SHM_BUFFER_COUNT; strict: the policy's (64 here)
    cookies = []
    for i in range(16):
        c = guest.cookie()
        r, out = guest.register(c, 1)
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0, i
        cookies.append(c)
    c = guest.cookie()
    before = reached(plat, guest)
    r, out = guest.register(c, 1)
    if xen(plat):
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
        assert reached(plat, guest) == before
        assert plat.mediator_state(guest.domid)["limits"]["max_shm_buffers"] == 16
    else:
        assert out.ret == 0
        cookies.append(c)
    for c in cookies:
        assert guest.unregister(c)[1].ret == 0


def test_pages_per_buffer_cannot_be_raised_under_xen(plat):
    g = _guest(plat, DOMID_BIG)
    r, out = g.register(g.cookie(), 130)
    state = plat.mediator_state(g.domid)
    if xen(plat):  # MAX_SHM_BUFFER_PG 129 bounds the policy's 513
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
        assert state["limits"]["max_pages_per_buffer"] == 129
    else:
        assert out.ret == 0 and state["limits"]["max_pages_per_buffer"] == 513
    destroy_and_check(plat, g)


def test_rpc_argument_pages_and_the_total(plat):
    # Xen counts optee_shm_buf pages only; strict counts the RPC argument
    # page too. The domain may pin 2 pages; an RPC argument buffer is cached.
    g = _guest(plat, DOMID_TIGHT)
    assert g.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
    session = g.session(WAIT_UUID)
    r, out, _ = g.call(get_time(session))  # RPC ALLOC, then GET_TIME in it
    assert out.ret == 0 and plat.mediator_state(g.domid)["nr_rpc_buffers"] == 1
    c = g.cookie()
    r, out = g.register(c, 2)
    if xen(plat):
        assert out.ret == 0
        assert g.unregister(c)[1].ret == 0
    else:
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS)
    g.close_session(session)
    disable_shm_cache(g)
    destroy_and_check(plat, g)


def test_a_configuration_under_xen_refuses_limits_above_xens():
    text = yaml.safe_dump({"mediator": {"profile": "xen"}, "defaults": {"limits": {
        "shm_buffers": 17, "pages_per_buffer": 130, "total_pages": 16384}}})
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.yaml")
    why = "(mediator.profile xen: a policy may lower its limits, not raise them)"
    assert sorted(e.value.problems) == [
        f"x.yaml:3: defaults.limits.pages_per_buffer: 130 exceeds the xen profile's 129 {why}",
        f"x.yaml:4: defaults.limits.shm_buffers: 17 exceeds the xen profile's 16 {why}",
        f"x.yaml:5: defaults.limits.total_pages: 16384 exceeds the xen profile's 16383 {why}",
    ]
    # the same under strict is a valid policy; left out, the defaults are bounded, not refused
    assert parse_config(text.replace("xen", "strict"), "x.yaml").default_policy.limits.max_shm_buffers == 17
    assert parse_config("mediator: {profile: xen}\n", "x.yaml").default_policy.limits.max_shm_buffers == 64


# == standard calls ========================================================================


def test_a_call_op_tee_refuses_for_its_shape(plat, guest):
    # INVOKE with 5 params (TEE_NUM_PARAMS 4), one of them a tmem
    session = guest.session(INCREMENT_UUID)
    before = reached(plat, guest)
    params = (tmem(guest, [guest.page()], PAGE_SIZE, guest.cookie()),) + tuple(
        MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, i) for i in range(4))
    r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, session=session, params=params))
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_BAD_PARAMETERS
    if xen(plat):  # translated, pinned, passed: OP-TEE's entry_std refuses it
        assert out.ret_origin == TEEC_ORIGIN_TEE and reached(plat, guest) > before
    else:  # refused before anything was read or pinned
        assert out.ret_origin == TEEC_ORIGIN_COMMS and reached(plat, guest) == before
    assert plat.mediator_state(guest.domid)["buffers"] == 0  # the tmem is gone either way
    guest.close_session(session)


@pytest.mark.parametrize("attr,strict_refuses,xen_result", [
    (0x4, True, TEEC_ERROR_BAD_PARAMETERS),  # no such type: OP-TEE refuses it
    (OPTEE_MSG_ATTR_TYPE_VALUE_INOUT | OPTEE_MSG_ATTR_META, True, TEEC_ERROR_BAD_PARAMETERS),
    (OPTEE_MSG_ATTR_TYPE_VALUE_INOUT | OPTEE_MSG_ATTR_NONCONTIG, True, 0),  # OP-TEE ignores it on a value
    (OPTEE_MSG_ATTR_TYPE_VALUE_INOUT | 1 << 40, True, 0),  # unknown bits
], ids=["unknown-type", "meta-on-invoke", "noncontig-on-value", "unknown-bits"])
def test_attributes_only_op_tee_would_judge(plat, guest, attr, strict_refuses, xen_result):
    session = guest.session(INCREMENT_UUID)
    before = reached(plat, guest)
    r, out, _ = guest.call(increment(session, 41, attr))
    assert r[0] == OPTEE_SMC_RETURN_OK
    if xen(plat):  # translate_params passes them: OP-TEE decides
        assert reached(plat, guest) > before and out.ret == xen_result
        assert out.ret_origin != TEEC_ORIGIN_COMMS
    else:
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
        assert reached(plat, guest) == before
    guest.close_session(session)


def test_num_params_that_do_not_fit_the_page(plat, guest):
    before = reached(plat, guest)
    ipa = guest.page()
    guest.write(ipa, pack_header(OPTEE_MSG_CMD_INVOKE_COMMAND, session=7, num_params=128))
    r = guest.start(ipa)
    hdr = guest.dom.read(ipa, 32)
    ret, origin = int.from_bytes(hdr[20:24], "little"), int.from_bytes(hdr[24:28], "little")
    if xen(plat):  # the error in the argument; x0 left as the guest's function ID
        assert r == (OPTEE_SMC_CALL_WITH_ARG,) + ZEROS
        assert (ret, origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    else:
        assert r == (OPTEE_SMC_RETURN_EBADADDR,) + ZEROS and (ret, origin) == (0, 0)
    assert reached(plat, guest) == before
    # ... and where that argument cannot be written (read-only): EBADADDR under both
    guest.dom.set_type(ipa >> PAGE_SHIFT, P2mType.p2m_ram_ro)
    assert guest.start(ipa) == (OPTEE_SMC_RETURN_EBADADDR,) + ZEROS


def test_a_read_only_argument_page(plat, guest):
    session = guest.session(INCREMENT_UUID)
    ipa = guest.page()
    guest.write_arg(ipa, increment(session, 41))
    guest.dom.set_type(ipa >> PAGE_SHIFT, P2mType.p2m_ram_ro)
    before = reached(plat, guest)
    r = guest.serve(guest.start(ipa))
    if xen(plat):  # read as any RAM; the call runs; the result cannot be copied back
        assert r == (OPTEE_SMC_RETURN_OK,) + ZEROS and reached(plat, guest) > before
    else:
        assert r == (OPTEE_SMC_RETURN_EBADADDR,) + ZEROS and reached(plat, guest) == before
    out = guest.read_arg(ipa)
    assert (out.ret, out.params[0].a) == (0, 41)  # untouched either way
    guest.close_session(session)


def test_page_list_entries_with_low_bits_set(plat, guest):
    session = guest.session(DIGEST_UUID)
    data = guest.page()
    guest.write(data, b"abc")
    before = reached(plat, guest)
    r, out, _ = digest(guest, session, guest.raw_list_page([data | 0x123]), 3)
    if xen(plat):  # gaddr_to_gfn: the entry's low bits are dropped
        assert out.ret == 0 and reached(plat, guest) > before
    else:
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
        assert reached(plat, guest) == before
    guest.close_session(session)


# == RPCs ==================================================================================


def test_an_shm_alloc_reply_of_one_page_by_address(plat, guest):
    # upstream passes the guest's IPA to OP-TEE as a physical address
    # (handle_rpc_cmd_alloc only warns); xen refuses it, strict translates it
    session = guest.session(STORAGE_UUID)
    del guest.rpc_cmds[:]  # the storage TA's load (LOAD_TA, its own SHM_ALLOC and SHM_FREE)
    guest.shm_frees.clear()
    given = []

    def one_page(g, req):
        c = g.cookie()
        given.append(c)
        return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, g.page(), req.params[0].b, c)

    guest.shm_alloc_hook = one_page
    obj, data = guest.page(), guest.page()
    guest.write(obj, b"id")
    r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=session, params=(
        tmem(guest, [obj], 2, guest.cookie()), tmem(guest, [data], 8, guest.cookie()))))
    assert given and r[0] == OPTEE_SMC_RETURN_OK
    after = guest.rpc_cmds[guest.rpc_cmds.index(OPTEE_RPC_CMD_SHM_ALLOC) + 1]
    if xen(plat):  # at once the guest is asked to free it, then OP-TEE's allocation fails
        assert after == OPTEE_RPC_CMD_SHM_FREE
        assert guest.shm_frees[0] == (OPTEE_RPC_SHM_TYPE_APPL, given[0])
        assert out.ret == TEEC_ERROR_OUT_OF_MEMORY
    else:  # OP-TEE got the page: its file-system RPCs go on with it
        assert after != OPTEE_RPC_CMD_SHM_FREE and out.ret != TEEC_ERROR_OUT_OF_MEMORY
    guest.shm_alloc_hook = None
    guest.close_session(session)


def _last_resume(p, domid: int) -> tuple:
    return [s for s in tee_smcs(p) if s[7] == client_id(domid) and s[0] == OPTEE_SMC_CALL_RETURN_FROM_RPC][-1]


def test_a_refused_rpc_alloc(plat, guest):
    # never address 0 (Xen's), always the misaligned 7; xen passes the
    # guest's cookie on (OP-TEE then RPC FREEs it to the guest), strict 0
    session = guest.session(WAIT_UUID)
    ipa = guest.page()
    guest.write_arg(ipa, get_time(session))
    r = guest.start(ipa)
    assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
    c = guest.cookie()
    r = guest.resume(r[3], *divmod(guest.page() + 8, 1 << 32), *divmod(c, 1 << 32))
    resumed = _last_resume(plat, guest.domid)
    if xen(plat):
        assert resumed[1:6] == (0, 7, resumed[3], c >> 32, c & M32)
        assert r[:3] == (OPTEE_SMC_RETURN_RPC_FREE, c >> 32, c & M32)
        r = guest.resume(r[3])
    else:
        assert resumed[1:6] == (0, 7, resumed[3], 0, 0)
    assert r[0] == OPTEE_SMC_RETURN_OK and guest.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY
    assert plat.mediator_state(guest.domid)["nr_rpc_buffers"] == 0
    guest.close_session(session)


def test_op_tee_freeing_a_refused_cookie_frees_nothing_of_the_mediators(plat):
    # A's RPC argument buffer has cookie C; B's RPC ALLOC is answered with C
    # (taken: refused). Under xen OP-TEE gets C back and RPC FREEs it: the
    # guest hears of it, A's buffer stays, and A completes from it.
    g = _guest(plat, vcpus=2)
    session_a, session_b = g.session(WAIT_UUID), g.session(WAIT_UUID)
    a = g.page()
    g.write_arg(a, get_time(session_a))
    r = g.start(a, vcpu=0)
    c = g.cookie()
    r = g.reply(r, cookie=c)  # A's buffer, cookie C
    assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_CMD and (r[1] << 32 | r[2]) == c
    tid_a = r[3]
    b = g.page()
    g.write_arg(b, get_time(session_b))
    rb = g.start(b, vcpu=1)
    assert rpc_func(rb[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
    rb = g.resume(rb[3], *divmod(g.page(), 1 << 32), *divmod(c, 1 << 32), vcpu=1)
    if xen(plat):
        assert rb[:3] == (OPTEE_SMC_RETURN_RPC_FREE, c >> 32, c & M32)
        rb = g.resume(rb[3], vcpu=1)  # the guest has no second buffer C: nothing to free
    assert rb[0] == OPTEE_SMC_RETURN_OK and g.read_arg(b).ret == TEEC_ERROR_OUT_OF_MEMORY
    assert [x["cookie"] for x in plat.mediator_state(g.domid)["rpc_buffers"]] == [c]
    r = g.serve(g.reply((OPTEE_SMC_RETURN_RPC_CMD, c >> 32, c & M32, tid_a) + (0,) * 4, vcpu=0))
    assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(a).params[0].a == 1234
    destroy_and_check(plat, g)


def test_the_rpc_reply_is_read_from_the_buffer_op_tee_named(plat, guest):
    # Xen looks the RPC buffer up by the guest's a1/a2 at RETURN_FROM_RPC
    # (an unknown one: the call is stuck); both profiles by OP-TEE's own
    session = guest.session(WAIT_UUID)
    ipa = guest.page()
    guest.write_arg(ipa, get_time(session))
    r = guest.serve(guest.start(ipa), stop=lambda r: rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_CMD)
    where = guest.rpc_arg_ipa(r)
    guest.write_arg(where, guest.answer_rpc_cmd(guest.read_arg(where)))
    r = guest.serve(guest.resume(r[3], 0xBAD, 0xC00C1E))
    assert r[0] == OPTEE_SMC_RETURN_OK and guest.read_arg(ipa).params[0].a == 1234
    guest.close_session(session)


def test_an_rpc_request_that_cannot_reach_the_guest_fails_in_op_tee(plat, guest):
    # Xen's -ERESTART path re-enters OP-TEE with OP-TEE's own RPC code as
    # the function ID and hands the guest the RPC; both profiles resume
    # OP-TEE with the request failed (TEEC_ERROR_GENERIC, preset by OP-TEE)
    assert guest.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
    session = guest.session(WAIT_UUID)
    assert guest.call(get_time(session))[1].ret == 0  # the RPC buffer, cached
    (page,) = guest.rpc_pages.values()
    guest.dom.set_type(page >> PAGE_SHIFT, P2mType.p2m_ram_ro)
    cmds = len(guest.rpc_cmds)
    r, out, _ = guest.call(get_time(session))
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret != 0 and len(guest.rpc_cmds) == cmds
    assert not [s for s in tee_smcs(plat) if s[7] == client_id(guest.domid) and is_rpc_return(s[0])]
    guest.dom.set_type(page >> PAGE_SHIFT, P2mType.p2m_ram_rw)
    guest.close_session(session)
    disable_shm_cache(guest)


def test_the_rpc_reply_reaches_op_tee_field_by_field(el2):
    # Xen copies the guest's whole reply over OP-TEE's request; both
    # profiles merge ret, ret_origin and output fields into OP-TEE's own
    p = el2
    g = _guest(p)
    assert g.smc(OPTEE_SMC_ENABLE_SHM_CACHE)[0] == OPTEE_SMC_RETURN_OK
    session = g.session(WAIT_UUID)
    ipa = g.page()
    g.write_arg(ipa, get_time(session))
    r = g.serve(g.start(ipa), stop=lambda r: rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_CMD)
    where = g.rpc_arg_ipa(r)
    req = g.read_arg(where)
    assert req.cmd == OPTEE_RPC_CMD_GET_TIME
    lie = req.replace(cmd=0x42, func=0x77, ret=0, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, 0x1234_5000, 64, 9),))
    g.write_arg(where, lie)
    r = g.serve(g.resume(r[3]))
    assert r[0] == OPTEE_SMC_RETURN_OK
    ctx = p.placement.mediator.context(g.domid)
    (buf,) = ctx.rpc_buffers.values()
    seen = MsgArg.unpack(p.machine.read_machine(buf.shadow.maddr, PAGE_SIZE))
    assert (seen.cmd, seen.func) == (OPTEE_RPC_CMD_GET_TIME, 0)
    assert seen.params[0].type == OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT  # OP-TEE's attr, the guest's b only
    g.close_session(session)
    disable_shm_cache(g)
    destroy_and_check(p, g)


# == kept safe under xen: upstream's isolation defects ======================================


def test_registers_not_returned_are_zero(plat, guest):
    # upstream leaves the guest's own x1..x7 (x4..x7 after an RPC); invariant 2
    junk = tuple(0xDEAD_BEEF_0000_0000 | i for i in range(1, 8))
    assert guest.smc(OPTEE_SMC_CALLS_REVISION, *junk) == (2, 0) + (0,) * 6
    assert guest.smc(OPTEE_SMC_CALLS_COUNT, *junk)[1:] == ZEROS
    assert guest.smc(0xB2000010, *junk) == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + ZEROS  # async notif
    session = guest.session(WAIT_UUID)
    ipa = guest.page()
    guest.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_BUSY, session=session,
                                params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = guest.serve(guest.smc(OPTEE_SMC_CALL_WITH_ARG, ipa >> 32, ipa & M32, *junk[2:]),
                    stop=lambda r: rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_FOREIGN_INTR)
    assert r[4:] == (0,) * 4
    assert guest.serve(r)[0] == OPTEE_SMC_RETURN_OK
    guest.close_session(session)


def test_rmem_and_unregister_name_live_registrations_only(plat, guest):
    # upstream passes both cookies to OP-TEE unlooked-up
    session = guest.session(DIGEST_UUID)
    before = reached(plat, guest)
    r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 16, 0xAB),)))
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    r, out = guest.unregister(0xAB)
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    assert reached(plat, guest) == before
    guest.close_session(session)


def test_one_cookie_namespace_and_never_cookie_0(plat, guest):
    # upstream keeps RPC buffers and shared buffers in two lists and takes 0
    before = reached(plat, guest)
    r, out = guest.register(0, 1)
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    assert reached(plat, guest) == before
    c = guest.cookie()
    assert guest.register(c, 2)[1].ret == 0
    session = guest.session(WAIT_UUID)
    ipa = guest.page()
    guest.write_arg(ipa, get_time(session))
    r = guest.start(ipa)
    assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
    r = guest.resume(r[3], *divmod(guest.page(), 1 << 32), *divmod(c, 1 << 32))  # the registration's cookie
    if xen(plat):
        assert r[:3] == (OPTEE_SMC_RETURN_RPC_FREE, c >> 32, c & M32)
        r = guest.resume(r[3])
    assert r[0] == OPTEE_SMC_RETURN_OK and guest.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY
    state = plat.mediator_state(guest.domid)
    assert [(b["cookie"], b["state"], b["pages"]) for b in state["shm_buffers"]] == [(c, "live", 2)]
    assert guest.unregister(c)[1].ret == 0
    guest.close_session(session)


def test_a_refused_call_keeps_nothing_pinned(plat, guest):
    # upstream leaves the buffers of the params translated before the bad
    # one pinned (and counted) until the domain is destroyed
    session = guest.session(DIGEST_UUID)
    r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        tmem(guest, guest.pages(2), 2 * PAGE_SIZE, guest.cookie()),
        tmem(guest, [guest.mmio_page()], 32, guest.cookie(), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))))
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    state = plat.mediator_state(guest.domid)
    assert (state["buffers"], state["pinned_pages"]) == (0, 0)
    guest.close_session(session)


def test_a_null_memref_s_cookie_releases_nothing(plat, guest):
    # upstream's free_shm_buffers frees by the cookie of every tmem param
    # of a completed call, NULL ones included: a NULL memref naming a
    # registration's cookie unpins it while OP-TEE holds it
    c = guest.cookie()
    data = guest.pages(2)
    guest.write(data[0], b"registered")
    assert guest.register(c, 2, buf_ptr=guest.page_list(data))[1].ret == 0
    session = guest.session(DIGEST_UUID)
    out_page = guest.page()
    r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, 0, 0, c),  # NULL, the registration's cookie
        tmem(guest, [out_page], 32, guest.cookie(), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))))
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == 0  # the digest of nothing
    state = plat.mediator_state(guest.domid)
    assert [(b["cookie"], b["state"], b["pages"]) for b in state["shm_buffers"]] == [(c, "live", 2)]
    assert state["pinned_pages"] == 2
    r, out, _ = guest.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
        MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 10, c),
        tmem(guest, [out_page], 32, guest.cookie(), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))))
    assert out.ret == 0  # still registered, still usable
    assert guest.unregister(c)[1].ret == 0
    guest.close_session(session)


@pytest.mark.parametrize("cmd", [OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM])
def test_registrations_have_one_param(plat, guest, cmd):
    # upstream forwards them and, on failure, frees only params[0]'s buffer
    before = reached(plat, guest)
    two = (tmem(guest, [guest.page()], PAGE_SIZE, guest.cookie(), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT),
           tmem(guest, [guest.page()], PAGE_SIZE, guest.cookie(), OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT))
    r, out, _ = guest.call(MsgArg(cmd, params=two))
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    assert reached(plat, guest) == before
    assert plat.mediator_state(guest.domid)["pinned_pages"] == 0


# == SMC32 =================================================================================


def test_the_function_id_is_w0(plat, guest):
    # DEN0028: an SMC32 call's ID is W0; Xen reads (uint32_t)x0. Under
    # stubdom the daemon's policy class, journal and draining read it so too.
    hi = 0xFFFF_0000 << 32
    assert guest.smc(hi | OPTEE_SMC_CALLS_REVISION) == (2, 0) + (0,) * 6
    session = guest.session(WAIT_UUID)
    ipa = guest.page()
    guest.write_arg(ipa, get_time(session))
    plain = guest.smc
    guest.smc = lambda a0, *rest, vcpu=0: plain(hi | a0, *rest, vcpu=vcpu)
    try:  # the whole call, every RETURN_FROM_RPC included
        r = guest.serve(guest.start(ipa))
    finally:
        guest.smc = plain
    assert r[0] == OPTEE_SMC_RETURN_OK and guest.read_arg(ipa).params[0].a == 1234
    assert guest.smc(hi | 1 << 30 | OPTEE_SMC_CALLS_REVISION)[0] == OPTEE_SMC_RETURN_UNKNOWN_FUNCTION  # SMC64
    assert guest.smc(hi | OPTEE_SMC_CALLS_UID)[0] != OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
    guest.close_session(session)


# == a journaled context belongs to its profile ============================================


def test_a_snapshot_restores_under_its_own_profile_only(el2):
    p = el2
    g = _guest(p)
    med = p.placement.mediator
    snap = med.snapshot(g.domid)
    assert snap["profile"] == p.profile_name
    other = STRICT if med.profile is XEN else XEN
    with pytest.raises(BadSnapshot, match=f"taken under profile '{med.profile.name}', "
                                          f"this mediator speaks '{other.name}'"):
        Mediator(p.machine, p.placement.port, profile=other).restore(snap)
    Mediator(p.machine, p.placement.port, profile=med.profile).restore(snap)  # its own: restored
    legacy = {k: v for k, v in snap.items() if k != "profile"}  # a journal from before profiles: strict
    if med.profile is XEN:
        with pytest.raises(BadSnapshot):
            Mediator(p.machine, p.placement.port, profile=XEN).restore(legacy)
    else:
        Mediator(p.machine, p.placement.port, profile=STRICT).restore(legacy)
    destroy_and_check(p, g)
