"""A libteec-like client API over the guest driver (OP-TEE/optee_client
``tee_client_api.h`` in Python): contexts, sessions, shared memory and typed
parameters.  Failures raise :class:`TeecError` (``ret``, ``origin``).

Shared memory reaches the kernel as libteec sends it (optee_client
``libteec/src/tee_client_api.c``), and the kernel turns it into SMCs as
Linux does:

* TEEC_AllocateSharedMemory / TEEC_RegisterSharedMemory: with dynamic shared
  memory (TEE_GEN_CAP_REG_MEM) a buffer registered with TEE_IOC_SHM_REGISTER,
  which Linux registers with OP-TEE at once (REGISTER_SHM: tee_shm_register_user_buf
  -> optee_shm_register) and unregisters when it is released
  (UNREGISTER_SHM); memrefs into it are RMEM.  With the reserved pool only,
  a buffer from it (TEE_IOC_SHM_ALLOC), passed as TMEM by address; no SMC.
* A temporary memref (teec_pre_process_tmpref): the caller's buffer is
  registered for the one call (TEEC_RegisterSharedMemory, 8 bytes when it is
  empty), used as RMEM, and released after it (teec_free_temp_refs): so one
  REGISTER_SHM before and one UNREGISTER_SHM after the call, per temporary
  memref.  A NULL buffer of size 0 is a NULL memref when the TEE has
  TEE_GEN_CAP_MEMREF_NULL, else an 8-byte allocation.

The client's buffers are fresh guest pages (a Python client has no process
memory); the SMCs are those of a C client's.
"""

from __future__ import annotations

import enum
import threading
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from stubdom.optee.smc import OPTEE_SMC_SEC_CAP_MEMREF_NULL
from stubdom.optee.teec import (
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_BAD_STATE,
    TEEC_ERROR_GENERIC,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_LOGIN_PUBLIC,
    TEEC_MEM_INPUT,
    TEEC_MEM_OUTPUT,
    TEEC_MEMREF_PARTIAL_INPUT,
    TEEC_MEMREF_TEMP_INPUT,
    TEEC_MEMREF_WHOLE,
    TEEC_NONE,
    TEEC_ORIGIN_API,
    TEEC_ORIGIN_COMMS,
    TEEC_SUCCESS,
    TEEC_VALUE_INPUT,
)

from .driver import CallResult, OpteeDriver, UnsupportedLogin
from .errors import OutOfGuestPages, ShmRegistrationFailed, StaticShmOutOfMemory, TeecError, TooManyParams
from .params import TeeParam
from .shm import Shm

__all__ = [
    "Direction",
    "IN",
    "OUT",
    "INOUT",
    "Value",
    "TempMemref",
    "RegisteredMemref",
    "Param",
    "SharedMemory",
    "Session",
    "Context",
]

TEEC_CONFIG_PAYLOAD_REF_COUNT = 4  # tee_client_api.h
# TEEC_AllocateSharedMemory / TEEC_RegisterSharedMemory: "if (!s) s = 8"
_EMPTY_SHM_SIZE = 8


class Direction(enum.IntEnum):
    """Data direction, as the low two bits of every TEEC param type."""

    INPUT = 1
    OUTPUT = 2
    INOUT = 3


IN, OUT, INOUT = Direction.INPUT, Direction.OUTPUT, Direction.INOUT


@dataclass(frozen=True)
class Value:
    """TEEC_VALUE_INPUT/OUTPUT/INOUT: two 32-bit values."""

    a: int = 0
    b: int = 0
    direction: Direction = IN

    @property
    def param_type(self) -> int:
        return TEEC_VALUE_INPUT - 1 + self.direction


@dataclass(frozen=True)
class TempMemref:
    """TEEC_MEMREF_TEMP_*: a buffer of the caller's, shared for one call.
    ``data`` is the input (bytes) or, for a pure output, ``size`` bytes of
    room.  After the call, ``data`` holds the output (``size`` bytes as the TA
    returned them) and ``size`` the returned size (the needed size after
    SHORT_BUFFER).  No data and size 0 is a NULL buffer (with MEMREF_NULL,
    the way to ask a TA for a size); ``b""`` is an empty buffer."""

    data: bytes | None = None
    direction: Direction = IN
    size: int | None = None

    def __post_init__(self) -> None:
        if self.size is None:
            object.__setattr__(self, "size", len(self.data) if self.data is not None else 0)
        elif self.data is not None and len(self.data) > self.size:
            raise ValueError(f"{len(self.data)} bytes of data exceed size {self.size}")

    @property
    def param_type(self) -> int:
        return TEEC_MEMREF_TEMP_INPUT - 1 + self.direction


@dataclass(frozen=True)
class RegisteredMemref:
    """TEEC_MEMREF_WHOLE / TEEC_MEMREF_PARTIAL_*: a window of a SharedMemory.
    ``size=None`` with ``offset=0`` and no direction is the whole buffer."""

    shm: SharedMemory
    offset: int = 0
    size: int | None = None
    direction: Direction | None = None

    @property
    def param_type(self) -> int:
        if self.direction is None:
            return TEEC_MEMREF_WHOLE
        return TEEC_MEMREF_PARTIAL_INPUT - 1 + self.direction


