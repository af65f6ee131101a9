"""A guest whose kernel runs in this process: the platform builds its domain
and serves its vCPUs' traps (the vCPU host); here run its OP-TEE driver, the
TEE subsystem over it and the device server its processes reach.

    kernel = GuestKernel.boot(runtime_dir, domid=3, nr_pages=4096, vcpus=2, wait=30)
    ...                                   # kernel.tee, kernel.device_path
    kernel.shutdown()                     # processes dropped, driver removed, domain destroyed
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from stubdom.guest import OpteeDriver, ProbeInfo
from stubdom.guest.teecore import TeeSubsystem
from stubdom.rundir import make_private_dir
from stubdom.xen import Machine

from .vcpus import PlatformLease, VcpuPool, attach_domain

__all__ = ["GuestKernel", "device_dir"]

log = logging.getLogger("stubdom.guestdev")


def device_dir(runtime_dir: str | os.PathLike[str], domid: int) -> Path:
    """``<runtime_dir>/guestdev/d<domid>``: the guest's device socket ``tee``."""
    return Path(runtime_dir) / "guestdev" / f"d{domid}"


@dataclass
class GuestKernel:
    """One booted guest kernel (see the module docstring)."""

    domid: int
    lease: PlatformLease
    machine: Machine
    vcpus: VcpuPool
    driver: OpteeDriver
    info: ProbeInfo
    tee: TeeSubsystem
    device_path: Path

    @classmethod
    def boot(cls, runtime_dir: str | os.PathLike[str], *, domid: int, nr_pages: int, vcpus: int,
             wait: float) -> GuestKernel:
        lease = attach_domain(runtime_dir, domid, nr_pages=nr_pages, vcpus=vcpus, wait=wait)
        machine = None
        try:
            machine = Machine.attach(lease.machine)
            domain = machine.domain(domid)
            pool = VcpuPool(domid, lease.vcpus)
            driver = OpteeDriver(pool.trap, domain, nr_vcpus=vcpus, seed=domid)
            info = driver.probe()
            first = machine.first_mfn

            def frame_of(ipa: int) -> int:
                return domain.lookup(ipa >> 12).mfn - first

            tee = TeeSubsystem(driver, frame_of=frame_of)
            ddir = device_dir(runtime_dir, domid)
            make_private_dir(ddir.parent)
            make_private_dir(ddir)
            return cls(domid, lease, machine, pool, driver, info, tee, ddir / "tee")
        except BaseException:
            lease.release()
            if machine is not None:
                machine.close()
            lease.close()
            raise

    @property
    def ram_path(self) -> Path:
        return self.machine.ram_path

    def shutdown(self) -> dict:
        """Release what the processes left, remove the driver (sessions closed,
        buffers unregistered), then have the platform destroy the domain.
        Returns the platform's answer."""
        try:
            self.tee.shutdown()
        except Exception as e:  # the platform may be gone: still give the domain back
            log.warning("d%d: driver shutdown failed: %s", self.domid, e)
        answer = self.lease.release()
        self.machine.close()
        self.lease.close()
        for leftover in (self.device_path,):
            leftover.unlink(missing_ok=True)
        try:
            self.device_path.parent.rmdir()
        except OSError:
            pass
        return answer
