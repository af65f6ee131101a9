"""``stubdom-teed platform --config X``: the simulated Xen with its domains
and the secure world, in the foreground, so that the daemon can be run by
hand beside it (``stubdom-teed --config X``), as on a real host.

It claims the runtime directory (one platform at a time, a dead one's
leftovers replaced: stubdom.platform.claim), creates the machine and the TEE
model, serves the SMC gate, waits (bounded, interruptible) for the daemon's
control socket, creates the configuration's pre-declared domains through
the toolstack, boots each guest's OP-TEE driver and runs the TA workload in
every domain once per interval, one line per round. Domains named with
``external`` get no frontend here: their ring and event channel are printed
for a program of someone else's to attach (docs/protocol.md). A daemon that
starts again is made to serve every domain again (``watch_daemon``).
SIGINT/SIGTERM: destroy the domains, stop the gate, remove what it created,
exit 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TextIO

from stubdom import workloads
from stubdom.guest import Context, GuestError, MemoryStore, OpteeDriver, Supplicant
from stubdom.public.control import control_socket_path
from stubdom.public.errors import DaemonRefused, DaemonUnavailable
from stubdom.public.gate import gate_dir
from stubdom.public.logformat import event, log_to
from stubdom.rundir import RuntimeDirError, ensure_runtime_dir
from stubdom.trace import DEFAULT_EVERY, TRACER

from .claim import PlatformRunning, RuntimeClaim
from .errors import DomainCreationFailed
from .platform import DomainSpec, Platform, domain_spec
from .vcpuhost import VcpuHost
from .vsmc import Placement

__all__ = ["run_platform", "DEFAULT_DAEMON_WAIT", "EXIT_CONFIG", "EXIT_NO_DAEMON", "EXIT_ORACLE"]

log = logging.getLogger("stubdom.platform.run")

DEFAULT_DAEMON_WAIT = 60.0  # seconds the platform waits for stubdom-teed's control socket
EXIT_NO_DAEMON = 1  # the daemon never answered (or another user's did); nothing was left behind
# the configuration did not validate (every problem printed), its runtime
# directory is refused, another platform runs there, or a bad --external
EXIT_CONFIG = 2
EXIT_ORACLE = 3  # the isolation oracle recorded a violation (each printed)
_DIGEST_BYTES = 3 * 4096 + 77  # spans four scattered guest pages
# An external domain the configuration does not declare: RAM enough for a
# frontend's fast calls and one vCPU.
EXTERNAL_NR_PAGES = 256


def _round(driver: OpteeDriver, n: int) -> int:
    """One round of the TA workload in one domain; returns the workloads run."""
    with Context(driver) as ctx:
        workloads.increment(ctx, n)
        data = workloads.random_bytes(_DIGEST_BYTES, n)
        workloads.digest_temp(ctx, data)
        workloads.digest_registered(ctx, data)
        workloads.storage_round_trip(ctx, b"platform-%d" % n, workloads.random_bytes(5000, n))
    return 4


def run_platform(
    config_path: str | None,
    *,
    log_level: str | None = None,
    interval: float = 1.0,
    rounds: int | None = None,
    daemon_wait: float = DEFAULT_DAEMON_WAIT,
    external: Sequence[int] = (),
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    trace: str | None = None,
    trace_every: int = DEFAULT_EVERY,
) -> int:
    """Run the platform until SIGINT/SIGTERM (or ``stop`` is set, or
    ``rounds`` rounds are done). ``external``: domids created with no
    frontend of the platform's. ``trace``: sample 1 call in ``trace_every``
    and write their spans to this file (Trace Event JSON) on stopping.
    Returns the exit status."""
    from stubdom.config import ConfigError, load_config  # the config package loads YAML

    out = out or sys.stdout

    def say(line: str) -> None:
        print(f"platform: {line}", file=out, flush=True)

    def fail(line: str) -> None:
        print(f"platform: {line}", file=sys.stderr, flush=True)

    try:
        config = load_config(config_path)
    except ConfigError as e:
        for problem in e.problems:
            fail(problem)
        return EXIT_CONFIG
    for domid in external:
        dc = config.domain(domid)
        if config.mediator.placement != "stubdom":
            fail(f"--external {domid}: a frontend of your own needs placement stubdom "
                 f"(this configuration's is {config.mediator.placement})")
            return EXIT_CONFIG
        if dc is not None and not dc.policy.enabled:
            fail(f"--external {domid}: its policy says enabled: false; the daemon would refuse it")
            return EXIT_CONFIG
    log_to(logging.getLogger("stubdom"), log_level or config.mediator.log_level)

    stop = stop or threading.Event()
    restore = _install_signals(stop)
    if trace is not None:
        TRACER.enable(trace_every, process_name="platform")
    try:
        runtime = ensure_runtime_dir(config.mediator.runtime_dir)
        with RuntimeClaim(runtime):
            return _run(config, config_path, say, stop, interval, rounds, daemon_wait, tuple(external))
    except RuntimeDirError as e:  # another user could control it: nothing was created
        fail(str(e))
        return EXIT_CONFIG
    except PlatformRunning as e:
        fail(str(e))
        return EXIT_CONFIG
    finally:
        restore()
        if trace is not None:
            TRACER.disable()
            try:
                TRACER.write(trace)
            except OSError as e:
                fail(f"cannot write the trace {trace}: {e.strerror}")


def _install_signals(stop: threading.Event):
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def _external_line(domid: int, answer: dict) -> str:
    return (f"d{domid} external: ring {answer['ring']} event channel {answer['evtchn']} "
            f"ring_pages {answer['ring_pages']}; attach your frontend (docs/protocol.md)")


def _run(config, config_path, say, stop, interval, rounds, daemon_wait, external) -> int:
    runtime = config.mediator.runtime_dir
    stubdom = config.mediator.placement == "stubdom"
    with ExitStack() as stack:
        platform: Platform[Placement] = stack.enter_context(Platform.for_config(config))
        daemon_cmd = "stubdom-teed" + (f" --config {config_path}" if config_path else "")
        # domains a restarted daemon created anew: their guests' OP-TEE is
        # new too (no session, no registration survived), so their driver
        # binds again before the next round, as a guest kernel whose TEE was
        # reset must re-initialise its driver
        reprobe: set[int] = set()
        reprobe_lock = threading.Lock()
        if stubdom:
            def recreated(domid: int, answer: dict, is_external: bool) -> None:
                if is_external:
                    say(_external_line(domid, answer))
                else:
                    say(f"d{domid} created again in the restarted stubdom-teed; its OP-TEE driver "
                        f"binds again")
                    with reprobe_lock:
                        reprobe.add(domid)

            # a daemon that starts again is made to serve every domain again
            platform.as_stubdom().watch_daemon(recreated, ready_timeout=daemon_wait)
            say(f"machine at {platform.machine.path}, SMC gate at {gate_dir(runtime)}; "
                f"start the daemon beside it: {daemon_cmd}")
            say(f"waiting up to {daemon_wait:g} s for stubdom-teed at {control_socket_path(runtime)}")
            try:
                hello = platform.as_stubdom().toolstack.wait_ready(daemon_wait, stop=stop)
            except DaemonRefused as e:
                say(f"{e}; not talking to it")
                return EXIT_NO_DAEMON
            except DaemonUnavailable as e:
                say(f"no stubdom-teed answered within {daemon_wait:g} s ({e.reason}); "
                    f"start it with: {daemon_cmd}")
                return EXIT_NO_DAEMON
            if hello is None:
                say("stopped while waiting for stubdom-teed")
                return 0
            say(f"stubdom-teed pid {hello.get('pid')} answered (protocol {hello.get('version')})")
        else:
            say(f"machine at {platform.machine.path}, placement {config.mediator.placement}: "
                f"the mediator runs in the platform, no daemon needed")

        drivers: dict[int, OpteeDriver] = {}
        stack.callback(_shutdown, drivers)  # runs before platform.close() destroys the domains
        declared = {dc.domid: dc for dc in config.domains}
        for domid in external:
            dc = declared.get(domid)
            spec = domain_spec(dc) if dc is not None else DomainSpec(domid, nr_pages=EXTERNAL_NR_PAGES)
            try:
                platform.create_domain(spec, external=True)
            except DomainCreationFailed as e:
                say(f"d{domid} (external) not created: {e.reason}")
                continue
            answer = platform.as_stubdom().external(domid)
            assert answer is not None  # created just now; nothing destroys a domain before the stack unwinds
            say(_external_line(domid, answer))
        for dc in config.domains:
            if dc.domid in external:
                continue
            try:
                platform.create_domain(domain_spec(dc))
            except DomainCreationFailed as e:
                say(f"d{dc.domid} ({dc.name}) not created: {e.reason}")
                continue
            _bind(platform, dc, drivers, say)

        # guests whose kernel runs in another process (stubdom-teed guest-dev)
        reserved = {dc.domid for dc in config.domains} | set(external)
        host = stack.enter_context(VcpuHost(platform, runtime, reserved=reserved))
        say(f"guest kernels in other processes attach at {host.path} (stubdom-teed guest-dev)")

        n = 0
        while not stop.is_set() and (rounds is None or n < rounds):
            with reprobe_lock:
                again = sorted(reprobe)
                reprobe.clear()
            for domid in again:
                drivers.pop(domid, None)  # its OP-TEE state is gone with the old partition
                _bind(platform, declared[domid], drivers, say)
            n += 1
            say(f"round {n}: " + _run_round(drivers, n))
            if rounds is None or n < rounds:
                stop.wait(interval)
        say("stopping: destroying domains")
        host.close()
        _shutdown(drivers)
        drivers.clear()
        for domid in platform.domids():
            _destroy(platform, domid)
        violations = list(platform.oracle.violations)
    for v in violations:
        say(f"ORACLE {v}")
    say(f"stopped; isolation oracle: {len(violations)} violations")
    return EXIT_ORACLE if violations else 0


def _bind(platform: Platform, dc, drivers: dict[int, OpteeDriver], say) -> None:
    """Boot the guest's OP-TEE driver in domain ``dc`` (a DomainConfig)."""
    domain = platform.domain(dc.domid)
    driver = OpteeDriver(platform.trap_entry(dc.domid), domain, nr_vcpus=dc.vcpus,
                         seed=dc.domid, supplicant=Supplicant(MemoryStore()))
    try:
        info = driver.probe()
    except GuestError as e:
        say(f"d{dc.domid} ({dc.name}) created, OP-TEE driver did not bind: {e}")
        return
    drivers[dc.domid] = driver
    say(f"d{dc.domid} ({dc.name}) up: {domain.nr_pages} pages, {dc.vcpus} vCPUs, "
        f"{'dynamic' if info.dynamic_shm else 'static'} shm, {info.thread_count} OP-TEE threads")


