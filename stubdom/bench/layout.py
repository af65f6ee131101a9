"""A benchmark cell's guest layout: how many domains, vCPUs each, pages each."""

from __future__ import annotations

from dataclasses import dataclass

from stubdom.tee import TeeConfig
from stubdom.xen.constants import DEFAULT_RAM_BASE, OPTEE_SHMEM_SIZE, OPTEE_SHMEM_START

__all__ = ["Layout", "FIRST_DOMID"]

FIRST_DOMID = 1  # domUs on scattered memory (dynamic shm only); dom0 is not benchmarked
_PAGE = 4096
# RAM must reach past OP-TEE's static shm carve-out (xen/constants.py)
_STATIC_END_FRAMES = (OPTEE_SHMEM_START + OPTEE_SHMEM_SIZE - DEFAULT_RAM_BASE) // _PAGE
_SLACK_FRAMES = 4096  # mediator shadow pages (domheap) and page-list pages


@dataclass(frozen=True)
class Layout:
    domains: int
    vcpus_per_domain: int
    pages_per_domain: int = 1024  # 4 MiB: a 129-page temp memref, its copy and page lists fit

    @property
    def vcpus_total(self) -> int:
        return self.domains * self.vcpus_per_domain

    @property
    def domids(self) -> list[int]:
        return list(range(FIRST_DOMID, FIRST_DOMID + self.domains))

    @property
    def nr_frames(self) -> int:
        return _STATIC_END_FRAMES + self.domains * self.pages_per_domain + _SLACK_FRAMES

    def tee_config(self) -> TeeConfig:
        """OP-TEE built for this layout: a partition per domain and a thread
        per vCPU (CFG_VIRT_GUEST_COUNT, CFG_NUM_THREADS)."""
        return TeeConfig(guest_count=max(4, self.domains), threads_per_guest=max(4, self.vcpus_per_domain))

    def describe(self) -> dict:
        return {"domains": self.domains, "vcpus_per_domain": self.vcpus_per_domain,
                "vcpus_total": self.vcpus_total, "pages_per_domain": self.pages_per_domain}
