"""Large buffers: the 129-page cap is a policy default, not a design limit.
A buffer is translated and pinned in bounded steps (TRANSLATE_STEP pages),
its pages accounted against the limits before the first step; between steps
a teardown begun elsewhere stops the work, all or nothing.  See
docs/mediator.md, "Large buffers", for why the steps run inside the trap."""

from __future__ import annotations

import hashlib

import pytest

from stubdom import workloads
from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant, TeecError
from stubdom.hostile import HostileGuest, make_platform
from stubdom.mediator import DEFAULT_MAX_PAGES_PER_BUFFER, DomainLimits
from stubdom.mediator.limits import TRANSLATE_STEP
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_SMC_RETURN_OK,
    TEEC_ERROR_BAD_STATE,
    TEEC_ERROR_GENERIC,
    TEEC_ORIGIN_API,
    TEEC_ORIGIN_COMMS,
    MsgArg,
    MsgParam,
)
from stubdom.platform import DomainSpec
from stubdom.tee.tas import DIGEST_CMD_SHA256, DIGEST_UUID
from stubdom.xen import PAGE_SIZE

BIG = 2 * 1024 * 1024 + 77  # 513 pages: two page-list pages, many translation steps
NPAGES = -(-BIG // PAGE_SIZE)
RAISED = DomainLimits(max_pages_per_buffer=1024, max_total_pages=4096)


def _record_pin_steps(p) -> list[int]:
    steps: list[int] = []
    real = p.machine.get_pages

    def get_pages(mfns, domid):
        mfns = list(mfns)
        steps.append(len(mfns))
        return real(mfns, domid)

    p.machine.get_pages = get_pages
    return steps


def _driver(p, domid: int) -> OpteeDriver:
    dom = p.create_domain(DomainSpec(domid, nr_pages=2048))
    drv = OpteeDriver(p.trap_entry(domid), dom, allocator=PageAllocator.for_domain(dom, seed=domid),
                      supplicant=Supplicant())
    drv.probe()
    return drv


def test_a_2mib_buffer_under_a_raised_policy(tmp_path):
    with make_platform(tmp_path / "m", "el2", limits=RAISED) as p:
        drv = _driver(p, 1)
        data = workloads.random_bytes(BIG, 1)
        steps = _record_pin_steps(p)
        with Context(drv) as ctx:
            assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
            assert max(steps) <= TRANSLATE_STEP
            # the input buffer's REGISTER_SHM (libteec registers a temporary
            # memref), pinned TRANSLATE_STEP pages at a time
            full, rest = divmod(NPAGES, TRANSLATE_STEP)
            run = [TRANSLATE_STEP] * full + ([rest] if rest else [])
            assert any(steps[i:i + len(run)] == run for i in range(len(steps))), steps
            assert workloads.digest_registered(ctx, data) == hashlib.sha256(data).digest()
        drv.shutdown()  # its argument cache stays registered until then, as Linux's does
        assert p.placement.mediator.context(1).pinned_pages == 0
        p.oracle.assert_clean()


def test_the_same_buffer_is_refused_under_the_default_policy(tmp_path):
    assert NPAGES > DEFAULT_MAX_PAGES_PER_BUFFER
    with make_platform(tmp_path / "m", "el2") as p:
        drv = _driver(p, 1)
        with Context(drv) as ctx:
            # libteec's TEEC_RegisterSharedMemory of the temporary memref:
            # refused (Linux: -EINVAL), its shadow buffer refused too
            with pytest.raises(TeecError) as e:
                workloads.digest_temp(ctx, workloads.random_bytes(BIG, 1))
            assert (e.value.ret, e.value.origin) == (TEEC_ERROR_GENERIC, TEEC_ORIGIN_API)
        drv.shutdown()
        assert p.placement.mediator.context(1).pinned_pages == 0
        p.oracle.assert_clean()


def test_teardown_begun_between_steps_stops_the_translation(tmp_path):
    with make_platform(tmp_path / "m", "el2", limits=RAISED) as p:
        p.create_domain(DomainSpec(1, nr_pages=2048))
        g = HostileGuest(p, 1)
        session = g.session(DIGEST_UUID)
        pages = g.pages(NPAGES)
        ctx = p.placement.mediator.context(1)
        steps = _record_pin_steps(p)
        real = p.machine.get_pages

        def get_pages(mfns, domid):
            real(mfns, domid)
            if len(steps) == 1:
                ctx.dying = True  # another CPU started relinquish_resources now

        p.machine.get_pages = get_pages
        r, out, _ = g.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=DIGEST_CMD_SHA256, session=session, params=(
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, g.page_list(pages), BIG, 1),
            MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                          g.page_list([g.page()]), 32, 2))))
        assert r[0] == OPTEE_SMC_RETURN_OK
        assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_STATE, TEEC_ORIGIN_COMMS)
        assert steps == [TRANSLATE_STEP]  # one step taken, then stopped ...
        assert ctx.pinned_pages == 0 and ctx.nr_buffers == 0  # ... and undone
        assert all(p.machine.frame_refcount(g.frame_of(ipa)) == 0 for ipa in pages)
        p.destroy_domain(1)
        assert p.machine.pinned_frames(1) == {}
        p.oracle.assert_clean()
