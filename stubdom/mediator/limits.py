"""Every limit of the mediator, each a named constant with its reason, and
the per-domain limits a policy (issue 6) fills in."""

from __future__ import annotations

from dataclasses import dataclass

from stubdom.optee.msg import OPTEE_MSG_NONCONTIG_PAGE_SIZE

__all__ = [
    "DomainLimits",
    "DEFAULT_MAX_PAGES_PER_BUFFER",
    "DEFAULT_MAX_SHM_BUFFERS",
    "DEFAULT_MAX_TOTAL_PAGES",
    "DEFAULT_MAX_CALLS",
    "MAX_RPC_BUFFERS_PER_THREAD",
    "RELINQUISH_BATCH",
    "TRANSLATE_STEP",
    "LOG_BURST",
    "LOG_REFILL_SECONDS",
]

# GlobalPlatform requires a TEE to accept shared buffers of at least 512 KiB;
# one more page covers a buffer that does not start on a page boundary.
# Xen's mediator hard-codes this (MAX_SHM_BUFFER_PG); here it is a default.
DEFAULT_MAX_PAGES_PER_BUFFER = 512 * 1024 // OPTEE_MSG_NONCONTIG_PAGE_SIZE + 1  # 129
# Buffers (registered, temporary, RPC-allocated) a domain may have pinned at
# once; Xen allows 16.  Linux registers one per open tee_shm, so be roomier.
DEFAULT_MAX_SHM_BUFFERS = 64
# Pages a domain may keep pinned through the mediator at once (Xen: 16384,
# 64 MiB): bounds how much of the machine one guest can lock down.
DEFAULT_MAX_TOTAL_PAGES = 16384
# Calls in flight; the effective limit is also capped by OP-TEE's per-guest
# thread count (a call beyond it could only get ETHREAD_LIMIT anyway).
DEFAULT_MAX_CALLS = 64
# OP-TEE keeps at most one cached RPC argument buffer per thread, and asks for
# a new one only after freeing the old one; two per thread leaves room for a
# FREE and the next ALLOC to overlap without letting a guest pile them up.
MAX_RPC_BUFFERS_PER_THREAD = 2
# Items (calls, buffers, pages) released per relinquish_resources round, so
# tearing down a huge domain never holds the trapping CPU for long (Xen
# checks hypercall_preempt_check every 64 items).
RELINQUISH_BATCH = 64
# Guest pages translated and pinned per step. Between steps a stub domain
# serves other domains' requests and the domain's dying flag is re-checked:
# no guest's buffer holds the mediator for long (about 50 µs of Python here,
# the order of one honest fast call; docs/performance.md, "Fair service").
TRANSLATE_STEP = 16
# Rate limit of guest-triggerable log lines, per domain: a burst, then one
# line per refill period (Xen's printk rate limit: 10 lines per 5 seconds).
LOG_BURST = 10
LOG_REFILL_SECONDS = 0.5


def _positive(name: str, value: object) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"DomainLimits.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True)
class DomainLimits:
    """What one domain may hold through the mediator at once.

    max_calls             standard calls in flight (also capped by OP-TEE's threads)
    max_shm_buffers       pinned shared buffers (registered + temporary + RPC SHM_ALLOC)
    max_pages_per_buffer  pages of one buffer (ceil((offset + size) / 4096))
    max_total_pages       pages pinned on the domain's behalf in all its buffers
    """

    max_calls: int = DEFAULT_MAX_CALLS
    max_shm_buffers: int = DEFAULT_MAX_SHM_BUFFERS
    max_pages_per_buffer: int = DEFAULT_MAX_PAGES_PER_BUFFER
    max_total_pages: int = DEFAULT_MAX_TOTAL_PAGES

    def __post_init__(self) -> None:
        for name in ("max_calls", "max_shm_buffers", "max_pages_per_buffer", "max_total_pages"):
            _positive(name, getattr(self, name))
