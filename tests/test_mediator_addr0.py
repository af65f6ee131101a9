"""No machine address 0 ever reaches OP-TEE (Xen's optee.c leaves it as a
TODO): OP-TEE reads a zero buffer address as a NULL memref, so a guest page
that happens to be machine frame 0 must be refused, and the mediator's own
shadow pages must never be frame 0.

The platform's machines start RAM at 0x4000_0000, so these tests build a
machine whose RAM starts at 0 (``Machine.create(ram_base=0)``) and wire the
same EL2 placement and trap path onto it, under each mediator profile (the
``xen`` profile keeps this safe behaviour over upstream's TODO)."""

from __future__ import annotations

import pytest

from stubdom.hostile import BASE_CAPS, HostileGuest
from stubdom.mediator import PROFILE_NAMES, profile_named
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
    rpc_func,
)
from stubdom.platform import route_smc
from stubdom.platform.el2 import El2Placement
from stubdom.tee import IsolationOracle, OpteeModel, TeeConfig
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    WAIT_CMD_GET_TIME,
    WAIT_UUID,
)
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, Machine

NR_FRAMES = 1024
STATIC_BASE, STATIC_SIZE = 0x8_0000, 0x4_0000  # inside RAM [0, 4 MiB)


class ZeroBasedPlatform:
    """The parts of Platform a guest and the EL2 placement use, on a machine
    whose RAM starts at machine address 0."""

    def __init__(self, path, *, seed: int, profile: str = "strict") -> None:
        self.machine = Machine.create(path, nr_frames=NR_FRAMES, ram_base=0, seed=seed,
                                      static_shm_base=STATIC_BASE, static_shm_size=STATIC_SIZE)
        self.oracle = IsolationOracle(self.machine, require_pins=True)
        self.tee = OpteeModel(self.machine, TeeConfig(sec_caps=BASE_CAPS, guest_count=8), self.oracle)
        self.placement = El2Placement(self, profile=profile_named(profile))

    def create_domain(self, domid: int, nr_pages: int):
        dom = self.machine.create_domain(domid, nr_pages=nr_pages)
        self.placement.domain_init(domid)
        return dom

    def domain(self, domid: int):
        return self.machine.domain(domid)

    def trap_entry(self, domid: int):
        return lambda vcpu, regs: route_smc(self.placement, domid, vcpu, regs)

    def close(self) -> None:
        for domid in self.machine.domains():
            while not self.placement.relinquish_resources(domid):
                pass
            self.placement.domain_teardown(domid)
            self.machine.destroy_domain(domid)
        self.machine.close()


@pytest.fixture(params=PROFILE_NAMES)
def zero(tmp_path, request):
    """A domU that owns machine frame 0 (seed chosen so it does; checked),
    under each profile."""
    p = ZeroBasedPlatform(tmp_path / "m", seed=0, profile=request.param)
    p.create_domain(1, p.machine.free_frames - 40)  # leaves room for the shadow pool
    g = HostileGuest(p, 1)
    gfn0 = next(gfn for gfn in g.dom.ram_gfns() if g.dom.lookup(gfn).mfn == 0)
    g.ipa0 = gfn0 << PAGE_SHIFT  # an ordinary, non-zero IPA backed by frame 0
    assert g.ipa0 != 0
    yield p, g
    p.oracle.assert_clean()
    p.close()


def test_tmem_page_at_machine_address_0_is_refused(zero):
    p, g = zero
    session = g.session(DIGEST_UUID)
    out_page = g.page()
    for pages in ([g.ipa0], [g.page(), g.ipa0]):
        r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session,
                                  params=(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                        g.page_list(pages), len(pages) * PAGE_SIZE, 1),
                                          MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                        g.page_list([out_page]), 32, 2))))
        assert r[0] == OPTEE_SMC_RETURN_OK
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
        assert p.machine.frame_refcount(0) == 0
    # The same call without frame 0 works: the refusal was about frame 0.
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session,
                              params=(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                    g.page_list([g.page()]), PAGE_SIZE, 1),
                                      MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                                    g.page_list([out_page]), 32, 2))))
    assert out.ret == 0


def test_registration_including_machine_address_0_is_refused(zero):
    p, g = zero
    r, out = g.register(0x99, 2, buf_ptr=g.page_list([g.page(), g.ipa0]))
    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_COMMS)
    assert p.machine.frame_refcount(0) == 0 and p.placement.mediator.context(1).shm_buffers == {}


def test_plain_shm_alloc_reply_at_machine_address_0_is_refused(zero):
    p, g = zero
    session = g.session(STORAGE_UUID)

    def at_frame_zero(guest, req):
        return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, g.ipa0, req.params[0].b, 0x5150)

    g.shm_alloc_hook = at_frame_zero
    g.shm_frees.clear()  # the storage TA's load handed its image buffer back
    obj, data = g.page(), g.page()
    g.write(obj, b"id")
    r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=session, params=(
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([obj]), 2, 1),
        MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([data]), 8, 2))))
    assert OPTEE_RPC_CMD_SHM_ALLOC in g.rpc_cmds
    # handed back, never passed on; OP-TEE's REE FS asks again to remove the
    # dirf.db it could not open (ree_fs_open_primitive), which fails the same way
    assert g.shm_frees and set(g.shm_frees) == {(OPTEE_RPC_SHM_TYPE_APPL, 0x5150)}
    assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_OUT_OF_MEMORY
    assert p.machine.frame_refcount(0) == 0


def test_rpc_alloc_reply_at_machine_address_0_is_refused(zero):
    p, g = zero
    session = g.session(WAIT_UUID)
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.start(ipa)
    assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
    r = g.serve(g.reply(r, alloc_ipa=g.ipa0))
    assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY
    assert p.machine.frame_refcount(0) == 0 and p.placement.mediator.context(1).rpc_buffers == {}


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_shadow_pool_never_uses_frame_0(tmp_path, profile):
    # Seed chosen so that frame 0 stays free for the domain's heap pages and
    # the pool's preallocation draws it (both checked).
    p = ZeroBasedPlatform(tmp_path / "m", seed=20, profile=profile)
    try:
        p.machine.create_domain(1, nr_pages=p.machine.free_frames - 9)
        assert p.machine.frame_owner(0) != 1
        p.placement.domain_init(1)  # preallocates 2 x 4 shadow pages
        assert p.machine.frame_owner(0) == 1  # the heap did hand out frame 0 ...
        pool = p.placement.mediator.context(1).pool
        assert 0 not in pool.idle_mfns and len(pool.idle_mfns) == 8  # ... and the pool set it aside
        assert p.machine.frame_refcount(0) == 0
        g = HostileGuest(p, 1)
        assert g.session(WAIT_UUID)  # the pool works
        while not p.placement.relinquish_resources(1):
            pass
        p.placement.domain_teardown(1)  # frame 0 freed with the rest (invariants checked)
        assert p.machine.frame_owner(0) != 1
        p.machine.destroy_domain(1)
        p.oracle.assert_clean()
    finally:
        p.machine.close()
