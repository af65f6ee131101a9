"""The ``stubdom-teed`` command line.

    stubdom-teed [--config FILE] [--log-level L]        the daemon (stub-domain mediator)
    stubdom-teed platform [--config FILE] [...]          the simulated Xen + secure world + guests
    stubdom-teed ctl [...] COMMAND [ARG]                 talk to a running daemon
    stubdom-teed demo [--runtime-dir D] [--seed N]       the end-to-end run
    stubdom-teed bench [--quick] [...]                   the EL2-vs-stubdom benchmark
    stubdom-teed soak [--minutes M] [...]                honest and hostile domains for a while, checked
    stubdom-teed guest-dev --config FILE --domid N       a guest whose processes use /dev/tee0 (LD_PRELOAD)
    stubdom-teed ta-images DIR [--size BYTES]            the model's TAs as <uuid>.ta files (tee-supplicant -l DIR)
    stubdom-teed trace FILE... [--png OUT] [...]         per-stage table (and timeline) of the calls --trace sampled

``main(argv) -> int`` stays thin: each sub-command's own module parses the
rest and returns the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence

from stubdom import __version__
from stubdom.public.logformat import LOG_LEVEL_HELP, LOG_LEVELS

# Sub-commands that parse their own arguments.
_DELEGATED = ("bench", "ctl", "soak")


def _daemon_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stubdom-teed",
        description="Stub-domain OP-TEE mediator for Xen on Arm, on a simulated machine. Without a "
        "sub-command, runs the daemon.",
        epilog="sub-commands: platform, ctl, demo, bench, soak, guest-dev, ta-images, trace "
        "(stubdom-teed SUBCOMMAND --help)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", help="YAML configuration (default: the embedded configs/xen.yaml)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help=LOG_LEVEL_HELP + " (overrides mediator.log_level)")
    p.add_argument("--trace", metavar="FILE", help="on stopping, write the spans of the calls the platform "
                   "sampled to FILE (Trace Event JSON; docs/performance.md, \"Tracing a call\")")
    return p


def _platform_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stubdom-teed platform",
        description="Run the simulated Xen with its domains and the secure world; start the daemon "
        "beside it with `stubdom-teed --config FILE`.",
    )
    p.add_argument("--config", help="YAML configuration (default: the embedded configs/xen.yaml)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help=LOG_LEVEL_HELP + " (overrides mediator.log_level)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between workload rounds (default 1)")
    p.add_argument("--rounds", type=int, help="stop after this many workload rounds (default: run until SIGTERM)")
    p.add_argument("--daemon-wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for stubdom-teed's control socket (default 60)")
    p.add_argument("--external", type=_domid, action="append", default=[], metavar="DOMID",
                   help="create this domain with no frontend of the platform's and print its ring and event "
                   "channel for a program of your own to attach (docs/protocol.md); repeatable; "
                   "placement stubdom only")
    p.add_argument("--trace", metavar="FILE", help="sample calls and, on stopping, write each stage's span to "
                   "FILE (Trace Event JSON; docs/performance.md, \"Tracing a call\")")
    p.add_argument("--trace-every", type=_positive, default=100, metavar="N",
                   help="with --trace, sample 1 call in N (default 100)")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, got {n}")
    return n


def _domid(text: str) -> int:
    try:
        domid = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a domid is an integer, got {text!r}") from None
    if not 0 <= domid < 0x7FF0:
        raise argparse.ArgumentTypeError(f"a domid is in 0..32751, got {domid}")
    return domid


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stubdom-teed demo",
        description="Run every built-in TA from every domain under each placement and print a table.",
    )
    p.add_argument("--runtime-dir", help="where the machines' files go (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=1, help="seed for page scattering and data (default 1)")
    p.add_argument("--config", help="YAML configuration whose domains run under el2 and stubdom "
                   "(default: the embedded configs/xen.yaml)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                   help=LOG_LEVEL_HELP + " (default warning; the daemon's go to its log file)")
    return p


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it; SIGTERM too


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an interrupt: every ``with`` on the way out
    (a daemon process started, a temporary directory) is closed."""


