"""Guests run the TA workload through a real stubdom-teed process: three
domains at once, policy refusals, SIGHUP reload under load, SIGTERM drain.
Harness (config, daemon process, platform) from tests/daemon_support.py."""

from __future__ import annotations

import hashlib
import signal
import threading
import time

import pytest

from daemon_support import DOMAINS, Daemon, write_config
from stubdom import workloads
from stubdom.config import load_config
from stubdom.daemon import ControlClient, control_socket_path
from stubdom.guest import Context, GuestError, MemoryStore, OpteeDriver, Supplicant, TeecError
from stubdom.optee.smc import OPTEE_SMC_GET_SHM_CONFIG, OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
from stubdom.optee.teec import TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_COMMS
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec
from stubdom.tee.tas import DIGEST_UUID

RATE_DOMAINS = DOMAINS + """\
  - domid: 4
    nr_pages: 512
    rate: {{calls_per_second: 0.001, burst: 4}}
"""


@pytest.fixture
def running(tmp_path):
    path = write_config(tmp_path, domains=RATE_DOMAINS)
    config = load_config(path)
    platform = Platform.for_config(config)
    daemon = Daemon(path, tmp_path)
    drivers: dict[int, OpteeDriver] = {}
    try:
        assert "listening on" in daemon.wait_listening(), daemon.log()
        for domid in (0, 1, 2, 4):
            dc = config.domain(domid)
            domain = platform.create_domain(domain_spec(dc))
            drivers[domid] = OpteeDriver(platform.trap_entry(domid), domain, nr_vcpus=dc.vcpus,
                                         seed=domid, supplicant=Supplicant(MemoryStore()))
            drivers[domid].probe()
        yield path, config, platform, daemon, drivers
    finally:
        for driver in drivers.values():
            try:
                driver.shutdown()
            except GuestError:
                pass  # after a SIGTERM the daemon is gone: shutdown gets ENOTAVAIL
        if daemon.proc.poll() is None:
            for domid in platform.domids():
                platform.destroy_domain(domid)
        daemon.stop()
        platform.close()
        assert not platform.oracle.violations, platform.oracle.violations


def ctl(config) -> ControlClient:
    return ControlClient(control_socket_path(config.mediator.runtime_dir), timeout=30)


def workload(ctx: Context, seed: int) -> None:
    workloads.increment(ctx, seed)
    for n in (1, 4096 * 3 + 77, 64 * 1024):
        data = workloads.random_bytes(n, seed + n)
        assert workloads.digest_temp(ctx, data) == workloads.digest_registered(ctx, data) == \
            hashlib.sha256(data).digest()
    workloads.digest_short_buffer(ctx)
    workloads.storage_round_trip(ctx, b"obj-%d" % seed, workloads.random_bytes(10 * 1024 + 3, seed))
    workloads.wait_preempted(ctx)


