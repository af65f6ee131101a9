"""Issue 4's end-to-end run under the EL2 placement: dom0 (direct-mapped,
static shm) and two domUs on scattered memory (dynamic shm only) run every
built-in TA at once from their own threads through the Linux-like driver;
digests equal hashlib's, the isolation oracle (require_pins=True) records
nothing, and after each domain is destroyed none of its frames is pinned and
its TEE partition is gone."""

from __future__ import annotations

import hashlib
import threading

import pytest

from stubdom import workloads
from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant
from stubdom.mediator import client_id, profile_named
from stubdom.optee import (
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
)
from stubdom.platform import DomainSpec, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.tee import REQUIRED_SEC_CAPS, TeeConfig

BASE = REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM
CAPS = {"rpc_arg": BASE | OPTEE_SMC_SEC_CAP_RPC_ARG, "rpc_alloc": BASE}
DOMAINS = (
    DomainSpec(0, nr_pages=2048, hwdom=True, direct_mapped=True, static_shm=True, vcpus=2),
    DomainSpec(1, nr_pages=2048, vcpus=2),
    DomainSpec(2, nr_pages=2048, vcpus=2),
)


def _workload(ctx: Context, seed: int) -> None:
    assert workloads.increment(ctx, seed) == seed + 1
    for n in (1, 4095, 3 * 4096 + 77, 129 * 4096):
        data = workloads.random_bytes(n, seed * 1000 + n)
        assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
        assert workloads.digest_registered(ctx, data) == hashlib.sha256(data).digest()
    assert workloads.digest_short_buffer(ctx) == 32
    blob = workloads.random_bytes(20000, seed)
    assert workloads.storage_round_trip(ctx, b"obj%d" % seed, blob) == len(blob)
    busy, _ = workloads.wait_preempted(ctx)
    assert busy >= 1


@pytest.mark.parametrize("profile", ["strict", "xen"])
@pytest.mark.parametrize("caps", sorted(CAPS))
def test_three_domains_run_every_ta_concurrently(tmp_path, caps, profile):
    with Platform(tmp_path / "machine", nr_frames=32768, tee_config=TeeConfig(sec_caps=CAPS[caps]),
                  placement=lambda p: El2Placement(p, profile=profile_named(profile)), require_pins=True,
                  seed=9) as p:
        drivers = {}
        for spec in DOMAINS:
            dom = p.create_domain(spec)
            drivers[spec.domid] = OpteeDriver(
                p.trap_entry(spec.domid), dom, nr_vcpus=spec.vcpus,
                allocator=PageAllocator.for_domain(dom, seed=spec.domid + 1),
                supplicant=Supplicant())
            info = drivers[spec.domid].probe()
            assert info.dynamic_shm
            if profile == "xen":  # what Linux negotiates behind Xen 4.22
                assert (info.thread_count, info.rpc_param_count, info.static_shm) == (0, 0, None)
        errors: list[BaseException] = []

        def run(domid: int, vcpu: int) -> None:
            try:
                with Context(drivers[domid], vcpu=vcpu) as ctx:
                    _workload(ctx, domid * 10 + vcpu)
            except BaseException as e:  # re-raised in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(s.domid, v)) for s in DOMAINS for v in range(s.vcpus)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        p.oracle.assert_clean()
        mediator = p.placement.mediator
        for spec in DOMAINS:
            assert mediator.context(spec.domid).internal_errors == 0
            drivers[spec.domid].shutdown()
            owned = set(p.domain(spec.domid).ram_gfns())
            mfns = {p.domain(spec.domid).lookup(g).mfn for g in owned}
            p.destroy_domain(spec.domid)
            assert not set(p.machine.pinned_frames()) & mfns
            assert p.machine.pinned_frames(spec.domid) == {}
            assert client_id(spec.domid) not in p.tee.guest_ids()
        assert p.machine.pinned_frames() == {}
        p.oracle.assert_clean()


def test_destroy_with_buffers_still_registered(tmp_path):
    """A guest that dies holding registered buffers and cached RPC buffers:
    teardown releases them all, then VM_DESTROYED; nothing stays pinned."""
    with Platform(tmp_path / "machine", nr_frames=32768, tee_config=TeeConfig(sec_caps=BASE),
                  placement=El2Placement, seed=2) as p:
        dom = p.create_domain(DomainSpec(1, nr_pages=2048))
        drv = OpteeDriver(p.trap_entry(1), dom, allocator=PageAllocator.for_domain(dom, seed=3),
                          supplicant=Supplicant())
        drv.probe()
        ctx = Context(drv)
        shms = [ctx.register_memory(5 * 4096) for _ in range(3)]
        workloads.wait_preempted(ctx)  # an RPC CMD: OP-TEE allocates (and caches) an RPC buffer
        mctx = p.placement.mediator.context(1)
        assert len(mctx.shm_buffers) >= 3 and mctx.pinned_pages >= 15 and mctx.rpc_buffers
        # Abandon everything without telling OP-TEE (the guest died).
        p.destroy_domain(1)
        assert p.machine.pinned_frames() == {}
        assert client_id(1) not in p.tee.guest_ids()
        del shms
        p.oracle.assert_clean()
