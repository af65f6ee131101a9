"""``python -m stubdom.daemon --config X [--log-level L] [--trace FILE]``: the daemon."""

from __future__ import annotations

import argparse
import sys

from .app import run_daemon
from .logs import LEVELS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="stubdom-teed", description="The stub-domain OP-TEE mediator daemon.")
    p.add_argument("--config", help="YAML configuration (default: the embedded configs/xen.yaml)")
    p.add_argument("--log-level", choices=sorted(LEVELS), help="overrides mediator.log_level")
    p.add_argument("--trace", metavar="FILE", help="on stopping, write the spans of the calls the platform "
                   "sampled to FILE (Trace Event JSON; docs/performance.md)")
    args = p.parse_args(argv)
    return run_daemon(args.config, log_level=args.log_level, trace=args.trace)


if __name__ == "__main__":
    sys.exit(main())
