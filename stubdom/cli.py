"""The ``stubdom-teed`` command line.

``main(argv) -> int`` stays thin: parse, dispatch, turn expected errors into
a message and an exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stubdom import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stubdom-teed",
        description="Stub-domain OP-TEE mediator for Xen on Arm, on a simulated machine.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the end-to-end demo: guests probe OP-TEE and use every built-in TA",
    )
    demo.add_argument(
        "--runtime-dir",
        help="where the machine's files go (default: a temporary directory, removed afterwards)",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed for page scattering (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None or args.command == "demo":
        from stubdom.demo import run_demo

        return run_demo(runtime_dir=getattr(args, "runtime_dir", None), seed=getattr(args, "seed", 1))
    parser.error(f"unknown command {args.command!r}")
    return 2  # unreachable: parser.error exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
