"""Support for the guest-device tests: a platform in this process (el2, or
stubdom with a real stubdom-teed process), its vCPU host, a real
``stubdom-teed guest-dev`` process, and the project's C programs built
against <linux/tee.h> (tests/c/tee_*.c) run with the LD_PRELOAD library.

``stop_world`` is the check every world ends with: guest-dev exits 0, and
after the domain is destroyed nothing is pinned, OP-TEE has no partition for
it and the isolation oracle recorded nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stubdom.config import load_config
from stubdom.guestdev import ENV_SOCKET, preload_library, query_statistics
from stubdom.platform import Platform
from stubdom.platform.launch import DaemonProcess
from stubdom.platform.vcpuhost import VcpuHost

TEE_H = Path("/usr/include/linux/tee.h")
C_DIR = Path(__file__).parent / "c"
PROGRAMS = ("tee_ioctl_client", "tee_mini_supplicant")
DOMID = 3
CLIENT_ID = DOMID + 1  # what OP-TEE calls the guest (domid + 1)
GUEST_PAGES = 1024
READY_WAIT = 60.0  # seconds for guest-dev to print its environment (a bound, never reached when passing)
# The wait TA's BUSY command runs this many preemptions unless cancelled: far
# more than a cancellation needs, so the test sees the cancel end it.
BUSY_PREEMPTIONS = 1_000_000


def build_programs(out: Path) -> dict[str, Path]:
    """Compile the C programs against <linux/tee.h>; skip when the headers or
    the compiler are missing (.ci/run installs them)."""
    if not TEE_H.exists():
        pytest.skip(f"{TEE_H} is missing: apt-get install linux-libc-dev")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: apt-get install gcc")
    built = {}
    for name in PROGRAMS:
        exe = out / name
        subprocess.run([gcc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(exe),
                        str(C_DIR / f"{name}.c")], check=True, capture_output=True)
        built[name] = exe
    return built


@dataclass
class GuestWorld:
    placement: str
    root: Path
    platform: Platform
    host: VcpuHost
    daemon: DaemonProcess | None
    guest: subprocess.Popen
    env: dict[str, str]
    socket: Path

    def stats(self) -> dict:
        return query_statistics(self.socket)

    def partition(self):
        return self.platform.tee.partition_stats(CLIENT_ID)

    def run(self, exe: Path, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw)

    def spawn(self, exe: Path, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([str(exe), *args], env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kw)

    def assert_quiet(self, *, supplicant: bool = False) -> dict:
        """No process of the guest holds anything (but a supplicant, when
        ``supplicant``): contexts, buffers, sessions, moved pages, mappings."""
        s = self.stats()
        assert s["contexts"] == int(supplicant), s
        assert s["sessions"] == 0 and s["shm"] == {"tee0": 0, "teepriv0": 0}, s
        assert s["mm"]["backed_pages"] == 0 and s["mm"]["mappings"] == 0 and s["mm"]["orphan_pages"] == 0, s
        assert s["supplicant"]["queued"] == 0 and s["supplicant"]["pending"] == 0, s
        assert self.partition().sessions == 0
        return s


def _config(root: Path, placement: str, ta_kind: str) -> Path:
    path = root / "xen.yaml"
    path.write_text(textwrap.dedent(f"""\
        tee:
          threads: 4
          wait_ta_foreign_intr: {BUSY_PREEMPTIONS}
          tas: {{increment: {ta_kind}, digest: {ta_kind}, storage: {ta_kind}, wait: {ta_kind}}}
        mediator:
          placement: {placement}
          runtime_dir: {root / 'run'}
          poll_window_us: 50
        platform:
          nr_frames: 16384
          seed: 7
        domains: []
        """))
    return path


def start_world(root: Path, placement: str, *, ta_kind: str = "early") -> GuestWorld:
    """A world whose TAs are all ``ta_kind``: early ones need no
    supplicant; REE ones are loaded through whatever supplicant the guest
    runs (OP-TEE waits for one, as Linux makes it)."""
    lib = preload_library()
    assert lib.is_file(), f"{lib} is missing: pip install the package to build it"
    path = _config(root, placement, ta_kind)
    config = load_config(path)
    platform = Platform.for_config(config)
    daemon = host = guest = None
    try:
        if placement == "stubdom":
            daemon = DaemonProcess(path, root / "daemon.log")
            daemon.wait_ready(platform.placement.toolstack, 30)
        host = VcpuHost(platform, config.mediator.runtime_dir)
        env_file = root / "guest.env"
        with open(root / "guest-dev.log", "w") as log:  # the child has its own copy
            guest = subprocess.Popen(
                [sys.executable, "-P", "-m", "stubdom", "guest-dev", "--config", str(path), "--domid", str(DOMID),
                 "--pages", str(GUEST_PAGES), "--env-file", str(env_file)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_WAIT
        while not env_file.exists():
            assert guest.poll() is None, (root / "guest-dev.log").read_text()
            assert time.monotonic() < deadline, (root / "guest-dev.log").read_text()
            time.sleep(0.05)
        env = dict(os.environ)
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        assert env["LD_PRELOAD"] == str(lib)
        return GuestWorld(placement, root, platform, host, daemon, guest, env, Path(env[ENV_SOCKET]))
    except BaseException:
        if guest is not None:
            guest.kill()
            guest.wait()
        if host is not None:
            host.close()
        if daemon is not None:
            daemon.stop()
        platform.close()
        raise


def stop_world(world: GuestWorld) -> None:
    """SIGTERM guest-dev, then check the destroyed domain left nothing."""
    try:
        world.guest.send_signal(signal.SIGTERM)
        status = world.guest.wait(120)
        log = (world.root / "guest-dev.log").read_text()
        assert status == 0, log
        assert f"d{DOMID} destroyed" in log, log
        assert DOMID not in world.platform.domids()
        assert world.platform.machine.pinned_frames() == {}
        assert CLIENT_ID not in world.platform.tee.guest_ids()
        assert world.platform.oracle.violations == []
        assert not world.socket.exists()
    finally:
        world.host.close()
        if world.daemon is not None:
            assert world.daemon.stop() == 0, world.daemon.log_path.read_text()
        world.platform.close()
    assert world.platform.oracle.violations == []
