"""The daemon program: startup, the trio task tree, signals, shutdown
(docs/daemon.md). ``run_daemon`` is `stubdom-teed --config X`.

Task tree, nested by lifetime (Hypercorn's shape):

    run_daemon ─ trio.run(_serve)
      connections nursery      control connections; lives until the very end
        control accept loop    stops first on SIGTERM / shutdown
        backends nursery       one task per domain ring, the signal task
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import outcome
import trio

from ring import EVTCHN_FILE
from stubdom.public.control import control_socket_path
from stubdom.public.errors import ControlError, GateError, GateNotWelcomed, GatePeerRefused
from stubdom.public.gate import gate_dir
from stubdom.public.gate_client import GateClient
from stubdom.rundir import RuntimeDirError, ensure_runtime_dir, make_private_dir, peer_credentials, sockaddr
from stubdom.trace import TRACER

from .control import ControlServer
from .daemon import Daemon
from .errors import GateUnavailable, JournalCorrupt, StartupError
from .fastpath import FastPath
from .gateport import GatePort
from .journal import JOURNAL_FILE, Journal, Replay
from .journal import load as load_journal
from .logs import MEDIATOR_LOGGER, DomainLevelFilter, event, setup_logging

__all__ = ["run_daemon", "loaded_packages", "EXIT_OK", "EXIT_STARTUP", "EXIT_CONFIG"]

EXIT_OK = 0
EXIT_STARTUP = 1  # no gate (or another user's), no machine, TEE probe failed, another daemon runs
EXIT_CONFIG = 2  # the configuration does not validate, or its runtime directory is refused (nothing was started)


def run_daemon(config_path: str | None, *, log_level: str | None = None,
               out=None, err=None, trace: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT or a ``shutdown`` request.
    Returns the exit status. ``trace``: trace the calls the platform
    sampled (stubdom.trace) and write their spans to this file (Trace Event
    JSON) when the daemon stops."""
    from stubdom.config import ConfigError, load_config

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=err)
        print(f"stubdom-teed: {len(e.problems)} problem(s) in the configuration; nothing started",
              file=err)
        return EXIT_CONFIG
    except OSError as e:
        print(f"stubdom-teed: cannot read {config_path}: {e.strerror}", file=err)
        return EXIT_CONFIG
    logger = setup_logging(log_level or config.mediator.log_level, err)
    try:
        # before anything is looked for or created in it
        ensure_runtime_dir(config.mediator.runtime_dir)
        if trace is not None:
            TRACER.enable(process_name="stubdom-teed")
        return trio.run(_serve, config, config_path, load_config, logger, out, err, trace)
    except RuntimeDirError as e:  # it, or our directory in it, is not ours alone
        print(f"stubdom-teed: {e}", file=err, flush=True)
        return EXIT_CONFIG
    except StartupError as e:
        print(str(e), file=err, flush=True)
        return EXIT_STARTUP
    except GateUnavailable as e:
        print(str(e), file=err, flush=True)
        return EXIT_STARTUP


def loaded_packages() -> str:
    """The packages (and top-level modules) of stubdom this process has
    loaded, comma-separated: the started and stopped lines carry it, so that
    an operator (and a test) sees that the stub domain never loaded the
    hypervisor's (stubdom.platform, stubdom.tee, stubdom.guest, ...)."""
    return ",".join(sorted({name.split(".")[1] for name in sys.modules if name.startswith("stubdom.")}))


def _live_daemon(runtime_dir: Path) -> int | None:
    """The pid of a daemon listening on this runtime directory's control
    socket (0 if it cannot be told), None if none does."""
    path = control_socket_path(runtime_dir)
    if not path.exists():
        return None
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with sockaddr(path) as addr:
            probe.connect(addr)
        return peer_credentials(probe).pid
    except OSError:
        return None  # nobody listens: a dead daemon's socket, replaced later
    finally:
        probe.close()


def _another_daemon(runtime_dir: Path) -> StartupError:
    pid = _live_daemon(runtime_dir)
    gate = gate_dir(runtime_dir) / EVTCHN_FILE
    if pid is None:  # it has not bound its control socket yet (starting, or recovering)
        return StartupError(f"stubdom-teed: another stubdom-teed is serving the SMC gate at {gate} "
                            f"(it is still starting: no control socket yet); stop it first")
    return StartupError(f"stubdom-teed: another stubdom-teed (pid {pid or 'unknown'}) is serving the SMC gate "
                        f"at {gate}; stop it first" + (f" (kill -TERM {pid})" if pid else ""))


