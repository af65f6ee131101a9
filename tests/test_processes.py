"""The platform, the daemon and ctl as processes (issue 15, items 1-4):
real `stubdom-teed` processes, real signals, real sockets.

- a platform removes what it created when it stops; a second one refuses,
  naming the first one's pid; a platform killed with -9 leaves files the
  next one recognises as stale and replaces, with a log line;
- every wait ends on SIGTERM or SIGINT: the platform's for the daemon, the
  daemon's for the gate's welcome, ctl's for an answer;
- a daemon killed with -9 and started again recovers the platform's
  domains from its journal and the platform creates none of them twice;
- a second daemon names the one that serves the gate.

Bounds are hang guards only (process_support.HANG_GUARD_S): a wait the
signal did not end would run into the command's own, much longer, timeout
and then into the guard, and fail.
"""

from __future__ import annotations

import signal
import socket
import threading

import pytest

from process_support import Proc, command, config_file, left_in, run
from stubdom.public import GateClient

LONG_WAIT = "600"  # seconds: a wait that only a signal may end within the hang guard


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_platform_waiting_for_the_daemon_stops_at_once_on_a_signal_and_leaves_nothing(tmp_path, sig):
    cfg = config_file(tmp_path)
    platform = Proc(command("platform", "--config", str(cfg), "--daemon-wait", LONG_WAIT), tmp_path, "platform")
    try:
        platform.wait_for("platform: waiting up to 600 s")
        platform.signal(sig)
        assert platform.wait() == 0, platform.describe()
        assert platform.out().splitlines()[-1] == "platform: stopped while waiting for stubdom-teed"
        assert platform.err() == "", platform.describe()
        assert left_in(tmp_path / "rt") == []
    finally:
        platform.stop()


def test_a_second_platform_refuses_naming_the_first(tmp_path):
    cfg = config_file(tmp_path)
    first = Proc(command("platform", "--config", str(cfg), "--daemon-wait", LONG_WAIT), tmp_path, "first")
    try:
        first.wait_for("platform: waiting up to")
        second = run("platform", "--config", str(cfg))
        rt = tmp_path / "rt"
        assert second.returncode == 2, second
        assert second.stdout == ""
        assert second.stderr == (f"platform: another platform (pid {first.pid}) is running in {rt}; stop it first "
                                 f"(kill -TERM {first.pid}), or set mediator.runtime_dir to another directory\n")
        assert sorted(left_in(rt)) == ["machine", "platform.pid", "xen"]  # the first one's, untouched
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.describe()
        assert left_in(rt) == []
    finally:
        first.stop()


def test_leftovers_of_a_platform_killed_with_9_are_replaced_with_a_log_line(tmp_path):
    cfg = config_file(tmp_path)
    rt = tmp_path / "rt"
    dead = Proc(command("platform", "--config", str(cfg), "--daemon-wait", LONG_WAIT), tmp_path, "dead")
    try:
        dead.wait_for("platform: waiting up to")
        dead.signal(signal.SIGKILL)
        dead.wait()
    finally:
        dead.stop()
    assert sorted(left_in(rt)) == ["machine", "platform.pid", "xen"]
    # the next one: no daemon comes, so it stops after its (short) wait, having replaced them
    again = run("platform", "--config", str(cfg), "--daemon-wait", "0.1")
    assert again.returncode == 1, again
    assert (f"level=warning event=stale_platform_replaced runtime_dir={rt} previous_pid={dead.pid} "
            f"removed=machine,xen ") in again.stderr, again.stderr
    assert "Traceback" not in again.stderr and "MachineExists" not in again.stderr
    assert again.stdout.splitlines()[-1].startswith("platform: no stubdom-teed answered within 0.1 s")
    assert left_in(rt) == []


@pytest.fixture
def platform(tmp_path):
    """A platform process waiting for a daemon, and its config."""
    cfg = config_file(tmp_path)
    proc = Proc(command("platform", "--config", str(cfg), "--daemon-wait", LONG_WAIT, "--interval", "0.2"),
                tmp_path, "platform")
    proc.wait_for("platform: waiting up to")
    yield proc, cfg
    proc.stop()


