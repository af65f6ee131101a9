"""The benchmark's workloads: one guest operation each, the same client code
under every placement, every answer checked (a wrong answer stops the run:
what is measured is what is checked).

A workload is prepared once per (domain, vCPU) worker — sessions opened,
buffers and expected digests computed — so that the measured ``call`` is
exactly the one operation named: a fast SMC, one INVOKE, or an open+close.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from stubdom import workloads as shared
from stubdom.guest import IN, INOUT, OUT, Context, DriverNotReady, OpteeDriver, TempMemref, Value
from stubdom.optee.smc import OPTEE_SMC_CALL_GET_OS_REVISION
from stubdom.tee.tas import (
    DIGEST_CMD_SHA256,
    DIGEST_UUID,
    INCREMENT_UUID,
    SHA256_SIZE,
    STORAGE_CMD_READ,
    STORAGE_CMD_WRITE,
    STORAGE_UUID,
    TA_INCREMENT_CMD_INC_VALUE,
)

__all__ = ["Workload", "WORKLOADS", "Worker", "workload_names"]

PAGE = 4096
STORAGE_BLOB = 4096  # one page of object data: FS + SHM_ALLOC RPCs each way


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    prepare: Callable[[Worker], Callable[[], None]]  # returns the measured call


class Worker:
    """One guest vCPU issuing calls: its driver, vCPU index and client
    context; ``close()`` releases what ``prepare`` opened."""

    def __init__(self, driver: OpteeDriver, domid: int, vcpu: int, seed: int) -> None:
        self.driver = driver
        self.domid = domid
        self.vcpu = vcpu
        self.seed = seed
        self.ctx = Context(driver, vcpu=vcpu)
        self._cleanup: list[Callable[[], None]] = []

    def on_close(self, fn: Callable[[], None]) -> None:
        self._cleanup.append(fn)

    def close(self) -> None:
        while self._cleanup:
            self._cleanup.pop()()
        self.ctx.close()


def _fast_call(w: Worker) -> Callable[[], None]:
    info = w.driver.info
    if info is None:
        raise DriverNotReady(w.driver.state)
    expected = info.os_revision  # from the probe, through the same placement

    def call() -> None:
        r = w.driver.smc(w.vcpu, OPTEE_SMC_CALL_GET_OS_REVISION)
        if (r[0], r[1], r[2]) != expected:
            raise shared.WorkloadFailed("fast_call", f"GET_OS_REVISION gave {r[:3]}, probe saw {expected}")

    return call


def _invoke_value(w: Worker) -> Callable[[], None]:
    session = w.ctx.open_session(INCREMENT_UUID)
    w.on_close(session.close)
    state = [w.seed & 0xFFFF]

    def call() -> None:
        v = state[0]
        out = shared.output_param(session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(v, 0, INOUT)]), 0, Value)
        if out.a != v + 1:
            raise shared.WorkloadFailed("invoke_value", f"{v} + 1 came back as {out.a}")
        state[0] = (v + 1) & 0xFFFF

    return call


def _digest(pages: int) -> Callable[[Worker], Callable[[], None]]:
    def prepare(w: Worker) -> Callable[[], None]:
        session = w.ctx.open_session(DIGEST_UUID)
        w.on_close(session.close)
        data = shared.random_bytes(pages * PAGE, w.seed + pages)
        want = hashlib.sha256(data).digest()

        def call() -> None:
            out = session.invoke(DIGEST_CMD_SHA256, [TempMemref(data, IN),
                                                      TempMemref(size=SHA256_SIZE, direction=OUT)])
            if shared.output_param(out, 1, TempMemref).data != want:
                raise shared.WorkloadFailed(f"digest_{pages}p", "digest differs from hashlib's")

        return call

    return prepare


def _storage_rw(w: Worker) -> Callable[[], None]:
    session = w.ctx.open_session(STORAGE_UUID)
    w.on_close(session.close)
    object_id = b"bench-%d-%d" % (w.domid, w.vcpu)
    blob = shared.random_bytes(STORAGE_BLOB, w.seed)

    def call() -> None:
        session.invoke(STORAGE_CMD_WRITE, [TempMemref(object_id, IN), TempMemref(blob, IN)])
        out = session.invoke(STORAGE_CMD_READ, [TempMemref(object_id, IN),
                                                 TempMemref(size=len(blob), direction=OUT)])
        if shared.output_param(out, 1, TempMemref).data != blob:
            raise shared.WorkloadFailed("storage_rw", f"object {object_id!r} read back differs")

    return call


def _open_close(w: Worker) -> Callable[[], None]:
    def call() -> None:
        w.ctx.open_session(INCREMENT_UUID).close()

    return call


WORKLOADS: dict[str, Workload] = {
    wl.name: wl for wl in (
        Workload("fast_call", "GET_OS_REVISION: one fast SMC", _fast_call),
        Workload("invoke_value", "INVOKE increment TA, one VALUE_INOUT param", _invoke_value),
        Workload("digest_1p", "INVOKE digest TA, temporary memref of 1 page (registered around the call)",
                 _digest(1)),
        Workload("digest_16p", "INVOKE digest TA, temporary memref of 16 pages", _digest(16)),
        Workload("digest_129p", "INVOKE digest TA, temporary memref of 129 pages", _digest(129)),
        Workload("storage_rw", f"storage TA write + read of {STORAGE_BLOB} bytes (FS and SHM_ALLOC RPCs)",
                 _storage_rw),
        Workload("open_close", "OPEN_SESSION (LOAD_TA) + CLOSE_SESSION of the increment TA", _open_close),
    )
}


def workload_names() -> list[str]:
    return list(WORKLOADS)
