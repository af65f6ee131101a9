"""RPC paths of the mediator that an honest Linux guest rarely takes: an
SHM_ALLOC reply the mediator cannot translate (the guest is asked to free
it, then OP-TEE's allocation fails), the same when even that request cannot
be written, and RPC argument buffers in the hardware domain's static region."""

from __future__ import annotations

import hashlib

import pytest

from stubdom.hostile import BASE_CAPS, HostileGuest, make_platform
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_OUT_OF_MEMORY,
    MsgArg,
    MsgParam,
    rpc_func,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    WAIT_CMD_GET_TIME,
    WAIT_UUID,
)
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, P2mType

CAPS = {"rpc_alloc": BASE_CAPS, "rpc_arg": BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG}


def _tmem_in(g: HostileGuest, data: bytes, cookie: int) -> MsgParam:
    pages = g.pages(-(-len(data) // PAGE_SIZE))
    for i, ipa in enumerate(pages):
        g.write(ipa, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
    return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                         g.page_list(pages), len(data), cookie)


def _storage_write(g: HostileGuest, session: int, function: int) -> MsgArg:
    return MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=STORAGE_CMD_WRITE, session=session, params=(
        _tmem_in(g, b"object-1", 1), _tmem_in(g, b"x" * 100, 2)))


def _bad_reply(kind: str):
    """An SHM_ALLOC answer the mediator must not hand to OP-TEE."""

    def hook(g: HostileGuest, req: MsgArg) -> MsgParam:
        size = req.params[0].b
        c = g.cookie()
        g.bad_cookies.append(c)
        if kind == "mmio_in_list":
            return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                 g.page_list([g.mmio_page()]), size, c)
        if kind == "plain_unmapped":
            return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, g.unmapped_page(), size, c)
        if kind == "plain_readonly":
            return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, g.readonly_page(), size, c)
        assert kind == "plain_two_pages"
        return MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, g.page() + 8, PAGE_SIZE, c)

    return hook


@pytest.mark.parametrize("caps", sorted(CAPS))
@pytest.mark.parametrize("kind", ["mmio_in_list", "plain_unmapped", "plain_readonly", "plain_two_pages"])
def test_untranslatable_shm_alloc_is_freed_by_the_guest_then_fails_in_the_tee(tmp_path, caps, kind):
    with make_platform(tmp_path / "m", "el2", caps=CAPS[caps]) as p:
        p.create_domain(DomainSpec(1, nr_pages=512))
        g = HostileGuest(p, 1)
        g.negotiate()
        function = OPTEE_SMC_CALL_WITH_RPC_ARG if g.rpc_arg else OPTEE_SMC_CALL_WITH_ARG
        session = g.session(STORAGE_UUID)
        g.shm_frees.clear()  # the storage TA's load handed its image buffer back
        del g.rpc_cmds[:]
        g.bad_cookies = []
        g.shm_alloc_hook = _bad_reply(kind)
        r, out, _ = g.call(_storage_write(g, session, function), function=function)
        # The guest was asked, in OP-TEE's words, to free exactly each buffer
        # (type APPL, its cookie), right after it offered it (OP-TEE's REE FS
        # asks more than once: it tries to remove the dirf.db it could not
        # open) ...
        assert g.bad_cookies and g.shm_frees == [(OPTEE_RPC_SHM_TYPE_APPL, c) for c in g.bad_cookies]
        allocs = [i for i, cmd in enumerate(g.rpc_cmds) if cmd == OPTEE_RPC_CMD_SHM_ALLOC]
        assert len(allocs) == len(g.bad_cookies)
        assert all(g.rpc_cmds[i + 1] == OPTEE_RPC_CMD_SHM_FREE for i in allocs), g.rpc_cmds
        # ... and OP-TEE saw a failed allocation: the TA's write failed with
        # OUT_OF_MEMORY, and OP-TEE never asked for a free itself.
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_OUT_OF_MEMORY
        ctx = p.placement.mediator.context(1)
        assert ctx.shm_buffers == {} and ctx.pinned_pages == 0 and ctx.nr_buffers == 0
        assert set(p.machine.pinned_frames(1)) == ctx.pool.idle_mfns  # shadow pages only
        # An honest answer works afterwards on the same session: OP-TEE gets
        # its buffer and goes on to the file system request (which this
        # guest, having no supplicant, answers NOT_SUPPORTED).
        g.shm_alloc_hook = None
        del g.rpc_cmds[:]
        r, out, _ = g.call(_storage_write(g, session, function), function=function)
        assert r[0] == OPTEE_SMC_RETURN_OK and out.ret == TEEC_ERROR_NOT_SUPPORTED
        assert g.rpc_cmds[:2] == [OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_FS]
        assert ctx.shm_buffers == {} and ctx.pinned_pages == 0  # OP-TEE freed its cache
        p.oracle.assert_clean()