@contextlib.contextmanager
def _interruptible(command: str):
    """SIGINT and SIGTERM end ``command`` at once, cleanly, with one line
    and EXIT_INTERRUPTED (the commands that have no signal handling of
    their own: ctl, demo, bench, soak)."""
    def terminate(signum, frame):
        raise _Terminated()

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt as e:
        what = "SIGTERM" if isinstance(e, _Terminated) else "SIGINT"
        print(f"stubdom-teed {command}: interrupted by {what}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _ta_images_parser() -> argparse.ArgumentParser:
    from stubdom.optee.taimage import DEFAULT_TA_IMAGE_SIZE

    p = argparse.ArgumentParser(
        prog="stubdom-teed ta-images",
        description="Write an image of each of the secure-world model's TAs, as <uuid>.ta, into DIR: the "
        "TA directory a guest's tee-supplicant serves OPTEE_RPC_CMD_LOAD_TA from (tee-supplicant -l DIR).",
    )
    p.add_argument("directory", help="where to write them (created if need be)")
    p.add_argument("--size", type=int, default=DEFAULT_TA_IMAGE_SIZE,
                   help=f"bytes of each image (default {DEFAULT_TA_IMAGE_SIZE})")
    return p


def _ta_images(args: Sequence[str]) -> int:
    from stubdom.guest.tastore import model_ta_images, write_ta_images

    opts = _ta_images_parser().parse_args(args)
    try:
        images = model_ta_images(size=opts.size)
    except ValueError as e:
        _ta_images_parser().error(f"--size {opts.size}: {e}")
    try:
        for path in write_ta_images(opts.directory, images):
            print(path)
    except OSError as e:
        print(f"stubdom-teed ta-images: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and not args[0].startswith("-") else None

    if command in ("bench", "soak"):
        try:
            if command == "bench":
                from stubdom.bench import bench_main as sub_main
            else:
                from stubdom.hostile.soak import soak_main as sub_main
        except ModuleNotFoundError as e:
            # hdrhistogram, matplotlib, tqdm: the bench extra, not the daemon's install
            print(f"stubdom-teed {command}: needs the bench extra (pip install 'stubdom-teed[bench]'): "
                  f"module {(e.name or '?').partition('.')[0]!r} is missing", file=sys.stderr)
            return 2
        with _interruptible(command):
            return sub_main(args[1:])
    if command == "ctl":
        from stubdom.daemon import ctl_main

        with _interruptible(command):
            return ctl_main(args[1:])
    if command == "guest-dev":
        from stubdom.guestdev import guest_dev_main

        return guest_dev_main(args[1:])
    if command == "fidelity":
        from stubdom.bench.fidelity import fidelity_main

        with _interruptible(command):
            return fidelity_main(args[1:])
    if command == "ta-images":
        return _ta_images(args[1:])
    if command == "trace":
        from stubdom.trace.command import trace_main

        return trace_main(args[1:])
    if command == "platform":
        from stubdom.platform import run_platform

        opts = _platform_parser().parse_args(args[1:])
        return run_platform(opts.config, log_level=opts.log_level, interval=opts.interval, rounds=opts.rounds,
                            daemon_wait=opts.daemon_wait, external=opts.external, trace=opts.trace,
                            trace_every=opts.trace_every)
    if command == "demo":
        from stubdom.demo import run_demo
        from stubdom.rundir import RuntimeDirError

        opts = _demo_parser().parse_args(args[1:])
        try:
            with _interruptible(command):
                return run_demo(runtime_dir=opts.runtime_dir, seed=opts.seed, config_path=opts.config,
                                log_level=opts.log_level)
        except RuntimeDirError as e:  # --runtime-dir is somewhere another user could change
            print(f"stubdom-teed demo: {e}", file=sys.stderr)
            return 2
    if command is not None:
        _daemon_parser().error(f"unknown sub-command {command!r} "
                               "(platform, ctl, demo, bench, fidelity, soak, guest-dev, ta-images, trace)")

    from stubdom.daemon import run_daemon

    opts = _daemon_parser().parse_args(args)
    return run_daemon(opts.config, log_level=opts.log_level, trace=opts.trace)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
