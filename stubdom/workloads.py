"""Guest workloads: the same client code runs under every placement.

Each workload takes an open client ``Context`` (stubdom.guest), does one
thing a real OP-TEE client does, checks the answer the way the client would
(digests against hashlib, counters, round-tripped objects) and raises
:class:`WorkloadFailed` when the answer is wrong. The demo, the tests and the
benchmark share them so that what is measured is what is checked.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TypeVar

from stubdom.guest import IN, INOUT, OUT, Context, Param, RegisteredMemref, TeecError, TempMemref, Value
from stubdom.optee.teec import TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ERROR_SHORT_BUFFER, TEEC_MEM_INPUT
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    INCREMENT_UUID,
    SHA256_SIZE,
    STORAGE_CMD_DELETE,
    STORAGE_CMD_READ,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    TA_INCREMENT_CMD_INC_VALUE,
    WAIT_CMD_BUSY,
    WAIT_CMD_GET_TIME,
    WAIT_UUID,
)


class WorkloadFailed(AssertionError):
    """A TA answered, but not what the client expected."""

    def __init__(self, workload: str, detail: str) -> None:
        super().__init__(f"{workload}: {detail}")
        self.workload = workload
        self.detail = detail


_Kind = TypeVar("_Kind", Value, TempMemref)


def output_param(params: Sequence[Param] | str | None, index: int, kind: type[_Kind]) -> _Kind:
    """Parameter ``index`` of a call's outputs, of the ``kind`` the workload
    passed there: Session.invoke, and the TeecError of a call the TEE
    answered, give back each parameter as the kind it was given with its
    outputs filled in. Anything else is a bug in the client, not a TA's
    answer."""
    param = params[index] if isinstance(params, Sequence) and not isinstance(params, str) else None
    if not isinstance(param, kind):
        raise TypeError(f"parameter {index} came back as {param!r}, not a {kind.__name__}")
    return param


def increment(ctx: Context, value: int = 41) -> int:
    """Open the increment TA, add one to ``value``, close."""
    session = ctx.open_session(INCREMENT_UUID)
    try:
        out = output_param(session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(value, 0, INOUT)]), 0, Value)
    finally:
        session.close()
    if out.a != value + 1:
        raise WorkloadFailed("increment", f"{value} + 1 came back as {out.a}")
    return out.a


def digest_temp(ctx: Context, data: bytes) -> bytes:
    """SHA-256 of ``data`` passed as a temporary memref (registered around
    the call under dynamic shm, as libteec does; a static-pool buffer
    otherwise)."""
    session = ctx.open_session(DIGEST_UUID)
    try:
        out = session.invoke(DIGEST_CMD_SHA256, [TempMemref(data, IN), TempMemref(size=SHA256_SIZE, direction=OUT)])
    finally:
        session.close()
    got = output_param(out, 1, TempMemref).data
    if got is None or got != hashlib.sha256(data).digest():
        raise WorkloadFailed("digest_temp", f"digest of {len(data)} bytes differs from hashlib's")
    return got


def digest_registered(ctx: Context, data: bytes) -> bytes:
    """SHA-256 of ``data`` in registered shared memory, the digest written
    into a second registered buffer at an offset."""
    session = ctx.open_session(DIGEST_UUID)
    src = ctx.allocate_shared_memory(len(data), TEEC_MEM_INPUT)
    dst = ctx.allocate_shared_memory(2 * SHA256_SIZE)
    try:
        src.write(0, data)
        session.invoke(DIGEST_CMD_SHA256, [RegisteredMemref(src), RegisteredMemref(dst, 16, SHA256_SIZE, OUT)])
        got = dst.read(16, SHA256_SIZE)
    finally:
        src.release()
        dst.release()
        session.close()
    if got != hashlib.sha256(data).digest():
        raise WorkloadFailed("digest_registered", f"digest of {len(data)} bytes differs from hashlib's")
    return got


def digest_short_buffer(ctx: Context) -> int:
    """Ask for a digest into 8 bytes: the TA must answer SHORT_BUFFER and the
    size it needs."""
    session = ctx.open_session(DIGEST_UUID)
    try:
        session.invoke(DIGEST_CMD_SHA256, [TempMemref(b"abc", IN), TempMemref(size=8, direction=OUT)])
    except TeecError as e:
        if e.ret != TEEC_ERROR_SHORT_BUFFER:
            raise WorkloadFailed("digest_short_buffer", f"got {e}") from e
        needed = output_param(e.outputs, 1, TempMemref).size
        if needed is None or needed != SHA256_SIZE:
            raise WorkloadFailed("digest_short_buffer", f"got {e}") from e
        return needed
    finally:
        session.close()
    raise WorkloadFailed("digest_short_buffer", "an 8-byte output buffer was accepted")


def storage_round_trip(ctx: Context, object_id: bytes, blob: bytes) -> int:
    """Write an object to secure storage (the guest's REE FS through the
    supplicant), read it back, delete it and check it is gone."""
    session = ctx.open_session(STORAGE_UUID)
    try:
        session.invoke(STORAGE_CMD_WRITE, [TempMemref(object_id, IN), TempMemref(blob, IN)])
        out = session.invoke(STORAGE_CMD_READ, [TempMemref(object_id, IN), TempMemref(size=len(blob), direction=OUT)])
        if output_param(out, 1, TempMemref).data != blob:
            raise WorkloadFailed("storage", f"object {object_id!r} read back differs ({len(blob)} bytes)")
        session.invoke(STORAGE_CMD_DELETE, [TempMemref(object_id, IN)])
        try:
            session.invoke(STORAGE_CMD_READ, [TempMemref(object_id, IN), TempMemref(size=16, direction=OUT)])
        except TeecError as e:
            if e.ret != TEEC_ERROR_ITEM_NOT_FOUND:
                raise WorkloadFailed("storage", f"read after delete gave {e}") from e
        else:
            raise WorkloadFailed("storage", f"object {object_id!r} still readable after delete")
    finally:
        session.close()
    return len(blob)


def wait_preempted(ctx: Context) -> tuple[int, tuple[int, int]]:
    """The wait TA: a busy command preempted by FOREIGN_INTR returns, then
    the REE time through an RPC."""
    session = ctx.open_session(WAIT_UUID)
    try:
        busy = output_param(session.invoke(WAIT_CMD_BUSY, [Value(0, 0, OUT)]), 0, Value).a
        now = output_param(session.invoke(WAIT_CMD_GET_TIME, [Value(0, 0, OUT)]), 0, Value)
    finally:
        session.close()
    if now.a == 0:
        raise WorkloadFailed("wait", "GET_TIME RPC returned 0 seconds")
    return busy, (now.a, now.b)


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)
