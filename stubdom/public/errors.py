"""Every exception of the two protocols in stubdom.public, and the control
protocol's numeric error codes (docs/control-protocol.md, docs/smc-gate.md).

Nothing here is ever raised towards a guest: a guest gets OP-TEE return
codes in its registers, or a negative errno in the teeif response status.

The control protocol (the toolstack and ``ctl`` against stubdom-teed)::

    ControlSocketError                   anything that went wrong on the control socket
    ├── ControlError                     a request failed with an error code (either end)
    │   ├── ControlBadRequest (1)
    │   │   └── ProtocolError            the daemon: a message it cannot serve at all
    │   └── ControlUnknownOp (2) … ControlInternal (9)
    ├── ControlProtocolError             the client: an answer that is not a response
    └── DaemonUnavailable                the client: no daemon to talk to
        └── DaemonRefused                ... because another user listens there (a PeerRefused)

The SMC gate (the stub domain's hypercall into the platform)::

    GateError
    ├── GateBusy, GateNotRunning (GateNotWelcomed), GateTimeout, GateClosed
    ├── GatePeerRefused                  another user listens at the gate (a PeerRefused)
    └── GateRefused                      the gate answered a hypercall with -errno
"""

from __future__ import annotations

import enum

from stubdom.rundir import PeerRefused

__all__ = [
    "ErrorCode",
    "ControlSocketError",
    "ControlError",
    "ControlBadRequest",
    "ControlUnknownOp",
    "ControlNoSuchDomain",
    "ControlDomainExists",
    "ControlTeeRefused",
    "ControlPolicyRefused",
    "ControlConfigInvalid",
    "ControlShuttingDown",
    "ControlInternal",
    "CONTROL_ERRORS",
    "ProtocolError",
    "ControlProtocolError",
    "DaemonUnavailable",
    "DaemonRefused",
    "GateError",
    "GateBusy",
    "GateNotRunning",
    "GateNotWelcomed",
    "GatePeerRefused",
    "GateTimeout",
    "GateClosed",
    "GateRefused",
]


# -- the control protocol ------------------------------------------------------------


class ErrorCode(enum.IntEnum):
    """Numeric error codes of control responses (fixed: clients switch on them)."""

    BAD_REQUEST = 1  # malformed request: not a map, missing/ill-typed argument, oversized
    UNKNOWN_OP = 2  # "op" names no operation
    NO_SUCH_DOMAIN = 3  # the domid has no backend in this daemon (or no domain in the machine)
    DOMAIN_EXISTS = 4  # domain_create for a domid that already has one
    TEE_REFUSED = 5  # OP-TEE (or the SMC gate) refused VM_CREATED
    POLICY_REFUSED = 6  # the domain's policy is disabled
    CONFIG_INVALID = 7  # reload: the file does not validate; the old policy stays
    SHUTTING_DOWN = 8  # the daemon is draining: no new domains, no new work
    INTERNAL = 9  # a daemon bug; the message says what


class ControlSocketError(Exception):
    """Base of every error of the control protocol, at either end of the
    control socket: catch it to mean "the daemon did not do it"."""


class ControlError(ControlSocketError):
    """A request failed with an error code of the control protocol.

    In the daemon an operation raises ``ControlError(code, message)`` and the
    server answers ``{"ok": false, "error": {code, name, message}}``. The
    client raises :meth:`for_answer`'s subclass of the answer's code (an
    unknown code as this class), with the request's ``op`` and the ``name``
    the daemon sent."""

    def __init__(self, code: int, message: str, *, op: str | None = None, name: str | None = None) -> None:
        try:
            self.code: int = ErrorCode(code)
        except ValueError:  # a code newer than this client: kept as the int it is
            self.code = code
        self.message = message
        self.op = op
        if name is None:
            name = self.code.name if isinstance(self.code, ErrorCode) else "?"
        self.name = name
        if op is None:
            super().__init__(f"{self.name}: {message}")
        else:
            super().__init__(f"{op}: {self.name} ({int(code)}): {message}")

    @classmethod
    def for_answer(cls, op: str, code: int, name: str, message: str) -> ControlError:
        """The exception for an error answer to ``op``: the subclass of
        ``code`` (:data:`CONTROL_ERRORS`), or ControlError for a code this
        client does not know."""
        return CONTROL_ERRORS.get(code, ControlError)(code, message, op=op, name=name)


class ControlBadRequest(ControlError):
    """BAD_REQUEST (1): the daemon could not parse the request."""


class ControlUnknownOp(ControlError):
    """UNKNOWN_OP (2): the daemon has no such operation."""


class ControlNoSuchDomain(ControlError):
    """NO_SUCH_DOMAIN (3): the daemon has no backend for that domid."""


class ControlDomainExists(ControlError):
    """DOMAIN_EXISTS (4): domain_create for a domid the daemon already serves."""


class ControlTeeRefused(ControlError):
    """TEE_REFUSED (5): OP-TEE (or the SMC gate) refused VM_CREATED."""


class ControlPolicyRefused(ControlError):
    """POLICY_REFUSED (6): the domain's policy is disabled."""