Param = Value | TempMemref | RegisteredMemref | None


class SharedMemory:
    """TEEC_SharedMemory: a buffer registered with (or allocated for) OP-TEE."""

    def __init__(self, context: Context, shm: Shm, flags: int, size: int) -> None:
        self._context = context
        self.shm = shm
        self.flags = flags
        self.size = size  # as asked; an empty buffer has 8 bytes behind it
        self.released = False

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return self.shm.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.shm.write(offset, data)

    def release(self) -> None:
        """TEEC_ReleaseSharedMemory: UNREGISTER_SHM and give the pages back."""
        if not self.released:
            self.released = True
            self._context._forget(self)
            self._context.driver.free_shm(self.shm, vcpu=self._context.vcpu)


def _oom(e: Exception) -> TeecError:
    return TeecError(TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_COMMS, str(e))


class Session:
    """TEEC_Session: invoke commands on one TA; ``vcpu`` is where calls trap."""

    def __init__(self, context: Context, session_id: int, vcpu: int) -> None:
        self.context = context
        self.id = session_id
        self.vcpu = vcpu
        self.closed = False

    def invoke(self, command: int, params: Sequence[Param] = (), *, vcpu: int | None = None) -> list[Param]:
        """TEEC_InvokeCommand; returns the params with their outputs filled in."""
        if self.closed:
            raise TeecError(TEEC_ERROR_BAD_STATE, TEEC_ORIGIN_API)
        vcpu = self.vcpu if vcpu is None else vcpu
        return self.context._call(
            lambda tparams: self.context.driver.invoke(self.id, command, tparams, vcpu=vcpu),
            params,
            vcpu,
        )[1]

    def close(self) -> None:
        """TEEC_CloseSession."""
        if not self.closed:
            self.closed = True
            self.context._sessions.discard(self)
            self.context.driver.close_session(self.id, vcpu=self.vcpu)


