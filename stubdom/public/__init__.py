"""What the platform and the stub domain must agree on, defined once and
owned by neither — as Xen keeps xen/include/public apart from the
hypervisor, so that a stub domain is built against the interface and never
against the hypervisor's own code.

    control         the control protocol: the socket's path, MAX_MESSAGE,
                    PROTOCOL_VERSION, requests and responses, the framing
                    (docs/control-protocol.md)
    control_client  its one client: the toolstack's and ``ctl``'s
    gate            the SMC gate's ABI: ops, allow-lists, statuses, where it
                    lives (docs/smc-gate.md)
    gate_client     the stub domain's end of the gate
    errors          the control protocol's error codes, and every exception
                    of both protocols
    logformat       the one log format of both (key=value lines), and the
                    --log-level every command takes

The teeif ring both protocols' neighbours use is the top-level ``ring``
package (docs/protocol.md); the runtime directory they share is
stubdom.rundir. This package imports neither stubdom.platform nor
stubdom.daemon, and nothing that loads the TEE model or a guest.
"""

from .control import MAX_ERROR_MESSAGE as MAX_ERROR_MESSAGE
from .control import MAX_MESSAGE as MAX_MESSAGE
from .control import PROTOCOL_VERSION as PROTOCOL_VERSION
from .control import READ_SIZE as READ_SIZE
from .control import FrameReader as FrameReader
from .control import Request as Request
from .control import control_socket_path as control_socket_path
from .control import encode as encode
from .control import error_response as error_response
from .control import ok_response as ok_response
from .control import quote as quote
from .control_client import ControlClient as ControlClient
from .errors import CONTROL_ERRORS as CONTROL_ERRORS
from .errors import ControlBadRequest as ControlBadRequest
from .errors import ControlConfigInvalid as ControlConfigInvalid
from .errors import ControlDomainExists as ControlDomainExists
from .errors import ControlError as ControlError
from .errors import ControlInternal as ControlInternal
from .errors import ControlNoSuchDomain as ControlNoSuchDomain
from .errors import ControlPolicyRefused as ControlPolicyRefused
from .errors import ControlProtocolError as ControlProtocolError
from .errors import ControlShuttingDown as ControlShuttingDown
from .errors import ControlSocketError as ControlSocketError
from .errors import ControlTeeRefused as ControlTeeRefused
from .errors import ControlUnknownOp as ControlUnknownOp
from .errors import DaemonRefused as DaemonRefused
from .errors import DaemonUnavailable as DaemonUnavailable
from .errors import ErrorCode as ErrorCode
from .errors import GateBusy as GateBusy
from .errors import GateClosed as GateClosed
from .errors import GateError as GateError
from .errors import GateNotRunning as GateNotRunning
from .errors import GateNotWelcomed as GateNotWelcomed
from .errors import GatePeerRefused as GatePeerRefused
from .errors import GateRefused as GateRefused
from .errors import GateTimeout as GateTimeout
from .errors import ProtocolError as ProtocolError
from .gate import GATE_EINVAL as GATE_EINVAL
from .gate import GATE_ENOENT as GATE_ENOENT
from .gate import GATE_EPERM as GATE_EPERM
from .gate import GATE_OP_HYP as GATE_OP_HYP
from .gate import GATE_OP_SMC as GATE_OP_SMC
from .gate import HYP_CLIENT_ID as HYP_CLIENT_ID
from .gate import HYP_DOMAIN_CALLS as HYP_DOMAIN_CALLS
from .gate import HYP_PROBE_CALLS as HYP_PROBE_CALLS
from .gate import gate_dir as gate_dir
from .gate_client import GateClient as GateClient
from .gate_client import GateClientStatistics as GateClientStatistics
from .logformat import LOG_LEVEL_HELP as LOG_LEVEL_HELP
from .logformat import LOG_LEVELS as LOG_LEVELS
from .logformat import EventFormatter as EventFormatter
from .logformat import component as component
from .logformat import event as event
from .logformat import format_fields as format_fields
from .logformat import log_to as log_to

__all__ = [
    "CONTROL_ERRORS",
    "ControlBadRequest",
    "ControlClient",
    "ControlConfigInvalid",
    "ControlDomainExists",
    "ControlError",
    "ControlInternal",
    "ControlNoSuchDomain",
    "ControlPolicyRefused",
    "ControlProtocolError",
    "ControlShuttingDown",
    "ControlSocketError",
    "ControlTeeRefused",
    "ControlUnknownOp",
    "DaemonRefused",
    "DaemonUnavailable",
    "ErrorCode",
    "EventFormatter",
    "FrameReader",
    "GATE_EINVAL",
    "GATE_ENOENT",
    "GATE_EPERM",
    "GATE_OP_HYP",
    "GATE_OP_SMC",
    "GateBusy",
    "GateClient",
    "GateClientStatistics",
    "GateClosed",
    "GateError",
    "GateNotRunning",
    "GateNotWelcomed",
    "GatePeerRefused",
    "GateRefused",
    "GateTimeout",
    "HYP_CLIENT_ID",
    "HYP_DOMAIN_CALLS",
    "HYP_PROBE_CALLS",
    "LOG_LEVELS",
    "LOG_LEVEL_HELP",
    "MAX_ERROR_MESSAGE",
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "READ_SIZE",
    "Request",
    "component",
    "control_socket_path",
    "encode",
    "error_response",
    "event",
    "format_fields",
    "gate_dir",
    "log_to",
    "ok_response",
    "quote",
]