def test_shm_free_that_cannot_be_written_fails_the_allocation_at_once(tmp_path):
    """The guest's RPC buffer turns read-only before the mediator can ask
    for the free: the mediator fails OP-TEE's allocation immediately."""
    with make_platform(tmp_path / "m", "el2") as p:
        p.create_domain(DomainSpec(1, nr_pages=512))
        g = HostileGuest(p, 1)
        session = g.session(STORAGE_UUID)
        g.shm_frees.clear()  # the storage TA's load handed its image buffer back
        ipa = g.page()
        g.write_arg(ipa, _storage_write(g, session, OPTEE_SMC_CALL_WITH_ARG))
        r = g.start(ipa)
        while True:
            assert rpc_func(r[0]) in (OPTEE_SMC_RPC_FUNC_ALLOC, OPTEE_SMC_RPC_FUNC_CMD)
            if rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_CMD:
                rpc_ipa = g.rpc_arg_ipa(r)
                req = g.read_arg(rpc_ipa)
                if req.cmd == OPTEE_RPC_CMD_SHM_ALLOC:
                    break
            r = g.reply(r)
        g.write_arg(rpc_ipa, req.replace(ret=0, params=(MsgParam.tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, g.mmio_page(), req.params[0].b, 0x77),)))
        g.dom.set_type(rpc_ipa >> PAGE_SHIFT, P2mType.p2m_ram_ro)
        r = g.resume(r[3])
        # No SHM_FREE could be asked for; OP-TEE went on and failed the write.
        g.dom.set_type(rpc_ipa >> PAGE_SHIFT, P2mType.p2m_ram_rw)
        r = g.serve(r)
        assert g.shm_frees == []
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY
        assert p.placement.mediator.context(1).pinned_pages == 0
        p.oracle.assert_clean()


def _get_time(g: HostileGuest, session: int, alloc_ipa: int):
    """A GET_TIME invoke whose RPC ALLOC is answered with ``alloc_ipa``."""
    ipa = g.page()
    g.write_arg(ipa, MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=WAIT_CMD_GET_TIME, session=session,
                            params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),)))
    r = g.start(ipa)
    assert rpc_func(r[0]) == OPTEE_SMC_RPC_FUNC_ALLOC
    return ipa, g.reply(r, alloc_ipa=alloc_ipa)


def test_static_region_rpc_buffer_for_the_hwdom(tmp_path):
    with make_platform(tmp_path / "m", "el2") as p:
        p.create_domain(DomainSpec(0, nr_pages=1024, hwdom=True, direct_mapped=True, static_shm=True))
        g = HostileGuest(p, 0)
        shm = p.machine.static_shm
        session = g.session(WAIT_UUID)
        # 8-byte aligned, not page aligned: OP-TEE's rule for the static pool.
        ipa, r = _get_time(g, session, shm.base + 0x208)
        assert r[0] == OPTEE_SMC_RETURN_RPC_CMD
        buf = next(iter(p.placement.mediator.context(0).rpc_buffers.values()))
        assert buf.mfn is None and buf.ipa == shm.base + 0x208  # nothing of Xen's pinned
        assert g.read_arg(shm.base + 0x208).cmd == OPTEE_RPC_CMD_GET_TIME  # via the shadow
        r = g.serve(r)
        assert r[0] == OPTEE_SMC_RETURN_OK
        out = g.read_arg(ipa)
        assert out.ret == 0 and (out.params[0].a, out.params[0].b) == (1234, 5678)
        assert p.placement.mediator.context(0).rpc_buffers == {}
        # Misaligned inside the region: refused; OP-TEE is resumed with no
        # buffer (address and cookie 0, as Linux answers a failed ALLOC), so
        # its RPC fails and the call ends with OUT_OF_MEMORY.
        ipa, r = _get_time(g, session, shm.base + 0x204)
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY
        assert set(p.machine.pinned_frames(0)) == p.placement.mediator.context(0).pool.idle_mfns
        p.oracle.assert_clean()


