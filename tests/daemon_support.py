"""The daemon as a real process beside an in-process platform: the
harness of test_daemon.py and the tests built on it (a configuration file,
the daemon child process, a control client, a booted guest driver)."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from stubdom.config import Config, load_config
from stubdom.daemon import ControlClient, control_socket_path
from stubdom.guest import MemoryStore, OpteeDriver, Supplicant
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec
from stubdom.tee.tas import DIGEST_UUID

REPO = Path(__file__).resolve().parents[1]

START_TIMEOUT = 20.0  # seconds for the daemon to say where it listens (a loaded CI box)


DOMAINS = """\
domains:
  - domid: 0
    name: dom0
    hwdom: true
    direct_mapped: true
    static_shm: true
    static_shm_allowed: true
    nr_pages: 1024
    vcpus: 2
  - domid: 1
    nr_pages: 1024
    vcpus: 2
  - domid: 2
    nr_pages: 1024
    vcpus: 2
    ta_deny: [{digest}]
    deny_classes: [shm_config]
  - domid: 3
    nr_pages: 256
    enabled: false
"""


def write_config(tmp_path: Path, *, domains: str = DOMAINS, defaults: str = "", name="xen.yaml",
                 drain_ms: int = 3000) -> Path:
    text = textwrap.dedent(f"""\
        tee:
          threads: 4
        mediator:
          placement: stubdom
          runtime_dir: {tmp_path / 'run'}
          poll_window_us: 50
          call_timeout_ms: 10000
          drain_timeout_ms: {drain_ms}
        platform:
          nr_frames: 16384
          seed: 7
        """) + defaults + domains.format(digest=DIGEST_UUID)
    path = tmp_path / name
    path.write_text(text)
    return path


class Daemon:
    """A daemon child process; stderr (its log) goes to a file."""

    def __init__(self, config: Path, tmp_path: Path, *extra: str) -> None:
        self.log_path = tmp_path / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(config), *extra],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.line = ""

    def wait_listening(self) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(START_TIMEOUT):
            raise AssertionError(f"daemon said nothing in {START_TIMEOUT} s: {self.log()}")
        self.line = self.proc.stdout.readline()
        return self.line

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self._log.close()


def client(config) -> ControlClient:
    return ControlClient(control_socket_path(config.mediator.runtime_dir), timeout=20)


def boot(platform, config, domid: int) -> OpteeDriver:
    dc = config.domain(domid)
    domain = platform.create_domain(domain_spec(dc))
    driver = OpteeDriver(platform.trap_entry(domid), domain, nr_vcpus=dc.vcpus, seed=domid,
                         supplicant=Supplicant(MemoryStore()))
    driver.probe()
    return driver



def running_stack(tmp_path: Path) -> Iterator[tuple[Path, Config, Platform, Daemon]]:
    """(config path, Config, Platform, Daemon): platform first, then the daemon."""
    path = write_config(tmp_path)
    config = load_config(path)
    platform = Platform.for_config(config)
    daemon = Daemon(path, tmp_path)
    try:
        line = daemon.wait_listening()
        assert line == (f"stubdom-teed: listening on {control_socket_path(tmp_path / 'run')} "
                        f"(placement stubdom, 4 domains)\n"), daemon.log()
        yield path, config, platform, daemon
        for domid in platform.domids():  # through the daemon, while it runs
            platform.destroy_domain(domid)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.stop()
        platform.close()


def config_file(tmp_path: Path) -> Path:
    """configs/xen.yaml with its runtime directory under ``tmp_path``."""
    text = (REPO / "configs" / "xen.yaml").read_text()
    assert "runtime_dir: null " in text
    path = tmp_path / "xen.yaml"
    path.write_text(text.replace("runtime_dir: null ", f"runtime_dir: {tmp_path / 'rt'} "))
    return path
