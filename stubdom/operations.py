"""The libteec-level operations, one client-API call each, the SMC /
message-command / RPC sequence the guest issues for each, and the sequence
Linux 6.x's OP-TEE driver and libteec issue for it — what a test compares
and a document prints.

    recorder = TraceRecorder()
    driver = OpteeDriver(trap, domain, supplicant=Supplicant(), trace=recorder)
    driver.probe()
    seen = record_operations(Context(driver), recorder)   # name -> [TraceEvent]
    compact(seen["invoke_temp_memref"]) == expected_sequence("invoke_temp_memref", rpc_arg=True)

Each operation runs once unmeasured first, so what is recorded is the steady
state: the driver's argument cache is registered (with RPC_ARG) and OP-TEE's
thread has its RPC argument cached (without RPC_ARG, after Linux's
ENABLE_SHM_CACHE).  Every operation uses vCPU 0, where OP-TEE gives one
call at a time its first free thread.

The upstream sequences, operation by operation (Linux: drivers/tee/optee,
libteec: optee_client libteec/src/tee_client_api.c, OP-TEE: core/):

* every yielding call: ``optee_smc_do_call_with_arg`` — with RPC_ARG the
  argument is in the driver's registered argument cache and the call is
  CALL_WITH_REGD_ARG, without it a private page passed by address with
  CALL_WITH_ARG; each RPC is answered with CALL_RETURN_FROM_RPC.
  REGISTER_SHM and UNREGISTER_SHM use a temporary private argument instead
  (``optee_shm_register`` / ``optee_shm_unregister``): CALL_WITH_RPC_ARG with
  RPC_ARG, CALL_WITH_ARG without.
* open_session (TEEC_OpenSession of an REE TA): OPEN_SESSION, during which
  OP-TEE loads the TA (``ree_fs_ta.c``: LOAD_TA with no buffer for the size,
  SHM_ALLOC of type APPL that tee-supplicant serves, LOAD_TA into it,
  SHM_FREE once loaded).  A multi-instance TA (hello_world's TA_FLAGS 0) is
  loaded at every open.
* close_session (TEEC_CloseSession): CLOSE_SESSION.
* invoke_value (TEEC_InvokeCommand with a TEEC_VALUE_INOUT): INVOKE_COMMAND.
* invoke_temp_memref (two TEEC_TempMemoryReference): libteec registers the
  caller's buffer for each (``teec_pre_process_tmpref`` ->
  TEEC_RegisterSharedMemory -> TEE_IOC_SHM_REGISTER -> Linux REGISTER_SHM),
  the INVOKE_COMMAND names them as RMEM, and ``teec_free_temp_refs`` releases
  each (the last close -> ``tee_shm_release`` -> UNREGISTER_SHM).
* allocate_shared_memory / register_shared_memory (TEEC_AllocateSharedMemory,
  TEEC_RegisterSharedMemory with TEE_GEN_CAP_REG_MEM): both are
  TEE_IOC_SHM_REGISTER, one REGISTER_SHM; release_shared_memory
  (TEEC_ReleaseSharedMemory): one UNREGISTER_SHM.
* invoke_shared_memref (TEEC_RegisteredMemoryReference, whole and partial):
  INVOKE_COMMAND with RMEM params, nothing else.
* cancel (TEEC_RequestCancellation): TEE_IOC_CANCEL -> ``optee_cancel_req``:
  one CANCEL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from stubdom.guest import IN, INOUT, OUT, Context, RegisteredMemref, TempMemref, Value
from stubdom.guest.trace import TraceEvent, TraceRecorder
from stubdom.optee.teec import TEEC_MEM_INPUT
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    INCREMENT_UUID,
    SHA256_SIZE,
    TA_INCREMENT_CMD_INC_VALUE,
)

__all__ = ["Operation", "OPERATIONS", "operation_names", "expected_sequence", "record_operations"]

TEMP_MEMREF_BYTES = 4096  # the digest's input in invoke_temp_memref


@dataclass(frozen=True)
class Operation:
    """A libteec call: ``run(state)`` does it once on the prepared state."""

    name: str
    libteec: str  # the libteec function(s) it stands for
    description: str
    run: Callable[[dict], None]


def _open(st: dict) -> None:
    st["opened"].append(st["ctx"].open_session(INCREMENT_UUID))


def _close(st: dict) -> None:
    st["opened"].pop().close()


def _invoke_value(st: dict) -> None:
    out = st["inc"].invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(41, 0, INOUT)])
    if out[0].a != 42:
        raise AssertionError(f"increment of 41 gave {out[0].a}")


def _invoke_temp_memref(st: dict) -> None:
    data = st["data"]
    out = st["digest"].invoke(DIGEST_CMD_SHA256, [TempMemref(data, IN), TempMemref(size=SHA256_SIZE, direction=OUT)])
    if out[1].data != hashlib.sha256(data).digest():
        raise AssertionError("digest of a temporary memref differs from hashlib's")


def _allocate(st: dict) -> None:
    st["shms"].append(st["ctx"].allocate_shared_memory(TEMP_MEMREF_BYTES))


def _register(st: dict) -> None:
    st["shms"].append(st["ctx"].register_memory(TEMP_MEMREF_BYTES, TEEC_MEM_INPUT))


def _release(st: dict) -> None:
    st["shms"].pop().release()


def _invoke_shared_memref(st: dict) -> None:
    src, dst = st["src"], st["dst"]
    st["digest"].invoke(DIGEST_CMD_SHA256, [RegisteredMemref(src), RegisteredMemref(dst, 16, SHA256_SIZE, OUT)])
    if dst.read(16, SHA256_SIZE) != hashlib.sha256(st["data"]).digest():
        raise AssertionError("digest of registered memory differs from hashlib's")


def _cancel(st: dict) -> None:
    st["ctx"].driver.cancel(st["inc"].id, 0, vcpu=0)


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("open_session", "TEEC_OpenSession", "open a session of the increment TA (REE-loaded)", _open),
    Operation("close_session", "TEEC_CloseSession", "close it", _close),
    Operation("invoke_value", "TEEC_InvokeCommand", "one TEEC_VALUE_INOUT", _invoke_value),
    Operation("invoke_temp_memref", "TEEC_InvokeCommand",
              f"digest TA: a {TEMP_MEMREF_BYTES}-byte TEEC_MEMREF_TEMP_INPUT and a 32-byte TEEC_MEMREF_TEMP_OUTPUT",
              _invoke_temp_memref),
    Operation("allocate_shared_memory", "TEEC_AllocateSharedMemory", f"{TEMP_MEMREF_BYTES} bytes", _allocate),
    Operation("register_shared_memory", "TEEC_RegisterSharedMemory", f"{TEMP_MEMREF_BYTES} bytes", _register),
    Operation("release_shared_memory", "TEEC_ReleaseSharedMemory", "the last one allocated or registered",
              _release),
    Operation("invoke_shared_memref", "TEEC_InvokeCommand",
              "digest TA: TEEC_MEMREF_WHOLE input, TEEC_MEMREF_PARTIAL_OUTPUT at an offset", _invoke_shared_memref),
    Operation("cancel", "TEEC_RequestCancellation", "cancellation of the increment session (cancel id 0)",
              _cancel),
)}


def operation_names() -> list[str]:
    return list(OPERATIONS)


def expected_sequence(name: str, *, rpc_arg: bool) -> list[str]:
    """What Linux 6.x and libteec issue for operation ``name`` in the steady
    state, in :func:`stubdom.guest.trace.compact` form; ``rpc_arg``: the
    secure world announced OPTEE_SMC_SEC_CAP_RPC_ARG and the hypervisor let
    it through."""
    call = "CALL_WITH_REGD_ARG" if rpc_arg else "CALL_WITH_ARG"
    private = "CALL_WITH_RPC_ARG" if rpc_arg else "CALL_WITH_ARG"
    resume = "CALL_RETURN_FROM_RPC"

    def one(cmd: str, via: str = call) -> list[str]:
        return [f"{via} {cmd}", "<- OK"]

    register, unregister = one("REGISTER_SHM", private), one("UNREGISTER_SHM", private)
    if name == "open_session":
        return [f"{call} OPEN_SESSION",
                "<- RPC CMD LOAD_TA size", resume,
                "<- RPC CMD SHM_ALLOC APPL", resume,
                "<- RPC CMD LOAD_TA load", resume,
                "<- RPC CMD SHM_FREE APPL", resume,
                "<- OK"]
    if name == "close_session":
        return one("CLOSE_SESSION")
    if name == "invoke_value":
        return one("INVOKE_COMMAND")
    if name == "invoke_temp_memref":
        return register + register + one("INVOKE_COMMAND") + unregister + unregister
    if name in ("allocate_shared_memory", "register_shared_memory"):
        return register
    if name == "release_shared_memory":
        return unregister
    if name == "invoke_shared_memref":
        return one("INVOKE_COMMAND")
    if name == "cancel":
        return one("CANCEL")
    raise KeyError(name)


def record_operations(ctx: Context, recorder: TraceRecorder) -> dict[str, list[TraceEvent]]:
    """Run every operation on ``ctx`` (whose driver reports to ``recorder``),
    each once unmeasured, then once recorded; returns what each issued.
    Leaves the context as it found it."""
    from stubdom.workloads import random_bytes

    st: dict = {"ctx": ctx, "opened": [], "shms": [], "data": random_bytes(TEMP_MEMREF_BYTES, 13)}
    st["inc"] = ctx.open_session(INCREMENT_UUID)
    st["digest"] = ctx.open_session(DIGEST_UUID)
    st["src"] = ctx.allocate_shared_memory(TEMP_MEMREF_BYTES, TEEC_MEM_INPUT)
    st["src"].write(0, st["data"])
    st["dst"] = ctx.allocate_shared_memory(2 * SHA256_SIZE)
    out: dict[str, list[TraceEvent]] = {}
    # what undoes (or redoes) an operation's effect on the state after its
    # unmeasured run, so that the measured one finds the same state
    reset = {"open_session": _close, "close_session": _open, "allocate_shared_memory": _release,
             "register_shared_memory": _release, "release_shared_memory": _allocate}
    try:
        for op in OPERATIONS.values():
            op.run(st)  # warm: argument cache, OP-TEE's cached RPC argument
            if op.name in reset:
                reset[op.name](st)
            recorder.take()
            op.run(st)
            out[op.name] = [e for e in recorder.take() if e.vcpu == 0]
    finally:
        for s in st["opened"]:
            s.close()
        for m in st["shms"]:
            m.release()
        for m in (st["src"], st["dst"]):
            m.release()
        st["inc"].close()
        st["digest"].close()
    return out

