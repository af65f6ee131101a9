"""stubdom-teed, the daemon: the OP-TEE mediator in a stub domain
(docs/daemon.md; its control protocol: docs/control-protocol.md).

    run_daemon(config_path, *, log_level=None) -> int     `stubdom-teed --config X`
    ctl_main(argv) -> int                                 `stubdom-teed ctl ...`

The two commands are imported when they are first asked for. The control
protocol it serves (ControlClient, ErrorCode, ControlError, MAX_MESSAGE,
control_socket_path) is stubdom.public's, named here too for the daemon's
users. The stub domain never imports the hypervisor's packages
(stubdom.platform, stubdom.tee, stubdom.guest, stubdom.workloads):
tests/test_imports.py checks it.
"""

from typing import Any

from stubdom.public.control import MAX_MESSAGE as MAX_MESSAGE
from stubdom.public.control import PROTOCOL_VERSION as PROTOCOL_VERSION
from stubdom.public.control import control_socket_path as control_socket_path
from stubdom.public.control_client import ControlClient as ControlClient
from stubdom.public.errors import ControlError as ControlError
from stubdom.public.errors import ErrorCode as ErrorCode

from .backend import BACKEND_FAILURE_STATUS as BACKEND_FAILURE_STATUS
from .backend import DomainBackend as DomainBackend
from .control import ControlServer as ControlServer
from .daemon import Daemon as Daemon
from .errors import DaemonError as DaemonError
from .errors import GateUnavailable as GateUnavailable
from .errors import JournalCorrupt as JournalCorrupt
from .errors import JournalWriteError as JournalWriteError
from .errors import StartupError as StartupError
from .gateport import GatePort as GatePort
from .stats import DomainStats as DomainStats

__all__ = [
    "BACKEND_FAILURE_STATUS",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "Daemon",
    "DaemonError",
    "DomainBackend",
    "DomainStats",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_STARTUP",
    "ErrorCode",
    "GatePort",
    "GateUnavailable",
    "JournalCorrupt",
    "JournalWriteError",
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "StartupError",
    "control_socket_path",
    "ctl_main",
    "run_daemon",
]

# name -> the module that defines it: the commands and the exit statuses of
# `stubdom-teed`, loaded on first use (PEP 562)
_COMMANDS = {"run_daemon": "app", "EXIT_OK": "app", "EXIT_STARTUP": "app", "EXIT_CONFIG": "app",
             "ctl_main": "ctl"}


def __getattr__(name: str) -> Any:
    if name in _COMMANDS:
        import importlib

        return getattr(importlib.import_module(f".{_COMMANDS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
