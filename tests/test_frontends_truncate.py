"""A peer that truncates a ring file it shares costs its own channel, never the
process that maps the ring with it (issue 12, part 5; docs/protocol.md, "A
peer that truncates the ring file").

- a domain's frontend truncates the ring of a running stubdom-teed: that
  domain's channel is torn down with a logged reason, the daemon serves the
  others;
- a (compromised) stub domain truncates the SMC gate's ring: the platform,
  Xen in this model, disconnects it, resets the ring and serves the next
  daemon;
- stub domain truncates a domain's ring under the platform's trap path: that
  domain's guest gets ENOTAVAIL, the platform and the other domains go on;
- the ring file is broken while the daemon is down: the restarted daemon
  gives that domain a fresh ring and recovers the others.

Real processes throughout: stubdom-teed, the platform command, a C frontend
written against io/ring.h (tests/c/teeif_scripted_frontend.c).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_support import config_file
from frontends_support import HANG_GUARD_S, DaemonStack, ScriptedFrontend, build_scripted_frontend
from ring import EventChannel, FrontRing, PeerDied, RingTruncated
from stubdom.guest import Context
from stubdom.guest.client import INOUT, Value
from stubdom.optee.smc import OPTEE_MSG_UID_0, OPTEE_SMC_CALLS_UID
from stubdom.platform import UNAVAILABLE_REGS
from stubdom.public import gate_dir
from stubdom.tee.tas import INCREMENT_UUID
from stubdom.tee.tas.increment import TA_INCREMENT_CMD_INC_VALUE

C_DOM = 1  # served to the C frontend
PLATFORM_DOM = 2  # served to the platform's own trap path and a guest driver
UID_BURST = f"4 {OPTEE_SMC_CALLS_UID:#x} {OPTEE_MSG_UID_0:#x}"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def exe(tmp_path):
    return build_scripted_frontend(tmp_path)


@pytest.fixture
def stack(tmp_path):
    s = DaemonStack(tmp_path)
    try:
        yield s
    finally:
        status = s.close()
    assert status == 0, s.log()


def inc(driver, value: int) -> int:
    with Context(driver) as ctx:
        session = ctx.open_session(INCREMENT_UUID)
        try:
            return session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(value, 0, INOUT)])[0].a
        finally:
            session.close()


def c_frontend(exe, domdir, tag: int) -> ScriptedFrontend:
    f = ScriptedFrontend(exe, domdir, tag)
    f.do("attach", "attached")
    f.do("connect", "connected")
    f.do(f"burst {UID_BURST}", "pushed")
    f.do("collect", "answered")
    return f


def destroy_all(stack, driver) -> None:
    driver.shutdown()
    stack.platform.destroy_domain(PLATFORM_DOM)
    stack.destroy_c_domain(C_DOM)


# -- a frontend truncates the ring of a running daemon --------------------------------------------

@pytest.mark.parametrize("wake", ["notify", "other-domain"])
def test_frontend_truncating_its_ring_loses_its_channel_and_nothing_else(stack, exe, wake):
    """Truncated to nothing, then either notified (the daemon pops at once)
    or left alone while another domain keeps the daemon's shared spin over
    every idle ring running (it touches the truncated one without being
    asked)."""
    driver = stack.boot(PLATFORM_DOM)
    f = c_frontend(exe, stack.create_c_domain(C_DOM), 1)
    assert inc(driver, 1) == 2
    f.do("truncate 0", "truncated")
    if wake == "notify":
        f.do("notify", "notified")
    else:
        value = 10
        while stack.domain_state(C_DOM) != "broken":
            assert value < 1000, stack.log()  # a bound no passing run comes near
            assert inc(driver, value) == value + 1
            value += 1
    f.do("wait_eof", "eof")  # the daemon closed the domain's channel
    assert f.finish() == 0
    assert stack.alive()
    log = stack.log()
    assert (f"event=ring_truncated domid={C_DOM} detail=\"RingTruncated: backend: the ring file "
            f"{stack.tmp_path / 'run' / f'dom{C_DOM}' / 'ring'} shrank under its 4096-byte mapping "
            f"(access at offset 0x0 faulted with SIGBUS; the file is now 0 bytes): the peer "
            f"truncated it\"") in log, log
    assert stack.domain_state(C_DOM) == "broken"
    # no reconnecting to a ring the daemon cannot trust: the listener is gone
    assert not (stack.tmp_path / "run" / f"dom{C_DOM}" / "evtchn").exists()
    assert inc(driver, 41) == 42  # the other domain is served as before
    destroy_all(stack, driver)


def test_ring_truncated_while_the_daemon_is_down_is_replaced_at_restart(stack, exe):
    """Recovery attaches to every domain's ring: one the frontend broke in
    the meantime (truncated, or impossible indices: parametrized below) is
    replaced by a fresh ring for that domain alone."""
    _recover_after(stack, exe, "truncate 0", "truncated", "RingSizeError")


@pytest.mark.parametrize("damage,said,error", [
    ("truncate 100", "truncated", "RingSizeError"),  # not a whole page
    ("scribble", "scribbled", "RingCorrupted"),  # req_prod two rings ahead
])
def test_ring_broken_while_the_daemon_is_down_is_replaced_at_restart(stack, exe, damage, said, error):
    _recover_after(stack, exe, damage, said, error)


def _recover_after(stack, exe, damage: str, said: str, error: str) -> None:
    driver = stack.boot(PLATFORM_DOM)
    domdir = stack.create_c_domain(C_DOM)
    f = c_frontend(exe, domdir, 1)
    assert inc(driver, 1) == 2
    stack.kill()
    f.do(damage, said)
    f.kill()
    stack.start()  # the old code died here: recovery raised on the broken ring
    log = stack.log()
    assert f"event=ring_replaced domid={C_DOM} detail=\"{error}: " in log, log
    assert f"event=recovery_restored domid={PLATFORM_DOM}" in log, log
    assert inc(driver, 7) == 8  # the trap path reconnected; the other domain is recovered
    g = c_frontend(exe, domdir, 2)  # a new frontend on the fresh ring
    assert g.lines[0] == "attached nr_ents=32 req_prod=0 rsp_prod=0", g.lines
    assert g.finish() == 0
    destroy_all(stack, driver)


# -- the stub domain truncates the platform's rings -----------------------------------------------

def test_stub_domain_truncating_a_domain_ring_costs_that_domain_only(stack, exe):
    """The platform maps every domain's ring as its frontend: a compromised
    daemon that truncates one must not kill the platform (the hypervisor)."""
    stack.boot(PLATFORM_DOM)
    f = c_frontend(exe, stack.create_c_domain(C_DOM), 1)
    ring_path = stack.platform.placement.domain_dir(PLATFORM_DOM) / "ring"
    os.truncate(ring_path, 0)  # as the daemon, which created the file, can
    regs = (OPTEE_SMC_CALLS_UID,) + (0,) * 7
    assert stack.platform.trap(PLATFORM_DOM, 0, regs) == UNAVAILABLE_REGS
    assert stack.platform.trap(PLATFORM_DOM, 1, regs) == UNAVAILABLE_REGS  # cut off for good
    st = stack.platform.placement.statistics(PLATFORM_DOM)
    assert st.unavailable == 2 and st.timeouts == 0
    # the platform and the daemon go on with the other domain
    f.do(f"burst {UID_BURST}", "pushed")
    f.do("collect", "answered")
    assert f.finish() == 0
    assert stack.alive()
    stack.platform.destroy_domain(PLATFORM_DOM)  # teardown works for the cut-off domain
    stack.destroy_c_domain(C_DOM)


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-P", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)


def test_stub_domain_truncating_the_gate_ring_is_disconnected_and_the_platform_goes_on(tmp_path):
    """The platform command (a real process) serves the SMC gate; a
    compromised stub domain connects, truncates the gate's ring and
    notifies. The platform resets the ring and then serves a real daemon's
    domains to the end, isolation oracle clean."""
    cfg = config_file(tmp_path)
    platform = _spawn(["-c", "import sys; from stubdom.platform import run_platform; "
                             f"sys.exit(run_platform({str(cfg)!r}, log_level='warning', interval=0.05, "
                             "daemon_wait=60))"])
    daemon = None
    try:
        first = platform.stdout.readline()
        assert "start the daemon beside it" in first, first + platform.stderr.read()
        gate = gate_dir(tmp_path / "rt")
        chan = EventChannel.connect(gate / "evtchn")
        assert chan.wait(HANG_GUARD_S) == 1  # the gate's welcome
        with FrontRing.attach(gate / "ring") as front:
            os.truncate(gate / "ring", 0)
            with pytest.raises(RingTruncated):  # our own mapping of it is gone too
                front.unconsumed()
        chan.notify()
        with pytest.raises(PeerDied):  # the gate dropped us
            while True:
                assert chan.wait(HANG_GUARD_S), "the gate neither answered nor hung up"
        chan.close()
        assert (gate / "ring").stat().st_size == 4096  # a fresh ring for the next stub domain
        daemon = _spawn(["-m", "stubdom.daemon", "--config", str(cfg), "--log-level", "warning"])
        for line in platform.stdout:
            if line.startswith("platform: round 2:"):
                assert all(f"d{d} ok 4 workloads" in line for d in (0, 1, 2)), line
                break
        platform.send_signal(signal.SIGTERM)
        rest, err = platform.communicate(timeout=HANG_GUARD_S)
        assert platform.returncode == 0, rest + err
        assert rest.splitlines()[-1] == "platform: stopped; isolation oracle: 0 violations"
        assert ("stub domain truncated the SMC gate ring (backend: the ring file "
                f"{gate / 'ring'} shrank under its 4096-byte mapping") in err, err
    finally:
        for proc in (platform, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=HANG_GUARD_S)
