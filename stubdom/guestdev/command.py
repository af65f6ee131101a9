"""``stubdom-teed guest-dev --config X --domid N``: a guest of the running
platform whose processes use the Linux TEE device interface.

It asks the platform (``stubdom-teed platform --config X``, same runtime
directory) for domain N, boots the guest's OP-TEE driver and TEE subsystem in
this process, serves /dev/tee0 and /dev/teepriv0 on the device socket and
prints the environment a process needs to reach them through the LD_PRELOAD
library.  SIGINT/SIGTERM: the processes' files are dropped, the driver is
removed and the platform destroys the domain; exit 0.  The platform's other
guests keep running throughout.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from stubdom.guest import GuestError
from stubdom.public.logformat import LOG_LEVEL_HELP, LOG_LEVELS, log_to

from .errors import PlatformRefused, PlatformUnavailable
from .guest import GuestKernel
from .server import DeviceServer

__all__ = ["guest_dev_main", "preload_library", "ENV_SOCKET", "EXIT_PLATFORM", "EXIT_USAGE"]

ENV_SOCKET = "STUBDOM_TEEDEV"  # where the library finds the device socket
PRELOAD_NAME = "libstubdom_teedev.so"
EXIT_PLATFORM = 1  # no platform, it refused the domain, or it went away
EXIT_USAGE = 2  # bad arguments or configuration, library not built
DEFAULT_PAGES = 4096
DEFAULT_VCPUS = 2
DEFAULT_WAIT = 30.0


def preload_library() -> Path:
    """The LD_PRELOAD library `pip install` built into this package."""
    return Path(__file__).resolve().parent / PRELOAD_NAME


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stubdom-teed guest-dev",
        description="Start a guest of the running platform whose processes use /dev/tee0 and "
        "/dev/teepriv0 (the Linux TEE device interface) through an LD_PRELOAD library.",
    )
    p.add_argument("--config", help="the platform's YAML configuration (default: the embedded configs/xen.yaml)")
    p.add_argument("--domid", type=int, required=True,
                   help="the guest's domain id (not one the configuration declares)")
    p.add_argument("--pages", type=int, default=DEFAULT_PAGES,
                   help=f"guest RAM in 4 KiB pages (default {DEFAULT_PAGES})")
    p.add_argument("--vcpus", type=int, default=DEFAULT_VCPUS, help=f"vCPUs (default {DEFAULT_VCPUS})")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT,
                   help=f"seconds to wait for the platform (default {DEFAULT_WAIT:g})")
    p.add_argument("--env-file", type=Path, help="also write the environment lines to this file once ready")
    p.add_argument("--log-level", choices=LOG_LEVELS, help=LOG_LEVEL_HELP + " (overrides mediator.log_level)")
    return p


def guest_dev_main(argv: Sequence[str] | None = None) -> int:
    from stubdom.config import ConfigError, load_config

    opts = _parser().parse_args(argv)

    def say(line: str) -> None:
        print(f"guest-dev: {line}", flush=True)

    try:
        config = load_config(opts.config)
    except ConfigError as e:
        for problem in e.problems:
            print(f"guest-dev: {problem}", file=sys.stderr)
        return EXIT_USAGE
    log_to(logging.getLogger("stubdom"), opts.log_level or config.mediator.log_level)
    from stubdom.rundir import RundirError, ensure_runtime_dir

    try:
        ensure_runtime_dir(config.mediator.runtime_dir)
    except RundirError as e:
        print(f"guest-dev: {e}", file=sys.stderr)
        return EXIT_USAGE
    lib = preload_library()
    if not lib.is_file():
        print(f"guest-dev: {lib} is missing: install the package with `pip install .` to build it",
              file=sys.stderr)
        return EXIT_USAGE
    runtime = config.mediator.runtime_dir
    try:
        kernel = GuestKernel.boot(runtime, domid=opts.domid, nr_pages=opts.pages, vcpus=opts.vcpus,
                                  wait=opts.wait)
    except (PlatformUnavailable, PlatformRefused) as e:
        say(str(e))
        return EXIT_PLATFORM
    except GuestError as e:
        say(f"d{opts.domid}: the OP-TEE driver did not bind: {e}")
        return EXIT_PLATFORM
    info = kernel.info
    impl, _caps, gen_caps = kernel.tee.version(kernel.tee.devices["tee0"])
    say(f"d{opts.domid} up under {kernel.lease.placement}: {opts.pages} pages, {opts.vcpus} vCPUs, "
        f"OP-TEE {info.os_revision[0]}.{info.os_revision[1]}, {info.thread_count} threads, "
        f"gen_caps {gen_caps:#x}")
    env = {"LD_PRELOAD": str(lib), ENV_SOCKET: str(kernel.device_path)}
    gone = trio.run(_serve, kernel, env, opts.env_file, say)
    answer = kernel.shutdown()
    if opts.env_file is not None:
        opts.env_file.unlink(missing_ok=True)
    if gone:
        say(f"d{opts.domid}: the platform went away")
        return EXIT_PLATFORM
    say(f"d{opts.domid} destroyed ({answer.get('traps', '?')} traps served); stopped")
    return 0


async def _serve(kernel: GuestKernel, env: dict[str, str], env_file: Path | None, say) -> bool:
    """Serve until a signal (False) or the platform's end of the lease (True)."""
    server = DeviceServer(kernel.tee, kernel.device_path, kernel.ram_path,
                          extra_statistics=lambda: {"traps": sum(kernel.vcpus.traps)})
    platform_gone = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
            say(f"/dev/tee0 and /dev/teepriv0 of d{kernel.domid} served at {kernel.device_path}; "
                "run a client or tee-supplicant with:")
            for line in lines:
                print(line, flush=True)
            if env_file is not None:
                tmp = env_file.with_name(env_file.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in lines))
                tmp.replace(env_file)

            async def platform_watch() -> None:
                nonlocal platform_gone
                await trio.lowlevel.wait_readable(kernel.lease.control)
                platform_gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(platform_watch)
            async for signum in signals:
                say(f"{signal.Signals(signum).name}: stopping")
                break
            nursery.cancel_scope.cancel()
    return platform_gone
