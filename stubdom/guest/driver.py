"""The guest's OP-TEE driver, modelled on Linux drivers/tee/optee (SMC ABI).

Where each part comes from:

* probe, shm-cache loops, register/unregister, the std-call loop and the RPC
  funcs (ALLOC/FREE/FOREIGN_INTR/CMD, SHM_ALLOC/SHM_FREE): ``smc_abi.c``;
* the argument cache, OPEN/INVOKE/CLOSE/CANCEL and the call queue: ``call.c``;
* GET_TIME, NOTIFICATION, SUSPEND and the hand-off to tee-supplicant:
  ``rpc.c`` and ``notif.c``; client-UUID computation: ``tee_core.c``.

The driver reaches the secure world only through ``trap(vcpu, regs)`` (an SMC
trapped by its vCPU) and its memory only through its own ``Domain`` by IPA.
It never sees a machine address.  docs/guest-driver.md lists the differences
from Linux; ``trace=`` records every SMC and RPC (``stubdom.guest.trace``).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stubdom.optee.msg import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_MASK,
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_LOGIN_GROUP,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_MSG_LOGIN_REE_KERNEL,
    OPTEE_MSG_LOGIN_USER,
    MsgArg,
    MsgParam,
    get_arg_size,
    param_offset,
    unpack_header,
)
from stubdom.optee.pagelist import build_page_list, list_pages_needed, make_buf_ptr, pages_needed
from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_I2C_TRANSFER,
    OPTEE_RPC_CMD_NOTIFICATION,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_CMD_SUSPEND,
    OPTEE_RPC_NOTIFICATION_SEND,
    OPTEE_RPC_NOTIFICATION_WAIT,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_RPC_SHM_TYPE_KERNEL,
)
from stubdom.optee.smc import (
    OPTEE_MSG_REVISION_MAJOR,
    OPTEE_MSG_REVISION_MINOR,
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_FAST_CALL,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_NSEC_CAP_UNIPROCESSOR,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FOREIGN_INTR,
    OPTEE_SMC_RPC_FUNC_FREE,
    OPTEE_SMC_SEC_CAP_ASYNC_NOTIF,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SHM_CACHED,
    is_rpc_return,
    reg_pair_to_u64,
    rpc_func,
    u64_to_reg_pair,
)
from stubdom.optee.teec import (
    TEE_ERROR_TIMEOUT,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_COMMUNICATION,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_ORIGIN_COMMS,
    TEEC_SUCCESS,
)
from stubdom.optee.uuid import OpenSessionMeta

from .callqueue import CallQueue
from .errors import (
    ApiRevisionMismatch,
    ApiUidMismatch,
    CapabilitiesMismatch,
    DriverNotReady,
    GuestError,
    NoSharedMemory,
    ShmRegistrationFailed,
    StaticShmNotCached,
    StaticShmUnavailable,
    TooManyParams,
    UnknownShm,
)
from .notif import OPTEE_DEFAULT_MAX_NOTIF_VALUE, Notifications
from .pages import PAGE_SIZE, PageAllocator
from .params import TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT, TeeParam
from .shm import DynamicPool, Shm, ShmOwner, StaticPool
from .supplicant import SupplicantPort
from .trace import (
    TraceEvent,
    command_name,
    function_name,
    return_name,
    rpc_event_detail,
    rpc_func_name,
)

__all__ = [
    "Trap",
    "ProbeInfo",
    "CallResult",
    "OpteeDriver",
    "MAX_ARG_PARAM_COUNT",
    "UnsupportedLogin",
    "ShmCacheBusy",
]

log = logging.getLogger(__name__)

Trap = Callable[[int, tuple[int, ...]], tuple[int, ...]]

MAX_ARG_PARAM_COUNT = 6  # call.c: 4 TA params + 2 OPEN_SESSION meta params
SHM_ENTRY_SIZE = PAGE_SIZE  # call.c: one arg-cache entry is one page
_U32 = 0xFFFFFFFF
# tee_core.c: namespace of the UUIDv5 client identities (uid=/gid=)
TEE_CLIENT_UUID_NS = uuidlib.UUID("58ac9ca0-2086-4683-a1b8-ec4bc08e01b6")
# Kernel-pointer-looking cookies, so a truncation of shm_ref to 32 bits shows.
_COOKIE_BASE = 0xFFFF_0000_1000_0000
_COOKIE_STEP = 0x100


class UnsupportedLogin(GuestError):
    """A login method the driver cannot compute a client UUID for (Linux's
    tee_session_calc_client_uuid fails for the APPLICATION* logins)."""

    def __init__(self, login: int) -> None:
        self.login = login
        super().__init__(f"login method {login:#x} is not supported")


class ShmCacheBusy(GuestError):
    """ENABLE/DISABLE_SHM_CACHE kept answering EBUSY with no call of this guest
    in flight to wait for (Linux would sleep forever here)."""

    def __init__(self, function: int, a0: int, tries: int) -> None:
        self.function = function
        self.a0 = a0
        super().__init__(f"{function:#010x} still answers {a0:#x} after {tries} tries")


@dataclass(frozen=True)
class ProbeInfo:
    """What the probe learnt (Linux keeps these in ``struct optee``)."""

    os_revision: tuple[int, int, int]  # major, minor, build id
    api_revision: tuple[int, int]
    thread_count: int  # 0 = unknown
    sec_caps: int
    max_notif_value: int
    rpc_param_count: int
    dynamic_shm: bool
    static_shm: tuple[int, int] | None  # [start, end) of the reserved pool, when used


@dataclass
class CallResult:
    """The outcome of one request: the message's ret/ret_origin/session."""

    ret: int
    ret_origin: int
    session: int = 0


@dataclass
class _CallCtx:
    """Per-call state surviving RPC round trips (``struct optee_call_ctx``)."""

    pages_list: list[int] = field(default_factory=list)  # last SHM_ALLOC reply's list pages