def _connect_gate(runtime_dir: Path, config_path: str | None, spin_ns: int,
                  timeout_s: float) -> GateClient:
    """The stub domain's gate client (blocks up to ``timeout_s`` for the
    welcome: run it in a thread)."""
    path = str(gate_dir(runtime_dir) / EVTCHN_FILE)
    if _live_daemon(runtime_dir) is not None:  # the gate would make us wait, then say nothing
        raise _another_daemon(runtime_dir)
    try:
        # timeout_s bounds the welcome and every hypercall: past it the
        # platform counts as dead (mediator.gate_timeout_ms)
        return GateClient(runtime_dir, spin_ns, timeout_s)
    except GatePeerRefused as e:  # a socket of another user's: not the platform
        raise StartupError(f"stubdom-teed: {e}") from None
    except GateNotWelcomed:  # the platform is there and serves someone else
        raise _another_daemon(runtime_dir) from None
    except GateError as e:
        reason = getattr(e, "reason", None) or str(e)
        raise GateUnavailable(path, config_path, reason) from None
    except OSError as e:
        raise GateUnavailable(path, config_path, e.strerror or str(e)) from None


class Interrupted(Exception):
    """SIGTERM or SIGINT came while the daemon was starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _interruptible(signals, fn, *args):
    """``fn(*args)`` (blocking: the gate's welcome, OP-TEE's probe) in a
    worker thread; SIGTERM or SIGINT meanwhile abandons it at once and
    raises :class:`Interrupted` (the process is about to exit; what the
    thread may still make is the operating system's to reclaim)."""
    got: int | None = None
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            nonlocal got
            async for signum in signals:
                if signum != signal.SIGHUP:  # nothing to reload yet
                    got = signum
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        # captured, so that fn's own exception leaves the nursery as it is
        result = await outcome.acapture(trio.to_thread.run_sync, fn, *args, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    if got is not None:
        raise Interrupted(got)
    return result.unwrap()


def _load_journal(path: Path, logger: logging.Logger, err) -> Replay | None:
    """A dead predecessor's journal, or None. A corrupt one is refused: moved
    aside to ``journal.corrupt``, one line on stderr, and recovery tears down
    every domain it finds (it can vouch for none)."""
    if not path.exists():
        return None
    try:
        replay = load_journal(path)
    except JournalCorrupt as e:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(f"stubdom-teed: {e}; refused (kept as {aside}); starting without it: every "
              f"domain found is torn down", file=err, flush=True)
        event(logger, logging.ERROR, "journal_corrupt", path=path, offset=e.offset,
              reason=e.reason, kept_as=aside)
        return None
    except OSError as e:
        print(f"stubdom-teed: cannot read the journal {path}: {e.strerror}; starting without it",
              file=err, flush=True)
        return None
    event(logger, logging.INFO, "journal_loaded", path=path, records=replay.records,
          domains=len(replay.domains), torn_tail=replay.torn_tail)
    return replay


async def _serve(config, config_path, load_config, logger: logging.Logger, out, err,
                 trace: str | None = None) -> int:
    # every signal from here on is ours, the wait for the gate's welcome included
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        try:
            return await _serve_with(signals, config, config_path, load_config, logger, out, err)
        except Interrupted as e:
            print(f"stubdom-teed: stopped by {signal.Signals(e.signum).name} while starting; nothing "
                  f"was left behind", file=err, flush=True)
            return EXIT_OK
        finally:
            if trace is not None:  # while the signals are still ours: a late SIGTERM waits
                _write_trace(trace, err)


def _write_trace(path: str, err) -> None:
    TRACER.disable()
    try:
        TRACER.write(path)
    except OSError as e:
        print(f"stubdom-teed: cannot write the trace {path}: {e.strerror}", file=err, flush=True)


async def _serve_with(signals, config, config_path, load_config, logger: logging.Logger, out, err) -> int:
    from stubdom.mediator import Mediator, TeeProbeFailed
    from stubdom.policy import PolicyEngine
    from stubdom.xen import Machine
    from stubdom.xen.errors import MachineError

    runtime_dir = Path(config.mediator.runtime_dir)
    # a hypercall is synchronous: the daemon spins for its answer
    # (mediator.gate_spin_us), whatever the guests' rings do
    spin_ns = config.mediator.gate_spin_us * 1000
    # debug: a daemon that cannot start says so in one line, with nothing before it
    event(logger, logging.DEBUG, "gate_connecting", path=gate_dir(runtime_dir) / EVTCHN_FILE,
          timeout_ms=config.mediator.gate_timeout_ms)
    gate = await _interruptible(signals, _connect_gate, runtime_dir, config_path, spin_ns,
                                config.mediator.gate_timeout_ms / 1000)
    machine = None
    own_dir = runtime_dir / "stubdom-teed"
    try:
        try:
            # reads by pread(2): no fault-around maps neighbouring frames here (Machine.attach)
            machine = Machine.attach(runtime_dir / "machine", read_by_fd=True)
        except (MachineError, OSError) as e:
            raise StartupError(f"stubdom-teed: no machine at {runtime_dir / 'machine'} ({e}); "
                               f"is the platform running in this runtime directory?") from None
        gate_port = GatePort(gate)
        mediator_log = logging.getLogger(MEDIATOR_LOGGER)

        def probe():
            try:
                # policy and the journal reach the mediator call by call, as its
                # hooks (Daemon.serve_call; stubdom/mediator/hooks.py)
                return Mediator(machine, gate_port, logger=mediator_log,
                                tee_num_params=config.mediator.tee_num_params,
                                profile=config.mediator.profile)
            except TeeProbeFailed as e:
                raise StartupError(f"stubdom-teed: {e}") from None
            except Exception as e:  # the gate refused or died during the probe
                raise StartupError(f"stubdom-teed: probing OP-TEE through the gate failed: {e}") from None

        mediator = await _interruptible(signals, probe)
        make_private_dir(own_dir)
        journal = Journal(own_dir / JOURNAL_FILE)
        replay = _load_journal(journal.path, logger, err)
        # absolute: the file a later SIGHUP reloads, whatever the working directory
        daemon = Daemon(config=config, config_path=config_path and os.path.abspath(config_path),
                        policy=PolicyEngine(config),
                        mediator=mediator, gate_port=_GateStats(gate_port, gate), machine=machine,
                        logger=logger, load_config=load_config, journal=journal)
        if config.mediator.fast_path:
            daemon.use_fast_path(FastPath(gate, gate_port, mediator, daemon.policy, logger))
        # the mediator's lines about a domain obey that domain's log_level
        mediator_log.filters[:] = [DomainLevelFilter(daemon.domain_log_level, logger.level)]
        server = ControlServer(control_socket_path(runtime_dir), daemon, logger)
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as backends:
                daemon.backend_nursery = backends
                # before the control socket: the toolstack sees a daemon that
                # knows what it serves (docs/faults.md, "Recovery")
                await daemon.recover(replay)
                if not daemon.checkpoint():  # a fresh journal of what is served now
                    print(f"stubdom-teed: cannot write the journal {journal.path}; state-changing "
                          f"calls are refused until it can be written", file=err, flush=True)
                await connections.start(server.serve, connections)
                await backends.start(_signals, signals, daemon, logger)
                await backends.start(_watch_platform, gate, daemon, logger)
                print(f"stubdom-teed: listening on {server.path} (placement stubdom, "
                      f"{len(config.domains)} domains)", file=out, flush=True)
                event(logger, logging.INFO, "started", pid=os.getpid(), control=server.path,
                      tee_threads=mediator.tee_threads, tee_caps=f"{mediator.tee_caps:#x}",
                      loaded=loaded_packages())
                await daemon.shutdown_requested.wait()
                server.stop_accepting()
                await daemon.drain(config.mediator.drain_timeout_ms / 1000)
                backends.cancel_scope.cancel()
            connections.cancel_scope.cancel()
        if not daemon.domains:
            journal.remove()  # nothing left to recover
        else:
            journal.close()
        event(logger, logging.INFO, "stopped", loaded=loaded_packages())
        if daemon.platform_gone:
            print("stubdom-teed: the platform closed the SMC gate (it stopped); stopped with it",
                  file=err, flush=True)
        return EXIT_OK
    finally:
        gate.close()
        if machine is not None:
            machine.close()
        with contextlib.suppress(OSError):  # only if empty: a live daemon's socket stays
            own_dir.rmdir()


async def _signals(signals, daemon: Daemon, logger: logging.Logger, *,
                   task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    async for signum in signals:
        if signum == signal.SIGHUP:
            try:
                daemon.reload()
            except ControlError:
                pass  # logged by reload(); the old policy stays
        else:
            event(logger, logging.INFO, "shutdown_requested", via=signal.Signals(signum).name)
            daemon.shutdown_requested.set()


async def _watch_platform(gate: GateClient, daemon: Daemon, logger: logging.Logger, *,
                          task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The platform closing the gate (it stopped, or died) ends the stub
    domain too, as Xen going down takes its domains with it: nothing it
    serves can reach OP-TEE any more, and a platform started later makes
    a new machine this daemon does not map. The gate's channel is only
    read here between two hypercalls (they are synchronous, in this
    thread): what it drains are late notifications nobody waits for."""
    task_status.started()
    while True:
        await trio.lowlevel.wait_readable(gate.fileno())
        if gate.platform_gone():
            event(logger, logging.WARNING, "platform_gone", gate=gate.path)
            daemon.platform_gone = True
            daemon.shutdown_requested.set()
            return


class _GateStats:
    """``statistics()`` for the stats op: what this stub domain sent through
    the gate (the gate's own counters live in the platform)."""

    def __init__(self, gate_port: GatePort, client) -> None:
        self._port = gate_port
        self._client = client

    def statistics(self) -> dict:
        s = self._client.statistics()
        return {**self._port.statistics(),
                "notifications_sent": s.notifications_sent,
                "notifications_suppressed": s.notifications_suppressed,
                "wakeups": s.wakeups, "timeouts": s.timeouts, "dropped": s.dropped}