@pytest.mark.parametrize("hwdom,direct", [(False, False), (True, False), (False, True)])
def test_static_region_rpc_buffer_refused_for_anyone_else(tmp_path, hwdom, direct):
    with make_platform(tmp_path / "m", "el2") as p:
        p.create_domain(DomainSpec(2, nr_pages=512, hwdom=hwdom, direct_mapped=direct))
        g = HostileGuest(p, 2)
        shm = p.machine.static_shm
        ipa, r = _get_time(g, g.session(WAIT_UUID), shm.base + 0x208)
        assert r[0] == OPTEE_SMC_RETURN_OK and g.read_arg(ipa).ret == TEEC_ERROR_OUT_OF_MEMORY
        assert p.placement.mediator.context(2).rpc_buffers == {}
        p.oracle.assert_clean()


def test_op_tee_shm_free_naming_a_registration_leaves_it_registered_and_pinned(tmp_path):
    """OP-TEE's SHM_FREE frees only RPC SHM (what it allocated through the
    guest): an SHM_FREE naming a cookie the guest registered itself must not
    unpin that registration, which OP-TEE may still read."""
    with make_platform(tmp_path / "m", "el2") as p:
        p.create_domain(DomainSpec(1, nr_pages=512))
        g = HostileGuest(p, 1)
        session = g.session(WAIT_UUID)
        cookie = 0x5150
        data = bytes(range(256)) * 32
        pages = g.pages(2)
        g.write(pages[0], data[:PAGE_SIZE])
        g.write(pages[1], data[PAGE_SIZE:])
        assert g.register(cookie, 2, buf_ptr=g.page_list(pages))[1].ret == 0
        ctx = p.placement.mediator.context(1)
        pins = p.machine.pinned_frames(1)
        inner = p.tee.smc
        left = [1]

        def smc(regs):  # the GET_TIME request becomes SHM_FREE(cookie) once
            r = inner(regs)
            if left[0] and regs[7] == 2 and rpc_func(r[0] & 0xFFFFFFFF) == OPTEE_SMC_RPC_FUNC_CMD:
                left[0] = 0
                buf = ctx.rpc_buffers[(r[1] << 32) | r[2]]
                p.machine.write_machine(buf.shadow.maddr, MsgArg(OPTEE_RPC_CMD_SHM_FREE, params=(
                    MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_RPC_SHM_TYPE_APPL, cookie),)).pack())
            return r

        p.tee.smc = smc
        ipa, r = _get_time(g, session, g.page())
        assert r[0] == OPTEE_SMC_RETURN_RPC_CMD and left == [0]
        assert g.serve(r)[0] == OPTEE_SMC_RETURN_OK
        p.tee.smc = inner
        assert cookie in ctx.shm_buffers
        assert {m: n for m, n in p.machine.pinned_frames(1).items() if m in pins} == pins
        # OP-TEE still uses it: a digest over the registration reads pinned pages only.
        out = g.page()
        _, res, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256,
                                  session=g.session(DIGEST_UUID), params=(
            MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, len(data), cookie),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list([out]), 32, 9))))
        assert res.ret == 0 and g.dom.read(out, 32) == hashlib.sha256(data).digest()
        p.oracle.assert_clean()
        assert g.unregister(cookie)[1].ret == 0
