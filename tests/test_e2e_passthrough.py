"""Issue 3's end-to-end run: a direct-mapped hardware domain, behind the
2017 RFC's pass-through trap (forward, stamp the client ID), drives every
built-in TA through the Linux-like driver; the isolation oracle stays clean.

Run under each capability set a real OP-TEE may announce, so both the
dynamic-shm paths (page lists, REGISTER_SHM, RPC_ARG or RPC ALLOC) and the
reserved-shm pool are exercised.
"""

from __future__ import annotations

import hashlib
import threading

import pytest

from stubdom import workloads
from stubdom.guest import Context, OpteeDriver, PageAllocator, Supplicant
from stubdom.optee import (
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
)
from stubdom.platform import DomainSpec, PassThrough, Platform
from stubdom.tee import REQUIRED_SEC_CAPS, TeeConfig

HWDOM = 0

CAPS = {
    "dynamic+rpc_arg": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_RPC_ARG,
    "dynamic": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    "reserved": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    "reserved+rpc_arg": REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_RPC_ARG,
}


@pytest.fixture
def platform(tmp_path, request):
    caps = CAPS[request.param]
    with Platform(
        tmp_path / "machine",
        nr_frames=16384,
        tee_config=TeeConfig(sec_caps=caps),
        placement=lambda p: PassThrough(p.tee),
        require_pins=False,
        seed=7,
    ) as p:
        yield p
        p.oracle.assert_clean()


def _driver(platform, domain, tmp_path, **kw):
    return OpteeDriver(
        platform.trap_entry(HWDOM),
        domain,
        nr_vcpus=2,
        allocator=PageAllocator.for_domain(domain, seed=11),
        supplicant=Supplicant(),
        **kw,
    )


@pytest.mark.parametrize("platform", sorted(CAPS), indirect=True)
def test_every_ta_end_to_end(platform, tmp_path):
    domain = platform.create_domain(DomainSpec(HWDOM, nr_pages=4096, hwdom=True, direct_mapped=True, static_shm=True))
    driver = _driver(platform, domain, tmp_path)
    info = driver.probe()
    assert info.dynamic_shm == bool(platform.tee.config.sec_caps & OPTEE_SMC_SEC_CAP_DYNAMIC_SHM)
    with Context(driver) as ctx:
        assert workloads.increment(ctx, 99) == 100
        # The reserved pool is 2 MiB, so the 512 KiB buffers fit there too.
        for n in (1, 4095, 4096, 3 * 4096 + 77, 129 * 4096, 512 * 1024):
            data = workloads.random_bytes(n, n)
            assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
            assert workloads.digest_registered(ctx, data) == hashlib.sha256(data).digest()
        assert workloads.digest_short_buffer(ctx) == 32
        assert workloads.storage_round_trip(ctx, b"obj", workloads.random_bytes(20000, 3)) == 20000
        busy, _ = workloads.wait_preempted(ctx)
        assert busy == platform.tee.config.wait_ta_foreign_intr
    driver.shutdown()
    assert driver.pages.allocated_count == 0
    platform.destroy_domain(HWDOM)
    assert platform.machine.pinned_frames() == {}


@pytest.mark.parametrize("platform", ["dynamic+rpc_arg", "dynamic"], indirect=True)
def test_concurrent_vcpus_share_the_tee_threads(platform, tmp_path):
    """Two vCPU threads at once, more calls than the TEE has threads:
    ETHREAD_LIMIT waits and retries in the driver; every digest right."""
    domain = platform.create_domain(DomainSpec(HWDOM, nr_pages=4096, hwdom=True, direct_mapped=True))
    driver = _driver(platform, domain, tmp_path)
    driver.probe()
    errors: list[BaseException] = []

    def worker(vcpu: int) -> None:
        try:
            with Context(driver, vcpu=vcpu) as ctx:
                for i in range(6):
                    data = workloads.random_bytes(4096 * (i + 1) + vcpu, vcpu * 100 + i)
                    workloads.digest_temp(ctx, data)
                    workloads.increment(ctx, i)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    driver.shutdown()
    platform.destroy_domain(HWDOM)
