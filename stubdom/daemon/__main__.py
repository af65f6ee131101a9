"""``python -m stubdom.daemon --config X [--log-level L]``: the daemon."""

from __future__ import annotations

import argparse
import sys

from .app import run_daemon
from .logs import LEVELS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="stubdom-teed", description="The stub-domain OP-TEE mediator daemon.")
    p.add_argument("--config", help="YAML configuration (default: the embedded configs/xen.yaml)")
    p.add_argument("--log-level", choices=sorted(LEVELS), help="overrides mediator.log_level")
    args = p.parse_args(argv)
    return run_daemon(args.config, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
