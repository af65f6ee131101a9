"""What the guest driver did, SMC by SMC: a record a test can compare and a
document can print.

The driver (``OpteeDriver(..., trace=recorder)``) reports every SMC it
issues and every RPC OP-TEE answers it with, decoded as far as the guest can
decode them (it wrote the message, so it knows the command; it reads the RPC
argument, so it knows the RPC command and its sub-operation):

=========  ====================================================  =====================
kind       function                                              command / detail
=========  ====================================================  =====================
fast       the fast call's name (CALL_GET_OS_REVISION...)        -
call       CALL_WITH_ARG / CALL_WITH_RPC_ARG / CALL_WITH_REGD_ARG the message's command
resume     CALL_RETURN_FROM_RPC                                  -
rpc        ALLOC / FREE / FOREIGN_INTR / CMD                     RPC command, detail
done       the call's final a0 (OK, ETHREAD_LIMIT...)            -
=========  ====================================================  =====================

Details: SHM_ALLOC / SHM_FREE give the buffer type (APPL, KERNEL), FS its
sub-operation (OPEN, READ...), NOTIFICATION WAIT or SEND, LOAD_TA whether it
is the size query (no buffer) or the load.  Names drop the OPTEE_SMC_,
OPTEE_MSG_CMD_ and OPTEE_RPC_CMD_ prefixes.  Each event carries the vCPU it
happened on, so concurrent calls can be told apart.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from stubdom.optee import rpc as _rpc
from stubdom.optee.msg import OPTEE_MSG_CMD_NAMES
from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_LOAD_TA,
    OPTEE_RPC_CMD_NAMES,
    OPTEE_RPC_CMD_NOTIFICATION,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_NOTIFICATION_SEND,
    OPTEE_RPC_NOTIFICATION_WAIT,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_RPC_SHM_TYPE_GLOBAL,
    OPTEE_RPC_SHM_TYPE_KERNEL,
)
from stubdom.optee.smc import (
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FOREIGN_INTR,
    OPTEE_SMC_RPC_FUNC_FREE,
    smc_name,
    smc_return_name,
)

__all__ = ["TraceEvent", "TraceRecorder", "compact", "smc_count", "rpc_commands", "function_name",
           "command_name", "return_name", "rpc_func_name", "rpc_event_detail"]

_RPC_FUNCS = {OPTEE_SMC_RPC_FUNC_ALLOC: "ALLOC", OPTEE_SMC_RPC_FUNC_FREE: "FREE",
              OPTEE_SMC_RPC_FUNC_FOREIGN_INTR: "FOREIGN_INTR", OPTEE_SMC_RPC_FUNC_CMD: "CMD"}
_SHM_TYPES = {OPTEE_RPC_SHM_TYPE_APPL: "APPL", OPTEE_RPC_SHM_TYPE_KERNEL: "KERNEL",
              OPTEE_RPC_SHM_TYPE_GLOBAL: "GLOBAL"}
_FS_OPS = {getattr(_rpc, n): n.removeprefix("OPTEE_RPC_FS_") for n in _rpc.__all__
           if n.startswith("OPTEE_RPC_FS_")}
_NOTIF = {OPTEE_RPC_NOTIFICATION_WAIT: "WAIT", OPTEE_RPC_NOTIFICATION_SEND: "SEND"}


def function_name(fid: int) -> str:
    """CALL_WITH_ARG, CALL_RETURN_FROM_RPC, CALL_GET_OS_REVISION... (the
    optee_smc.h name without OPTEE_SMC_, or the hex value)."""
    return smc_name(fid & 0xFFFFFFFF).removeprefix("OPTEE_SMC_")


def command_name(cmd: int) -> str:
    """OPEN_SESSION, INVOKE_COMMAND... (or ``cmd 0x..``)."""
    return OPTEE_MSG_CMD_NAMES.get(cmd, f"cmd {cmd:#x}").removeprefix("OPTEE_MSG_CMD_")


def return_name(a0: int) -> str:
    """OK, ETHREAD_LIMIT, EBADADDR... (or the hex value)."""
    return smc_return_name(a0 & 0xFFFFFFFF).removeprefix("OPTEE_SMC_RETURN_")


def rpc_func_name(func: int) -> str:
    return _RPC_FUNCS.get(func, f"func {func:#x}")


def rpc_event_detail(cmd: int, param0_a: int | None, param1_shm: bool) -> tuple[str, str]:
    """(command name, detail) of an RPC CMD from its first value and whether
    its second param names a buffer (LOAD_TA's size query has none)."""
    name = OPTEE_RPC_CMD_NAMES.get(cmd, f"cmd {cmd:#x}").removeprefix("OPTEE_RPC_CMD_")
    detail = ""
    if cmd in (OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE) and param0_a is not None:
        detail = _SHM_TYPES.get(param0_a, f"type {param0_a:#x}")
    elif cmd == OPTEE_RPC_CMD_FS and param0_a is not None:
        detail = _FS_OPS.get(param0_a, f"op {param0_a:#x}")
    elif cmd == OPTEE_RPC_CMD_NOTIFICATION and param0_a is not None:
        detail = _NOTIF.get(param0_a, f"op {param0_a:#x}")
    elif cmd == OPTEE_RPC_CMD_LOAD_TA:
        detail = "load" if param1_shm else "size"
    return name, detail


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One SMC the guest issued, or one RPC it was answered with."""

    vcpu: int
    kind: str  # "fast", "call", "resume", "rpc", "done"
    function: str
    command: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return " ".join(x for x in (self.function, self.command, self.detail) if x)


class TraceRecorder:
    """Collects events (thread-safe); ``events`` in the order they happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[TraceEvent] = []

    def __call__(self, event: TraceEvent) -> None:
        with self._lock:
            self.events.append(event)

    def take(self) -> list[TraceEvent]:
        """Everything recorded so far, forgetting it."""
        with self._lock:
            out, self.events = self.events, []
        return out


def compact(events: Iterable[TraceEvent]) -> list[str]:
    """The events as one line each, what OP-TEE answers marked with an
    arrow: ``CALL_WITH_ARG OPEN_SESSION``, ``<- RPC CMD LOAD_TA size``,
    ``CALL_RETURN_FROM_RPC``, ``<- OK``."""
    out = []
    for e in events:
        if e.kind == "rpc":
            out.append(f"<- RPC {e}")
        elif e.kind == "done":
            out.append(f"<- {e}")
        else:
            out.append(str(e))
    return out


def smc_count(events: Iterable[TraceEvent]) -> int:
    """SMCs the guest issued (each a world switch, and a trap to the mediator)."""
    return sum(1 for e in events if e.kind in ("fast", "call", "resume"))


def rpc_commands(events: Iterable[TraceEvent]) -> Counter[str]:
    """How many of each RPC the guest served: ``CMD FS READ``, ``ALLOC``..."""
    return Counter(" ".join(x for x in (e.function, e.command, e.detail) if x)
                   for e in events if e.kind == "rpc")
