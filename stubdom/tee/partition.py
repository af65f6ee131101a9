"""A guest partition (``struct guest_partition``, core/arch/arm/kernel/virtualization.c).

With CFG_NS_VIRTUALIZATION every guest gets its own copy of OP-TEE's
.data/.bss: its own thread contexts, its own open sessions, its own
registered shared memory, its own prealloc-RPC-cache flag, its own copy of
the core's locks and of the REE FS state.  Nothing here is reachable from
another client id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .fs.ree_fs import ReeFs
from .memory import Mobj
from .sync import Condvar, Mutex
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
    # tee_ta_manager.c: tee_ta_mutex guards the session list and each
    # session's lock_thread / ref_count / unlink.
    ta_mutex: Mutex = field(default_factory=Mutex)
    # mobj_dyn_shm.c: shm_mu / shm_cv / shm_release_waiters, where
    # UNREGISTER_SHM waits for the last user of a registration.
    shm_mu: Mutex = field(default_factory=Mutex)
    shm_cv: Condvar = field(default_factory=Condvar)
    shm_release_waiters: int = 0
    # tee_ree_fs.c's statics: ree_fs_mutex and the cached dirf.db handle.
    ree_fs: ReeFs = field(default_factory=ReeFs)

    @classmethod
    def new(cls, guest_id: int, nr_threads: int) -> Partition:
        part = cls(guest_id, [Thread(i) for i in range(nr_threads)])
        part.ree_fs = ReeFs(seed=guest_id)
        return part

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
        """new_session_id (tee_ta_manager.c): one more than the id of the
        newest session still listed (1 with none), the next free one if
        taken, never 0; 0 when every id is taken."""
        sid = 1
        if self.sessions:
            sid = (next(reversed(self.sessions)) + 1) & 0xFFFFFFFF or 1
        start = sid
        while sid in self.sessions:
            sid = (sid + 1) & 0xFFFFFFFF or 1
            if sid == start:
                return 0
        return sid