class _ArgEntry:
    """One arg-cache page and its slot bitmap (``struct optee_shm_arg_entry``)."""

    def __init__(self, shm: Shm) -> None:
        self.shm = shm
        self.used: set[int] = set()


class OpteeDriver:
    """One guest's OP-TEE driver.  Thread-safe: several vCPU threads may call
    at once, each passing its own vCPU index.

    Construct, then :meth:`probe`; finish with :meth:`shutdown`, which frees
    everything the driver holds.
    """

    def __init__(
        self,
        trap: Trap,
        domain,
        *,
        nr_vcpus: int = 1,
        allocator: PageAllocator | None = None,
        seed: int = 0,
        supplicant: SupplicantPort | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], None] = time.sleep,
        shm_cache_busy_tries: int = 1000,
        trace: Callable[[TraceEvent], None] | None = None,
    ) -> None:
        if nr_vcpus < 1:
            raise ValueError(f"nr_vcpus {nr_vcpus} must be at least 1")
        self._trap = trap
        self.domain = domain
        self.nr_vcpus = nr_vcpus
        self.pages = allocator if allocator is not None else PageAllocator.for_domain(domain, seed=seed)
        self.supplicant = supplicant
        self._trace = trace
        self._clock_ns = clock_ns
        self._sleep = sleep
        self._busy_tries = shm_cache_busy_tries

        self.state = "unprobed"
        self.info: ProbeInfo | None = None
        self.rpc_param_count = 0
        self.call_queue = CallQueue(0)
        self.notif = Notifications()
        self._dynamic: DynamicPool | None = None
        self._static: StaticPool | None = None
        self._arg_priv = True  # OPTEE_SHM_ARG_ALLOC_PRIV
        self._arg_shared = False  # OPTEE_SHM_ARG_SHARED

        self._lock = threading.RLock()
        self._shms: dict[int, Shm] = {}  # cookie -> Shm, every live buffer
        self._next_cookie = _COOKIE_BASE
        self._supp_ids: dict[int, Shm] = {}  # tee_shm id -> supplicant buffer
        self._next_supp_id = 1
        self._arg_lock = threading.Lock()
        self._arg_entries: list[_ArgEntry] = []
        self._sessions: set[int] = set()
        self.stats = {"rpc_alloc": 0, "rpc_free": 0, "foreign_intr": 0, "rpc_cmd": 0}

        if supplicant is not None:
            supplicant.attach(self)

    # -- raw SMCs ---------------------------------------------------------------------
    def smc(self, vcpu: int, *args: int) -> tuple[int, ...]:
        """Issue one SMC through the vCPU's trap: a0..a7 (missing ones 0)."""
        if not 0 <= vcpu < self.nr_vcpus:
            raise ValueError(f"vCPU {vcpu} outside 0..{self.nr_vcpus - 1}")
        regs = tuple(args) + (0,) * (8 - len(args))
        res = tuple(self._trap(vcpu, regs))
        if len(res) != 8:
            raise GuestError(f"trap returned {len(res)} registers, not 8")
        if self._trace is not None and regs[0] & OPTEE_SMC_FAST_CALL:
            self._trace(TraceEvent(vcpu, "fast", function_name(regs[0])))
        return res

    # -- probe (smc_abi.c: optee_probe) -------------------------------------------------
    def probe(self, vcpu: int = 0) -> ProbeInfo:
        if self.state != "unprobed":
            raise DriverNotReady(self.state)
        res = self.smc(vcpu, OPTEE_SMC_CALLS_UID)
        if res[:4] != (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3):
            raise ApiUidMismatch(res)

        res = self.smc(vcpu, OPTEE_SMC_CALL_GET_OS_REVISION)
        os_revision = (res[0], res[1], res[2])  # logged only
        log.info("OP-TEE revision %d.%d (%08x)", *os_revision)

        res = self.smc(vcpu, OPTEE_SMC_CALLS_REVISION)
        minor = res[1] & _U32
        signed_minor = minor - (1 << 32) if minor >> 31 else minor
        if res[0] != OPTEE_MSG_REVISION_MAJOR or signed_minor < OPTEE_MSG_REVISION_MINOR:
            raise ApiRevisionMismatch(res[0], res[1])
        api_revision = (res[0], minor)

        res = self.smc(vcpu, OPTEE_SMC_GET_THREAD_COUNT)
        thread_count = res[1] if res[0] == OPTEE_SMC_RETURN_OK else 0

        a1 = OPTEE_SMC_NSEC_CAP_UNIPROCESSOR if self.nr_vcpus == 1 else 0
        res = self.smc(vcpu, OPTEE_SMC_EXCHANGE_CAPABILITIES, a1)
        if res[0] != OPTEE_SMC_RETURN_OK:
            raise CapabilitiesMismatch(res[0])
        sec_caps = res[1] & _U32
        max_notif = res[2] if sec_caps & OPTEE_SMC_SEC_CAP_ASYNC_NOTIF else OPTEE_DEFAULT_MAX_NOTIF_VALUE
        rpc_param_count = res[3] & 0xFF if sec_caps & OPTEE_SMC_SEC_CAP_RPC_ARG else 0

        static: tuple[int, int] | None = None
        if sec_caps & OPTEE_SMC_SEC_CAP_DYNAMIC_SHM:
            self._dynamic = DynamicPool(self.pages)
            # with RPC_ARG the arg pages are registered and shared (REGD_ARG)
            self._arg_shared = bool(sec_caps & OPTEE_SMC_SEC_CAP_RPC_ARG)
            self._arg_priv = not self._arg_shared
        elif sec_caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM:
            res = self.smc(vcpu, OPTEE_SMC_GET_SHM_CONFIG)
            if res[0] != OPTEE_SMC_RETURN_OK:
                raise StaticShmUnavailable(f"GET_SHM_CONFIG a0 = {res[0]:#x}")
            if res[3] != OPTEE_SMC_SHM_CACHED:
                raise StaticShmNotCached(res[3])
            begin = -(-res[1] // PAGE_SIZE) * PAGE_SIZE
            end = (res[1] + res[2]) // PAGE_SIZE * PAGE_SIZE
            if end <= begin:
                raise StaticShmUnavailable(f"region {res[1]:#x}+{res[2]:#x} holds no whole page")
            # a direct-mapped hardware domain reaches the carve-out at IPA == PA
            self._static = StaticPool(begin, end)
            static = (begin, end)
            self._arg_shared = True
            self._arg_priv = True
        else:
            raise NoSharedMemory(sec_caps)

        self.rpc_param_count = rpc_param_count
        self.call_queue = CallQueue(thread_count)
        self.notif = Notifications(max_notif)
        self.info = ProbeInfo(
            os_revision=os_revision,
            api_revision=api_revision,
            thread_count=thread_count,
            sec_caps=sec_caps,
            max_notif_value=max_notif,
            rpc_param_count=rpc_param_count,
            dynamic_shm=self._dynamic is not None,
            static_shm=static,
        )
        self.state = "ready"
        # leftovers from a previous kernel (kexec): flush, ignoring the cookies
        self._disable_shm_cache(vcpu, free_cookies=False)
        if not rpc_param_count:
            self._enable_shm_cache(vcpu)
        return self.info

    def _check_ready(self) -> None:
        if self.state != "ready":
            raise DriverNotReady(self.state)

    def _shm_cache_wait(self, function: int, a0: int, tries: int, w) -> None:
        if self.call_queue.in_flight > 1:
            self.call_queue.wait_for_completion(w)
        elif tries >= self._busy_tries:
            raise ShmCacheBusy(function, a0, tries)

    def _enable_shm_cache(self, vcpu: int) -> None:
        w = self.call_queue.enter()
        try:
            tries = 0
            while True:
                res = self.smc(vcpu, OPTEE_SMC_ENABLE_SHM_CACHE)
                if res[0] == OPTEE_SMC_RETURN_OK:
                    return
                tries += 1
                self._shm_cache_wait(OPTEE_SMC_ENABLE_SHM_CACHE, res[0], tries, w)
        finally:
            self.call_queue.leave(w)

    def _disable_shm_cache(self, vcpu: int, *, free_cookies: bool) -> None:
        w = self.call_queue.enter()
        try:
            tries = 0
            while True:
                res = self.smc(vcpu, OPTEE_SMC_DISABLE_SHM_CACHE)
                if res[0] == OPTEE_SMC_RETURN_ENOTAVAIL:
                    return  # every cached buffer handed back
                if res[0] == OPTEE_SMC_RETURN_OK:
                    if free_cookies:
                        cookie = reg_pair_to_u64(res[1] & _U32, res[2] & _U32)
                        shm = self._lookup(cookie)
                        if shm is None:
                            log.warning("DISABLE_SHM_CACHE returned unknown cookie %#x", cookie)
                        else:
                            self._free_shm(vcpu, shm)
                    continue
                tries += 1
                self._shm_cache_wait(OPTEE_SMC_DISABLE_SHM_CACHE, res[0], tries, w)
        finally:
            self.call_queue.leave(w)

    # -- shared-memory objects ----------------------------------------------------------
    def _new_cookie(self) -> int:
        with self._lock:
            cookie = self._next_cookie
            self._next_cookie += _COOKIE_STEP
            return cookie

    def _track(self, shm: Shm) -> Shm:
        with self._lock:
            self._shms[shm.cookie] = shm
        return shm

    def _lookup(self, cookie: int) -> Shm | None:
        with self._lock:
            return self._shms.get(cookie)

    @property
    def live_shms(self) -> list[Shm]:
        with self._lock:
            return list(self._shms.values())

    def _alloc(self, size: int, owner: ShmOwner, *, align: int = 16) -> Shm:
        """A buffer from whichever pool the probe chose (not registered)."""
        if self._dynamic is not None:
            pages = self._dynamic.alloc_pages(size)
            shm = Shm(self.domain, cookie=self._new_cookie(), size=size, owner=owner, pages=pages)
        else:
            assert self._static is not None
            addr = self._static.alloc(size, align)
            shm = Shm(self.domain, cookie=self._new_cookie(), size=size, owner=owner, paddr=addr)
        shm.write(0, bytes(size))  # __GFP_ZERO / a clean pool buffer
        return self._track(shm)

    def _release(self, shm: Shm) -> None:
        with self._lock:
            self._shms.pop(shm.cookie, None)
            for sid, s in list(self._supp_ids.items()):
                if s is shm:
                    del self._supp_ids[sid]
        if shm.pages is not None:
            if not shm.borrowed:  # a process's pinned pages are its own to give back
                self.pages.free(shm.pages)
        else:
            assert self._static is not None and shm.paddr is not None  # static: a paddr, no pages
            self._static.free(shm.paddr)

    def _free_shm(self, vcpu: int, shm: Shm) -> None:
        """tee_shm_release: unregister (a failure is only logged, dev_err),
        then give the memory back."""
        try:
            if shm.registered:
                self._shm_unregister(vcpu, shm)
        except ShmRegistrationFailed as e:
            log.error("unregister shm %#x failed: %s", shm.cookie, e)
        finally:
            self._release(shm)

    def alloc_shm(self, size: int, *, vcpu: int = 0, owner: ShmOwner = ShmOwner.CLIENT) -> Shm:
        """A client buffer (TEE_IOC_SHM_ALLOC): on dynamic shm it is registered
        with REGISTER_SHM and passed as RMEM; on the static pool it is plain."""
        self._check_ready()
        if size < 1:
            raise ValueError(f"shared memory size {size} must be at least 1")
        shm = self._alloc(size, owner, align=PAGE_SIZE)
        if shm.is_dynamic:
            try:
                self._shm_register(vcpu, shm)
            except BaseException:
                self._release(shm)
                raise
        return shm

    def register_pages(self, pages: Sequence[int], page_offset: int, size: int, *, vcpu: int = 0,
                       owner: ShmOwner = ShmOwner.CLIENT, register: bool = True) -> Shm:
        """A buffer over pages the driver does not own: a process's pinned
        pages (tee_shm_register_user_buf).  ``size`` bytes from ``page_offset``
        into the first page.  ``register`` False is tee-supplicant's
        registration, which OP-TEE learns only from an SHM_ALLOC reply
        (optee_shm_register_supp); otherwise REGISTER_SHM (optee_shm_register).
        Freeing it never frees the pages."""
        self._check_ready()
        if self._dynamic is None:
            raise NoSharedMemory(self.info.sec_caps if self.info else 0)
        if not pages or not 0 <= page_offset < PAGE_SIZE or not 1 <= size <= len(pages) * PAGE_SIZE - page_offset:
            raise ValueError(f"{size} bytes at offset {page_offset} do not fit {len(pages)} pages")
        shm = Shm(self.domain, cookie=self._new_cookie(), size=size, owner=owner, pages=pages,
                  page_offset=page_offset, borrowed=True)
        self._track(shm)
        if register:
            try:
                self._shm_register(vcpu, shm)
            except BaseException:
                self._release(shm)
                raise
        return shm

    def free_shm(self, shm: Shm, *, vcpu: int = 0) -> None:
        """Free a buffer from :meth:`alloc_shm` or :meth:`register_pages`
        (UNREGISTER_SHM first when it is registered: tee_shm_release ->
        optee_shm_unregister; when that fails the buffer is freed all the
        same, as Linux does)."""
        if self._lookup(shm.cookie) is not shm:
            raise UnknownShm(shm.cookie)
        self._free_shm(vcpu, shm)

    def _write_page_list(self, pages: Sequence[int]) -> list[int]:
        """Lay out a page list in fresh guest pages; returns the list pages."""
        list_ipas = self.pages.alloc(list_pages_needed(len(pages)))
        try:
            for ipa, data in zip(list_ipas, build_page_list(pages, list_ipas)):
                self.domain.write(ipa, data)
        except BaseException:
            self.pages.free(list_ipas)
            raise
        return list_ipas

    def _span_pages(self, shm: Shm, offs: int, size: int) -> tuple[list[int], int]:
        """The pages holding [offs, offs+size) of a dynamic buffer and the
        offset of the first byte in the first of them."""
        start = shm.page_offset + offs
        first, in_page = divmod(start, PAGE_SIZE)
        n = pages_needed(size, in_page)
        assert shm.pages is not None  # a dynamic buffer
        return list(shm.pages[first : first + n]), in_page

    def _private_arg(self) -> Shm:
        """A private arg buffer outside the cache (REGISTER/UNREGISTER_SHM)."""
        return self._alloc(_msg_arg_size(self.rpc_param_count), ShmOwner.KERNEL)

    def _shm_register(self, vcpu: int, shm: Shm) -> None:
        pages, in_page = self._span_pages(shm, 0, shm.size)
        list_ipas = self._write_page_list(pages)
        arg_shm = self._private_arg()
        try:
            msg = MsgArg(
                OPTEE_MSG_CMD_REGISTER_SHM,
                params=(
                    MsgParam.tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        make_buf_ptr(list_ipas[0], in_page),
                        shm.size,
                        shm.cookie,
                    ),
                ),
            )
            a0, out = self._call_msg(vcpu, arg_shm, 0, msg)
            if a0 != OPTEE_SMC_RETURN_OK or out.ret != TEEC_SUCCESS:
                raise ShmRegistrationFailed("REGISTER_SHM", a0, out.ret)
            shm.registered = True
        finally:
            self._release(arg_shm)
            self.pages.free(list_ipas)

    def _shm_unregister(self, vcpu: int, shm: Shm) -> None:
        arg_shm = self._private_arg()
        try:
            msg = MsgArg(
                OPTEE_MSG_CMD_UNREGISTER_SHM,
                params=(MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, shm.cookie),),
            )
            a0, out = self._call_msg(vcpu, arg_shm, 0, msg)
            shm.registered = False
            if a0 != OPTEE_SMC_RETURN_OK or out.ret != TEEC_SUCCESS:
                raise ShmRegistrationFailed("UNREGISTER_SHM", a0, out.ret)
        finally:
            self._release(arg_shm)

    # -- supplicant device (the /dev/teepriv side) ---------------------------------------
    def supp_alloc_shm(self, size: int) -> Shm:
        """A buffer for the in-kernel :class:`Supplicant`: never registered, OP-TEE
        learns it from the SHM_ALLOC reply, as it learns a buffer tee-supplicant
        registered on /dev/teepriv0 (optee_shm_register_supp). (A user-space
        supplicant's TEE_IOC_SHM_ALLOC goes through the TEE subsystem, which
        registers it as Linux's pool does.)"""
        shm = self._alloc(max(size, 1), ShmOwner.SUPPLICANT, align=PAGE_SIZE)
        shm.size = size
        with self._lock:
            sid = self._next_supp_id
            self._next_supp_id += 1
            self._supp_ids[sid] = shm
        return shm

    def supp_shm_id(self, shm: Shm) -> int:
        with self._lock:
            for sid, s in self._supp_ids.items():
                if s is shm:
                    return sid
        raise UnknownShm(shm.cookie)

    def supp_shm_by_id(self, shm_id: int) -> Shm | None:
        with self._lock:
            return self._supp_ids.get(shm_id)

    def supp_free_shm(self, shm_id: int) -> None:
        with self._lock:
            shm = self._supp_ids.get(shm_id)
        if shm is None:
            raise UnknownShm(shm_id)
        self._release(shm)

    # -- argument cache (call.c: optee_get_msg_arg / optee_free_msg_arg) -----------------
    def _get_msg_arg(self, vcpu: int, num_params: int) -> tuple[_ArgEntry, int]:
        if num_params > MAX_ARG_PARAM_COUNT:
            raise TooManyParams(num_params, MAX_ARG_PARAM_COUNT)
        sz = _msg_arg_size(self.rpc_param_count)
        per_entry = SHM_ENTRY_SIZE // sz if self._arg_shared else 1
        with self._arg_lock:
            for entry in self._arg_entries:
                free = [i for i in range(per_entry) if i not in entry.used]
                if free:
                    bit = free[0]
                    break
            else:
                shm = self._alloc(SHM_ENTRY_SIZE, ShmOwner.KERNEL, align=PAGE_SIZE)
                if not self._arg_priv:  # a kernel buffer: registered, used with REGD_ARG
                    try:
                        self._shm_register(vcpu, shm)
                    except BaseException:
                        self._release(shm)
                        raise
                entry = _ArgEntry(shm)
                self._arg_entries.insert(0, entry)
                bit = 0
            entry.used.add(bit)
            offs = bit * sz
            entry.shm.write(offs, bytes(sz))
        return entry, offs

    def _free_msg_arg(self, entry: _ArgEntry, offs: int) -> None:
        with self._arg_lock:
            entry.used.discard(offs // _msg_arg_size(self.rpc_param_count))

    # -- one yielding call (smc_abi.c: optee_smc_do_call_with_arg) ----------------------
    def _call_msg(self, vcpu: int, shm: Shm, offs: int, msg: MsgArg) -> tuple[int, MsgArg]:
        """Write ``msg`` at ``offs`` of ``shm``, run the call to completion and
        read the message back (its params counted by what was written)."""
        shm.write(offs, msg.pack())
        a0 = self.do_call_with_arg(vcpu, shm, offs, msg.num_params)
        return a0, _read_msg(shm, offs, msg.num_params)

    def do_call_with_arg(self, vcpu: int, shm: Shm, offs: int, num_params: int) -> int:
        """Issue the yielding call for the message at ``offs`` of ``shm`` and
        serve RPCs until OP-TEE returns; returns the final a0."""
        rpc_arg: tuple[Shm, int] | None = None
        if self.rpc_param_count:
            rpc_arg = (shm, offs + get_arg_size(num_params))
        if rpc_arg is not None and shm.registered:
            hi, lo = u64_to_reg_pair(shm.cookie)
            param = [OPTEE_SMC_CALL_WITH_REGD_ARG, hi, lo, offs, 0, 0, 0, 0]
        else:
            hi, lo = u64_to_reg_pair(shm.ipa(offs))
            a0 = OPTEE_SMC_CALL_WITH_RPC_ARG if rpc_arg is not None else OPTEE_SMC_CALL_WITH_ARG
            param = [a0, hi, lo, 0, 0, 0, 0, 0]
        ctx = _CallCtx()
        trace = self._trace
        cmd = command_name(unpack_header(shm.read(offs, 32))[0]) if trace is not None else ""
        w = self.call_queue.enter()
        try:
            while True:
                if trace is not None:
                    if param[0] == OPTEE_SMC_CALL_RETURN_FROM_RPC:
                        trace(TraceEvent(vcpu, "resume", function_name(param[0])))
                    else:
                        trace(TraceEvent(vcpu, "call", function_name(param[0]), cmd))
                res = self.smc(vcpu, *param)
                if trace is not None and not is_rpc_return(res[0]):
                    trace(TraceEvent(vcpu, "done", return_name(res[0])))
                if res[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT:
                    # out of secure threads: wait for another call, then the same registers
                    self.call_queue.wait_for_completion(w)
                elif is_rpc_return(res[0]):
                    param[0:4] = res[0:4]
                    self._handle_rpc(vcpu, rpc_arg, param, ctx)
                else:
                    return res[0]
        finally:
            self._free_pages_list(ctx)
            self.call_queue.leave(w)

    def _free_pages_list(self, ctx: _CallCtx) -> None:
        if ctx.pages_list:
            self.pages.free(ctx.pages_list)
            ctx.pages_list = []

    def _handle_rpc(self, vcpu: int, rpc_arg, param: list[int], ctx: _CallCtx) -> None:
        shm: Shm | None
        func = rpc_func(param[0] & _U32)
        if self._trace is not None and func != OPTEE_SMC_RPC_FUNC_CMD:
            self._trace(TraceEvent(vcpu, "rpc", rpc_func_name(func)))
        if func == OPTEE_SMC_RPC_FUNC_ALLOC:
            self.stats["rpc_alloc"] += 1
            try:
                if self._dynamic is not None and param[1] > PAGE_SIZE:
                    raise GuestError(f"RPC ALLOC of {param[1]} bytes needs contiguous pages")
                shm = self._alloc(max(param[1], 1), ShmOwner.KERNEL, align=PAGE_SIZE)
                param[1], param[2] = u64_to_reg_pair(shm.ipa(0))
                param[4], param[5] = u64_to_reg_pair(shm.cookie)
            except GuestError as e:
                log.warning("RPC ALLOC of %d bytes failed: %s", param[1], e)
                param[1] = param[2] = param[4] = param[5] = 0
        elif func == OPTEE_SMC_RPC_FUNC_FREE:
            self.stats["rpc_free"] += 1
            cookie = reg_pair_to_u64(param[1] & _U32, param[2] & _U32)
            shm = self._lookup(cookie)
            if shm is None:
                log.warning("RPC FREE of unknown cookie %#x", cookie)
            else:
                self._free_shm(vcpu, shm)
        elif func == OPTEE_SMC_RPC_FUNC_FOREIGN_INTR:
            # the interrupt is taken once the vCPU is back in the guest
            self.stats["foreign_intr"] += 1
        elif func == OPTEE_SMC_RPC_FUNC_CMD:
            self.stats["rpc_cmd"] += 1
            if rpc_arg is not None:
                shm, offs = rpc_arg
            else:
                cookie = reg_pair_to_u64(param[1] & _U32, param[2] & _U32)
                shm, offs = self._lookup(cookie), 0
            if shm is None:
                log.error("RPC CMD names unknown cookie %#x", cookie)
                if self._trace is not None:
                    self._trace(TraceEvent(vcpu, "rpc", "CMD", "?"))
            else:
                self._handle_rpc_cmd(vcpu, shm, offs, ctx)
        else:
            log.warning("unknown RPC func %#x", func)
        param[0] = OPTEE_SMC_CALL_RETURN_FROM_RPC

    # -- RPC commands (smc_abi.c handle_rpc_func_cmd, rpc.c optee_rpc_cmd) --------------
    def _handle_rpc_cmd(self, vcpu: int, shm: Shm, offs: int, ctx: _CallCtx) -> None:
        try:
            n = unpack_header(shm.read(offs, 32))[7]
        except ValueError:
            log.error("RPC arg at %#x+%d lies outside its buffer", shm.cookie, offs)
            return
        if offs + get_arg_size(n) > shm.size:
            log.error("RPC arg with %d params does not fit its %d-byte buffer", n, shm.size)
            return
        arg = _read_msg(shm, offs, n)
        cmd = arg.cmd
        params = list(arg.params)
        if self._trace is not None:
            name, detail = rpc_event_detail(cmd, params[0].a if params else None,
                                            len(params) > 1 and bool(params[1].c))
            self._trace(TraceEvent(vcpu, "rpc", "CMD", name, detail))
        out = {"ret": arg.ret, "ret_origin": arg.ret_origin}
        if cmd == OPTEE_RPC_CMD_SHM_ALLOC:
            self._free_pages_list(ctx)
            self._rpc_shm_alloc(params, out, ctx)
        elif cmd == OPTEE_RPC_CMD_SHM_FREE:
            self._rpc_shm_free(vcpu, params, out)
        elif cmd == OPTEE_RPC_CMD_GET_TIME:
            self._rpc_get_time(params, out)
        elif cmd == OPTEE_RPC_CMD_NOTIFICATION:
            self._rpc_notification(params, out)
        elif cmd == OPTEE_RPC_CMD_SUSPEND:
            self._rpc_suspend(params, out)
        elif cmd == OPTEE_RPC_CMD_I2C_TRANSFER:
            out["ret"] = TEEC_ERROR_NOT_SUPPORTED  # no I2C controller in this guest
        else:
            self._rpc_supp_cmd(cmd, params, out)
        result = arg.replace(ret=out["ret"], ret_origin=out["ret_origin"], params=tuple(params))
        shm.write(offs, result.pack())

    def _rpc_shm_alloc(self, params: list[MsgParam], out: dict, ctx: _CallCtx) -> None:
        out["ret_origin"] = TEEC_ORIGIN_COMMS
        if not params or params[0].attr != OPTEE_MSG_ATTR_TYPE_VALUE_INPUT or any(
            p.attr != OPTEE_MSG_ATTR_TYPE_NONE for p in params[1:]
        ):
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS
            return
        kind, size = params[0].a, params[0].b
        shm: Shm | None = None
        try:
            if kind == OPTEE_RPC_SHM_TYPE_APPL:
                shm = self._supp_alloc(size)
            elif kind == OPTEE_RPC_SHM_TYPE_KERNEL:
                shm = self._alloc(max(size, 1), ShmOwner.KERNEL, align=PAGE_SIZE)
                shm.size = size
            else:
                out["ret"] = TEEC_ERROR_BAD_PARAMETERS
                return
        except GuestError as e:
            log.warning("RPC SHM_ALLOC of %d bytes failed: %s", size, e)
        if shm is None:
            out["ret"] = TEEC_ERROR_OUT_OF_MEMORY
            return
        if shm.pages is None:
            # the reserved pool: no pages, a physical address (IPA == PA)
            params[0] = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, shm.ipa(0), shm.size, shm.cookie)
        else:
            # handle_rpc_func_cmd_shm_alloc: a buffer with pages (every
            # dynamic one, whatever its size or type) is described by a page list
            pages, in_page = self._span_pages(shm, 0, max(shm.size, 1))
            try:
                ctx.pages_list = self._write_page_list(pages)
            except GuestError:
                self._release(shm)  # Linux frees the fresh buffer when the list fails
                out["ret"] = TEEC_ERROR_OUT_OF_MEMORY
                return
            params[0] = MsgParam.tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                make_buf_ptr(ctx.pages_list[0], in_page),
                shm.size,
                shm.cookie,
            )
        out["ret"] = TEEC_SUCCESS

    def _supp_alloc(self, size: int) -> Shm | None:
        """optee_rpc_cmd_alloc_suppl: ask tee-supplicant to allocate, then take
        a reference on the buffer it names (released by the RPC SHM_FREE)."""
        p = TeeParam(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT, OPTEE_RPC_SHM_TYPE_APPL, size, 0)
        if self.supplicant is None or self.supplicant.process(OPTEE_RPC_CMD_SHM_ALLOC, [p]):
            return None
        return self.supplicant.get_shm(p.c)

    def _rpc_shm_free(self, vcpu: int, params: list[MsgParam], out: dict) -> None:
        out["ret_origin"] = TEEC_ORIGIN_COMMS
        if len(params) != 1 or params[0].attr != OPTEE_MSG_ATTR_TYPE_VALUE_INPUT:
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS
            return
        shm = self._lookup(params[0].b)
        kind = params[0].a
        if shm is None or kind not in (OPTEE_RPC_SHM_TYPE_APPL, OPTEE_RPC_SHM_TYPE_KERNEL):
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS
            return
        if kind == OPTEE_RPC_SHM_TYPE_APPL and shm.owner is ShmOwner.SUPPLICANT and self.supplicant:
            # cmd_free_suppl: drop the reference _supp_alloc took, then let
            # tee-supplicant release its own
            p = TeeParam(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT, OPTEE_RPC_SHM_TYPE_APPL,
                         self.supplicant.shm_id(shm), 0)
            self.supplicant.put_shm(shm)
            self.supplicant.process(OPTEE_RPC_CMD_SHM_FREE, [p])
        else:
            self._free_shm(vcpu, shm)
        out["ret"] = TEEC_SUCCESS

    def _rpc_get_time(self, params: list[MsgParam], out: dict) -> None:
        if len(params) != 1 or params[0].attr & OPTEE_MSG_ATTR_TYPE_MASK != OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT:
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS
            return
        sec, nsec = divmod(self._clock_ns(), 1_000_000_000)
        params[0] = params[0].replace(a=sec, b=nsec)
        out["ret"] = TEEC_SUCCESS

    def _rpc_notification(self, params: list[MsgParam], out: dict) -> None:
        rc = -errno.EINVAL
        if len(params) == 1 and params[0].attr & OPTEE_MSG_ATTR_TYPE_MASK == OPTEE_MSG_ATTR_TYPE_VALUE_INPUT:
            p = params[0]
            if p.a == OPTEE_RPC_NOTIFICATION_WAIT:
                rc = self.notif.wait(p.b, p.c)
            elif p.a == OPTEE_RPC_NOTIFICATION_SEND:
                rc = self.notif.send(p.b)
        if rc == 0:
            out["ret"] = TEEC_SUCCESS
        elif rc == -errno.ETIMEDOUT:
            out["ret"] = TEE_ERROR_TIMEOUT
        else:
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS

    def _rpc_suspend(self, params: list[MsgParam], out: dict) -> None:
        if len(params) != 1 or params[0].attr & OPTEE_MSG_ATTR_TYPE_MASK != OPTEE_MSG_ATTR_TYPE_VALUE_INPUT:
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS
            return
        self._sleep((params[0].a & _U32) / 1000)
        out["ret"] = TEEC_SUCCESS

    def _rpc_supp_cmd(self, cmd: int, params: list[MsgParam], out: dict) -> None:
        """rpc.c handle_rpc_supp_cmd: hand the request to tee-supplicant."""
        out["ret_origin"] = TEEC_ORIGIN_COMMS
        try:
            tparams = [self._from_rpc_param(p) for p in params]
        except GuestError as e:
            log.warning("RPC %d: bad parameter: %s", cmd, e)
            out["ret"] = TEEC_ERROR_BAD_PARAMETERS
            return
        if self.supplicant is None:
            out["ret"] = TEEC_ERROR_COMMUNICATION  # no tee-supplicant running
            return
        out["ret"] = self.supplicant.process(cmd, tparams)
        for i, (mp, tp) in enumerate(zip(params, tparams)):
            if tp.is_value:
                params[i] = mp.replace(a=tp.a, b=tp.b, c=tp.c)
            elif tp.is_memref:
                params[i] = mp.replace(b=tp.size)  # tmem.size / rmem.size

    def _from_rpc_param(self, mp: MsgParam) -> TeeParam:
        kind = mp.attr & OPTEE_MSG_ATTR_TYPE_MASK
        if kind == OPTEE_MSG_ATTR_TYPE_NONE:
            return TeeParam()
        if OPTEE_MSG_ATTR_TYPE_VALUE_INPUT <= kind <= OPTEE_MSG_ATTR_TYPE_VALUE_INOUT:
            return TeeParam(kind, mp.a, mp.b, mp.c)
        if OPTEE_MSG_ATTR_TYPE_TMEM_INPUT <= kind <= OPTEE_MSG_ATTR_TYPE_TMEM_INOUT:
            attr = TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT + kind - OPTEE_MSG_ATTR_TYPE_TMEM_INPUT
            if not mp.c:
                return TeeParam(attr, size=mp.b)
            shm = self._lookup(mp.c)
            if shm is None:
                raise UnknownShm(mp.c)
            offs = mp.a - shm.ipa(0)  # buf_ptr - tee_shm_get_pa(shm, 0)
        elif OPTEE_MSG_ATTR_TYPE_RMEM_INPUT <= kind <= OPTEE_MSG_ATTR_TYPE_RMEM_INOUT:
            attr = TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT + kind - OPTEE_MSG_ATTR_TYPE_RMEM_INPUT
            if not mp.c:
                return TeeParam(attr, size=mp.b)
            shm = self._lookup(mp.c)
            if shm is None:
                raise UnknownShm(mp.c)
            offs = mp.a
        else:
            raise GuestError(f"RPC param attr {mp.attr:#x} has no kernel equivalent")
        if offs < 0 or offs + mp.b > shm.size:
            raise GuestError(f"memref [{offs}, +{mp.b}) outside its {shm.size}-byte buffer")
        return TeeParam(attr, shm=shm, offs=offs, size=mp.b)

    # -- requests (call.c) ----------------------------------------------------------------
    def _to_msg_params(self, params: Sequence[TeeParam]) -> list[MsgParam]:
        """smc_abi.c optee_to_msg_param: a memref in dynamic shared memory
        (tee_shm_is_dynamic: allocated or registered, every buffer with
        pages) is an RMEM naming the registration by cookie
        (to_msg_param_reg_mem); one in the reserved pool, or no buffer at all,
        a TMEM with its physical address (to_msg_param_tmp_mem)."""
        out = []
        for p in params:
            if p.attr == 0:
                out.append(MsgParam.none())
            elif p.is_value:
                out.append(MsgParam.value(p.attr, p.a, p.b, p.c))
            elif p.is_memref:
                kind = p.attr - TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT
                shm = p.shm
                if shm is None:
                    out.append(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT + kind, 0, p.size, 0))
                elif shm.pages is not None:
                    out.append(MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT + kind, p.offs, p.size, shm.cookie))
                else:
                    out.append(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT + kind, shm.ipa(p.offs), p.size,
                                             shm.cookie))
            else:
                raise GuestError(f"param attr {p.attr} is not a TEE_IOCTL_PARAM_ATTR_TYPE")
        return out

    @staticmethod
    def _from_msg_params(params: Sequence[TeeParam], msg_params: Sequence[MsgParam]) -> None:
        for p, mp in zip(params, msg_params):
            if p.is_value:
                p.a, p.b, p.c = mp.a, mp.b, mp.c
            elif p.is_memref:
                p.size = mp.b

    def _request(self, vcpu: int, msg: MsgArg, params: Sequence[TeeParam], first: int) -> CallResult:
        entry, offs = self._get_msg_arg(vcpu, msg.num_params + len(params))
        try:
            msg_params = list(msg.params) + self._to_msg_params(params)
            msg = msg.replace(params=tuple(msg_params))
            a0, out = self._call_msg(vcpu, entry.shm, offs, msg)
            if a0 != OPTEE_SMC_RETURN_OK:
                return CallResult(TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS, out.session)
            self._from_msg_params(params, out.params[first:])
            return CallResult(out.ret, out.ret_origin, out.session)
        finally:
            self._free_msg_arg(entry, offs)

    def open_session(
        self,
        ta_uuid: uuidlib.UUID,
        params: Sequence[TeeParam] = (),
        *,
        login: int = OPTEE_MSG_LOGIN_PUBLIC,
        vcpu: int = 0,
        cancel_id: int = 0,
        uid: int = 0,
        gid: int = 0,
    ) -> CallResult:
        """OPEN_SESSION; ``params`` are updated in place with the outputs."""
        self._check_ready()
        client = _client_uuid(login, uid, gid)
        meta = OpenSessionMeta(ta_uuid, client, login).to_params()
        msg = MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, cancel_id=cancel_id, params=meta)
        result = self._request(vcpu, msg, params, 2)
        if result.ret == TEEC_SUCCESS:
            with self._lock:
                self._sessions.add(result.session)
        return result

    def invoke(
        self,
        session: int,
        func: int,
        params: Sequence[TeeParam] = (),
        *,
        vcpu: int = 0,
        cancel_id: int = 0,
    ) -> CallResult:
        """INVOKE_COMMAND; ``params`` are updated in place with the outputs."""
        self._check_ready()
        self._check_session(session)
        msg = MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=func, session=session, cancel_id=cancel_id)
        return self._request(vcpu, msg, params, 0)

    def close_session(self, session: int, *, vcpu: int = 0) -> CallResult:
        self._check_ready()
        with self._lock:
            if session not in self._sessions:
                raise GuestError(f"no open session {session:#x}")
            self._sessions.discard(session)
        return self._request(vcpu, MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session), (), 0)

    def cancel(self, session: int, cancel_id: int, *, vcpu: int = 0) -> CallResult:
        self._check_ready()
        self._check_session(session)
        msg = MsgArg(OPTEE_MSG_CMD_CANCEL, session=session, cancel_id=cancel_id)
        return self._request(vcpu, msg, (), 0)

    def _check_session(self, session: int) -> None:
        with self._lock:
            if session not in self._sessions:
                raise GuestError(f"no open session {session:#x}")

    @property
    def sessions(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._sessions)

    # -- teardown (smc_abi.c: optee_smc_remove, call.c: optee_shm_arg_cache_uninit) ------
    def shutdown(self, vcpu: int = 0) -> None:
        """Close sessions, free client buffers, drain the shm cache (freeing
        each returned cookie), free the argument cache and every leftover."""
        if self.state != "ready":
            self.state = "shut down"
            return
        for session in sorted(self.sessions):
            self.close_session(session, vcpu=vcpu)
        for shm in self.live_shms:
            if shm.owner is ShmOwner.CLIENT:
                self._free_shm(vcpu, shm)
        if not self.rpc_param_count:
            self._disable_shm_cache(vcpu, free_cookies=True)
        with self._arg_lock:
            entries, self._arg_entries = self._arg_entries, []
        for entry in entries:
            self._free_shm(vcpu, entry.shm)
        for shm in self.live_shms:
            self._free_shm(vcpu, shm)
        self.state = "shut down"


