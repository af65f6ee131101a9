"""``stubdom-teed demo``: the end-to-end run.

A direct-mapped hardware domain with OP-TEE's static shm region mapped 1:1
boots its OP-TEE driver behind the pass-through placement (the 2017 RFC:
forward and stamp the client ID) and uses every built-in TA: value params,
temporary and registered memory up to 512 KiB over scattered guest pages,
secure storage through the supplicant, a call preempted by foreign
interrupts. It prints one line per step and exits non-zero when any answer
is wrong or the isolation oracle saw anything.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from stubdom import workloads
from stubdom.guest import Context, DirectoryStore, OpteeDriver, PageAllocator, Supplicant
from stubdom.platform import DomainSpec, PassThrough, Platform
from stubdom.tee import TeeConfig

HWDOM = 0
DEMO_FRAMES = 16384  # 64 MiB of machine RAM
HWDOM_PAGES = 4096  # 16 MiB: room for 512 KiB buffers and their page lists
BUFFER_SIZES = (1, 4096, 3 * 4096 + 77, 64 * 1024, 512 * 1024)


def run_demo(*, runtime_dir: str | None = None, seed: int = 1, out: TextIO = sys.stdout) -> int:
    def say(step: str, detail: str) -> None:
        print(f"demo: {step:<22} {detail}", file=out, flush=True)

    with ExitStack() as stack:
        root = Path(runtime_dir) if runtime_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        platform = stack.enter_context(
            Platform(
                root / "machine",
                nr_frames=DEMO_FRAMES,
                tee_config=TeeConfig(),
                placement=lambda p: PassThrough(p.tee),
                require_pins=False,  # nothing pins under pass-through; ownership is still checked
                seed=seed,
            )
        )
        say("machine", f"{DEMO_FRAMES} frames at {platform.machine.ram_base:#x}, static shm "
            f"{platform.machine.static_shm.base:#x}+{platform.machine.static_shm.size:#x}, placement passthrough")
        domain = platform.create_domain(
            DomainSpec(HWDOM, nr_pages=HWDOM_PAGES, hwdom=True, direct_mapped=True, static_shm=True, vcpus=2)
        )
        say("dom0", f"{domain.nr_pages} pages direct-mapped, VM_CREATED(client {HWDOM + 1}) accepted")

        driver = OpteeDriver(
            platform.trap_entry(HWDOM),
            domain,
            nr_vcpus=2,
            allocator=PageAllocator.for_domain(domain, seed=seed),
            supplicant=Supplicant(DirectoryStore(root / "dom0-tee-store")),
        )
        info = driver.probe()
        say("probe", f"OP-TEE {info.os_revision[0]}.{info.os_revision[1]}, API {info.api_revision[0]}."
            f"{info.api_revision[1]}, {info.thread_count} threads, caps {info.sec_caps:#x}, "
            f"{'dynamic' if info.dynamic_shm else 'reserved'} shm, rpc params {info.rpc_param_count}")

        t0 = time.perf_counter()
        with Context(driver) as ctx:
            say("increment TA", f"41 + 1 = {workloads.increment(ctx, 41)}")
            for n in BUFFER_SIZES:
                data = workloads.random_bytes(n, seed + n)
                temp = workloads.digest_temp(ctx, data)
                reg = workloads.digest_registered(ctx, data)
                assert temp == reg == hashlib.sha256(data).digest()
                say("digest TA", f"{n:>7} bytes: temp and registered memref = hashlib {temp.hex()[:16]}…")
            say("digest TA", f"8-byte output: SHORT_BUFFER, needs {workloads.digest_short_buffer(ctx)} bytes")
            blob = workloads.random_bytes(10 * 1024 + 3, seed)
            n = workloads.storage_round_trip(ctx, b"demo-object", blob)
            say("storage TA", f"{n} bytes written, read back equal, deleted, gone (FS + SHM_ALLOC RPCs)")
            busy, (sec, nsec) = workloads.wait_preempted(ctx)
            say("wait TA", f"busy call survived {busy} FOREIGN_INTR returns; REE time {sec}.{nsec:09d}")
        elapsed = time.perf_counter() - t0
        stats = driver.stats
        driver.shutdown()
        say("rpc", f"alloc {stats['rpc_alloc']}, free {stats['rpc_free']}, foreign_intr "
            f"{stats['foreign_intr']}, cmd {stats['rpc_cmd']} in {elapsed:.2f} s")
        platform.destroy_domain(HWDOM)
        say("teardown", "driver freed every page, VM_DESTROYED sent, domain destroyed")
        violations = platform.oracle.violations
        if violations:
            for v in violations:
                say("ORACLE", str(v))
            return 1
        say("oracle", "no isolation violation recorded")
    return 0