def _with_gate_timeout(cfg, ms: int):
    text = cfg.read_text()
    assert "  gate_timeout_ms:" not in text
    cfg.write_text(text.replace("mediator:\n", f"mediator:\n  gate_timeout_ms: {ms}\n", 1))


def test_daemon_waiting_for_the_gates_welcome_stops_at_once_on_sigterm(platform, tmp_path):
    """The gate serves one stub domain at a time: while another (here the
    test's own client, with no control socket) holds it, a daemon waits for
    the welcome; SIGTERM ends that wait."""
    proc, cfg = platform
    _with_gate_timeout(cfg, 600_000)
    holder = GateClient(tmp_path / "rt", timeout=60)
    try:
        daemon = Proc(command("--config", str(cfg), "--log-level", "debug"), tmp_path, "daemon")
        try:
            daemon.wait_for("event=gate_connecting", stream="err")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.describe()
            assert daemon.err().splitlines()[-1] == ("stubdom-teed: stopped by SIGTERM while starting; nothing "
                                                     "was left behind")
            assert daemon.out() == ""
        finally:
            daemon.stop()
    finally:
        holder.close()
    assert not (tmp_path / "rt" / "stubdom-teed").exists()


def test_a_daemon_the_gate_does_not_welcome_says_another_one_is_serving_it(platform, tmp_path):
    proc, cfg = platform
    _with_gate_timeout(cfg, 300)
    holder = GateClient(tmp_path / "rt", timeout=60)  # a stub domain still starting: no control socket yet
    try:
        got = run("--config", str(cfg))
    finally:
        holder.close()
    gate = tmp_path / "rt" / "xen" / "gate" / "evtchn"
    assert got.returncode == 1, got
    assert got.stderr.splitlines()[-1] == (f"stubdom-teed: another stubdom-teed is serving the SMC gate at {gate} "
                                           f"(it is still starting: no control socket yet); stop it first")
    assert "no SMC gate" not in got.stderr


def test_daemon_killed_with_9_recovers_and_the_platform_creates_nothing_twice(platform, tmp_path):
    proc, cfg = platform
    first = Proc(command("--config", str(cfg)), tmp_path, "daemon1")
    second = None
    try:
        first.wait_for("stubdom-teed: listening on ")
        mark = proc.wait_for(" up: ", count=3)
        mark = proc.wait_for("platform: round ", after=mark)
        first.signal(signal.SIGKILL)
        first.wait()
        second = Proc(command("--config", str(cfg)), tmp_path, "daemon2")
        second.wait_for("stubdom-teed: listening on ")
        assert "event=recovery_" in second.err(), second.describe()
        # the platform saw it come back: it serves every domain already
        proc.wait_for(f"event=daemon_attached pid={second.pid} serving=0,1,2 recreating=none", stream="err")
        # and the guests are served again, without being created or bound again
        while True:
            mark = proc.wait_for("platform: round ", after=mark)
            line = proc.out()[mark:].split("\n", 1)[0]
            if all(f"d{d} ok 4 workloads" in line for d in (0, 1, 2)):
                break
        assert "created again" not in proc.out() and "event=domain_recreated" not in proc.err()
        assert "DOMAIN_EXISTS" not in proc.err() + second.err()
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.describe()
        assert second.wait() == 0, second.describe()
        assert left_in(tmp_path / "rt") == []
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.parametrize("sig, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_ctl_waiting_for_an_answer_stops_at_once_on_a_signal(tmp_path, sig, name):
    """A control socket that takes the request and never answers: ctl's wait
    (here up to 600 s) ends on the signal, with one line."""
    path = tmp_path / "control"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    got = threading.Event()
    conns = []

    def serve() -> None:
        conn, _ = listener.accept()
        conns.append(conn)
        if conn.recv(4096):
            got.set()

    threading.Thread(target=serve, daemon=True).start()
    ctl = Proc(command("ctl", "--socket", str(path), "--timeout", LONG_WAIT, "hello"), tmp_path, "ctl")
    try:
        assert got.wait(120), ctl.describe()  # the request arrived: ctl now waits for the answer
        ctl.signal(sig)
        assert ctl.wait() == 130, ctl.describe()
        assert ctl.err() == f"stubdom-teed ctl: interrupted by {name}\n"
        assert ctl.out() == ""
    finally:
        ctl.stop()
        for conn in conns:
            conn.close()
        listener.close()