def _msg_arg_size(rpc_param_count: int) -> int:
    """call.c optee_msg_arg_size: one arg slot, plus the RPC arg after it."""
    size = get_arg_size(MAX_ARG_PARAM_COUNT)
    if rpc_param_count:
        size += get_arg_size(rpc_param_count)
    return size


def _read_msg(shm: Shm, offs: int, num_params: int) -> MsgArg:
    """Read back a message we wrote, trusting our own param count, not the
    num_params field in shared memory."""
    data = shm.read(offs, get_arg_size(num_params))
    cmd, func, session, cancel_id, pad, ret, ret_origin, _ = unpack_header(data)
    params = tuple(MsgParam.unpack(data, param_offset(i)) for i in range(num_params))
    return MsgArg(cmd, func, session, cancel_id, pad, ret, ret_origin, params)


def _client_uuid(login: int, uid: int, gid: int) -> uuidlib.UUID:
    """tee_core.c tee_session_calc_client_uuid."""
    if login in (OPTEE_MSG_LOGIN_PUBLIC, OPTEE_MSG_LOGIN_REE_KERNEL):
        return uuidlib.UUID(int=0)
    if login == OPTEE_MSG_LOGIN_USER:
        return uuidlib.uuid5(TEE_CLIENT_UUID_NS, f"uid={uid:x}")
    if login == OPTEE_MSG_LOGIN_GROUP:
        return uuidlib.uuid5(TEE_CLIENT_UUID_NS, f"gid={gid:x}")
    raise UnsupportedLogin(login)
