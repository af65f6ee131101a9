"""What the mediator core does to the machine, counted where the core runs.

The operations whose cost the hardware determines and that only the
mediator performs: p2m look-ups, pins (get_page), unpins (put_page) and
the bytes it copies from or to guest and machine memory. The core is given
its machine through :class:`CountedMachine`, so the counting is one code
path for every placement: under ``el2`` the counts live in the platform
process, under ``stubdom`` in the daemon, which exports them in its
``stats`` answer (``mediator_ops``, docs/control-protocol.md).

Counts are kept per domain, for the domain the operation was for: the
domain whose p2m is walked or whose frame is pinned (its domid is in the
call), and for an unpin or a copy by machine address, the frame's owner —
the guest's own frames, or the shadow pages Xen accounts to the domain
(alloc_domheap_pages). The static shared-memory region belongs to Xen;
the mediator reaches it only for the hardware domain (docs/mediator.md),
so those copies count against the hardware domain. Every operation also
counts in the totals, attributed or not.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Any

from stubdom.xen import DOMID_FIRST_RESERVED, PAGE_SHIFT, Domain, Machine, P2mEntry

__all__ = ["MEDIATOR_OPS", "MediatorOps", "CountedMachine"]

#: The operations counted, in report order (docs/bench-schema.md defines each).
MEDIATOR_OPS = ("p2m_lookups", "pages_pinned", "pages_unpinned", "bytes_copied")


class MediatorOps:
    """Counts by domain and operation since it was made, thread-safe (vCPU
    threads count at once under ``el2``). A domain's counts outlive the
    domain: a domid served again goes on from where it was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_domain: dict[int, collections.Counter[str]] = {}
        self._total: collections.Counter[str] = collections.Counter()

    def add(self, domid: int | None, op: str, n: int = 1) -> None:
        """Count ``n`` of ``op`` for ``domid`` (None: in the totals only)."""
        with self._lock:
            self._total[op] += n
            if domid is not None:
                counter = self._by_domain.get(domid)
                if counter is None:
                    counter = self._by_domain[domid] = collections.Counter()
                counter[op] += n

    def snapshot(self, domid: int | None = None) -> dict[str, int]:
        """``{op: count}`` for every op of MEDIATOR_OPS (0 where none
        happened): one domain's, or the totals over every domain."""
        with self._lock:
            counts = self._total if domid is None else self._by_domain.get(domid, collections.Counter())
            return {op: counts.get(op, 0) for op in MEDIATOR_OPS}


class _CountedDomain:
    """A domain's p2m and memory as the mediator core sees it."""

    def __init__(self, domain: Domain, ops: MediatorOps, domid: int) -> None:
        self._domain = domain
        self._ops = ops
        self._domid = domid

    def lookup(self, gfn: int) -> P2mEntry:
        self._ops.add(self._domid, "p2m_lookups")
        return self._domain.lookup(gfn)

    def translate(self, ipa: int, *, write: bool) -> int:
        self._ops.add(self._domid, "p2m_lookups")
        return self._domain.translate(ipa, write=write)

    def read(self, ipa: int, length: int) -> bytes:
        data = self._domain.read(ipa, length)
        self._ops.add(self._domid, "bytes_copied", len(data))
        return data

    def write(self, ipa: int, data: bytes | bytearray | memoryview) -> None:
        self._domain.write(ipa, data)
        self._ops.add(self._domid, "bytes_copied", memoryview(data).nbytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._domain, name)


class CountedMachine:
    """The machine as the mediator core sees it, counting into ``ops``.
    Only the mediator is given this object: the guests' and the TEE's own
    memory accesses are not mediation and are not counted. Everything it
    does not count is the machine's own (``__getattr__``)."""

    def __init__(self, machine: Machine, ops: MediatorOps) -> None:
        self._machine = machine
        self._ops = ops

    @property
    def machine(self) -> Machine:
        """The machine itself, uncounted."""
        return self._machine

    def _owner(self, mfn: int) -> int | None:
        """The domain a frame's operation counts against (module docstring)."""
        try:
            owner = self._machine.frame_owner(mfn)
        except Exception:  # out of range: the operation itself says so
            return None
        if owner >= DOMID_FIRST_RESERVED:  # the static region (DOMID_XEN): the hardware domain's
            return self._machine.hwdom
        return owner

    def domain(self, domid: int) -> _CountedDomain:
        return _CountedDomain(self._machine.domain(domid), self._ops, domid)

    def get_page(self, mfn: int, domid: int) -> None:
        self._machine.get_page(mfn, domid)
        self._ops.add(domid, "pages_pinned")

    def get_pages(self, mfns: Iterable[int], domid: int) -> None:
        mfns = list(mfns)
        self._machine.get_pages(mfns, domid)
        self._ops.add(domid, "pages_pinned", len(mfns))

    def put_page(self, mfn: int) -> None:
        owner = self._owner(mfn)  # before: the last put frees a given-back frame
        self._machine.put_page(mfn)
        self._ops.add(owner, "pages_unpinned")

    def put_pages(self, mfns: Iterable[int]) -> None:
        mfns = list(mfns)
        owners = collections.Counter(self._owner(m) for m in mfns)
        self._machine.put_pages(mfns)
        for owner, n in owners.items():
            self._ops.add(owner, "pages_unpinned", n)

    def read_machine(self, maddr: int, length: int) -> bytes:
        data = self._machine.read_machine(maddr, length)
        self._ops.add(self._owner(maddr >> PAGE_SHIFT), "bytes_copied", len(data))
        return data

    def write_machine(self, maddr: int, data: bytes | bytearray | memoryview) -> None:
        self._machine.write_machine(maddr, data)
        self._ops.add(self._owner(maddr >> PAGE_SHIFT), "bytes_copied", memoryview(data).nbytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._machine, name)