def _destroy(platform: Platform, domid: int) -> None:
    """Destroy one domain; log what its trap path counted (stubdom)."""
    stats = None
    statistics = getattr(platform.placement, "statistics", None)
    if statistics is not None:
        try:
            stats = statistics(domid)
        except Exception:  # an external domain has no trap path of ours
            stats = None
    platform.destroy_domain(domid)
    fields = {} if stats is None else {
        "requests": stats.requests, "responses": stats.responses, "timeouts": stats.timeouts,
        "unavailable": stats.unavailable, "backend_errors": stats.backend_errors,
        "reconnects": stats.reconnects}
    event(log, logging.INFO, "domain_destroyed", domid=domid, **fields)


def _run_round(drivers: dict[int, OpteeDriver], n: int) -> str:
    """Run the workload in every domain at once; one summary string."""
    results: dict[int, str] = {}

    def one(domid: int, driver: OpteeDriver) -> None:
        t0 = time.perf_counter()
        try:
            done = _round(driver, n)
        except Exception as e:  # a guest-visible failure: report it, keep running
            results[domid] = f"d{domid} FAILED ({type(e).__name__}: {e})"
        else:
            results[domid] = f"d{domid} ok {done} workloads {1000 * (time.perf_counter() - t0):.1f} ms"

    threads = [threading.Thread(target=one, args=item, name=f"d{item[0]}-round")
               for item in drivers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ", ".join(results[d] for d in sorted(results)) or "no domain runs the workload"


def _shutdown(drivers: dict[int, OpteeDriver]) -> None:
    for domid, driver in drivers.items():
        try:
            driver.shutdown()
        except Exception as e:
            log.warning("d%d: driver shutdown failed: %s", domid, e)
