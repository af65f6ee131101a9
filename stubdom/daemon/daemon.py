"""The daemon's state and its operations: the domains it serves, the policy,
the mediator behind the SMC gate (docs/daemon.md, docs/control-protocol.md).

:class:`Daemon` does no socket I/O of its own: the control server hands it
parsed requests (``dispatch``), each domain's backend task calls
``serve_call`` per request. Everything runs in one trio thread. What it
journals is :class:`~stubdom.daemon.calljournal.CallJournal`'s business,
what it recovers :class:`~stubdom.daemon.recovery.Recovery`'s, its leases
on restored calls :class:`~stubdom.daemon.leases.Leases`'.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from stubdom.mediator import StdCall, call_intent
from stubdom.mediator.errors import DomainAlreadyInitialised, DomainRefused, TeardownInvariantBroken
from stubdom.optee.smc import (
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_RETURN_ENOTAVAIL,
)
from stubdom.public.control import PROTOCOL_VERSION, Request
from stubdom.public.errors import ControlError, ErrorCode
from stubdom.trace import TRACER, now_ns
from stubdom.xen.errors import NoSuchDomain

from . import journal as jr
from .backend import DomainBackend, RingPoller, refuse_while_draining
from .calljournal import CallJournal
from .errors import JournalWriteError
from .fairness import FairShare
from .leases import Leases
from .logs import LEVELS, event
from .policyview import NOW_KEYS, mediator_limits, policy_changes, policy_record
from .recovery import GATE_FAILURES, Recovery

if TYPE_CHECKING:
    from stubdom.config import Config
    from stubdom.mediator import Mediator
    from stubdom.policy import PolicyEngine
    from stubdom.xen import Machine

    from .fastpath import FastPath

__all__ = ["Daemon", "DUMP_LIST_CAP"]

# Lists in a dump are cut at this many entries (the response must fit the
# 64 KiB frame); the count beside each list is always exact.
DUMP_LIST_CAP = 256

_U32 = 0xFFFFFFFF
# Calls that may change lasting TEE state (sessions, registrations, threads
# suspended in RPCs, RPC buffers): a ``begin`` record is written before they
# reach the TEE, the domain's snapshot after (docs/faults.md). A standard
# call's ``begin`` is written by the call's before_std_call hook, once it is
# validated: it carries the call's intent from the mediator's own copy.
_STD_FUNCS = frozenset({OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG,
                        OPTEE_SMC_CALL_WITH_REGD_ARG})
_BEGIN_FUNCS = _STD_FUNCS | {OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_DISABLE_SHM_CACHE}
# ...and those that change only the mediator's own state: snapshot after.
_STATE_FUNCS = _BEGIN_FUNCS | {OPTEE_SMC_EXCHANGE_CAPABILITIES}
# What a guest gets for a call the daemon will not run (a journal it cannot write).
_ENOTAVAIL = (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7



class GateCounters(Protocol):
    """What the daemon reads of its end of the SMC gate: the counters the
    ``stats`` op reports (app.py's _GateStats over the GatePort)."""

    def statistics(self) -> dict[str, Any]: ...

class _CallHooks:
    """The mediator's hooks for one call (stubdom/mediator/hooks.py): the
    policy view the call arrived under decides an OPEN_SESSION; the
    journal's ``begin`` comes before it reaches OP-TEE. Whether that
    ``begin`` could be written stays with the call."""

    __slots__ = ("_daemon", "_backend", "_view", "journal_refused")
    filters_open_session = True

    def __init__(self, daemon: Daemon, backend: DomainBackend, view) -> None:
        self._daemon = daemon
        self._backend = backend
        self._view = view
        self.journal_refused = False

    def open_session(self, domid: int, ta_uuid: uuid.UUID, login: int) -> tuple[int, int] | None:
        refusal = self._daemon.policy.check_open_session(domid, ta_uuid, view=self._view)
        if refusal is None:
            return None
        self._backend.stats.refusals[refusal.reason] += 1
        self._backend.log.event(logging.WARNING, "open_session_refused", reason=refusal.reason,
                                detail=refusal.describe())
        # an open-session refusal is message-level: it carries ret and origin
        assert refusal.msg_ret is not None and refusal.msg_origin is not None
        return refusal.msg_ret, refusal.msg_origin

    def before_std_call(self, domid: int, call: StdCall) -> bool:
        tcall = TRACER.current() if TRACER.on else None
        if tcall is not None:
            t0 = now_ns()
        ok = self._daemon.journal.begin(domid, call.function, 0, call_intent(call))
        if tcall is not None:
            TRACER.span(tcall, "journal", "daemon", t0, now_ns(), {"record": "begin"})
        if not ok:
            self.journal_refused = True
            return False
        return True


class Daemon:
    """One stub domain's mediator service."""

    def __init__(self, *, config: Config, config_path: str | None, policy: PolicyEngine, mediator: Mediator,
                 gate_port: GateCounters, machine: Machine, logger: logging.Logger,
                 load_config: Callable[[str | None], Config], placement: str = "stubdom",
                 journal: jr.Journal | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.policy = policy
        self.mediator = mediator
        self.gate_port = gate_port
        self.machine = machine
        self.logger = logger
        self._load_config = load_config
        self.placement = placement
        self.runtime_dir = Path(config.mediator.runtime_dir)
        self.domains: dict[int, DomainBackend] = {}
        self.draining = False
        self.platform_gone = False  # the platform closed the SMC gate: stopping with it
        self.shutdown_requested = trio.Event()
        self.backend_nursery: trio.Nursery | None = None  # set by the app once running
        self.fair = FairShare()  # who goes on between the steps of a heavy call
        # one spin over every idle domain ring (the window is fixed at start, like the ring size)
        self.ring_poller = RingPoller(config.mediator.poll_window_us * 1000)
        self.ring_poller.answered = self.fair.answered
        # the calls answered in C (fastpath.py); None: every call is the interpreter's
        self.fast: FastPath | None = None
        # the journal (docs/faults.md); None: not kept (in-process tests)
        self.journal = CallJournal(journal, mediator.snapshot, logger)
        self.leases = Leases(mediator=mediator, journal=self.journal,
                             lease_s=config.mediator.call_timeout_ms / 1000, logger=logger)
        self.recovery = Recovery(mediator=mediator, machine=machine, runtime_dir=self.runtime_dir,
                                 journal=self.journal, leases=self.leases, logger=logger,
                                 serve=self._serve_recovered)

    def use_fast_path(self, fast: FastPath) -> None:
        """Answer the identity queries policy allows in C (before any domain
        is served: each backend takes its state in the table at creation)."""
        self.fast = fast
        self.ring_poller.fast = fast

    def _recompile_fast(self) -> None:
        """The policy changed: every domain's mask again."""
        if self.fast is not None:
            for domid, backend in self.domains.items():
                if backend.fast is not None:
                    self.fast.compile(domid, backend.fast)

    # == per call (the backend tasks) ========================================

    async def serve_call(self, backend: DomainBackend, vcpu: int, regs: tuple) -> tuple[tuple, str | None]:
        """Policy, then the mediator. Returns (registers, refusal reason or None).

        The policy view is taken once, when the call arrives, and decides
        the call's TA check too, so a reload between two calls never splits
        one. A call's translation may be cut into steps (docs/daemon.md,
        "Fair service"): other domains' requests run between them."""
        domid = backend.domid
        if self.draining:
            refused = refuse_while_draining(regs[0])
            if refused is not None:
                return refused, "shutting_down"
        # a sampled call (stubdom.trace): the backend made it this task's current call
        tcall = TRACER.current() if TRACER.on else None
        if tcall is not None:
            t0 = now_ns()
        view = self.policy.snapshot(domid)
        refusal = self.policy.check_call(domid, regs[0], time.monotonic(), view=view)
        if tcall is not None:
            TRACER.span(tcall, "policy", "daemon", t0, now_ns())
        if refusal is not None:
            backend.log.event(logging.WARNING, "call_refused", reason=refusal.reason,
                              detail=refusal.describe())
            return refusal.regs, refusal.reason
        # W0, as the mediator reads it (function_id(regs[0]): check_call
        # refused anything but a 64-bit register value)
        fn = regs[0] & _U32
        journal = self.journal
        journaled = fn in _STATE_FUNCS and journal.journal is not None  # journal.kept
        std = fn in _STD_FUNCS
        if journaled and fn in _BEGIN_FUNCS:
            # an unhealthy journal is retried here, at rest (a checkpoint
            # snapshots every domain); refused: nothing reached the TEE
            if not journal.healthy and not journal.checkpoint():
                return _ENOTAVAIL, "journal_unavailable"
            if not std and not journal.begin(domid, fn, regs[3] & _U32, None):
                return _ENOTAVAIL, "journal_unavailable"
        if fn == OPTEE_SMC_CALL_RETURN_FROM_RPC:
            self.leases.resumed(domid, regs[3] & _U32)  # no longer an orphan, whatever the outcome
        # the mediator consults a call's hooks for standard calls only
        hooks = _CallHooks(self, backend, view) if std else None
        steps = self.mediator.call_steps(domid, vcpu, regs, hooks)
        if tcall is not None:
            t0 = now_ns()
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    out = done.value
                    break
                backend.stats.yields += 1
                await self.fair.step(domid)  # other domains' requests go first
                if TRACER.on:  # other tasks ran and set theirs: this task's call again
                    TRACER.set_current(tcall)
        finally:
            steps.close()  # cancelled mid-way: the call releases what it took
        if tcall is not None:
            t1 = now_ns()
            TRACER.span(tcall, "mediate", "daemon", t0, t1)
        if journaled:
            journal.state(domid)
            if tcall is not None:
                TRACER.span(tcall, "journal", "daemon", t1, now_ns())
        return out, "journal_unavailable" if hooks is not None and hooks.journal_refused else None

    # == the journal =========================================================

    def checkpoint(self) -> bool:
        """Rewrite the journal from the current state of every served domain
        (startup, and after a write failure). True if it is healthy again."""
        return self.journal.checkpoint()

    def journal_statistics(self) -> dict:
        out = self.journal.statistics()
        if out["kept"]:
            rec = self.recovery.statistics()
            out.update(rec, abandoned=rec["abandoned"] + self.leases.abandoned,
                       lost_calls_settled=rec["lost_calls_settled"] + self.leases.lost_calls_settled,
                       leases_expired=self.leases.expired, leased=self.leases.leased)
        return out

    # == recovery after a restart (docs/faults.md) ============================

    async def recover(self, replay: jr.Replay | None) -> None:
        """Reconcile what a dead predecessor left (``replay``: its journal,
        None if there was none or it was refused) with the machine and the
        secure world, then serve the domains it can vouch for. Runs before
        the control socket accepts anything."""
        backends = self.recovery.recover(replay)
        # a fresh journal of what is served now, before any backend serves
        self.journal.checkpoint()
        assert self.backend_nursery is not None
        for backend in backends:
            await self.backend_nursery.start(backend.run)
        # the lease runs from when the guests can reach this daemon again
        deadline = trio.current_time() + self.leases.lease_s
        for domid in self.leases.domains:
            await self.backend_nursery.start(self.leases.run, domid, deadline)

    def _serve_recovered(self, rec: jr.DomainRecord) -> DomainBackend:
        """The backend of a domain served again: its ring re-attached (the
        frontend keeps its mapping), not yet started."""
        domid = rec.domid
        domain = self.machine.domain(domid)
        policy = self.config.policy_for(domid)
        backend = DomainBackend(
            domid, self.runtime_dir / f"dom{domid}", self.config.mediator.ring_pages,
            hwdom=domain.is_hwdom, direct_mapped=domain.direct_mapped, daemon=self,
            logger=self.logger, poll_window_ns=self.config.mediator.poll_window_us * 1000,
            poller=self.ring_poller, attach=True)
        backend.log.level = LEVELS[policy.log_level]
        self.domains[domid] = backend
        return backend

    def domain_log_level(self, domid: int) -> int | None:
        """The level of a served domain's guest-triggered lines (its policy's
        log_level as of creation or the last reload); None if not served."""
        backend = self.domains.get(domid)
        return None if backend is None else backend.log.level

    # == control operations ==================================================

    async def dispatch(self, req: Request) -> dict:
        handler = getattr(self, "op_" + req.op, None) if req.op.isidentifier() else None
        if handler is None:
            raise ControlError(ErrorCode.UNKNOWN_OP, f"unknown op {req.op!r}")
        return await handler(req)

    async def op_hello(self, req: Request) -> dict:
        return {"version": PROTOCOL_VERSION, "pid": os.getpid(), "placement": self.placement,
                "runtime_dir": str(self.runtime_dir)}

    async def op_domain_create(self, req: Request) -> dict:
        domid = req.int_arg("domid")
        if self.draining:
            raise ControlError(ErrorCode.SHUTTING_DOWN, f"d{domid}: the daemon is shutting down")
        if domid in self.domains:
            raise ControlError(ErrorCode.DOMAIN_EXISTS, f"d{domid} is already served")
        try:
            domain = self.machine.domain(domid)
        except NoSuchDomain as e:
            raise ControlError(ErrorCode.NO_SUCH_DOMAIN, f"d{domid}: {e}") from None
        policy = self.config.policy_for(domid)
        if not policy.enabled:
            raise ControlError(ErrorCode.POLICY_REFUSED, f"d{domid}: its policy is disabled")
        created = jr.domain_record(domid, hwdom=domain.is_hwdom, direct_mapped=domain.direct_mapped,
                                   limits=policy.limits, static_shm=policy.static_shm_allowed)
        if self.journal.kept:
            # before VM_CREATED: a restart must know of every partition it may own
            if not self.journal.healthy and not self.journal.checkpoint():
                raise ControlError(ErrorCode.INTERNAL, f"d{domid}: the journal cannot be written")
            try:
                self.journal.domain(created)
            except JournalWriteError as e:
                raise ControlError(ErrorCode.INTERNAL, f"d{domid}: {e}") from None
        try:
            try:
                self.mediator.domain_init(domid, limits=policy.limits,
                                          static_shm=policy.static_shm_allowed)
            except BaseException:
                self.journal.gone(domid)  # no partition: nothing to recover
                raise
        except DomainRefused as e:
            raise ControlError(ErrorCode.TEE_REFUSED, str(e)) from None
        except GATE_FAILURES as e:
            raise ControlError(ErrorCode.TEE_REFUSED, f"d{domid}: VM_CREATED: {e}") from None
        except DomainAlreadyInitialised as e:
            raise ControlError(ErrorCode.DOMAIN_EXISTS, str(e)) from None
        try:
            backend = DomainBackend(
                domid, self.runtime_dir / f"dom{domid}", self.config.mediator.ring_pages,
                hwdom=domain.is_hwdom, direct_mapped=domain.direct_mapped, daemon=self,
                logger=self.logger, poll_window_ns=self.config.mediator.poll_window_us * 1000,
                poller=self.ring_poller)
            backend.log.level = LEVELS[policy.log_level]
            self.domains[domid] = backend
            if self.journal.kept:
                self.journal.serving(domid, created)
                self.journal.state(domid)
                if not self.journal.healthy:
                    raise ControlError(ErrorCode.INTERNAL, f"d{domid}: the journal cannot be written")
            assert self.backend_nursery is not None
            await self.backend_nursery.start(backend.run)
        except BaseException:
            backend_ = self.domains.pop(domid, None)
            if backend_ is not None:
                backend_.close()
            await self._mediator_teardown(domid)
            self.journal.gone(domid)
            raise
        event(self.logger, logging.INFO, "domain_created", domid=domid, hwdom=domain.is_hwdom,
              direct_mapped=domain.direct_mapped, ring=backend.ring_path)
        return {"domid": domid, "dir": str(backend.directory), "ring": str(backend.ring_path),
                "evtchn": str(backend.evtchn_path), "ring_pages": backend.ring_pages}

    async def op_domain_destroy(self, req: Request) -> dict:
        domid = req.int_arg("domid")
        if domid not in self.domains:
            raise ControlError(ErrorCode.NO_SUCH_DOMAIN, f"d{domid} is not served by this daemon")
        await self.destroy_domain(domid)
        return {"domid": domid}

    async def destroy_domain(self, domid: int) -> None:
        """Stop the backend, relinquish, VM_DESTROYED through the gate, remove
        the files. The backend's files go whatever the TEE says."""
        backend = self.domains[domid]
        self.leases.cancel(domid)  # relinquish ends its calls now
        await backend.stop()
        del self.domains[domid]
        backend.absorb_fast()
        backend.close()
        self.policy.forget(domid)
        self.fair.forget(domid)
        await self._mediator_teardown(domid)
        self.journal.gone(domid)
        event(self.logger, logging.INFO, "domain_destroyed", domid=domid,
              calls=sum(backend.stats.calls.values()), errors=backend.stats.errors,
              refusals=sum(backend.stats.refusals.values()))

    async def _mediator_teardown(self, domid: int) -> None:
        try:
            while not self.mediator.relinquish_resources(domid):
                await trio.lowlevel.checkpoint()  # resumable: other domains go on between rounds
            self.mediator.domain_teardown(domid)
        except GATE_FAILURES as e:
            event(self.logger, logging.ERROR, "vm_destroyed_failed", domid=domid, error=e)
            raise ControlError(ErrorCode.TEE_REFUSED, f"d{domid}: VM_DESTROYED: {e}") from None
        except TeardownInvariantBroken as e:
            event(self.logger, logging.ERROR, "teardown_invariant_broken", domid=domid, error=e)
            raise ControlError(ErrorCode.INTERNAL, str(e)) from None

    def _mediator_calls(self, domid: int) -> int:
        return self.mediator.calls_in_flight(domid)

    async def op_list(self, req: Request) -> dict:
        domains = []
        for domid in sorted(self.domains):
            d = self.domains[domid].describe()
            d["in_flight"] = self.domains[domid].stats.in_flight + self._mediator_calls(domid)
            domains.append(d)
        return {"domains": domains, "draining": self.draining}

    async def op_stats(self, req: Request) -> dict:
        domid = req.int_arg("domid", required=False)
        if domid is not None and domid not in self.domains:
            raise ControlError(ErrorCode.NO_SUCH_DOMAIN, f"d{domid} is not served by this daemon")
        chosen = [domid] if domid is not None else sorted(self.domains)
        out = {}
        for d in chosen:
            self.domains[d].absorb_fast()  # what C answered counts as the domain's calls
            # keys are strings ("1"): msgpack readers with strict_map_key accept them
            out[str(d)] = self.domains[d].stats.snapshot(
                len(self.machine.pinned_frames(d)), self._mediator_calls(d))
            # counted by the mediator core itself, as under el2 (mediator/opcount.py)
            out[str(d)]["mediator_ops"] = self.mediator.op_counts(d)
        gate = self.gate_port.statistics()
        return {"domains": out, "gate": gate, "journal": self.journal_statistics(),
                "fairness": self.fair.statistics(), "mediator_ops": self.mediator.op_counts(),
                "fast_path": self.fast.statistics() if self.fast is not None else {"enabled": False}}

    async def op_reload(self, req: Request) -> dict:
        path = req.str_arg("path", required=False)
        if path is not None and not os.path.isabs(path):
            # whose working directory would it be relative to? the client's: it resolves it
            raise ControlError(ErrorCode.BAD_REQUEST, f"reload: path must be absolute, got {path!r} "
                                                      f"(resolve it where it was typed)")
        changes = self.reload(path)
        return {"reloaded": True, "path": str(path or self.config_path or "<embedded default>"),
                "generation": self.policy.generation, "changes": changes}

    def reload(self, path: str | None = None) -> dict[str, list[str]]:
        """Swap in a new policy; a bad file keeps the old one (CONFIG_INVALID
        with every problem). Only the policy changes: ring size, runtime
        directory, polling window and the limits of domains already created
        stay as they were. A file given here becomes the daemon's: a later
        SIGHUP reloads it. Returns what changed, per domain ("d<N>", and
        "defaults" for every domain the file does not declare), and logs
        it the same way."""
        from stubdom.config import ConfigError  # the loader's error class

        target = path or self.config_path
        try:
            new = self._load_config(target)
        except ConfigError as e:
            event(self.logger, logging.ERROR, "reload_refused", path=target or "<embedded default>",
                  problems=len(e.problems), first=e.problems[0] if e.problems else "")
            raise ControlError(ErrorCode.CONFIG_INVALID, "\n".join(e.problems)) from None
        except OSError as e:
            event(self.logger, logging.ERROR, "reload_refused", path=target, error=e.strerror)
            raise ControlError(ErrorCode.CONFIG_INVALID, f"{target}: {e.strerror}") from None
        old = self.config
        self.policy.swap(new)
        self.config = new
        self._recompile_fast()  # at once: no call answered in C under the old policy after this
        for domid, backend in self.domains.items():  # log levels apply to running domains too
            backend.log.level = LEVELS[new.policy_for(domid).log_level]
        if path:
            self.config_path = path
        changes: dict[str, list[str]] = {}
        domids = set(self.domains) | {d.domid for d in old.domains} | {d.domid for d in new.domains}
        for domid in sorted(domids):
            got = policy_changes(old.policy_for(domid), new.policy_for(domid), running=domid in self.domains)
            if got:
                changes[f"d{domid}"] = got
                event(self.logger, logging.INFO, "policy_changed", domid=domid,
                      served=domid in self.domains, changes="; ".join(got))
        got = policy_changes(old.default_policy, new.default_policy, running=False)
        if got:
            changes["defaults"] = got
            event(self.logger, logging.INFO, "policy_changed", domid="defaults", changes="; ".join(got))
        event(self.logger, logging.INFO, "reloaded", path=target or "<embedded default>",
              generation=self.policy.generation, domains_changed=len(changes))
        return changes

    async def op_policy(self, req: Request) -> dict:
        """A domain's policy now: what applies to its calls from now on, the
        limits it was created with (served domains), and those its next
        creation gets."""
        domid = req.int_arg("domid")
        policy = self.config.policy_for(domid)
        record = policy_record(policy)
        running = None
        if domid in self.domains:
            running = mediator_limits(self.mediator.dump(domid, 0))
        return {
            "domid": domid,
            "served": domid in self.domains,
            "declared": self.config.domain(domid) is not None,
            "config": str(self.config_path or "<embedded default>"),
            "generation": self.policy.generation,
            "applies_now": {k: record[k] for k in NOW_KEYS},
            "limits": {"running": running,
                       "next_domain_create": {**record["limits"],
                                              "static_shm_allowed": record["static_shm_allowed"]}},
        }

    async def op_dump(self, req: Request) -> dict:
        domid = req.int_arg("domid")
        if domid not in self.domains:
            raise ControlError(ErrorCode.NO_SUCH_DOMAIN, f"d{domid} is not served by this daemon")
        out = self.mediator.dump(domid, DUMP_LIST_CAP)
        pins = self.machine.pinned_frames(domid)
        out["pinned_frames"] = {f"{mfn:#x}": n for mfn, n in sorted(pins.items())[:DUMP_LIST_CAP]}
        out["nr_pinned_frames"] = len(pins)
        return out

    async def op_shutdown(self, req: Request) -> dict:
        event(self.logger, logging.INFO, "shutdown_requested", via="control")
        self.shutdown_requested.set()
        return {"pid": os.getpid(), "domains": sorted(self.domains), "in_flight": self.calls_in_flight(),
                "drain_timeout_ms": self.config.mediator.drain_timeout_ms}

    # == drain ===============================================================

    def calls_in_flight(self) -> int:
        return sum(b.stats.in_flight + self._mediator_calls(d) for d, b in self.domains.items())

    async def drain(self, timeout_s: float) -> None:
        """Refuse new calls, let the admitted ones finish (bounded), then
        destroy every domain cleanly."""
        self.draining = True
        if self.fast is not None:
            self.fast.stop()  # only RETURN_FROM_RPC goes on: the interpreter refuses the rest
        left = self.calls_in_flight()
        event(self.logger, logging.INFO, "draining", domains=len(self.domains), in_flight=left,
              timeout_ms=int(timeout_s * 1000))
        with trio.move_on_after(timeout_s):
            while self.calls_in_flight():
                await trio.sleep(0.005)
        left = self.calls_in_flight()
        if left:
            event(self.logger, logging.WARNING, "drain_timeout", in_flight=left)
        for domid in sorted(self.domains):
            try:
                await self.destroy_domain(domid)
            except ControlError as e:
                event(self.logger, logging.ERROR, "destroy_failed", domid=domid, error=e.message)
