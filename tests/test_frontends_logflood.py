"""Every log line a guest or a frontend can cause over and over goes through
a per-domain rate limit (issue 12, part 3; docs/security.md, "Frontends:
reconnects, truncated rings, log floods").

The limits are token buckets (``LOG_BURST`` lines, then one per
``LOG_REFILL_SECONDS``) on an injected clock that the tests hold still: what
is checked is a count of lines against a count of events, never a time. A
suppressed line is counted and the count reported on the next line that
gets through.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

import pytest
import trio

import ring
from frontends_support import DaemonStack
from other_user import finish
from stubdom.daemon.backend import DomainBackend
from stubdom.daemon.logs import GuestLog
from stubdom.mediator.limits import LOG_BURST, LOG_REFILL_SECONDS
from stubdom.optee.smc import OPTEE_MSG_UID_0, OPTEE_SMC_CALLS_UID, OPTEE_SMC_GET_THREAD_COUNT
from stubdom.platform import (
    UNAVAILABLE_REGS,
    DomainSpec,
    Gate,
    Platform,
    stubdom_placement,
)
from stubdom.public import GATE_OP_SMC, GateClient
from stubdom.tee import IsolationOracle, OpteeModel, TeeConfig
from stubdom.xen import Machine
from stubdom_support import MiniDaemon

DOM = 2  # the platform's own frontend (frontends_support's domain 2)
UID = (OPTEE_SMC_CALLS_UID,) + (0,) * 7
PLATFORM_LOG = "stubdom.platform.stubdom"
GATE_LOG = "stubdom.platform.gate"


class Clock:
    """The rate limits' clock: still unless a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def refill(self, lines: int = 1) -> None:
        self.now += lines * LOG_REFILL_SECONDS


def messages(caplog, logger: str, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and text in r.getMessage()]


def suppressed(line: str) -> int:
    """The count a line reports for the lines suppressed before it."""
    assert line.endswith(" similar lines suppressed)"), line
    return int(line.rsplit("(", 1)[1].split()[0])


# -- the platform's trap path, beside a real daemon ------------------------------------------------

VCPUS = 48  # more vCPUs in flight than the 32 slots of a one-page ring


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def flood_stack(tmp_path, clock):
    s = DaemonStack(tmp_path, platform_vcpus=VCPUS, call_timeout_ms=60_000, log_clock=clock)
    try:
        yield s
    finally:
        status = s.close()
    assert status == 0, s.log()


def test_ring_full_flood_from_more_vcpus_than_ring_slots_logs_a_burst(flood_stack, clock, caplog):
    """The issue's flood: the daemon is held inside OP-TEE on one call, 32
    vCPUs fill the ring and wait, 16 more retry as fast as they can and are
    refused (ENOTAVAIL) thousands of times: one burst of lines, then nothing
    until the bucket refills, then one line that counts the rest."""
    stack = flood_stack
    stack.boot(DOM, probe=False)
    link = stack.platform.placement
    held = stack.tee.hold(DOM + 1, OPTEE_SMC_CALLS_UID)
    stop = threading.Event()
    answers: dict[int, list] = {v: [] for v in range(VCPUS)}

    def vcpu(v: int) -> None:
        while True:
            answers[v].append(stack.platform.trap(DOM, v, UID))
            if stop.is_set():
                return

    caplog.set_level(logging.WARNING, logger=PLATFORM_LOG)
    waiting = [threading.Thread(target=vcpu, args=(v,)) for v in range(32)]
    for t in waiting:
        t.start()
    held.wait_entered()
    while link.statistics(DOM).requests < 32:  # every slot taken, the daemon stuck on the first
        pass
    flooding = [threading.Thread(target=vcpu, args=(v,)) for v in range(32, VCPUS)]
    for t in flooding:
        t.start()
    while link.statistics(DOM).unavailable < 5000:  # a count of refusals, not a duration
        pass
    stop.set()
    for t in flooding:
        t.join()
    refused = link.statistics(DOM).unavailable
    assert refused == sum(len(answers[v]) for v in range(32, VCPUS)) and refused >= 5000
    lines = messages(caplog, PLATFORM_LOG, "d2: ")
    assert lines == ["d2: teeif ring full (daemon not answering): ENOTAVAIL"] * LOG_BURST
    clock.refill()
    assert stack.platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS  # the ring is still full
    lines = messages(caplog, PLATFORM_LOG, "d2: ")
    assert len(lines) == LOG_BURST + 1 and suppressed(lines[-1]) == refused - LOG_BURST
    held.release()
    for t in waiting:
        t.join()
    assert all(answers[v] == [UNAVAILABLE_REGS] * len(answers[v]) for v in range(32, VCPUS))
    assert all(len(answers[v]) == 1 and answers[v][0][0] == OPTEE_MSG_UID_0 for v in range(32))
    stack.platform.destroy_domain(DOM)


