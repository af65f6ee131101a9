"""Errors of the platform (the hypervisor side: toolstack, trap path)."""

from __future__ import annotations


class PlatformError(Exception):
    """Base of every error the platform raises."""


class BadRegisters(PlatformError):
    """A trapped register set is not eight 64-bit values.

    Raised by the trap path before anything is dispatched; the vCPU is not
    resumed with a result. Fix the caller: registers are x0..x7 as ints.
    """

    def __init__(self, regs: object) -> None:
        super().__init__(f"trapped registers must be 8 integers in 0..2**64-1, got {regs!r}")
        self.regs = regs


class DomainCreationFailed(PlatformError):
    """The placement refused a new domain (e.g. the TEE answered VM_CREATED
    with an error); the domain was destroyed again and nothing is left of it."""

    def __init__(self, domid: int, reason: str) -> None:
        super().__init__(f"cannot create domain {domid}: {reason}")
        self.domid = domid
        self.reason = reason


class UnknownDomain(PlatformError):
    """An operation named a domain the platform does not have."""

    def __init__(self, domid: int) -> None:
        super().__init__(f"no domain with domid {domid}")
        self.domid = domid


# -- the SMC gate (gate.py) -------------------------------------------------------


class GateError(PlatformError):
    """Base of the SMC gate's errors, on either side of the gate channel."""


class GateBusy(GateError):
    """Another platform already serves a gate in this runtime directory (its
    event channel accepts connections). Stop it, or use another
    ``mediator.runtime_dir``."""

    def __init__(self, path: str) -> None:
        super().__init__(f"an SMC gate is already being served at {path}: another platform "
                         f"runs in this runtime directory")
        self.path = path


class GateNotRunning(GateError):
    """A stub domain found no gate to connect to: the platform is not running
    in this runtime directory (or died). Start it with
    ``stubdom-teed platform --config <file>``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"no SMC gate at {path} ({reason}): start the platform first with "
                         f"`stubdom-teed platform --config <file>`")
        self.path = path
        self.reason = reason


class GatePeerRefused(GateError):
    """The process listening at the gate's event channel runs as another user
    than the stub domain's (or root): SO_PEERCRED says so, before the stub
    domain waits for a welcome or maps the ring. It is not the platform;
    find out who put the socket there."""

    def __init__(self, path: str, pid: int, uid: int, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.pid = pid
        self.uid = uid


class GateTimeout(GateError):
    """A gate hypercall got no answer within the client's bound: the platform
    is hung or gone. The request may still be answered later; its response is
    then dropped."""

    def __init__(self, op: int, domid: int, timeout: float) -> None:
        super().__init__(f"SMC gate op {op} for d{domid}: no answer within {timeout:g} s")
        self.op = op
        self.domid = domid
        self.timeout = timeout


class GateClosed(GateError):
    """The platform closed the gate's event channel (it stopped or died), or
    its ring was used after ``close()``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"SMC gate at {path} closed: {reason}")
        self.path = path
        self.reason = reason


# -- the toolstack's control-socket client (toolstack.py) -------------------------


class ToolstackError(PlatformError):
    """Base of the toolstack client's errors."""


class DaemonUnavailable(ToolstackError):
    """stubdom-teed's control socket cannot be reached, closed the connection
    or did not answer within the bound. Start the daemon beside the platform
    (``stubdom-teed --config <file>``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"stubdom-teed control socket {path}: {reason}")
        self.path = path
        self.reason = reason


class DaemonRefused(DaemonUnavailable):
    """The process listening on the control socket runs as another user than
    the platform's (or root): SO_PEERCRED says so, before anything is sent.
    It is not our stubdom-teed (perhaps another local user's socket at the
    path), so the platform counts the daemon as unavailable: domain_create
    fails, domain_destroy falls back to the platform's own VM_DESTROYED, and
    ``wait_ready`` gives up at once. Find out who put the socket there."""

    def __init__(self, path: str, pid: int, uid: int, detail: str) -> None:
        super().__init__(path, detail)
        self.pid = pid
        self.uid = uid


class ControlProtocolError(ToolstackError):
    """The daemon's answer is not a well-formed control response (not a map,
    wrong seq, over the size limit). The connection is dropped."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"stubdom-teed control socket {path}: bad response: {detail}")
        self.path = path
        self.detail = detail


class ControlError(ToolstackError):
    """The daemon answered a request with ``ok: false``. Subclasses name each
    error code of the control protocol (docs/control-protocol.md); an unknown
    code is raised as this class."""

    code = 0

    def __init__(self, op: str, code: int, name: str, message: str) -> None:
        super().__init__(f"{op}: {name} ({code}): {message}")
        self.op = op
        self.code = code
        self.name = name
        self.message = message


class ControlBadRequest(ControlError):
    """BAD_REQUEST (1): the daemon could not parse the request."""

    code = 1


class ControlUnknownOp(ControlError):
    """UNKNOWN_OP (2): the daemon has no such operation."""

    code = 2


class ControlNoSuchDomain(ControlError):
    """NO_SUCH_DOMAIN (3): the daemon has no backend for that domid."""

    code = 3


class ControlDomainExists(ControlError):
    """DOMAIN_EXISTS (4): domain_create for a domid the daemon already serves."""

    code = 4


class ControlTeeRefused(ControlError):
    """TEE_REFUSED (5): OP-TEE (or the SMC gate) refused VM_CREATED."""

    code = 5


class ControlPolicyRefused(ControlError):
    """POLICY_REFUSED (6): the domain's policy is disabled."""

    code = 6


class ControlConfigInvalid(ControlError):
    """CONFIG_INVALID (7): a reload found an invalid file; the old policy stays."""

    code = 7


class ControlShuttingDown(ControlError):
    """SHUTTING_DOWN (8): the daemon is draining and takes no new domains."""

    code = 8


class ControlInternal(ControlError):
    """INTERNAL (9): a daemon bug; the message says what."""

    code = 9


CONTROL_ERRORS: dict[int, type[ControlError]] = {
    cls.code: cls
    for cls in (ControlBadRequest, ControlUnknownOp, ControlNoSuchDomain, ControlDomainExists,
                ControlTeeRefused, ControlPolicyRefused, ControlConfigInvalid, ControlShuttingDown,
                ControlInternal)
}