def run_vcpus(drivers, domids, body) -> list[str]:
    """``body(domid, vcpu, ctx)`` on every vCPU of every domain at once;
    the failures, as strings."""
    failures: list[str] = []

    def one(domid, vcpu):
        try:
            with Context(drivers[domid], vcpu=vcpu) as ctx:
                body(domid, vcpu, ctx)
        except Exception as e:
            failures.append(f"d{domid}v{vcpu}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(d, v)) for d in domids
               for v in range(drivers[d].nr_vcpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return failures


def test_three_domains_run_the_whole_workload_at_once(running):
    _, config, platform, daemon, drivers = running
    failures = run_vcpus(drivers, (0, 1), lambda d, v, ctx: workload(ctx, 10 * d + v))
    # d2 may not open the digest TA: everything else of the workload
    failures += run_vcpus(drivers, (2,), lambda d, v, ctx: (
        workloads.increment(ctx, v),
        workloads.storage_round_trip(ctx, b"x%d" % v, b"y" * 5000),
        workloads.wait_preempted(ctx)))
    assert failures == []
    with ctl(config) as c:
        stats = c.call("stats")
        for domid in ("0", "1", "2"):
            s = stats["domains"][domid]
            assert s["errors"] == 0 and s["in_flight"] == 0, (domid, s)
            assert s["calls"]["CALL_RETURN_FROM_RPC"] > 0  # storage and wait TAs go through RPCs
        assert stats["gate"]["failures"] == 0
    for domid in (0, 1, 2):
        drivers.pop(domid).shutdown()
        platform.destroy_domain(domid)
        assert platform.machine.pinned_frames(domid) == {}


def test_policy_refusals_never_reach_the_tee(running):
    _, config, platform, daemon, drivers = running
    # TA not allowed: message-level ACCESS_DENIED from COMMS
    with Context(drivers[2]) as ctx:
        with pytest.raises(TeecError) as e:
            ctx.open_session(DIGEST_UUID)
        assert (e.value.ret, e.value.origin) == (TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_COMMS)
        assert workloads.increment(ctx, 5) == 6  # other TAs still fine
    # function class denied: UNKNOWN_FUNCTION, every other register 0
    regs = platform.trap(2, 0, (OPTEE_SMC_GET_SHM_CONFIG, 1, 2, 3, 4, 5, 6, 7))
    assert regs == (OPTEE_SMC_RETURN_UNKNOWN_FUNCTION, 0, 0, 0, 0, 0, 0, 0)
    # rate limit: a burst of 4 standard calls, then refusals (the driver sees a failure)
    with Context(drivers[4]) as ctx:
        outcomes = []
        for i in range(4):
            try:
                workloads.increment(ctx, i)  # open + invoke + close: 3 standard calls
                outcomes.append("ok")
            except (TeecError, GuestError) as err:
                outcomes.append(type(err).__name__)
        assert outcomes[0] == "ok" and "ok" not in outcomes[2:]
    with ctl(config) as c:
        d2 = c.call("stats", domid=2)["domains"]["2"]
        assert d2["refusals"] == {"ta_denied": 1, "class_denied": 1}
        d4 = c.call("stats", domid=4)["domains"]["4"]
        assert d4["refusals"]["rate_limited"] >= 1
    log = daemon.log()
    assert "event=open_session_refused domid=2 reason=ta_denied" in log
    assert "event=call_refused domid=2 reason=class_denied" in log


def test_sighup_reload_under_load_loses_nothing(running, tmp_path):
    path, config, platform, daemon, drivers = running
    stop = threading.Event()
    done = []

    def loop(d, v, ctx):
        n = 0
        while not stop.is_set():
            workloads.increment(ctx, n)
            data = workloads.random_bytes(5000, n)
            assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
            workloads.wait_preempted(ctx)
            n += 1
        done.append(n)

    # the new policy lets d2 open the digest TA
    text = path.read_text()
    allowed = text.replace(f"    ta_deny: [{DIGEST_UUID}]\n", "")
    assert allowed != text
    holder = []
    t = threading.Thread(target=lambda: holder.extend(run_vcpus(drivers, (0, 1), loop)))
    t.start()
    try:
        for i in range(4):
            time.sleep(0.15)
            path.write_text(allowed if i % 2 == 0 else text)
            daemon.proc.send_signal(signal.SIGHUP)
        path.write_text(allowed)
        daemon.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(120)
    assert holder == [] and len(done) == 4 and all(n > 0 for n in done), (holder, done)
    with Context(drivers[2]) as ctx:
        data = b"now allowed"
        assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
    # a bad file keeps the policy and says why, on the socket and in the log
    bad = tmp_path / "bad.yaml"
    bad.write_text("mediator:\n  ring_pages: nope\n")
    with ctl(config) as c:
        r = c.request("reload", path=str(bad))
        assert r["error"]["name"] == "CONFIG_INVALID"
        assert r["error"]["message"].startswith(f"{bad}:2: mediator.ring_pages:")
        s = c.call("stats")["domains"]
        assert s["0"]["errors"] == s["1"]["errors"] == 0
        got = c.call("reload")
        assert (got["reloaded"], got["path"]) == (True, str(path)), got
    # pending SIGHUPs coalesce (signals are not queued): at least the last
    # one and the control reload happened
    assert 2 <= daemon.log().count("event=reloaded") <= 6
    assert "event=reload_refused" in daemon.log()


def test_sigterm_drains_and_loses_no_call(running):
    path, config, platform, daemon, drivers = running
    run = config.mediator.runtime_dir
    started = threading.Event()
    answered = []

    def loop(d, v, ctx):
        n = 0
        try:
            while True:
                workloads.increment(ctx, n)
                workloads.wait_preempted(ctx)  # calls suspended in RPCs must finish
                n += 1
                started.set()
        except (TeecError, GuestError):
            answered.append(n)  # the daemon refused new work: a defined error, not a hang

    t = threading.Thread(target=lambda: run_vcpus(drivers, (0, 1, 2), loop))
    t.start()
    assert started.wait(60)
    time.sleep(0.1)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0, daemon.log()
    t.join(120)
    assert len(answered) == 6
    for domid in (0, 1, 2):
        s = platform.placement.statistics(domid)
        assert s.timeouts == 0 and s.dropped == 0 and s.backend_errors == 0, (domid, s)
    log = daemon.log()
    assert "event=draining" in log and "event=drain_timeout" not in log
    for domid in (0, 1, 2, 4):
        assert f"event=domain_destroyed domid={domid}" in log
        assert platform.machine.pinned_frames(domid) == {}
    assert not (run / "stubdom-teed").exists()
    assert not any((run / f"dom{d}").exists() for d in (0, 1, 2, 4))
