"""What the frontend attack tests (tests/test_frontends_*.py) share: a real
stubdom-teed process beside an in-process platform (machine, OP-TEE model,
SMC gate, trap path), a C frontend written only against Xen's io/ring.h and
driven one step at a time (tests/c/teeif_scripted_frontend.c), and a way to
hold one SMC inside the secure world so that the daemon is caught exactly
where a test wants it (a slow OP-TEE, not a fake one).
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stubdom.config import load_config
from stubdom.platform import Platform, stubdom_placement
from stubdom.platform.launch import DaemonProcess
from stubdom.platform.platform import domain_spec

XEN_RING_H = Path("/usr/include/xen/io/ring.h")
SCRIPTED_SRC = Path(__file__).parent / "c" / "teeif_scripted_frontend.c"
# The frontend's bound on each wait for a notification: a liveness bound (a
# frontend nobody wakes exits 3), never a speed assertion; passing runs wake
# in milliseconds.
WAIT_MS = 10_000
# How long a test waits for a line from a frontend that neither answers nor
# exits (it exits by itself after WAIT_MS): only a hang would reach it.
HANG_GUARD_S = 120.0
HOLD_GUARD_S = 120.0  # a held SMC is released by the test long before this
M32 = 0xFFFFFFFF
OS_REVISION = (3, 22, 0x5EC0DE11)  # major, minor, build id: GET_OS_REVISION's a0..a2


def build_scripted_frontend(tmp_path: Path) -> Path:
    if not XEN_RING_H.exists():
        pytest.skip(f"{XEN_RING_H} is missing: apt-get install libxen-dev (Xen's public headers)")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing: apt-get install gcc")
    exe = tmp_path / "teeif_scripted_frontend"
    subprocess.run([gcc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    str(SCRIPTED_SRC)], check=True, capture_output=True)
    return exe


class ScriptedFrontend:
    """One process of tests/c/teeif_scripted_frontend.c for a domain
    directory; ``do(command, answer)`` sends a command and returns the first
    line starting with ``answer`` (lines before it are kept in ``lines``)."""

    def __init__(self, exe: Path, domdir: Path | str, tag: int, *, wait_ms: int = WAIT_MS) -> None:
        self.tag = tag
        self.proc = subprocess.Popen([str(exe), str(domdir), str(wait_ms), str(tag)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        # stdout is read from its descriptor into our own buffer: a buffered
        # readline would hold lines the selector cannot see (several lines
        # written at once), and wait out HANG_GUARD_S with them in hand
        self._fd = self.proc.stdout.fileno()
        self._pending = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        self.lines: list[str] = []

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def _readline(self) -> str | None:
        """The next line without its newline; None when the frontend stays
        silent for HANG_GUARD_S; "" at end-of-file."""
        while b"\n" not in self._pending:
            if not self._sel.select(HANG_GUARD_S):
                return None
            chunk = os.read(self._fd, 4096)
            if not chunk:
                return ""
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode() + "\n"

    def expect(self, answer: str) -> str:
        while True:
            line = self._readline()
            if line is None:
                raise AssertionError(f"frontend {self.tag} silent for {HANG_GUARD_S} s; "
                                     f"lines so far: {self.lines}")
            if not line:
                self.proc.wait(HANG_GUARD_S)
                err = self.proc.stderr.read().strip()
                self.close()  # no pipe left open for a later test's warnings
                raise AssertionError(f"frontend {self.tag} exited {self.proc.returncode} waiting for "
                                     f"{answer!r}: {err} (lines so far: {self.lines})")
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(answer):
                return line

    def do(self, command: str, answer: str) -> str:
        self.send(command)
        return self.expect(answer)

    def kill(self) -> None:
        """SIGKILL, as a frontend dies: its mapping and its socket go with it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG_GUARD_S)
        self.close()

    def finish(self) -> int:
        """``exit``, then the exit status (stderr on failure is in the message)."""
        if self.proc.poll() is None:
            self.send("exit")
        rc = self.proc.wait(HANG_GUARD_S)
        self.close()
        return rc

    def close(self) -> None:
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:  # stdin of a killed process: a broken pipe on flush
                pass


class Hold:
    """One SMC held inside the secure world until ``release()``: ``entered``
    is set once the SMC reached it (the daemon is then blocked in the SMC
    gate's hypercall, in the middle of the batch it was serving)."""

    def __init__(self, client_id: int, fid: int) -> None:
        self.key = (client_id, fid)
        self.entered = threading.Event()
        self._go = threading.Event()

    def wait_entered(self) -> None:
        assert self.entered.wait(HOLD_GUARD_S), f"no SMC {self.key} reached the TEE"

    def release(self) -> None:
        self._go.set()


class HeldTee:
    """Wraps the platform's OP-TEE model where the SMC gate calls it; ``hold``
    arms a :class:`Hold` for the next SMC of a client ID and function."""

    def __init__(self, tee) -> None:
        self._inner = tee.smc
        self._lock = threading.Lock()
        self._armed: list[Hold] = []
        tee.smc = self.smc

    def hold(self, client_id: int, fid: int) -> Hold:
        h = Hold(client_id, fid)
        with self._lock:
            self._armed.append(h)
        return h

    def smc(self, regs):
        key = (regs[7], regs[0] & M32)
        with self._lock:
            h = next((h for h in self._armed if h.key == key), None)
            if h is not None:
                self._armed.remove(h)
        if h is not None:
            h.entered.set()
            h._go.wait(HOLD_GUARD_S)
        return self._inner(regs)


