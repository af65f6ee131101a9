"""Daemon settings a real stubdom-teed process must honour: the bound on a
gate hypercall (mediator.gate_timeout_ms), each domain's log level and the
per-domain rate limit on the log lines a guest can trigger.
Harness (config, daemon process) from tests/daemon_support.py."""

from __future__ import annotations

import io
import logging
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from daemon_support import Daemon, write_config
from stubdom import workloads
from stubdom.config import load_config
from stubdom.daemon import ControlClient, control_socket_path
from stubdom.daemon.logs import LOGGER_NAME, MEDIATOR_LOGGER, DomainLevelFilter, GuestLog, setup_logging
from stubdom.guest import Context, GuestError, MemoryStore, OpteeDriver, Supplicant, TeecError
from stubdom.mediator.limits import LOG_BURST, LOG_REFILL_SECONDS
from stubdom.optee.smc import (
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
)
from stubdom.platform import Platform
from stubdom.platform.gate import Gate
from stubdom.platform.platform import domain_spec
from stubdom.public.gate import GATE_OP_HYP
from stubdom.xen import Machine


class _SilentTee:
    """A secure world that never returns from an SMC (until released)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def smc(self, regs):
        self.entered.set()
        self.release.wait()
        return (0xFFFFFFFF,) + (0,) * 7


def test_gate_timeout_ms_bounds_a_silent_gate(tmp_path):
    """The daemon's first hypercall (the probe's CALLS_UID) meets a secure
    world that never answers: the daemon gives up after gate_timeout_ms, not
    after some built-in bound, and says so."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("  drain_timeout_ms:", "  gate_timeout_ms: 250\n  drain_timeout_ms:"))
    config = load_config(path)
    assert config.mediator.gate_timeout_ms == 250
    run = config.mediator.runtime_dir
    tee = _SilentTee()
    machine = Machine.create(run / "machine", nr_frames=config.platform.nr_frames, seed=1)
    gate = Gate(run, tee, domain_exists=lambda domid: True)
    gate.start()
    try:
        proc = subprocess.run([sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert tee.entered.is_set()
    finally:
        tee.release.set()
        gate.close()
        machine.close()
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert (f"stubdom-teed: probing OP-TEE through the gate failed: SMC gate op {GATE_OP_HYP} "
            f"for d0: no answer within 0.25 s\n") in proc.stderr, proc.stderr
    assert not (run / "stubdom-teed").exists()



# -- per-domain log level, per-domain log rate limit ------------------------------------------

LOG_DOMAINS = """\
domains:
  - domid: 1
    nr_pages: 256
    deny_classes: [shm_config]
    log_level: error
  - domid: 2
    nr_pages: 256
    deny_classes: [shm_config]
"""
SHM_CONFIG = (OPTEE_SMC_GET_SHM_CONFIG,) + (0,) * 7
# CALL_WITH_ARG naming an argument far outside the guest's RAM: the mediator
# refuses it and logs "d<domid>: call N: argument at ...: ..." (a warning)
BAD_ARG = (OPTEE_SMC_CALL_WITH_ARG, 0, 0x7FFF0000, 0, 0, 0, 0, 0)


@pytest.fixture
def two_guests(tmp_path):
    path = write_config(tmp_path, domains=LOG_DOMAINS)
    config = load_config(path)
    platform = Platform.for_config(config)
    daemon = Daemon(path, tmp_path)
    try:
        assert "listening on" in daemon.wait_listening(), daemon.log()
        for domid in (1, 2):
            platform.create_domain(domain_spec(config.domain(domid)))
        yield path, config, platform, daemon
        for domid in platform.domids():
            platform.destroy_domain(domid)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.stop()
        platform.close()


def _lines(log: str, event: str, domid: int) -> list[str]:
    return [line for line in log.splitlines() if f" event={event} domid={domid} " in line]


def _mediator_lines(log: str, domid: int) -> list[str]:
    return [line for line in log.splitlines() if f' event=mediator domid={domid} msg=' in line]


def test_domain_log_level_applies_to_its_lines_and_reload_changes_it(two_guests, tmp_path):
    path, config, platform, daemon = two_guests
    refused = (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7
    for _ in range(20):  # more than a bucket's worth: filtered lines take no token
        for domid in (1, 2):
            assert platform.trap(domid, 0, SHM_CONFIG) == refused
    for domid in (1, 2):
        assert platform.trap(domid, 0, BAD_ARG)[0] != OPTEE_SMC_RETURN_OK
    log = daemon.log()
    # d1 is at error: its warnings (refusals, the mediator's) are not written
    assert _lines(log, "call_refused", 1) == [] and _mediator_lines(log, 1) == [], log
    # d2's bucket takes every line its frontend and its calls cause: the
    # frontend's connection took the first token
    assert len(_lines(log, "frontend_connected", 2)) == 1, log
    assert len(_lines(log, "call_refused", 2)) == LOG_BURST - 1, log
    assert len(_mediator_lines(log, 2)) == 1, log

    # the reload swaps the levels of the running domains: d1 warning, d2 error
    new = tmp_path / "reloaded.yaml"
    new.write_text(path.read_text().replace("    log_level: error\n", "    log_level: warning\n")
                   .replace("  - domid: 2\n", "  - domid: 2\n    log_level: error\n"))
    with ControlClient(control_socket_path(config.mediator.runtime_dir), timeout=20) as c:
        assert c.call("reload", path=str(new))["reloaded"] is True
        before = daemon.log()
        assert platform.trap(1, 0, SHM_CONFIG) == refused
        assert platform.trap(2, 0, SHM_CONFIG) == refused
        assert platform.trap(1, 1, BAD_ARG)[0] != OPTEE_SMC_RETURN_OK
        assert platform.trap(2, 1, BAD_ARG)[0] != OPTEE_SMC_RETURN_OK
        after = daemon.log()[len(before):]
        stats = c.call("stats")["domains"]
    (line,) = _lines(after, "call_refused", 1)
    assert "reason=class_denied" in line and "suppressed=" not in line, line
    assert len(_mediator_lines(after, 1)) == 1, after
    assert _lines(after, "call_refused", 2) == [] and _mediator_lines(after, 2) == [], after
    # the level filters lines, never the counting
    assert stats["1"]["refusals"] == stats["2"]["refusals"] == {"class_denied": 21}


def test_a_flooding_guest_is_rate_limited_and_the_others_still_log(two_guests, tmp_path):
    path, config, platform, daemon = two_guests
    with ControlClient(control_socket_path(config.mediator.runtime_dir), timeout=20) as c:
        both_info = tmp_path / "info.yaml"  # d1 back to the default level
        both_info.write_text(path.read_text().replace("    log_level: error\n", ""))
        c.call("reload", path=str(both_info))
    flood = 200
    for _ in range(flood):
        platform.trap(2, 0, SHM_CONFIG)
    flooded = _lines(daemon.log(), "call_refused", 2)
    assert LOG_BURST - 1 <= len(flooded) < flood, len(flooded)  # the connection took a token
    # another domain's lines go straight through: its own bucket is full
    platform.trap(1, 0, SHM_CONFIG)
    platform.trap(1, 0, BAD_ARG)
    log = daemon.log()
    (line,) = _lines(log, "call_refused", 1)
    assert "suppressed=" not in line
    assert len(_mediator_lines(log, 1)) == 1, log
    # a refill later, the flooder's next line says how many were dropped:
    # the lines written and their suppressed= counts add up to every event
    time.sleep(LOG_REFILL_SECONDS * 1.5)
    platform.trap(2, 0, SHM_CONFIG)
    flooded = _lines(daemon.log(), "call_refused", 2)
    suppressed = [int(m.group(1)) for line in flooded if (m := re.search(r" suppressed=(\d+)$", line))]
    assert flooded[-1].endswith(f" suppressed={suppressed[-1]}"), flooded[-3:]
    assert len(flooded) + sum(suppressed) == flood + 1


def test_guest_log_and_mediator_filter_obey_the_domain_level(tmp_path):
    """Unit level: a domain's level decides for its lines whatever the
    daemon's level; lines below it take no token; the mediator's lines
    without a domain obey the daemon's level."""
    daemon_log, mediator_log = logging.getLogger(LOGGER_NAME), logging.getLogger(MEDIATOR_LOGGER)
    saved = (daemon_log.handlers[:], daemon_log.level, daemon_log.propagate, mediator_log.level)
    try:
        _check_levels(setup_logging("error", out := io.StringIO()), out)
    finally:  # the logging module's loggers are process-wide
        daemon_log.handlers[:], daemon_log.level, daemon_log.propagate, mediator_log.level = saved


def _check_levels(logger, out) -> None:
    now = [0.0]
    log = GuestLog(logger, 7, level=logging.DEBUG, burst=2, clock=lambda: now[0])
    log.event(logging.INFO, "traced", n=1)  # below the daemon's error, at the domain's debug
    log.level = logging.ERROR
    for _ in range(5):
        log.event(logging.WARNING, "quiet")  # filtered: takes no token
    log.event(logging.ERROR, "loud", n=2)
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "level=info event=traced domid=7 n=1", "level=error event=loud domid=7 n=2"]
    assert log.suppressed_total == 0

    levels = {3: logging.DEBUG, 4: logging.ERROR}
    f = DomainLevelFilter(levels.get, logging.WARNING)
    med = logging.getLogger(MEDIATOR_LOGGER)

    def passes(level: int, msg: str) -> bool:
        return f.filter(med.makeRecord(med.name, level, __file__, 0, msg, (), None))

    assert passes(logging.DEBUG, "d3: call 1: traced")
    assert not passes(logging.WARNING, "d4: call 1: quiet")
    assert passes(logging.ERROR, "d4: call 2: loud")
    assert not passes(logging.INFO, "d9: not served: the daemon's level")
    assert not passes(logging.INFO, "no domain")
    assert passes(logging.WARNING, "no domain")


# -- drain_timeout_ms, --log-level, a bad file on SIGHUP ---------------------------------------


class _StallingStore(MemoryStore):
    """The guest's REE FS, whose first write blocks until released: the
    storage TA's call stays suspended in an RPC meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def save(self, path: str, data: bytes) -> None:
        self.entered.set()
        self.release.wait()
        super().save(path, data)


def test_sigterm_drain_is_bounded_by_drain_timeout_ms(tmp_path):
    """A call suspended in an RPC the guest never returns from: SIGTERM waits
    drain_timeout_ms for it, says so, destroys the domain anyway (its pins
    released, VM_DESTROYED sent) and exits 0."""
    path = write_config(tmp_path, domains=LOG_DOMAINS, drain_ms=300)
    config = load_config(path)
    platform = Platform.for_config(config)
    daemon = Daemon(path, tmp_path)
    store = _StallingStore()
    failures: list[BaseException] = []
    try:
        assert "listening on" in daemon.wait_listening(), daemon.log()
        dc = config.domain(1)
        domain = platform.create_domain(domain_spec(dc))
        driver = OpteeDriver(platform.trap_entry(1), domain, nr_vcpus=dc.vcpus, seed=1,
                             supplicant=Supplicant(store))
        driver.probe()

        def guest() -> None:
            try:
                with Context(driver) as ctx:
                    workloads.storage_round_trip(ctx, b"stalled", b"x" * 100)
            except (GuestError, TeecError) as e:  # the daemon went away mid-call: a defined error
                failures.append(e)

        t = threading.Thread(target=guest)
        t.start()
        assert store.entered.wait(60)
        with ControlClient(control_socket_path(config.mediator.runtime_dir), timeout=20) as c:
            assert c.call("stats", domid=1)["domains"]["1"]["in_flight"] == 1
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(60) == 0, daemon.log()
        store.release.set()
        t.join(120)
        assert len(failures) == 1, failures
        log = daemon.log()
        assert "event=draining domains=1 in_flight=1 timeout_ms=300" in log, log
        assert "event=drain_timeout in_flight=1" in log, log
        assert "event=domain_destroyed domid=1" in log, log
        assert platform.machine.pinned_frames(1) == {}
        assert not (config.mediator.runtime_dir / "dom1").exists()
    finally:
        store.release.set()
        daemon.stop()
        platform.close()


def test_log_level_option_overrides_the_config(tmp_path):
    path = write_config(tmp_path, domains=LOG_DOMAINS)
    config = load_config(path)
    platform = Platform.for_config(config)
    quiet = Daemon(path, tmp_path, "--log-level", "warning")
    try:
        assert "listening on" in quiet.wait_listening(), quiet.log()
        platform.create_domain(domain_spec(config.domain(2)))
        platform.trap(2, 0, SHM_CONFIG)
        platform.destroy_domain(2)
        assert quiet.stop() == 0
        log = quiet.log_path.read_text()
        # started, domain_created ... are info; the domain's level (info)
        # decides for the lines its frontend and its calls cause
        daemons = [line for line in log.splitlines() if " event=frontend_connected domid=2 " not in line]
        assert not any("level=info" in line for line in daemons), log
        assert " event=call_refused domid=2 " in log, log
    finally:
        quiet.stop()
        platform.close()


def test_sighup_with_a_bad_file_keeps_the_policy_and_says_why(two_guests):
    path, config, platform, daemon = two_guests
    refused = (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,) + (0,) * 7
    good = path.read_text()
    path.write_text(good.replace("    deny_classes: [shm_config]\n", "    deny_classes: [shm_cfg]\n"))
    with ControlClient(control_socket_path(config.mediator.runtime_dir), timeout=20) as c:
        daemon.proc.send_signal(signal.SIGHUP)
        # the signal is handled in the daemon's loop: wait for its line
        for _ in range(6000):  # a minute at most: a reload that never happens fails
            if "event=reload_refused" in daemon.log():
                break
            c.call("hello")
            time.sleep(0.01)
        (line,) = [x for x in daemon.log().splitlines() if "event=reload_refused" in x]
        assert f"path={path} problems=2 first=\"{path}:" in line and "deny_classes[0]: 'shm_cfg'" in line
        # the old policy stands: shm_config is still denied to both, d1 still at error
        assert platform.trap(1, 0, SHM_CONFIG) == refused
        assert platform.trap(2, 0, SHM_CONFIG) == refused
        assert c.call("stats")["domains"]["2"]["refusals"] == {"class_denied": 1}
    log = daemon.log()
    assert len(_lines(log, "call_refused", 2)) == 1 and _lines(log, "call_refused", 1) == []
    path.write_text(good)
