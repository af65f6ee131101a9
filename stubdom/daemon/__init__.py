"""stubdom-teed, the daemon: the OP-TEE mediator in a stub domain
(docs/daemon.md; its control protocol: docs/control-protocol.md).

    run_daemon(config_path, *, log_level=None) -> int     `stubdom-teed --config X`
    ctl_main(argv) -> int                                 `stubdom-teed ctl ...`
"""

from .app import EXIT_CONFIG as EXIT_CONFIG
from .app import EXIT_OK as EXIT_OK
from .app import EXIT_STARTUP as EXIT_STARTUP
from .app import run_daemon as run_daemon
from .backend import BACKEND_FAILURE_STATUS as BACKEND_FAILURE_STATUS
from .backend import DomainBackend as DomainBackend
from .client import ControlClient as ControlClient
from .control import ControlServer as ControlServer
from .control import control_socket_path as control_socket_path
from .ctl import ctl_main as ctl_main
from .daemon import Daemon as Daemon
from .errors import ControlError as ControlError
from .errors import DaemonError as DaemonError
from .errors import ErrorCode as ErrorCode
from .errors import GateRefused as GateRefused
from .errors import GateUnavailable as GateUnavailable
from .errors import ProtocolError as ProtocolError
from .errors import StartupError as StartupError
from .gateport import GatePort as GatePort
from .stats import DomainStats as DomainStats
from .wire import MAX_MESSAGE as MAX_MESSAGE
from .wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from .wire import FrameReader as FrameReader
