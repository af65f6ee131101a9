"""The guest kernel's TEE subsystem: /dev/tee0 and /dev/teepriv0 over the
OP-TEE driver, modelled on Linux drivers/tee/tee_core.c (the ioctls and
their checks), tee_shm.c (shared-memory objects) and the context half of
drivers/tee/optee (core.c: open/release, call.c: sessions per context,
smc_abi.c: get_version, register/unregister).

A process talks to it through system calls the device server forwards:
:meth:`TeeSubsystem.open` (open(2) of a device node), :meth:`ioctl`,
:meth:`mmap_frames` (mmap(2) of a shared-memory fd), :meth:`close` and
:meth:`shm_put` (the last close of a device or shared-memory fd).  Each
ioctl validates its argument as Linux does, in Linux's order, and fails with
Linux's errno (:class:`TeeErrno`) before anything reaches the secure world.
docs/guest-dev.md lists where this differs from Linux.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from stubdom.optee.smc import OPTEE_SMC_SEC_CAP_DYNAMIC_SHM, OPTEE_SMC_SEC_CAP_MEMREF_NULL
from stubdom.optee.teec import TEEC_SUCCESS

from .driver import MAX_ARG_PARAM_COUNT, OpteeDriver
from .errors import GuestError, OutOfGuestPages, ShmRegistrationFailed, TeeErrno
from .mm import MmTable, UserMm
from .pages import PAGE_SIZE
from .params import TeeParam
from .shm import Shm, ShmOwner
from .supp import SuppParam, SuppQueue
from .teeshm import Idr, ShmKind, TeeShm
from .uapi import (
    BUF_DATA,
    CANCEL_ARG,
    CLOSE_SESSION_ARG,
    INVOKE_ARG,
    INVOKE_RET_OFFSET,
    INVOKE_RET_ORIGIN_OFFSET,
    OPEN_SESSION_ARG,
    OPEN_SESSION_RET_OFFSET,
    OPEN_SESSION_RET_ORIGIN_OFFSET,
    OPEN_SESSION_SESSION_OFFSET,
    PARAM,
    PARAM_B_OFFSET,
    SHM_ALLOC_DATA,
    SHM_REGISTER_DATA,
    SUPP_RECV_ARG,
    SUPP_SEND_ARG,
    TEE_GEN_CAP_GP,
    TEE_GEN_CAP_MEMREF_NULL,
    TEE_GEN_CAP_PRIVILEGED,
    TEE_GEN_CAP_REG_MEM,
    TEE_IMPL_ID_OPTEE,
    TEE_IOC_CANCEL,
    TEE_IOC_CLOSE_SESSION,
    TEE_IOC_INVOKE,
    TEE_IOC_OPEN_SESSION,
    TEE_IOC_SHM_ALLOC,
    TEE_IOC_SHM_REGISTER,
    TEE_IOC_SUPPL_RECV,
    TEE_IOC_SUPPL_SEND,
    TEE_IOC_VERSION,
    TEE_IOCTL_LOGIN_GROUP,
    TEE_IOCTL_LOGIN_PUBLIC,
    TEE_IOCTL_LOGIN_REE_KERNEL,
    TEE_IOCTL_LOGIN_REE_KERNEL_MAX,
    TEE_IOCTL_LOGIN_REE_KERNEL_MIN,
    TEE_IOCTL_LOGIN_USER,
    TEE_IOCTL_PARAM_ATTR_MASK,
    TEE_IOCTL_PARAM_ATTR_TYPE_MASK,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_NONE,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT,
    TEE_MAX_ARG_SIZE,
    TEE_MEMREF_NULL,
    TEE_OPTEE_CAP_TZ,
    VERSION_DATA,
)
from .usermem import Caller, UserMemory

__all__ = ["TeeSubsystem", "TeeContext", "TeeDevice", "IoctlResult", "DEVICE_NAMES", "TASK_SIZE_MAX",
           "MAX_SHM_PAGES"]

log = logging.getLogger(__name__)

DEVICE_NAMES = ("tee0", "teepriv0")  # the nodes tee_device_alloc names for one OP-TEE
# access_ok's bound for user addresses (x86-64, 4-level paging: the host the
# guest's processes really run on).
TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE
# Pages of one shared-memory object: the mmap and BACK replies carry one frame
# each, and 16 MiB is far above what OP-TEE's mediator accepts (129 pages).
MAX_SHM_PAGES = 4096
_U64 = (1 << 64) - 1
_VALUE_TYPES = (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT,
                TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT)
_MEMREF_TYPES = (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT,
                 TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT)
_OUT_VALUES = (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT, TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT)
_OUT_MEMREFS = (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INOUT)


@dataclass(eq=False)
class TeeDevice:
    """struct tee_device: a node, its shared-memory ids."""

    name: str
    privileged: bool
    idr: Idr[TeeShm] = field(default_factory=Idr)


@dataclass(eq=False)
class TeeContext:
    """struct tee_context with optee_context_data: one open of a device.

    ``refs``: the open file, each ioctl in flight and each shm it made (the
    context outlives its file while any remains).  ``sessions``: the sessions
    it opened (a session id from another context is EINVAL)."""

    dev: TeeDevice
    cap_memref_null: bool
    refs: int = 1
    sessions: set[int] = field(default_factory=set)
    releasing: bool = False


@dataclass(frozen=True, slots=True)
class IoctlResult:
    """An ioctl's return value; ``shm`` is a new object whose file descriptor
    the caller must create (the ioctl's return value in Linux); it holds one
    reference for that descriptor."""

    ret: int = 0
    shm: TeeShm | None = None


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


class TeeSubsystem:
    """The TEE subsystem of one guest kernel, over a probed ``driver``.

    ``frame_of(ipa)`` gives the page of the machine's RAM file behind a guest
    page (what the device server hands a process to map).  The subsystem
    becomes the driver's supplicant port.
    """

    def __init__(self, driver: OpteeDriver, *, frame_of: Callable[[int], int]) -> None:
        if driver.info is None:
            raise GuestError("the OP-TEE driver must be probed before the TEE subsystem is made")
        if driver.supplicant is not None:
            raise GuestError("the driver already has a supplicant")
        self.driver = driver
        self.frame_of = frame_of
        self.devices = {name: TeeDevice(name, privileged=name.startswith("teepriv")) for name in DEVICE_NAMES}
        self.supp = SuppQueue(self)
        driver.supplicant = self.supp
        self.mms = MmTable(driver.pages, driver.domain)
        self._lock = threading.RLock()  # teedev->mutex: ids, references, sessions
        self._by_cookie: dict[int, TeeShm] = {}
        self._contexts: set[TeeContext] = set()
        self._current = threading.local()  # the Caller of the ioctl this thread runs
        self._never_killed = threading.Event()  # what the kernel's own calls wait on
        self._closed = False
        sec_caps = driver.info.sec_caps
        self._gen_caps = TEE_GEN_CAP_GP
        if sec_caps & OPTEE_SMC_SEC_CAP_DYNAMIC_SHM:
            self._gen_caps |= TEE_GEN_CAP_REG_MEM
        if sec_caps & OPTEE_SMC_SEC_CAP_MEMREF_NULL:
            self._gen_caps |= TEE_GEN_CAP_MEMREF_NULL
        self._memref_null = bool(sec_caps & OPTEE_SMC_SEC_CAP_MEMREF_NULL)

    # -- version (smc_abi.c optee_get_version, tee_core.c tee_ioctl_version) --------------
    def version(self, dev: TeeDevice) -> tuple[int, int, int]:
        """(impl_id, impl_caps, gen_caps) TEE_IOC_VERSION reports on ``dev``."""
        caps = self._gen_caps | (TEE_GEN_CAP_PRIVILEGED if dev.privileged else 0)
        return TEE_IMPL_ID_OPTEE, TEE_OPTEE_CAP_TZ, caps

    # -- contexts (tee_open / tee_release / optee_open / optee_release) ------------------
    def open(self, name: str) -> TeeContext:
        dev = self.devices.get(name)
        if dev is None:
            raise TeeErrno(errno.ENOENT, f"/dev/{name}: no such device in this guest")
        if self._closed:
            raise TeeErrno(errno.ENXIO, f"/dev/{name}: the guest's OP-TEE driver is gone")
        ctx = TeeContext(dev, cap_memref_null=self._memref_null)
        if dev.privileged and not self.supp.claim(ctx):
            raise TeeErrno(errno.EBUSY, f"/dev/{name}: a supplicant has it open")
        with self._lock:
            self._contexts.add(ctx)
        return ctx

    def close(self, ctx: TeeContext) -> None:
        """The device file's last close (teedev_close_context)."""
        self._ctx_put(ctx)

    def _ctx_get(self, ctx: TeeContext) -> None:
        with self._lock:
            if ctx.refs <= 0:
                raise TeeErrno(errno.EBADF, "context already released")
            ctx.refs += 1

    def _ctx_put(self, ctx: TeeContext) -> None:
        with self._lock:
            ctx.refs -= 1
            if ctx.refs or ctx.releasing:
                return
            ctx.releasing = True
            sessions = sorted(ctx.sessions)
            ctx.sessions.clear()
        # optee_release_helper: close what the context left open
        for session in sessions:
            try:
                self.driver.close_session(session)
            except GuestError as e:
                log.warning("closing session %#x of a released context: %s", session, e)
        if ctx.dev.privileged:
            self.supp.release()
        with self._lock:
            self._contexts.discard(ctx)

    @contextlib.contextmanager
    def _syscall(self, ctx: TeeContext, caller: Caller) -> Iterator[None]:
        """An ioctl in flight: it holds its context and is the thread's current."""
        self._ctx_get(ctx)
        self._current.caller = caller
        try:
            yield
        finally:
            self._current.caller = None
            self._ctx_put(ctx)

    def current_killed(self) -> threading.Event:
        caller = getattr(self._current, "caller", None)
        return self._never_killed if caller is None else caller.killed

    def kill(self, caller: Caller) -> None:
        """The calling process is gone: end its interruptible and killable waits."""
        caller.killed.set()
        self.supp.wake()

    # -- ioctl (tee_core.c tee_ioctl) -----------------------------------------------------
    def ioctl(self, ctx: TeeContext, cmd: int, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        handler = self._handlers.get(cmd)
        if handler is None:
            raise TeeErrno(errno.EINVAL, f"ioctl {cmd:#010x} is not one tee_ioctl knows")
        with self._syscall(ctx, caller):
            try:
                return handler(self, ctx, arg, user, caller)
            except OutOfGuestPages as e:  # a kernel allocation on the call's way (kmalloc, alloc_pages)
                raise TeeErrno(errno.ENOMEM, str(e)) from None

    def _ioctl_version(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        user.copy_to_user(arg, VERSION_DATA.pack(*self.version(ctx.dev)), "tee_ioctl_version_data")
        return IoctlResult()

    def _ioctl_shm_alloc(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        size, flags, _ = SHM_ALLOC_DATA.unpack(user.copy_from_user(arg, SHM_ALLOC_DATA.size,
                                                                   "tee_ioctl_shm_alloc_data"))
        if flags:
            raise TeeErrno(errno.EINVAL, f"SHM_ALLOC flags {flags:#x}: no input flags are supported")
        shm = self._alloc_user_buf(ctx, size)
        try:
            user.copy_to_user(arg, SHM_ALLOC_DATA.pack(shm.size, flags, shm.id), "tee_ioctl_shm_alloc_data")
        except TeeErrno:
            self.shm_put(shm)
            raise
        return IoctlResult(shm=shm)  # the allocation's reference becomes the fd's

    def _ioctl_shm_register(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        addr, length, flags, _ = SHM_REGISTER_DATA.unpack(
            user.copy_from_user(arg, SHM_REGISTER_DATA.size, "tee_ioctl_shm_register_data"))
        if flags:
            raise TeeErrno(errno.EINVAL, f"SHM_REGISTER flags {flags:#x}: no input flags are supported")
        shm = self._register_user_buf(ctx, addr, length, caller.mm)
        try:
            user.copy_to_user(arg, SHM_REGISTER_DATA.pack(addr, shm.size, flags, shm.id),
                              "tee_ioctl_shm_register_data")
        except TeeErrno:
            self.shm_put(shm)
            raise
        return IoctlResult(shm=shm)

    def _buf(self, user: UserMemory, arg: int, minimum: int) -> tuple[int, int]:
        buf_ptr, buf_len = BUF_DATA.unpack(user.copy_from_user(arg, BUF_DATA.size, "tee_ioctl_buf_data"))
        if buf_len > TEE_MAX_ARG_SIZE or buf_len < minimum:
            raise TeeErrno(errno.EINVAL, f"buf_len {buf_len} outside [{minimum}, {TEE_MAX_ARG_SIZE}]")
        return buf_ptr, buf_len

    def _ioctl_open_session(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        if ctx.dev.privileged:  # the supplicant device has no open_session op
            raise TeeErrno(errno.EINVAL, f"OPEN_SESSION on /dev/{ctx.dev.name}")
        buf_ptr, buf_len = self._buf(user, arg, OPEN_SESSION_ARG.size)
        (ta, clnt, login, cancel_id, _s, _r, _o, num_params) = OPEN_SESSION_ARG.unpack(
            user.copy_from_user(buf_ptr, OPEN_SESSION_ARG.size, "tee_ioctl_open_session_arg"))
        if OPEN_SESSION_ARG.size + PARAM.size * num_params != buf_len:
            raise TeeErrno(errno.EINVAL, f"num_params {num_params} does not match buf_len {buf_len}")
        uparams = buf_ptr + OPEN_SESSION_ARG.size
        params, held = self._params_from_user(ctx, uparams, num_params, user)
        try:
            if TEE_IOCTL_LOGIN_REE_KERNEL_MIN <= login <= TEE_IOCTL_LOGIN_REE_KERNEL_MAX:
                raise TeeErrno(errno.EPERM, f"login {login:#x} is not allowed for a user-space client")
            # optee_open_session: the arg (+2 meta params), the client UUID,
            # the params' translation, then the call
            if num_params + 2 > MAX_ARG_PARAM_COUNT:
                raise TeeErrno(errno.EINVAL, f"{num_params} params + 2 meta exceed {MAX_ARG_PARAM_COUNT}")
            uid, gid = self._client_identity(login, clnt, caller)
            self._check_to_msg(params)
            result = self.driver.open_session(uuidlib.UUID(bytes=ta), params, login=login, cancel_id=cancel_id,
                                              uid=uid, gid=gid)
            if result.ret == TEEC_SUCCESS:
                with self._lock:
                    ctx.sessions.add(result.session)
            try:
                user.copy_to_user(buf_ptr + OPEN_SESSION_SESSION_OFFSET, _u32(result.session), "session")
                user.copy_to_user(buf_ptr + OPEN_SESSION_RET_OFFSET, _u32(result.ret), "ret")
                user.copy_to_user(buf_ptr + OPEN_SESSION_RET_ORIGIN_OFFSET, _u32(result.ret_origin), "ret_origin")
                self._params_to_user(uparams, params, user)
            except TeeErrno:
                # opened but not told: close it again rather than leak it
                if result.ret == TEEC_SUCCESS:
                    self._close_session(ctx, result.session)
                raise
        finally:
            self._put_all(held)
        return IoctlResult()

    def _ioctl_invoke(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        if ctx.dev.privileged:
            raise TeeErrno(errno.EINVAL, f"INVOKE on /dev/{ctx.dev.name}")
        buf_ptr, buf_len = self._buf(user, arg, INVOKE_ARG.size)
        func, session, cancel_id, _r, _o, num_params = INVOKE_ARG.unpack(
            user.copy_from_user(buf_ptr, INVOKE_ARG.size, "tee_ioctl_invoke_arg"))
        if INVOKE_ARG.size + PARAM.size * num_params != buf_len:
            raise TeeErrno(errno.EINVAL, f"num_params {num_params} does not match buf_len {buf_len}")
        uparams = buf_ptr + INVOKE_ARG.size
        params, held = self._params_from_user(ctx, uparams, num_params, user)
        try:
            with self._lock:  # optee_invoke_func: the session must be this context's
                if session not in ctx.sessions:
                    raise TeeErrno(errno.EINVAL, f"session {session:#x} is not open in this context")
            if num_params > MAX_ARG_PARAM_COUNT:
                raise TeeErrno(errno.EINVAL, f"{num_params} params exceed {MAX_ARG_PARAM_COUNT}")
            self._check_to_msg(params)
            result = self.driver.invoke(session, func, params, cancel_id=cancel_id)
            user.copy_to_user(buf_ptr + INVOKE_RET_OFFSET, _u32(result.ret), "ret")
            user.copy_to_user(buf_ptr + INVOKE_RET_ORIGIN_OFFSET, _u32(result.ret_origin), "ret_origin")
            self._params_to_user(uparams, params, user)
        finally:
            self._put_all(held)
        return IoctlResult()

    def _ioctl_cancel(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        if ctx.dev.privileged:
            raise TeeErrno(errno.EINVAL, f"CANCEL on /dev/{ctx.dev.name}")
        cancel_id, session = CANCEL_ARG.unpack(user.copy_from_user(arg, CANCEL_ARG.size, "tee_ioctl_cancel_arg"))
        with self._lock:
            if session not in ctx.sessions:
                raise TeeErrno(errno.EINVAL, f"session {session:#x} is not open in this context")
        self.driver.cancel(session, cancel_id)  # optee_cancel_req ignores OP-TEE's answer
        return IoctlResult()

    def _ioctl_close_session(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        if ctx.dev.privileged:
            raise TeeErrno(errno.EINVAL, f"CLOSE_SESSION on /dev/{ctx.dev.name}")
        (session,) = CLOSE_SESSION_ARG.unpack(user.copy_from_user(arg, CLOSE_SESSION_ARG.size,
                                                                  "tee_ioctl_close_session_arg"))
        with self._lock:
            if session not in ctx.sessions:
                raise TeeErrno(errno.EINVAL, f"session {session:#x} is not open in this context")
            ctx.sessions.discard(session)
        self.driver.close_session(session)
        return IoctlResult()

    def _close_session(self, ctx: TeeContext, session: int) -> None:
        with self._lock:
            if session not in ctx.sessions:
                return
            ctx.sessions.discard(session)
        self.driver.close_session(session)

    def _ioctl_supp_recv(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        if not ctx.dev.privileged:
            raise TeeErrno(errno.EINVAL, f"SUPPL_RECV on /dev/{ctx.dev.name}")
        buf_ptr, buf_len = self._buf(user, arg, SUPP_RECV_ARG.size)
        raw = user.copy_from_user(buf_ptr + 4, 4, "num_params")
        num_params = int.from_bytes(raw, "little")
        if SUPP_RECV_ARG.size + PARAM.size * num_params != buf_len:
            raise TeeErrno(errno.EINVAL, f"num_params {num_params} does not match buf_len {buf_len}")
        uparams = buf_ptr + SUPP_RECV_ARG.size
        params, held = self._params_from_user(ctx, uparams, num_params, user)
        self._put_all(held)  # supp_check_recv_params drops them: memrefs are refused below
        func, out = self.supp.recv([SuppParam(p.attr) for p in params], caller.killed)
        user.copy_to_user(buf_ptr, _u32(func), "func")
        user.copy_to_user(buf_ptr + 4, _u32(len(out)), "num_params")
        for n, p in enumerate(out):
            user.copy_to_user(uparams + n * PARAM.size, PARAM.pack(p.attr, p.a, p.b, p.c), "supplicant param")
        return IoctlResult()

    def _ioctl_supp_send(self, ctx: TeeContext, arg: int, user: UserMemory, caller: Caller) -> IoctlResult:
        if not ctx.dev.privileged:
            raise TeeErrno(errno.EINVAL, f"SUPPL_SEND on /dev/{ctx.dev.name}")
        buf_ptr, buf_len = self._buf(user, arg, SUPP_SEND_ARG.size)
        ret, num_params = SUPP_SEND_ARG.unpack(user.copy_from_user(buf_ptr, SUPP_SEND_ARG.size, "ret, num_params"))
        if SUPP_SEND_ARG.size + PARAM.size * num_params > buf_len:
            raise TeeErrno(errno.EINVAL, f"num_params {num_params} do not fit buf_len {buf_len}")
        params = []
        for n in range(num_params):  # params_from_supp
            attr, a, b, c = PARAM.unpack(user.copy_from_user(buf_ptr + SUPP_SEND_ARG.size + n * PARAM.size,
                                                             PARAM.size, "supplicant param"))
            if attr & ~TEE_IOCTL_PARAM_ATTR_MASK:
                raise TeeErrno(errno.EINVAL, f"param {n} attr {attr:#x} has unknown bits")
            t = attr & TEE_IOCTL_PARAM_ATTR_TYPE_MASK
            if t in _OUT_VALUES:
                params.append(SuppParam(attr, a, b, c))
            elif t in _OUT_MEMREFS:
                params.append(SuppParam(attr, 0, b, 0))  # only the size may be updated
            else:
                params.append(SuppParam(attr))
        self.supp.send(ret, params)
        return IoctlResult()

    _handlers: dict[int, Callable[..., IoctlResult]] = {
        TEE_IOC_VERSION: _ioctl_version,
        TEE_IOC_SHM_ALLOC: _ioctl_shm_alloc,
        TEE_IOC_SHM_REGISTER: _ioctl_shm_register,
        TEE_IOC_OPEN_SESSION: _ioctl_open_session,
        TEE_IOC_INVOKE: _ioctl_invoke,
        TEE_IOC_CANCEL: _ioctl_cancel,
        TEE_IOC_CLOSE_SESSION: _ioctl_close_session,
        TEE_IOC_SUPPL_RECV: _ioctl_supp_recv,
        TEE_IOC_SUPPL_SEND: _ioctl_supp_send,
    }

    # -- parameters (params_from_user / params_to_user) ---------------------------------
    def _params_from_user(self, ctx: TeeContext, uparams: int, num_params: int,
                          user: UserMemory) -> tuple[list[TeeParam], list[TeeShm]]:
        params: list[TeeParam] = []
        held: list[TeeShm] = []
        try:
            for n in range(num_params):
                attr, a, b, c = PARAM.unpack(user.copy_from_user(uparams + n * PARAM.size, PARAM.size,
                                                                 f"param {n}"))
                if attr & ~TEE_IOCTL_PARAM_ATTR_MASK:
                    raise TeeErrno(errno.EINVAL, f"param {n} attr {attr:#x} has unknown bits")
                t = attr & TEE_IOCTL_PARAM_ATTR_TYPE_MASK
                if t in (TEE_IOCTL_PARAM_ATTR_TYPE_NONE, TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT):
                    params.append(TeeParam(attr))
                elif t in (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT):
                    params.append(TeeParam(attr, a, b, c))
                elif t in _MEMREF_TYPES:
                    if c != TEE_MEMREF_NULL:
                        tshm = self._get_from_id(ctx, c)
                        if tshm is None:
                            raise TeeErrno(errno.EINVAL, f"param {n}: shm id {c:#x} is not this context's")
                        held.append(tshm)
                        if a + b > _U64 or a + b > tshm.size:
                            raise TeeErrno(errno.EINVAL, f"param {n}: [{a:#x}, +{b:#x}) outside the "
                                                         f"{tshm.size}-byte shm {tshm.id}")
                        params.append(TeeParam(attr, shm=tshm.shm, offs=a, size=b))
                    elif ctx.cap_memref_null:
                        params.append(TeeParam(attr, shm=None, offs=a, size=b))
                    else:
                        raise TeeErrno(errno.EINVAL, f"param {n}: NULL memref without MEMREF_NULL")
                else:
                    raise TeeErrno(errno.EINVAL, f"param {n}: unknown attr type {t:#x}")
        except BaseException:
            self._put_all(held)
            raise
        return params, held

    @staticmethod
    def _check_to_msg(params: list[TeeParam]) -> None:
        """optee_to_msg_param switches on the whole attr: a META bit is EINVAL."""
        for n, p in enumerate(params):
            if p.attr & ~TEE_IOCTL_PARAM_ATTR_TYPE_MASK:
                raise TeeErrno(errno.EINVAL, f"param {n} attr {p.attr:#x}: META is not a client parameter")

    @staticmethod
    def _params_to_user(uparams: int, params: list[TeeParam], user: UserMemory) -> None:
        for n, p in enumerate(params):
            at = uparams + n * PARAM.size
            if p.attr in _OUT_VALUES:
                user.copy_to_user(at + 8, (p.a & _U64).to_bytes(8, "little"), f"param {n}.a")
                user.copy_to_user(at + 16, (p.b & _U64).to_bytes(8, "little"), f"param {n}.b")
                user.copy_to_user(at + 24, (p.c & _U64).to_bytes(8, "little"), f"param {n}.c")
            elif p.attr in _OUT_MEMREFS:
                user.copy_to_user(at + PARAM_B_OFFSET, (p.size & _U64).to_bytes(8, "little"), f"param {n}.b")

    @staticmethod
    def _client_identity(login: int, clnt: bytes, caller: Caller) -> tuple[int, int]:
        """tee_session_calc_client_uuid's checks; returns the (uid, gid) the
        driver derives the client UUID from."""
        if login in (TEE_IOCTL_LOGIN_PUBLIC, TEE_IOCTL_LOGIN_REE_KERNEL):
            return 0, 0
        if login == TEE_IOCTL_LOGIN_USER:
            return caller.uid, 0
        if login == TEE_IOCTL_LOGIN_GROUP:
            gid = int.from_bytes(clnt[:4], "little")  # memcpy(&ns_grp, connection_data, sizeof(gid_t))
            if gid == 0xFFFFFFFF or (gid != caller.gid and gid not in caller.groups):
                raise TeeErrno(errno.EPERM, f"group login with gid {gid}: not a group of process {caller.pid}")
            return 0, gid
        raise TeeErrno(errno.EINVAL, f"login method {login:#x} has no client UUID in Linux")

    # -- shared memory (tee_shm.c) ---------------------------------------------------------
    def _alloc_user_buf(self, ctx: TeeContext, size: int) -> TeeShm:
        """tee_shm_alloc_user_buf: whole zeroed guest pages, registered with
        OP-TEE (pool_op_alloc registers every non-private buffer)."""
        nr_pages = -(-size // PAGE_SIZE)
        if not nr_pages:
            raise TeeErrno(errno.ENOMEM, "SHM_ALLOC of 0 bytes: the page allocator fails a 0-page request")
        if nr_pages > MAX_SHM_PAGES:
            raise TeeErrno(errno.ENOMEM, f"SHM_ALLOC of {size} bytes: more than {MAX_SHM_PAGES} pages")
        with self._lock:
            sid = ctx.dev.idr.alloc(None)  # the id is taken first, as tee_shm does
        owner = ShmOwner.SUPPLICANT if ctx.dev.privileged else ShmOwner.CLIENT
        try:
            shm = self.driver.alloc_shm(nr_pages * PAGE_SIZE, owner=owner)
        except OutOfGuestPages as e:
            self._idr_remove(ctx, sid)
            raise TeeErrno(errno.ENOMEM, str(e)) from None
        except ShmRegistrationFailed as e:
            self._idr_remove(ctx, sid)
            raise TeeErrno(errno.EINVAL, str(e)) from None
        except BaseException:
            self._idr_remove(ctx, sid)
            raise
        return self._install(ctx, sid, ShmKind.ALLOC, shm, nr_pages * PAGE_SIZE, [])

    def _register_user_buf(self, ctx: TeeContext, addr: int, length: int, mm: UserMm | None) -> TeeShm:
        """tee_shm_register_user_buf: pin the process's pages (they must be
        guest pages, see stubdom.guest.mm), then register them with OP-TEE
        (optee_shm_register), or not at all for the supplicant's device
        (optee_shm_register_supp)."""
        if length > TASK_SIZE_MAX or addr > TASK_SIZE_MAX - length:  # access_ok
            raise TeeErrno(errno.EFAULT, f"[{addr:#x}, +{length:#x}) is not a user address range")
        start = addr - addr % PAGE_SIZE
        num_pages = (-(-(addr + length) // PAGE_SIZE) * PAGE_SIZE - start) // PAGE_SIZE
        if num_pages > MAX_SHM_PAGES:
            raise TeeErrno(errno.ENOMEM, f"SHM_REGISTER of {num_pages} pages: more than {MAX_SHM_PAGES}")
        with self._lock:
            sid = ctx.dev.idr.alloc(None)
        try:
            pinned = self.mms.pin(mm, start, num_pages)
        except BaseException:
            self._idr_remove(ctx, sid)
            raise
        try:
            if not num_pages or not length:
                # optee_shm_register refuses an empty page list; a zero-length
                # buffer is refused here on both devices (docs/guest-dev.md)
                raise TeeErrno(errno.EINVAL, f"SHM_REGISTER of {length} bytes at {addr:#x}")
            owner = ShmOwner.SUPPLICANT if ctx.dev.privileged else ShmOwner.CLIENT
            try:
                shm = self.driver.register_pages([p.ipa for p in pinned], addr - start, length, owner=owner,
                                                 register=not ctx.dev.privileged)
            except ShmRegistrationFailed as e:
                raise TeeErrno(errno.EINVAL, str(e)) from None
        except BaseException:
            self.mms.unpin(pinned)
            self._idr_remove(ctx, sid)
            raise
        return self._install(ctx, sid, ShmKind.REGISTER, shm, length, pinned)

    def _install(self, ctx: TeeContext, sid: int, kind: ShmKind, shm: Shm, size: int, pinned: list) -> TeeShm:
        tshm = TeeShm(sid, ctx, kind, shm, size, pinned)
        with self._lock:
            ctx.dev.idr.replace(sid, tshm)
            self._by_cookie[shm.cookie] = tshm
            ctx.refs += 1  # teedev_ctx_get: a shm keeps its context
        return tshm

    def _idr_remove(self, ctx: TeeContext, sid: int) -> None:
        with self._lock:
            ctx.dev.idr.remove(sid)

    def _get_from_id(self, ctx: TeeContext | None, shm_id: int) -> TeeShm | None:
        """tee_shm_get_from_id: the id is a C int; another context's is not found."""
        if ctx is None:
            return None
        with self._lock:
            tshm = ctx.dev.idr.find(_s32(shm_id))
            if not isinstance(tshm, TeeShm) or tshm.ctx is not ctx or tshm.released:
                return None
            tshm.refs += 1
            return tshm

    def shm_get(self, tshm: TeeShm) -> None:
        """Another reference (a mapping, a duplicated descriptor)."""
        with self._lock:
            if tshm.released:
                raise TeeErrno(errno.EBADF, f"shm {tshm.id} is released")
            tshm.refs += 1

    def shm_put(self, tshm: TeeShm) -> None:
        """tee_shm_put: on the last reference, remove the id and release."""
        with self._lock:
            tshm.refs -= 1
            if tshm.refs:
                return
            tshm.released = True
            tshm.ctx.dev.idr.remove(tshm.id)
            self._by_cookie.pop(tshm.shm.cookie, None)
        try:
            self.driver.free_shm(tshm.shm)  # UNREGISTER_SHM where registered
        except GuestError as e:
            log.warning("unregister shm %d failed: %s", tshm.id, e)
        finally:
            if tshm.user_pages:
                self.mms.unpin(tshm.user_pages)
            self._ctx_put(tshm.ctx)

    def _put_all(self, held: list[TeeShm]) -> None:
        for tshm in held:
            self.shm_put(tshm)

    # supplicant buffers, for the driver (through SuppQueue)
    def supp_shm_get(self, ctx: TeeContext | None, shm_id: int) -> Shm | None:
        tshm = self._get_from_id(ctx, shm_id)
        return None if tshm is None else tshm.shm

    def supp_shm_put(self, shm: Shm) -> None:
        with self._lock:
            tshm = self._by_cookie.get(shm.cookie)
        if tshm is not None:
            self.shm_put(tshm)

    def shm_id_of(self, shm: Shm) -> int:
        """The id of the object behind a driver buffer; -1 for the kernel's own."""
        with self._lock:
            tshm = self._by_cookie.get(shm.cookie)
        return -1 if tshm is None else tshm.id

    # -- mmap of a shared-memory fd (tee_shm_fop_mmap) ------------------------------------
    def mmap_frames(self, tshm: TeeShm, pgoff: int, npages: int) -> list[int]:
        """The RAM-file pages behind pages [pgoff, pgoff + npages) of an
        allocated buffer."""
        if tshm.kind is ShmKind.REGISTER:
            raise TeeErrno(errno.EINVAL, f"shm {tshm.id} is the application's own memory: no mmap")
        if npages < 1 or pgoff < 0 or pgoff + npages > tshm.size // PAGE_SIZE:
            raise TeeErrno(errno.EINVAL, f"pages [{pgoff}, +{npages}) outside the {tshm.size}-byte shm {tshm.id}")
        assert tshm.shm.pages is not None
        return [self.frame_of(ipa) for ipa in tshm.shm.pages[pgoff : pgoff + npages]]

    # -- teardown and statistics -----------------------------------------------------------
    def shutdown(self) -> None:
        """The guest is going down: no new opens; release every context and
        buffer that remains (the device server has already dropped its
        processes), then the driver itself."""
        self._closed = True
        self.supp.release()
        with self._lock:
            leftovers = [t for dev in self.devices.values() for t in dev.idr.values() if isinstance(t, TeeShm)]
            contexts = list(self._contexts)
        for tshm in leftovers:
            with self._lock:
                if tshm.released:
                    continue
                tshm.refs = 1
            self.shm_put(tshm)
        for ctx in contexts:
            with self._lock:
                if ctx.releasing:
                    continue
                ctx.refs = 1
            self._ctx_put(ctx)
        self.driver.shutdown()

    def statistics(self) -> dict:
        with self._lock:
            out = {
                "contexts": len(self._contexts),
                "sessions": sum(len(c.sessions) for c in self._contexts),
                "shm": {name: len(dev.idr) for name, dev in self.devices.items()},
            }
        out["supplicant"] = self.supp.statistics()
        out["mm"] = self.mms.statistics()
        out["guest_pages_allocated"] = self.driver.pages.allocated_count
        return out


def _u32(v: int) -> bytes:
    return (v & 0xFFFFFFFF).to_bytes(4, "little")