class Context:
    """TEEC_Context on one guest driver.  ``vcpu`` is the default vCPU of the
    sessions it opens (each session and call may choose another)."""

    def __init__(self, driver: OpteeDriver, *, vcpu: int = 0) -> None:
        self.driver = driver
        self.vcpu = vcpu
        self._sessions: set[Session] = set()
        self._shms: set[SharedMemory] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """TEEC_FinalizeContext: close sessions and release shared memory."""
        for session in list(self._sessions):
            session.close()
        for shm in list(self._shms):
            shm.release()

    def _forget(self, shm: SharedMemory) -> None:
        with self._lock:
            self._shms.discard(shm)

    # -- shared memory ---------------------------------------------------------------
    def allocate_shared_memory(
        self, size: int, flags: int = TEEC_MEM_INPUT | TEEC_MEM_OUTPUT
    ) -> SharedMemory:
        """TEEC_AllocateSharedMemory."""
        return self._new_shm(size, flags, caller_buffer=False)

    def register_memory(self, size: int, flags: int = TEEC_MEM_INPUT | TEEC_MEM_OUTPUT) -> SharedMemory:
        """TEEC_RegisterSharedMemory of a fresh ``size``-byte guest buffer."""
        return self._new_shm(size, flags, caller_buffer=True)

    def _new_shm(self, size: int, flags: int, *, caller_buffer: bool) -> SharedMemory:
        if size < 0 or not flags & (TEEC_MEM_INPUT | TEEC_MEM_OUTPUT) or flags & ~3:
            raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, f"size {size}, flags {flags:#x}")
        try:
            shm = self._register(size or _EMPTY_SHM_SIZE, self.vcpu, caller_buffer=caller_buffer)
        except (OutOfGuestPages, StaticShmOutOfMemory) as e:
            raise _oom(e) from e
        mem = SharedMemory(self, shm, flags, size)
        with self._lock:
            self._shms.add(mem)
        return mem

    def _register(self, size: int, vcpu: int, *, caller_buffer: bool) -> Shm:
        """TEE_IOC_SHM_REGISTER (one REGISTER_SHM) as libteec issues it.

        Linux answers a refused REGISTER_SHM with -EINVAL (smc_abi.c
        optee_shm_register).  TEEC_RegisterSharedMemory then registers a
        page-aligned shadow buffer of the same size before it gives up, with
        TEEC_ERROR_GENERIC (errno is not ENOMEM); TEEC_AllocateSharedMemory
        gives up at once with TEEC_ERROR_OUT_OF_MEMORY.  Both are the API's
        own errors (origin TEEC_ORIGIN_API where a call reports one).
        """
        try:
            return self.driver.alloc_shm(size, vcpu=vcpu)
        except ShmRegistrationFailed as e:
            if not caller_buffer:
                raise TeecError(TEEC_ERROR_OUT_OF_MEMORY, TEEC_ORIGIN_API, str(e)) from e
        try:  # the shadow buffer
            return self.driver.alloc_shm(size, vcpu=vcpu)
        except ShmRegistrationFailed as e:
            raise TeecError(TEEC_ERROR_GENERIC, TEEC_ORIGIN_API, str(e)) from e

    # -- sessions ----------------------------------------------------------------------
    def open_session(
        self,
        ta_uuid: uuidlib.UUID,
        *,
        login: int = TEEC_LOGIN_PUBLIC,
        params: Sequence[Param] = (),
        vcpu: int | None = None,
    ) -> Session:
        """TEEC_OpenSession; raises TeecError with the TA's or TEE's result."""
        vcpu = self.vcpu if vcpu is None else vcpu
        try:
            result, _ = self._call(
                lambda tparams: self.driver.open_session(ta_uuid, tparams, login=login, vcpu=vcpu),
                params,
                vcpu,
            )
        except UnsupportedLogin as e:
            raise TeecError(TEEC_ERROR_NOT_SUPPORTED, TEEC_ORIGIN_API, str(e)) from e
        session = Session(self, result.session, vcpu)
        self._sessions.add(session)
        return session

    # -- parameter marshalling (libteec teec_pre_process_operation / post) ----------------
    def _call(
        self, run: Callable[[list[TeeParam]], CallResult], params: Sequence[Param], vcpu: int
    ) -> tuple[CallResult, list[Param]]:
        if len(params) > TEEC_CONFIG_PAYLOAD_REF_COUNT:
            raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, f"{len(params)} params")
        temps: list[Shm] = []
        try:
            tparams = [self._to_tee_param(p, temps, vcpu) for p in params]
            try:
                result = run(tparams)
            except TooManyParams as e:
                raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, str(e)) from e
            outputs = [self._from_tee_param(p, tp, result.ret) for p, tp in zip(params, tparams)]
        except (OutOfGuestPages, StaticShmOutOfMemory) as e:
            raise _oom(e) from e
        finally:
            for shm in temps:  # teec_free_temp_refs: UNREGISTER_SHM each
                self.driver.free_shm(shm, vcpu=vcpu)
        if result.ret != TEEC_SUCCESS:
            raise TeecError(result.ret, result.ret_origin, outputs)
        return result, outputs

    def _to_tee_param(self, p: Param, temps: list[Shm], vcpu: int) -> TeeParam:
        if p is None:
            return TeeParam(TEEC_NONE)
        if isinstance(p, Value):
            return TeeParam.value(p.param_type, p.a, p.b, 0)
        if isinstance(p, TempMemref):
            assert p.size is not None  # TempMemref.__post_init__ sets it from the data when not given
            attr = p.param_type
            if p.data is None and not p.size and self._memref_null():
                return TeeParam.memref(attr, None, 0, 0)  # TEE_MEMREF_NULL
            # TEEC_RegisterSharedMemory of the caller's buffer (REGISTER_SHM)
            shm = self._register(p.size or _EMPTY_SHM_SIZE, vcpu, caller_buffer=True)
            temps.append(shm)
            if p.direction != OUT and p.data:
                shm.write(0, p.data)
            return TeeParam.memref(attr, shm, 0, p.size)
        if isinstance(p, RegisteredMemref):
            mem = p.shm
            if mem.released or mem._context is not self:
                raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, "stale shared memory")
            if p.direction is None:
                direction = {TEEC_MEM_INPUT: IN, TEEC_MEM_OUTPUT: OUT}.get(mem.flags, INOUT)
                offset, size = 0, mem.size if p.size is None else p.size
                if p.offset or size != mem.size:
                    raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, "WHOLE with a window")
            else:
                direction, offset = p.direction, p.offset
                size = mem.size - offset if p.size is None else p.size
                needs = (TEEC_MEM_INPUT if direction & IN else 0) | (TEEC_MEM_OUTPUT if direction & OUT else 0)
                if needs & ~mem.flags:
                    raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, "direction vs flags")
            if offset < 0 or size < 0 or offset + size > mem.size:
                raise TeecError(
                    TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, f"window {offset}+{size} of {mem.size}"
                )
            return TeeParam.memref(TEEC_MEMREF_TEMP_INPUT - 1 + direction, mem.shm, offset, size)
        raise TypeError(f"{p!r} is not a client parameter")

    def _memref_null(self) -> bool:
        """TEE_GEN_CAP_MEMREF_NULL: the secure world takes NULL memrefs."""
        info = self.driver.info
        return info is not None and bool(info.sec_caps & OPTEE_SMC_SEC_CAP_MEMREF_NULL)

    @staticmethod
    def _from_tee_param(p: Param, tp: TeeParam, ret: int) -> Param:
        if p is None:
            return None
        if isinstance(p, Value):
            if p.direction == IN:
                return p
            return replace(p, a=tp.a & 0xFFFFFFFF, b=tp.b & 0xFFFFFFFF)
        if isinstance(p, TempMemref):
            if p.direction == IN:
                return p
            data = p.data
            assert p.size is not None  # TempMemref.__post_init__ sets it from the data when not given
            if ret == TEEC_SUCCESS and tp.shm is not None:
                data = tp.shm.read(0, min(tp.size, p.size))
            elif data is not None and len(data) > tp.size:
                data = data[: tp.size]
            return TempMemref(data, p.direction, tp.size)
        if isinstance(p, RegisteredMemref):
            return replace(p, size=tp.size)
        return p
