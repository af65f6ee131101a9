"""``stubdom-teed ctl``: talk to a running daemon over its control socket.

    stubdom-teed ctl [--config X | --socket PATH] hello|list|stats [domid]|reload [path]|
                     policy domid|dump domid|domain-create domid|domain-destroy domid|shutdown

Prints the result as YAML (``dump`` under names that say what each count
is, cookies in hex; ``shutdown`` as one sentence); exit status 0 when the
daemon answered ok, 1 otherwise (the error's name, code and message on
stderr; or the listener refused because it runs as another user; or no
daemon, or an answer that is not a response), 2 for usage or a
configuration whose ``mediator.runtime_dir`` cannot be read. With
``--config`` only that key is read (``runtime_dir_of``): a mistake
elsewhere in a file being edited does not stop ctl. A relative ``reload``
path is resolved here, against ctl's working directory. The client is the
protocol's own (stubdom.public.control_client), the toolstack's too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from stubdom.public.control import control_socket_path
from stubdom.public.control_client import ControlClient
from stubdom.public.errors import ControlError, ControlProtocolError, DaemonRefused, DaemonUnavailable
from stubdom.public.logformat import LOG_LEVEL_HELP, LOG_LEVELS, log_to

__all__ = ["ctl_main", "dump_view"]

# command -> (op, argument name, argument type, required)
_COMMANDS = {
    "hello": ("hello", None, None, False),
    "list": ("list", None, None, False),
    "stats": ("stats", "domid", int, False),
    "reload": ("reload", "path", os.path.abspath, False),
    "policy": ("policy", "domid", int, True),
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
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                   help=LOG_LEVEL_HELP + " (default warning; ctl itself logs little: its answer is on stdout)")
    p.add_argument("command", choices=sorted(_COMMANDS))
    p.add_argument("argument", nargs="?", help="domid (stats, policy, dump, domain-*) or path (reload)")
    return p


def ctl_main(argv: Sequence[str] | None = None, *, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    op, name, kind, required = _COMMANDS[args.command]
    request: dict = {}
    if args.argument is not None:
        if name is None or kind is None:
            parser.error(f"{args.command} takes no argument")
        try:
            request[name] = kind(args.argument)
        except ValueError:
            parser.error(f"{args.command}: {name} must be an integer, got {args.argument!r}")
    elif required:
        parser.error(f"{args.command} needs a {name}")
    log_to(logging.getLogger("stubdom"), args.log_level, err)
    if args.socket:
        path = args.socket
    else:
        from stubdom.config import ConfigError, runtime_dir_of

        try:
            runtime_dir = runtime_dir_of(args.config)
        except ConfigError as e:
            print("\n".join(e.problems), file=err)
            return 2
        path = str(control_socket_path(runtime_dir))
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
    if op == "shutdown":
        print(_shutdown_line(result), file=out)
        return 0
    if op == "dump":
        result = dump_view(result)
    yaml.safe_dump(result, out, default_flow_style=False, sort_keys=False)
    return 0


def _shutdown_line(result: dict) -> str:
    domains = result.get("domains", [])
    names = ", ".join(f"d{d}" for d in domains) or "none"
    return (f"stubdom-teed pid {result.get('pid', '?')} is shutting down: {result.get('in_flight', 0)} "
            f"call(s) in flight finish first (at most {result.get('drain_timeout_ms', 0) / 1000:g} s), then "
            f"it destroys {len(domains)} domain(s) ({names}), removes its files and exits")


def _hex(cookie: object) -> object:
    return f"{cookie:#x}" if isinstance(cookie, int) else cookie


def dump_view(d: dict) -> dict:
    """The ``dump`` answer under names that say what each value is, cookies
    in hex (the answer itself keeps the mediator's names;
    docs/control-protocol.md says what each one is)."""
    lim = d.get("limits", {})
    return {
        "domid": d.get("domid"),
        "mediator_profile": d.get("profile"),
        # the policy's limits as the domain was created with them
        "limits_at_creation": {
            "calls_in_flight": lim.get("max_calls"), "shm_buffers": lim.get("max_shm_buffers"),
            "pages_per_buffer": lim.get("max_pages_per_buffer"), "total_pages": lim.get("max_total_pages")},
        "enforced": {
            "calls_in_flight_capped_by_tee_threads": d.get("max_calls"),
            "rpc_arg_buffers": d.get("max_rpc_buffers")},
        "static_shm_allowed": d.get("static_shm_allowed"),
        "rpc_param_count_negotiated": d.get("rpc_param_count"),
        "dying": d.get("dying"),
        "internal_errors": d.get("internal_errors"),
        "held_now": {
            "calls_in_flight": d.get("calls_in_flight"),
            "shm_buffers": d.get("buffers"),
            "buffer_pages_pinned_of_total_pages": d.get("pinned_pages"),
            "shadow_pages_of_the_mediator": d.get("shadow_pages"),
            "frames_held_until_vm_destroyed": d.get("held_frames"),
            "machine_frames_pinned_all_kinds": d.get("nr_pinned_frames"),
        },
        "calls": d.get("calls", []),
        "suspended_threads_to_call_seq": d.get("suspended", {}),
        "shm_buffers": [{**b, "cookie": _hex(b.get("cookie"))} for b in d.get("shm_buffers", [])],
        "nr_shm_buffers": d.get("nr_shm_buffers"),
        "rpc_buffers": [{**b, "cookie": _hex(b.get("cookie"))} for b in d.get("rpc_buffers", [])],
        "nr_rpc_buffers": d.get("nr_rpc_buffers"),
        "pinned_frames_mfn_to_pins": d.get("pinned_frames", {}),
    }