def write_config(tmp_path: Path, *, ring_pages: int = 1, call_timeout_ms: int = 60_000,
                 platform_vcpus: int = 2) -> Path:
    """Domain 1 for a C frontend, domain 2 (``platform_vcpus`` vCPUs) for the
    platform's own."""
    major, minor, build = OS_REVISION
    path = tmp_path / "xen.yaml"
    path.write_text(textwrap.dedent(f"""\
        tee:
          threads: 4
          os_revision: {{major: {major}, minor: {minor}, build_id: {build:#x}}}
        mediator:
          placement: stubdom
          runtime_dir: {tmp_path / 'run'}
          poll_window_us: 50
          ring_pages: {ring_pages}
          call_timeout_ms: {call_timeout_ms}
          gate_timeout_ms: 120000
        platform:
          nr_frames: 16384
          seed: 3
        domains:
          - domid: 1
            nr_pages: 256
            vcpus: 2
          - domid: 2
            nr_pages: 1024
            vcpus: {platform_vcpus}
        """))
    return path


class DaemonStack:
    """A platform in this process and a real stubdom-teed process beside it.
    ``log_clock``: the clock of the platform's per-domain log rate limits."""

    def __init__(self, tmp_path: Path, *, ring_pages: int = 1, call_timeout_ms: int = 60_000,
                 platform_vcpus: int = 2, log_clock: Callable[[], float] | None = None) -> None:
        self.tmp_path = tmp_path
        self.path = write_config(tmp_path, ring_pages=ring_pages, call_timeout_ms=call_timeout_ms,
                                 platform_vcpus=platform_vcpus)
        self.config = load_config(self.path)
        med = self.config.mediator
        placement = None
        if log_clock is not None:
            placement = stubdom_placement(med.runtime_dir, poll_window_us=med.poll_window_us,
                                          call_timeout_ms=med.call_timeout_ms, log_clock=log_clock)
        self.platform = Platform.for_config(self.config, placement=placement)
        self.tee = HeldTee(self.platform.tee)
        self.runs = 0
        self.daemon: DaemonProcess | None = None
        self.c_domains: set[int] = set()
        self.start()

    @property
    def toolstack(self):
        return self.platform.placement.toolstack

    def start(self) -> None:
        self.runs += 1
        self.daemon = DaemonProcess(self.path, self.tmp_path / f"daemon{self.runs}.log")
        self.daemon.wait_ready(self.toolstack, 60)

    def kill(self) -> None:
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(60)

    def log(self) -> str:
        return self.daemon.log_path.read_text()

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None

    def create_c_domain(self, domid: int = 1) -> Path:
        """The toolstack's part of creating ``domid`` with no frontend of the
        platform's: the C program will be its only frontend."""
        self.platform.machine.create_domain(domid, nr_pages=self.config.domain(domid).nr_pages)
        self.platform.placement.gate.assign(domid)
        made = self.toolstack.domain_create(domid)
        self.c_domains.add(domid)
        return Path(made["dir"])

    def destroy_c_domain(self, domid: int = 1) -> None:
        assert self.toolstack.domain_destroy(domid) == {"domid": domid}
        self.platform.placement.gate.unassign(domid)
        self.platform.machine.destroy_domain(domid)
        self.c_domains.discard(domid)

    def boot(self, domid: int = 2, *, probe: bool = True):
        """A domain with the platform's own frontend and (``probe``) a guest
        driver; None without one."""
        from stubdom.guest import MemoryStore, OpteeDriver, Supplicant

        dc = self.config.domain(domid)
        domain = self.platform.create_domain(domain_spec(dc))
        if not probe:
            return None
        d = OpteeDriver(self.platform.trap_entry(domid), domain, nr_vcpus=dc.vcpus, seed=domid,
                        supplicant=Supplicant(MemoryStore()))
        d.probe()
        return d

    def domain_state(self, domid: int) -> str:
        (d,) = [d for d in self.toolstack.list()["domains"] if d["domid"] == domid]
        return d["state"]

    def wait_state(self, domid: int, state: str) -> None:
        """Until the daemon reports ``state`` for ``domid`` (a hang guard only)."""
        deadline = time.monotonic() + HANG_GUARD_S
        while (now := self.domain_state(domid)) != state:
            assert time.monotonic() < deadline, f"d{domid} stayed {now!r}, not {state!r}: {self.log()}"
            time.sleep(0.005)

    def close(self) -> int:
        """Stop the daemon, check that nothing is left (every domain must have
        been destroyed), stop the platform; the daemon's exit status."""
        try:
            status = self.daemon.stop()
            self.assert_clean()
        finally:
            self.platform.close()
        return status

    def assert_clean(self) -> None:
        """After every domain was destroyed: no pin, no partition, no violation."""
        assert self.platform.machine.pinned_frames() == {}
        for domid in (1, 2):
            assert self.platform.tee.partition_stats(domid + 1) is None, domid
        assert not self.platform.oracle.violations, self.platform.oracle.violations
