"""The secure world: an OP-TEE with NS-virtualization, entered by SMC.

``OpteeModel.smc(regs) -> regs`` is one world switch.  The model lives in the
platform process beside the hypervisor model (docs/architecture.md, "Where the secure
world lives") and is entered synchronously by whoever executes the SMC: the
mediator core under ``el2``, the SMC gate under ``stubdom``, the trap path
itself under pass-through.  vCPUs are Python threads, so entry is serialised
by one lock: a real OP-TEE runs one SMC per core at a time and takes its
global thread lock to pick or resume a thread; the model does both under one
lock, which keeps every partition's state consistent without changing any
observable ABI behaviour.

Register conventions (TF-A ``opteed_main.c``, OP-TEE ``thread_optee_smc_a64.S``):

* fast calls: OP-TEE works on a copy of x0..x7 and TF-A returns its x0..x3;
  a register a handler does not set comes back as the caller's, a4..a7 are
  always the caller's;
* yielding calls: completion returns (a0 = result, 0, 0, 0); an RPC returns
  (0xFFFF00xx, a1, a2, thread index); the early refusals (ENOTAVAIL,
  ETHREAD_LIMIT, ERESUME) set a0 only, the rest being the caller's as
  optee_smc.h documents; a4..a7 are always the caller's.

The function ID is the low 32 bits of a0; yielding calls see a1..a7 as
32-bit values (``thread_handle_std_smc`` takes uint32_t) and the guest id is
the low 16 bits of a7 (``virt_set_guest(uint16_t)``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stubdom.config.errors import BadTeeConfig
from stubdom.config.tee import TeeConfig
from stubdom.optee.rpc import THREAD_RPC_MAX_NUM_PARAMS
from stubdom.optee.smc import (
    OPTEE_MSG_OS_OPTEE_UUID_0,
    OPTEE_MSG_OS_OPTEE_UUID_1,
    OPTEE_MSG_OS_OPTEE_UUID_2,
    OPTEE_MSG_OS_OPTEE_UUID_3,
    OPTEE_MSG_REVISION_MAJOR,
    OPTEE_MSG_REVISION_MINOR,
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_BOOT_SECONDARY,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_FAST_CALL,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_NSEC_CAP_UNIPROCESSOR,
    OPTEE_SMC_RETURN_EBUSY,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_ERESUME,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_SHM_CACHED,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    is_rpc_return,
    smc_name,
)
from stubdom.trace import TRACER, TracedCall, now_ns

from .entry_std import StdCall
from .errors import BadRegisters
from .memory import NsAccess, NsMemoryMap
from .oracle import IsolationOracle
from .partition import Partition
from .tas import builtin_tas
from .thread import RpcReply, RpcRequest, Thread, ThreadState

if TYPE_CHECKING:
    from stubdom.xen import Machine

__all__ = ["OpteeModel", "PartitionStats", "HYP_CLNT_ID", "OPTEE_CALLS_COUNT_NS_VIRT"]

HYP_CLNT_ID = 0  # core/include/kernel/virtualization.h: the hypervisor's client id
# entry_fast.c tee_entry_generic_get_api_call_count: 12, +2 with NS-virt.
OPTEE_CALLS_COUNT_NS_VIRT = 14

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1

Regs = tuple[int, int, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """A snapshot of one guest partition (for tests and teardown checks)."""

    guest_id: int
    threads_free: int
    threads_suspended: int
    sessions: int
    registered_shm: int
    cached_rpc_args: int
    prealloc_rpc_cache: bool


class OpteeModel:
    """OP-TEE with CFG_NS_VIRTUALIZATION, on a :class:`stubdom.xen.Machine`."""

    def __init__(self, machine: Machine, config: TeeConfig, oracle: IsolationOracle) -> None:
        if not isinstance(config, TeeConfig):
            raise TypeError(f"config must be a TeeConfig, got {config!r}")
        if not isinstance(oracle, IsolationOracle):
            raise TypeError(f"oracle must be an IsolationOracle, got {oracle!r}")
        self._machine = machine
        self.config = config
        self.oracle = oracle
        static = machine.static_shm if config.reserved_shm else None
        if static is not None and static.size == 0:
            raise BadTeeConfig("sec_caps", hex(config.sec_caps),
                               "HAVE_RESERVED_SHM needs the machine's static shm region")
        self._memmap = NsMemoryMap(
            ram_base=machine.ram_base, ram_end=machine.ram_end,
            static_base=static.base if static is not None else None,
            static_size=static.size if static is not None else 0,
            dynamic_shm=config.dynamic_shm, max_pages=config.max_shm_pages,
        )
        self._tas = builtin_tas()
        self._lock = threading.Lock()
        # prtn_list: newest first, lookup takes the first match (virtualization.c).
        self._partitions: list[Partition] = []
        # The hypervisor's own cache flag (fast calls with a7 = 0 run with no
        # partition and see no threads).
        self._hyp_prealloc_rpc_cache = False
        self._smc = ""

    # -- introspection -------------------------------------------------------

    def guest_ids(self) -> list[int]:
        """Client ids with a live partition, in creation order."""
        with self._lock:
            return [p.guest_id for p in reversed(self._partitions)]

    def partition_stats(self, guest_id: int) -> PartitionStats | None:
        with self._lock:
            p = self._find(guest_id)
            if p is None:
                return None
            return PartitionStats(
                guest_id=p.guest_id,
                threads_free=sum(t.state is ThreadState.FREE for t in p.threads),
                threads_suspended=sum(t.state is ThreadState.SUSPENDED for t in p.threads),
                sessions=len(p.sessions),
                registered_shm=len(p.reg_shm),
                cached_rpc_args=sum(t.rpc_mobj is not None for t in p.threads),
                prealloc_rpc_cache=p.prealloc_rpc_cache,
            )

    @property
    def tas(self) -> dict[uuid.UUID, object]:
        """The built-in TAs by UUID."""
        return dict(self._tas)

    # -- world entry -------------------------------------------------------------

    def smc(self, regs: Sequence[int]) -> Regs:
        """One SMC into the secure world: eight registers in, eight out."""
        if TRACER.on and (call := TRACER.current()) is not None:
            return self._traced_smc(call, regs)
        regs = _check_regs(regs)
        with self._lock:
            fid = regs[0] & _U32
            self._smc = smc_name(fid)
            if fid & OPTEE_SMC_FAST_CALL:
                return self._fast(regs, fid)
            return self._yielding(regs, fid)

    def _traced_smc(self, call: TracedCall, regs: Sequence[int]) -> Regs:
        """smc for a sampled call (stubdom.trace): the same body (kept apart
        so that tracing off costs smc one attribute check), and its span."""
        t0 = now_ns()
        regs = _check_regs(regs)
        with self._lock:
            fid = regs[0] & _U32
            name = self._smc = smc_name(fid)
            out = self._fast(regs, fid) if fid & OPTEE_SMC_FAST_CALL else self._yielding(regs, fid)
        a0 = out[0] & _U32
        TRACER.span(call, "OP-TEE", "optee", t0, now_ns(), {"fn": name, "ret": a0, "rpc": is_rpc_return(a0)})
        return out

    # -- fast calls (entry_fast.c) --------------------------------------------------

    def _fast(self, regs: Regs, fid: int) -> Regs:
        a = list(regs)
        a7 = regs[7]
        part = self._find(a7 & 0xFFFF)
        if part is None and a7 != HYP_CLNT_ID:
            a[0] = OPTEE_SMC_RETURN_ENOTAVAIL  # thread_handle_fast_smc
            return _regs(a)
        cfg = self.config
        if fid == OPTEE_SMC_CALLS_COUNT:
            a[0] = OPTEE_CALLS_COUNT_NS_VIRT
        elif fid == OPTEE_SMC_CALLS_UID:
            a[0:4] = [OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3]
        elif fid == OPTEE_SMC_CALLS_REVISION:
            a[0:2] = [OPTEE_MSG_REVISION_MAJOR, OPTEE_MSG_REVISION_MINOR]
        elif fid == OPTEE_SMC_CALL_GET_OS_UUID:
            a[0:4] = [OPTEE_MSG_OS_OPTEE_UUID_0, OPTEE_MSG_OS_OPTEE_UUID_1, OPTEE_MSG_OS_OPTEE_UUID_2,
                      OPTEE_MSG_OS_OPTEE_UUID_3]
        elif fid == OPTEE_SMC_CALL_GET_OS_REVISION:
            a[0:3] = [cfg.os_revision_major, cfg.os_revision_minor, cfg.os_build_id]
        elif fid == OPTEE_SMC_GET_SHM_CONFIG and cfg.reserved_shm:
            base = self._memmap.static_base
            assert base is not None  # reserved_shm: __init__ mapped the machine's static shm region
            a[0:4] = [OPTEE_SMC_RETURN_OK, base, self._memmap.static_size,
                      OPTEE_SMC_SHM_CACHED]
        elif fid == OPTEE_SMC_EXCHANGE_CAPABILITIES:
            if a[1] & ~OPTEE_SMC_NSEC_CAP_UNIPROCESSOR:
                a[0] = OPTEE_SMC_RETURN_ENOTAVAIL  # unknown NS capability; a1 untouched
            else:
                a[0:2] = [OPTEE_SMC_RETURN_OK, cfg.sec_caps]
                if cfg.rpc_arg:
                    a[3] = THREAD_RPC_MAX_NUM_PARAMS
        elif fid == OPTEE_SMC_DISABLE_SHM_CACHE:
            self._disable_shm_cache(part, a)
        elif fid == OPTEE_SMC_ENABLE_SHM_CACHE:
            self._enable_shm_cache(part, a)
        elif fid == OPTEE_SMC_BOOT_SECONDARY:
            a[0] = OPTEE_SMC_RETURN_ENOTAVAIL  # built without CFG_BOOT_SECONDARY_REQUEST
        elif fid == OPTEE_SMC_GET_THREAD_COUNT:
            a[0:2] = [OPTEE_SMC_RETURN_OK, cfg.threads_per_guest]
        elif fid == OPTEE_SMC_VM_CREATED:
            a[0] = self._vm_created(a[1] & 0xFFFF, a7)
        elif fid == OPTEE_SMC_VM_DESTROYED:
            a[0] = self._vm_destroyed(a[1] & 0xFFFF, a7)
        else:
            # Includes L2CC_MUTEX (AArch64), the async-notification calls and
            # GET_PROTMEM_CONFIG, none of which this build has.
            a[0] = OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
        return _regs(a)

    def _enable_shm_cache(self, part: Partition | None, a: list[int]) -> None:
        """thread_enable_prealloc_rpc_cache."""
        if not self.config.prealloc_rpc_cache:
            a[0] = OPTEE_SMC_RETURN_OK
        elif part is None:
            self._hyp_prealloc_rpc_cache = True
            a[0] = OPTEE_SMC_RETURN_OK
        elif not part.all_threads_free():
            a[0] = OPTEE_SMC_RETURN_EBUSY
        else:
            part.prealloc_rpc_cache = True
            a[0] = OPTEE_SMC_RETURN_OK

    def _disable_shm_cache(self, part: Partition | None, a: list[int]) -> None:
        """thread_disable_prealloc_rpc_cache: one cookie per call, then ENOTAVAIL."""
        if part is None:
            self._hyp_prealloc_rpc_cache = False
            a[0] = OPTEE_SMC_RETURN_ENOTAVAIL
            return
        if not part.all_threads_free():
            a[0] = OPTEE_SMC_RETURN_EBUSY
            return
        if self.config.prealloc_rpc_cache:
            for t in part.threads:
                if t.rpc_arg is not None:
                    cookie = t.rpc_mobj.cookie if t.rpc_mobj is not None else 0
                    t.rpc_arg = None
                    t.rpc_mobj = None
                    if cookie:
                        a[0:3] = [OPTEE_SMC_RETURN_OK, cookie >> 32, cookie & _U32]
                    else:
                        # tee_entry_disable_shm_cache reads cookie 0 as "empty",
                        # without the final step that disables the cache.
                        a[0] = OPTEE_SMC_RETURN_ENOTAVAIL
                    return
        part.prealloc_rpc_cache = False
        a[0] = OPTEE_SMC_RETURN_ENOTAVAIL

    def _vm_created(self, guest_id: int, a7: int) -> int:
        """tee_entry_vm_created + virt_guest_created."""
        if guest_id == HYP_CLNT_ID or a7 != HYP_CLNT_ID:
            return OPTEE_SMC_RETURN_ENOTAVAIL
        if len(self._partitions) >= self.config.guest_count:
            return OPTEE_SMC_RETURN_ENOTAVAIL  # no TEE RAM for another partition
        self._partitions.insert(0, Partition.new(guest_id, self.config.threads_per_guest))
        return OPTEE_SMC_RETURN_OK

    def _vm_destroyed(self, guest_id: int, a7: int) -> int:
        """tee_entry_vm_destroyed + virt_guest_destroyed: OK even for an unknown id."""
        if a7 != HYP_CLNT_ID:
            return OPTEE_SMC_RETURN_ENOTAVAIL
        part = self._find(guest_id)
        if part is not None:
            self._partitions.remove(part)
            for t in part.threads:
                if t.gen is not None:
                    t.gen.close()
                    t.gen = None
                for held in t.holds:
                    held.users -= 1
                t.holds.clear()
                t.state = ThreadState.FREE
            part.sessions.clear()
            part.reg_shm.clear()
        return OPTEE_SMC_RETURN_OK

    def _find(self, guest_id: int) -> Partition | None:
        for p in self._partitions:
            if p.guest_id == guest_id:
                return p
        return None

    # -- yielding calls (thread_optee_smc.c thread_handle_std_smc) ---------------------

    def _yielding(self, regs: Regs, fid: int) -> Regs:
        a = list(regs)
        part = self._find((regs[7] & _U32) & 0xFFFF)
        if part is None:
            a[0] = OPTEE_SMC_RETURN_ENOTAVAIL
            return _regs(a)
        a1, a2, a3, a4, a5 = (r & _U32 for r in regs[1:6])
        if fid == OPTEE_SMC_CALL_RETURN_FROM_RPC:
            if a3 >= len(part.threads) or part.threads[a3].state is not ThreadState.SUSPENDED:
                a[0] = OPTEE_SMC_RETURN_ERESUME
                return _regs(a)
            resumed = part.threads[a3]
            resumed.state = ThreadState.ACTIVE
            return self._step(part, resumed, RpcReply(a1, a2, a4, a5), regs)
        t = part.free_thread()
        if t is None:
            a[0] = OPTEE_SMC_RETURN_ETHREAD_LIMIT
            return _regs(a)
        t.state = ThreadState.ACTIVE
        self._bind(t, part.guest_id)
        call = StdCall(partition=part, thread=t, client_id=part.guest_id, config=self.config,
                       memmap=self._memmap, tas=self._tas)
        t.call = smc_name(fid)
        t.gen = call.run(fid, a1, a2, a3)
        return self._step(part, t, None, regs)

    def _bind(self, t: Thread, client_id: int) -> None:
        """Route the thread's memory accesses through the oracle, recording
        which SMC and which call each one belongs to."""
        oracle = self.oracle

        def read_ma(maddr: int, length: int, what: str) -> bytes:
            return oracle.read(client_id, maddr, length, what=what, smc=self._smc, call=t.call)

        def write_ma(maddr: int, data: bytes, what: str) -> None:
            oracle.write(client_id, maddr, data, what=what, smc=self._smc, call=t.call)

        t.ns = NsAccess(read_ma, write_ma)
        t.memmap = self._memmap

    def _step(self, part: Partition, t: Thread, reply: RpcReply | None, regs: Regs) -> Regs:
        """Run the thread until it suspends (RPC) or finishes."""
        assert t.gen is not None
        try:
            req = t.gen.send(reply)  # type: ignore[arg-type]  # None starts the thread; replies resume it
        except StopIteration as done:
            rv = done.value
            t.gen = None
            t.state = ThreadState.FREE
            t.call = ""
            return (rv & _U32, 0, 0, 0, regs[4], regs[5], regs[6], regs[7])
        except BaseException:
            t.gen = None
            t.state = ThreadState.FREE
            raise
        assert isinstance(req, RpcRequest)
        t.state = ThreadState.SUSPENDED
        return (req.a0, req.a1 & _U32, req.a2 & _U32, t.index, regs[4], regs[5], regs[6], regs[7])


def _regs(a: list[int]) -> Regs:
    """An answer built in a list (a copy of the call's registers) as the
    eight registers."""
    r = tuple(a)
    assert len(r) == 8  # a copy of a Regs, changed in place: never resized
    return r


def _check_regs(regs: Sequence[int]) -> Regs:
    try:
        values = tuple(regs)
    except TypeError:
        raise BadRegisters(regs, "not a sequence") from None
    if len(values) != 8:
        raise BadRegisters(regs, f"{len(values)} registers, expected 8")
    for v in values:
        if type(v) is not int or not 0 <= v <= _U64:
            raise BadRegisters(regs, f"{v!r} is not a 64-bit register value")
    return values
