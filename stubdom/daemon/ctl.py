"""``stubdom-teed ctl``: talk to a running daemon over its control socket.

    stubdom-teed ctl [--config X | --socket PATH] hello|list|stats [domid]|reload [path]|
                     dump domid|domain-create domid|domain-destroy domid|shutdown

Prints the result as YAML; exit status 0 when the daemon answered ok, 1
otherwise (the error's name, code and message on stderr; or the listener
refused because it runs as another user; or no daemon, or an answer that
is not a response), 2 for usage. The client is the protocol's own
(stubdom.public.control_client), the toolstack's too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from stubdom.public.control import control_socket_path
from stubdom.public.control_client import ControlClient
from stubdom.public.errors import ControlError, ControlProtocolError, DaemonRefused, DaemonUnavailable

__all__ = ["ctl_main"]

# command -> (op, argument name, argument type, required)
_COMMANDS = {
    "hello": ("hello", None, None, False),
    "list": ("list", None, None, False),
    "stats": ("stats", "domid", int, False),
    "reload": ("reload", "path", str, False),
    "dump": ("dump", "domid", int, True),
    "domain-create": ("domain_create", "domid", int, True),
    "domain-destroy": ("domain_destroy", "domid", int, True),
    "shutdown": ("shutdown", None, None, False),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stubdom-teed ctl",
                                description="Send one request to a running stubdom-teed.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", help="the daemon's config (its runtime_dir locates the socket)")
    where.add_argument("--socket", help="the control socket itself")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.add_argument("command", choices=sorted(_COMMANDS))
    p.add_argument("argument", nargs="?", help="domid (stats, dump, domain-*) or path (reload)")
    return p


def ctl_main(argv: Sequence[str] | None = None, *, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    op, name, kind, required = _COMMANDS[args.command]
    request: dict = {}
    if args.argument is not None:
        if name is None:
            parser.error(f"{args.command} takes no argument")
        try:
            request[name] = kind(args.argument)
        except ValueError:
            parser.error(f"{args.command}: {name} must be an integer, got {args.argument!r}")
    elif required:
        parser.error(f"{args.command} needs a {name}")
    if args.socket:
        path = args.socket
    else:
        from stubdom.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as e:
            print("\n".join(e.problems), file=err)
            return 2
        except OSError as e:
            print(f"ctl: cannot read {args.config}: {e.strerror}", file=err)
            return 2
        path = str(control_socket_path(config.mediator.runtime_dir))
    try:
        with ControlClient(path, timeout=args.timeout) as client:
            result = client.call(op, **request)
    except ControlError as e:
        print(f"ctl: {args.command}: {e.name} ({int(e.code)}): {e.message}", file=err)
        return 1
    except DaemonRefused as e:  # not our daemon: perhaps another user's socket at the path
        print(f"ctl: {e.path}: {e.detail}", file=err)
        return 1
    except DaemonUnavailable as e:
        print(f"ctl: cannot talk to the daemon at {path}: {e.strerror or e.reason}; is it running?", file=err)
        return 1
    except ControlProtocolError as e:
        print(f"ctl: {e}", file=err)
        return 1
    yaml.safe_dump(result, out, default_flow_style=False, sort_keys=False)
    return 0