class ControlConfigInvalid(ControlError):
    """CONFIG_INVALID (7): a reload found an invalid file; the old policy stays."""


class ControlShuttingDown(ControlError):
    """SHUTTING_DOWN (8): the daemon is draining and takes no new domains."""


class ControlInternal(ControlError):
    """INTERNAL (9): a daemon bug; the message says what."""


CONTROL_ERRORS: dict[int, type[ControlError]] = {
    ErrorCode.BAD_REQUEST: ControlBadRequest,
    ErrorCode.UNKNOWN_OP: ControlUnknownOp,
    ErrorCode.NO_SUCH_DOMAIN: ControlNoSuchDomain,
    ErrorCode.DOMAIN_EXISTS: ControlDomainExists,
    ErrorCode.TEE_REFUSED: ControlTeeRefused,
    ErrorCode.POLICY_REFUSED: ControlPolicyRefused,
    ErrorCode.CONFIG_INVALID: ControlConfigInvalid,
    ErrorCode.SHUTTING_DOWN: ControlShuttingDown,
    ErrorCode.INTERNAL: ControlInternal,
}


class ProtocolError(ControlBadRequest):
    """A control message the daemon cannot serve at all (malformed msgpack,
    larger than the frame limit, not a map). The server answers it with
    BAD_REQUEST and closes that connection; nothing else is affected."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


class ControlProtocolError(ControlSocketError):
    """The daemon's answer is not a well-formed control response (not a map,
    wrong seq, over the size limit). The client drops the connection."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"stubdom-teed control socket {path}: bad response: {detail}")
        self.path = path
        self.detail = detail


class DaemonUnavailable(ControlSocketError):
    """stubdom-teed's control socket cannot be reached, closed the connection
    or did not answer within the bound. Start the daemon beside the platform
    (``stubdom-teed --config <file>``). ``strerror`` is the operating
    system's words when a socket call failed (None otherwise)."""

    def __init__(self, path: str, reason: str, *, strerror: str | None = None) -> None:
        super().__init__(f"stubdom-teed control socket {path}: {reason}")
        self.path = path
        self.reason = reason
        self.strerror = strerror


class DaemonRefused(DaemonUnavailable, PeerRefused):
    """The process listening on the control socket runs as another user than
    this one (or root): SO_PEERCRED says so, before anything is sent. It is
    not our stubdom-teed (perhaps another local user's socket at the path).

    Both a :class:`DaemonUnavailable` (the platform counts the daemon as
    gone: domain_create fails, domain_destroy falls back to the platform's
    own VM_DESTROYED, ``wait_ready`` gives up at once) and the runtime
    directory's :class:`~stubdom.rundir.PeerRefused`, with its fields."""

    def __init__(self, refused: PeerRefused) -> None:
        # PeerRefused's fields and the client's message; neither parent's
        # __init__ (each would set its own message)
        Exception.__init__(self, f"stubdom-teed control socket {refused.path}: {refused.detail}")
        self.path, self.role, self.detail = refused.path, refused.role, refused.detail
        self.pid, self.uid, self.gid, self.own_uid = refused.pid, refused.uid, refused.gid, refused.own_uid
        self.reason = refused.detail
        self.strerror = None


# -- the SMC gate -------------------------------------------------------------------


class GateError(Exception):
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


class GateNotWelcomed(GateNotRunning):
    """The gate accepted the stub domain's connection but did not welcome it
    within the bound: the platform is there and serves another stub domain
    (the gate serves one at a time)."""

    def __init__(self, path: str, timeout: float) -> None:
        GateError.__init__(self, f"the SMC gate at {path} did not welcome us within {timeout:g} s: it "
                                 f"serves another stub domain")
        self.path = path
        self.reason = f"not accepted within {timeout:g} s: the gate serves another stub domain"
        self.timeout = timeout


class GatePeerRefused(GateError, PeerRefused):
    """The process listening at the gate's event channel runs as another user
    than the stub domain's (or root): SO_PEERCRED says so, before the stub
    domain waits for a welcome or maps the ring. It is not the platform;
    find out who put the socket there. A :class:`GateError` and the runtime
    directory's :class:`~stubdom.rundir.PeerRefused`, with its fields."""

    def __init__(self, refused: PeerRefused) -> None:
        Exception.__init__(self, str(refused))  # "<path>: refused the SMC gate: ..."
        self.path, self.role, self.detail = refused.path, refused.role, refused.detail
        self.pid, self.uid, self.gid, self.own_uid = refused.pid, refused.uid, refused.gid, refused.own_uid


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


class GateRefused(GateError):
    """The SMC gate answered a hypercall with a negative status (-EPERM: the
    domain is not assigned to this stub domain or the op is not allowed for
    it; -EINVAL; -ENOENT). Raised by the daemon's GatePort into the
    mediator, which turns it into a guest-visible error (and the daemon into
    TEE_REFUSED for the toolstack)."""

    def __init__(self, op: str, domid: int, status: int, function: int) -> None:
        self.op = op
        self.domid = domid
        self.status = status
        self.function = function
        super().__init__(f"gate {op} for d{domid} (function {function:#x}) failed: status {status}")