def test_calls_timing_out_log_a_burst(tmp_path, clock, caplog):
    """A daemon that does not answer within call_timeout_ms: each of the 32
    waiting vCPUs times out and would log its own line."""
    stack = DaemonStack(tmp_path, platform_vcpus=32, call_timeout_ms=300, log_clock=clock)
    try:
        stack.boot(DOM, probe=False)
        held = stack.tee.hold(DOM + 1, OPTEE_SMC_CALLS_UID)
        caplog.set_level(logging.WARNING, logger=PLATFORM_LOG)
        out = [None] * 32
        threads = [threading.Thread(target=lambda v=v: out.__setitem__(v, stack.platform.trap(DOM, v, UID)))
                   for v in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [UNAVAILABLE_REGS] * 32
        assert stack.platform.placement.statistics(DOM).timeouts == 32
        lines = messages(caplog, PLATFORM_LOG, "d2: ")
        assert lines == ["d2: no answer from stubdom-teed within 0.3 s: ENOTAVAIL"] * LOG_BURST
        clock.refill()
        # the 32 requests still hold every slot: the next call is refused at
        # once, on the domain's one bucket, and reports the timeouts it hid
        assert stack.platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS
        (last,) = messages(caplog, PLATFORM_LOG, "d2: ")[LOG_BURST:]
        assert last.startswith("d2: teeif ring full") and suppressed(last) == 32 - LOG_BURST
        held.release()
        stack.platform.destroy_domain(DOM)
    finally:
        assert stack.close() == 0, stack.log()


# -- the trap path against a failing daemon (tests/stubdom_support.py's) -------------------

@pytest.fixture
def mini(tmp_path, clock):
    platform = Platform(tmp_path / "machine", nr_frames=16384, tee_config=TeeConfig(),
                        placement=stubdom_placement(tmp_path, call_timeout_ms=60_000, log_clock=clock))
    daemon = MiniDaemon(tmp_path)
    try:
        yield platform, daemon
    finally:
        try:
            platform.close()
        finally:
            daemon.close()


def test_failed_answers_log_a_burst(mini, clock, caplog):
    """A daemon that answers every call with status -EIO (a bug in it the
    guest's calls keep hitting)."""
    platform, daemon = mini
    platform.create_domain(DomainSpec(DOM, nr_pages=64))
    daemon.mode[DOM] = "status"
    caplog.set_level(logging.WARNING, logger=PLATFORM_LOG)
    for _ in range(100):
        assert platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS
    assert platform.placement.statistics(DOM).backend_errors == 100
    assert messages(caplog, PLATFORM_LOG, "d2: ") == [f"d2: stubdom-teed answered status {-errno.EIO}: "
                                                      f"ENOTAVAIL"] * LOG_BURST
    clock.refill()
    platform.trap(DOM, 0, UID)
    assert suppressed(messages(caplog, PLATFORM_LOG, "d2: ")[-1]) == 100 - LOG_BURST


def test_failed_reattach_on_every_call_logs_a_burst(mini, clock, caplog, tmp_path):
    """The daemon died; something listens in its place but the ring file it
    left cannot be attached: every guest call tries to reconnect and fails."""
    platform, daemon = mini
    platform.create_domain(DomainSpec(DOM, nr_pages=64))
    daemon.mode[DOM] = "die"
    assert platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS  # the daemon goes away on this one
    domdir = tmp_path / f"dom{DOM}"
    (domdir / ring.RING_FILE).unlink()
    (domdir / ring.RING_FILE).write_bytes(b"\0" * 100)  # a new file, not a ring
    listener = ring.EventChannelListener(domdir / ring.EVTCHN_FILE, replace=True)
    stop = threading.Event()

    def hang_up() -> None:  # accept and drop, so that connecting never blocks
        while not stop.is_set():
            try:
                listener.accept(timeout=0.05).close()
            except TimeoutError:
                pass

    acceptor = threading.Thread(target=hang_up)
    acceptor.start()
    try:
        caplog.set_level(logging.WARNING, logger=PLATFORM_LOG)
        for _ in range(100):
            assert platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS
        # the daemon's death took the bucket's first token, the failed re-attaches the rest
        gone, *lines = messages(caplog, PLATFORM_LOG, "d2: ")
        assert gone.endswith("calls get ENOTAVAIL until it is back"), gone
        assert len(lines) == LOG_BURST - 1 and all("cannot re-attach the teeif ring: " in x and
                                                    "ring file size is not a whole number" in x for x in lines)
        clock.refill()
        platform.trap(DOM, 0, UID)
        assert suppressed(messages(caplog, PLATFORM_LOG, "cannot re-attach")[-1]) == 100 - (LOG_BURST - 1)
    finally:
        stop.set()
        acceptor.join()
        listener.close()


def test_a_daemon_that_accepts_and_hangs_up_logs_a_burst(tmp_path, clock, caplog):
    """Something listens where the daemon did, accepts the trap path's
    reconnection and hangs up at once: each guest call reconnects ("is
    back"), loses the daemon again, and may time out; all on the domain's
    one bucket."""
    platform = Platform(tmp_path / "machine", nr_frames=16384, tee_config=TeeConfig(),
                        placement=stubdom_placement(tmp_path, call_timeout_ms=50, log_clock=clock))
    daemon = MiniDaemon(tmp_path)
    stop = threading.Event()
    acceptor = None
    try:
        platform.create_domain(DomainSpec(DOM, nr_pages=64))
        daemon.mode[DOM] = "die"
        assert platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS  # the daemon goes away on this one
        listener = ring.EventChannelListener(tmp_path / f"dom{DOM}" / ring.EVTCHN_FILE, replace=True)

        def hang_up() -> None:
            while not stop.is_set():
                try:
                    listener.accept(timeout=0.05).close()
                except TimeoutError:
                    pass
            listener.close()

        acceptor = threading.Thread(target=hang_up)
        acceptor.start()
        caplog.set_level(logging.INFO, logger=PLATFORM_LOG)
        before = len(messages(caplog, PLATFORM_LOG, "d2: "))
        for _ in range(30):
            assert platform.trap(DOM, 0, UID) == UNAVAILABLE_REGS
        assert platform.placement.statistics(DOM).reconnects >= 30
        lines = messages(caplog, PLATFORM_LOG, "d2: ")
        assert before == 1 and len(lines) == LOG_BURST, lines  # the first death, then the rest
        assert any("stubdom-teed is back" in x for x in lines)
    finally:
        stop.set()
        if acceptor is not None:
            acceptor.join()
        try:
            platform.close()
        finally:
            daemon.close()


# -- the SMC gate, driven by a stub domain ----------------------------------------------------------

@pytest.fixture
def gate(tmp_path, clock):
    machine = Machine.create(tmp_path / "machine", nr_frames=16384)
    machine.create_domain(1, nr_pages=16)
    tee = OpteeModel(machine, TeeConfig(), IsolationOracle(machine))
    g = Gate(tmp_path, tee, domain_exists=lambda d: d in machine.domains(), log_clock=clock)
    g.start()
    try:
        yield g, tee
    finally:
        g.close()
        machine.close()


def test_a_stub_domain_reconnecting_in_a_loop_logs_a_burst(gate, clock, caplog, tmp_path):
    g, _ = gate
    caplog.set_level(logging.INFO, logger=GATE_LOG)
    for _ in range(31):  # connected + closed each: 62 lines without the limit
        GateClient(tmp_path, timeout=30.0).close()
    last = GateClient(tmp_path, timeout=30.0)  # welcomed: the gate is done with the 31 before
    assert len(messages(caplog, GATE_LOG, "stub domain")) == LOG_BURST
    clock.refill()
    last.close()
    while len(messages(caplog, GATE_LOG, "stub domain")) == LOG_BURST:  # the gate sees our hang-up
        pass
    line = messages(caplog, GATE_LOG, "stub domain")[-1]
    assert line.startswith("stub domain closed the SMC gate channel")
    assert g.statistics().connections == 32 and suppressed(line) == 2 * 31 + 1 - LOG_BURST


def test_hypercalls_for_a_domain_the_stub_domain_was_not_given_log_a_burst(gate, clock, caplog, tmp_path):
    g, _ = gate
    caplog.set_level(logging.DEBUG, logger=GATE_LOG)  # refusals are debug lines
    with GateClient(tmp_path, timeout=30.0) as client:
        for _ in range(50):
            assert client.call(GATE_OP_SMC, 1, (OPTEE_SMC_GET_THREAD_COUNT,) + (0,) * 7)[0] == -errno.EPERM
        # the stub domain's own bucket: its "connected" line took a token too
        assert messages(caplog, GATE_LOG, "")[0] == "stub domain connected to the SMC gate"
        assert len(messages(caplog, GATE_LOG, "gate refused op 1 for d1")) == LOG_BURST - 1
        clock.refill()
        client.call(GATE_OP_SMC, 1, (OPTEE_SMC_GET_THREAD_COUNT,) + (0,) * 7)
        assert suppressed(messages(caplog, GATE_LOG, "gate refused op")[-1]) == 50 - (LOG_BURST - 1)


def test_secure_world_failures_for_one_domain_log_a_burst_and_spare_the_others(gate, clock, caplog, tmp_path):
    g, tee = gate
    inner = tee.smc

    def smc(regs):  # the TEE model has a bug that the domains' calls hit
        if regs[0] == OPTEE_SMC_CALLS_UID:
            raise RuntimeError("model bug")
        return inner(regs)

    tee.smc = smc
    g.assign(1)
    g.assign(5)
    caplog.set_level(logging.ERROR, logger=GATE_LOG)
    with GateClient(tmp_path, timeout=30.0) as client:
        for _ in range(50):
            assert client.call(GATE_OP_SMC, 1, UID) == (-errno.EINVAL, (0,) * 8)
        lines = messages(caplog, GATE_LOG, "the TEE model raised")
        assert lines == ["the TEE model raised on op 1 for d1 a0=0xbf00ff01"] * LOG_BURST
        client.call(GATE_OP_SMC, 5, UID)  # another domain's bucket is full
        assert messages(caplog, GATE_LOG, "the TEE model raised")[-1].endswith("for d5 a0=0xbf00ff01")
        clock.refill()
        client.call(GATE_OP_SMC, 1, UID)
        assert suppressed(messages(caplog, GATE_LOG, "for d1")[-1]) == 50 - LOG_BURST
    assert [r.exc_info is not None for r in caplog.records if r.name == GATE_LOG] == [True] * (LOG_BURST + 2)


# Another user's stub domain (tests/other_user.py): connects to the gate's
# ./evtchn N times; the gate refuses each before its welcome.
_INTRUDER = """\
import socket, sys
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("evtchn")
    print("welcomed" if s.recv(16) else "closed")
    s.close()
"""


def test_another_users_stub_domain_refused_in_a_loop_logs_a_burst(gate, clock, caplog, other_user):
    g, _ = gate
    gd = g.dir
    os.chmod(gd, 0o711)  # the modes taken away: only the credential check is left
    os.chmod(gd / "evtchn", 0o666)
    caplog.set_level(logging.WARNING, logger=GATE_LOG)
    out, err = finish(other_user.spawn(_INTRUDER, "30", cwd=gd))
    assert out == "closed\n" * 30, err
    assert g.statistics().refused_peers == 30
    assert len(messages(caplog, GATE_LOG, "refused the stub domain")) == LOG_BURST
    clock.refill()
    out, err = finish(other_user.spawn(_INTRUDER, "1", cwd=gd))
    assert suppressed(messages(caplog, GATE_LOG, "refused the stub domain")[-1]) == 30 - LOG_BURST


# -- the daemon's backend: a frontend connecting in a loop ------------------------------------------

async def test_a_frontend_reconnecting_in_a_loop_logs_a_burst(tmp_path, clock, caplog):
    """The real DomainBackend on a real ring and listener; its per-domain
    GuestLog on the still clock. Each connection would log two lines."""
    logger = logging.getLogger("t.daemon.reconnects")
    backend = DomainBackend(1, tmp_path / "dom1", 1, hwdom=False, direct_mapped=False, daemon=None,
                            logger=logger, poll_window_ns=0)
    backend.log = GuestLog(logger, 1, clock=clock)
    caplog.set_level(logging.INFO, logger=logger.name)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            for n in range(1, 41):
                chan = await trio.to_thread.run_sync(ring.EventChannel.connect, backend.evtchn_path)
                while backend.connections < n:
                    await trio.sleep(0)
                chan.close()
                while backend.state != "peer-died":
                    await trio.sleep(0)
            lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
            assert len(lines) == LOG_BURST
            assert lines[:2] == ["event=frontend_connected domid=1 connection=1",
                                 "event=frontend_died domid=1 connection=1"]
            clock.refill()
            chan = await trio.to_thread.run_sync(ring.EventChannel.connect, backend.evtchn_path)
            while backend.connections < 41:
                await trio.sleep(0)
            last = [r.getMessage() for r in caplog.records if r.name == logger.name][-1]
            assert last == f"event=frontend_connected domid=1 connection=41 suppressed={2 * 40 - LOG_BURST}"
            chan.close()
            nursery.cancel_scope.cancel()
    finally:
        backend.close()
