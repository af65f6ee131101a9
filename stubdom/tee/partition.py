"""A guest partition (``struct guest_partition``, core/arch/arm/kernel/virtualization.c).

With CFG_NS_VIRTUALIZATION every guest gets its own copy of OP-TEE's
.data/.bss: its own thread contexts, its own open sessions, its own
registered shared memory, its own prealloc-RPC-cache flag.  Nothing here is
reachable from another client id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .memory import Mobj
from .tas.ta import TaSession
from .thread import Thread, ThreadState

__all__ = ["Partition"]


@dataclass(eq=False)
class Partition:
    guest_id: int  # the client id the hypervisor uses in a7
    threads: list[Thread]
    sessions: dict[int, TaSession] = field(default_factory=dict)
    # Registered shared memory, newest first (reg_shm_list: SLIST_INSERT_HEAD,
    # lookup returns the first cookie match).
    reg_shm: list[Mobj] = field(default_factory=list)
    prealloc_rpc_cache: bool = False  # thread_prealloc_rpc_cache
    next_session_id: int = 1

    @classmethod
    def new(cls, guest_id: int, nr_threads: int) -> Partition:
        return cls(guest_id, [Thread(i) for i in range(nr_threads)])

    def free_thread(self) -> Thread | None:
        """thread_alloc_and_run's search: the first FREE thread, if any."""
        for t in self.threads:
            if t.state is ThreadState.FREE:
                return t
        return None

    def all_threads_free(self) -> bool:
        return all(t.state is ThreadState.FREE for t in self.threads)

    def find_reg_shm(self, cookie: int) -> Mobj | None:
        """mobj_reg_shm_get_by_cookie."""
        for m in self.reg_shm:
            if m.cookie == cookie:
                return m
        return None

    def new_session_id(self) -> int:
        """An id no open session of this partition uses (never 0)."""
        sid = self.next_session_id
        while sid == 0 or sid in self.sessions:
            sid = (sid + 1) & 0xFFFFFFFF
        self.next_session_id = (sid + 1) & 0xFFFFFFFF
        return sid
