"""The daemon's state and its operations: the domains it serves, the policy,
the mediator behind the SMC gate (docs/daemon.md, docs/control-protocol.md).

:class:`Daemon` does no socket I/O of its own: the control server hands it
parsed requests (``dispatch``), each domain's backend task calls
``serve_call`` per request. Everything runs in one trio thread.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio

from stubdom.mediator import (
    BadSnapshot,
    abandon_suspended,
    call_intent,
    expected_pins,
    settle_claims,
    settle_lost_call,
    settle_orphans,
    snapshot_domain,
)
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
from stubdom.platform.errors import GateError as _PlatformGateError
from stubdom.xen.errors import NoSuchDomain

from .backend import DomainBackend, RingPoller, refuse_while_draining
from .fairness import FairShare
from . import journal as jr
from . import recovery
from .errors import ControlError, ErrorCode, GateRefused, JournalWriteError
from .logs import LEVELS, event
from .wire import PROTOCOL_VERSION, Request

__all__ = ["Daemon", "DUMP_LIST_CAP"]

# The gate refused (status != 0), timed out or went away.
_GATE_FAILURES = (GateRefused, _PlatformGateError)

# Lists in a dump are cut at this many entries (the response must fit the
# 64 KiB frame); the count beside each list is always exact.
DUMP_LIST_CAP = 256

_U32 = 0xFFFFFFFF
# Calls that may change lasting TEE state (sessions, registrations, threads
# suspended in RPCs, RPC buffers): a ``begin`` record is written before they
# reach the TEE, the domain's snapshot after (docs/faults.md). A standard
# call's ``begin`` is written by the mediator's before_std_call hook, once it
# is validated: it carries the call's intent from the mediator's own copy.
_STD_FUNCS = frozenset({OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG,
                        OPTEE_SMC_CALL_WITH_REGD_ARG})
_BEGIN_FUNCS = _STD_FUNCS | {OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_DISABLE_SHM_CACHE}
# ...and those that change only the mediator's own state: snapshot after.
_STATE_FUNCS = _BEGIN_FUNCS | {OPTEE_SMC_EXCHANGE_CAPABILITIES}
# What a guest gets for a call the daemon will not run: a journal it cannot
# write, or a request a dead predecessor left on the ring.
_ENOTAVAIL = (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7

# Per-call journal records (begin, state) are written, not fsync'd: the fault
# they guard against is the daemon's own death, and a completed write(2) is in
# the page cache, which outlives the process. An fsync would only help if the
# host itself went down — and then the platform, its secure world and every
# domain go with it, so there is nothing to reconcile. Domain lifecycle records
# and checkpoints are still fsync'd (they are rare). On a disk-backed runtime
# directory an fsync per call cost ~16 ms per standard call here.
SYNC_PER_CALL = False
# Past this size the journal is rewritten from the current state
# (a checkpoint): it only ever needs the latest record of each domain.
JOURNAL_COMPACT_BYTES = 1 << 20
# A call restored suspended in an RPC after a restart is on a lease: its
# guest may have sent its RETURN_FROM_RPC while no daemon listened, and the
# frontend then answered it ENOTAVAIL itself — the guest gave the call up and
# nothing of that reaches this daemon. Unresumed for mediator.call_timeout_ms
# (the bound the platform puts on a guest waiting for the daemon, here put on
# the daemon waiting for the guest), the call is abandoned in OP-TEE; a later
# resume of it gets ERESUME.


class Daemon:
    """One stub domain's mediator service."""

    def __init__(self, *, config, config_path: str | None, policy, mediator, gate_port,
                 machine, logger: logging.Logger, load_config, placement: str = "stubdom",
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
        self.shutdown_requested = trio.Event()
        self.backend_nursery: trio.Nursery | None = None  # set by the app once running
        # per domain, for the call being served (one at a time per domain):
        self._views: dict = {}  # the policy view it arrived under
        self._begin_refused: set[int] = set()  # before_std_call refused it: journal down
        self.fair = FairShare()  # who goes on between the steps of a heavy call
        # one spin over every idle domain ring (the window is fixed at start, like the ring size)
        self.ring_poller = RingPoller(config.mediator.poll_window_us * 1000)
        # the journal (docs/faults.md); None: not kept (in-process tests)
        self.journal = journal
        self.journal_healthy = journal is not None
        self._created: dict[int, dict] = {}  # each served domain's ``domain`` record
        self._seq = 0  # numbers ``begin`` records
        self.recovered: dict[str, list[int]] = {"restored": [], "reset": [], "torn_down": []}
        self.stale_answered = 0  # requests of a dead predecessor answered ENOTAVAIL
        self.abandoned = 0  # suspended calls ended because their resume was lost
        self._to_start: list[DomainBackend] = []  # recovered backends, started after the checkpoint
        self.lost_calls_settled = 0  # lost calls' registrations/sessions undone or finished
        # restored suspended calls not yet resumed: domid -> {thread: StdCall}
        self._leases: dict[int, dict] = {}
        self._lease_scopes: dict[int, trio.CancelScope] = {}
        self.leases_expired = 0  # restored suspended calls abandoned unresumed

    # == per call (the backend tasks) ========================================

    async def serve_call(self, backend: DomainBackend, vcpu: int, regs: tuple) -> tuple[tuple, str | None]:
        """Policy, then the mediator. Returns (registers, refusal reason or None).

        The policy view is taken once, when the call arrives; the TA check
        inside the same mediator call uses that view too, so a reload
        between two calls never splits one. A call's translation may be cut
        into steps (docs/daemon.md, "Fair service"): other domains' requests
        run between them, never this domain's (its backend serves one call
        at a time), so what is kept per call here is kept per domain."""
        domid = backend.domid
        if self.draining:
            refused = refuse_while_draining(regs[0])
            if refused is not None:
                return refused, "shutting_down"
        view = self.policy.snapshot(domid)
        refusal = self.policy.check_call(domid, regs[0], time.monotonic(), view=view)
        if refusal is not None:
            backend.log.event(logging.WARNING, "call_refused", reason=refusal.reason,
                              detail=refusal.describe())
            return refusal.regs, refusal.reason
        fn = regs[0] & _U32 if not regs[0] >> 32 else None
        journaled = self.journal is not None and fn in _STATE_FUNCS
        if journaled and fn in _BEGIN_FUNCS:
            # an unhealthy journal is retried here, at rest (a checkpoint
            # snapshots every domain); refused: nothing reached the TEE
            if not self.journal_healthy and not self.checkpoint():
                return _ENOTAVAIL, "journal_unavailable"
            if fn not in _STD_FUNCS and not self._journal_begin(domid, fn, regs[3] & _U32, None):
                return _ENOTAVAIL, "journal_unavailable"
        self._views[domid] = view
        self._begin_refused.discard(domid)
        if fn == OPTEE_SMC_CALL_RETURN_FROM_RPC and domid in self._leases:
            # the guest resumes it: no longer an orphan (whatever the outcome)
            self._leases[domid].pop(regs[3] & _U32, None)
        steps = self.mediator.call_steps(domid, vcpu, regs)
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    out = done.value
                    break
                backend.stats.yields += 1
                await self.fair.step(domid)  # other domains' requests go first
        finally:
            steps.close()  # cancelled mid-way: the call releases what it took
            self._views.pop(domid, None)
        if journaled:
            self._journal_state(domid)
        if domid in self._begin_refused:
            self._begin_refused.discard(domid)
            return out, "journal_unavailable"
        return out, None

    def before_std_call(self, domid: int, call) -> bool:
        """The mediator's before_std_call hook: the ``begin`` of a validated
        standard call, with its intent (what it may leave in OP-TEE), before
        its first SMC. False refuses it: ENOTAVAIL, nothing reached the TEE."""
        if self.journal is None:
            return True
        if not self._journal_begin(domid, call.function, 0, call_intent(call)):
            self._begin_refused.add(domid)
            return False
        return True

    # == the journal =========================================================

    def _journal_begin(self, domid: int, fn: int, tid: int, intent: dict | None) -> bool:
        """Write a ``begin`` before the call may change what OP-TEE holds.
        False: the journal cannot be written; the call is refused."""
        if not self.journal_healthy:
            return False  # serve_call tried a checkpoint at rest
        self._seq += 1
        try:
            self.journal.append(jr.begin_record(domid, self._seq, fn, tid, intent),
                                sync=SYNC_PER_CALL)
        except JournalWriteError as e:
            self._journal_failed(e)
            return False
        return True

    def _journal_state(self, domid: int, *, sync: bool = SYNC_PER_CALL) -> None:
        if self.journal is None or domid not in self._created or not self.journal_healthy:
            return
        if self.journal.size > JOURNAL_COMPACT_BYTES:
            self.checkpoint()  # rewrites every domain's current state, this one's included
            return
        try:
            self.journal.append(jr.state_record(domid, snapshot_domain(self.mediator, domid)),
                                sync=sync)
        except JournalWriteError as e:
            self._journal_failed(e)
        except BadSnapshot as e:  # a mediator bug: the journal cannot vouch any more
            event(self.logger, logging.ERROR, "journal_snapshot_failed", domid=domid, error=e)
            self.journal_healthy = False

    def _journal_failed(self, e: JournalWriteError) -> None:
        if self.journal_healthy:
            event(self.logger, logging.ERROR, "journal_write_failed", path=e.path,
                  errno=e.errno, error=str(e))
        self.journal_healthy = False

    def checkpoint(self) -> bool:
        """Rewrite the journal from the current state of every served domain
        (startup, and after a write failure). True if it is healthy again."""
        if self.journal is None:
            return False
        records = []
        for domid in sorted(self._created):
            records.append(self._created[domid])
            try:
                records.append(jr.state_record(domid, snapshot_domain(self.mediator, domid)))
            except BadSnapshot as e:
                event(self.logger, logging.ERROR, "journal_snapshot_failed", domid=domid, error=e)
                return False
        try:
            self.journal.rewrite(records)
        except JournalWriteError as e:
            self._journal_failed(e)
            return False
        if not self.journal_healthy:
            event(self.logger, logging.INFO, "journal_writable", path=self.journal.path)
        self.journal_healthy = True
        return True

    def journal_statistics(self) -> dict:
        j = self.journal
        if j is None:
            return {"kept": False}
        return {"kept": True, "healthy": self.journal_healthy, "path": str(j.path), "size": j.size,
                "appends": j.appends, "syncs": j.syncs, "failures": j.failures,
                "recovered": self.recovered, "stale_answered": self.stale_answered,
                "abandoned": self.abandoned, "lost_calls_settled": self.lost_calls_settled,
                "leases_expired": self.leases_expired,
                "leased": sum(len(v) for v in self._leases.values())}

    # == recovery after a restart (docs/faults.md) ============================

    async def recover(self, replay: jr.Replay | None) -> None:
        """Reconcile what a dead predecessor left (``replay``: its journal,
        None if there was none or it was refused) with the machine and the
        secure world, then serve the domains it can vouch for. Runs before
        the control socket accepts anything."""
        plan = recovery.plan_recovery(replay, self.machine, self.runtime_dir)
        for domid, why in plan.teardown:
            rec = replay.domains.get(domid) if replay is not None else None
            # VM_DESTROYED first: OP-TEE must not touch a frame once it is unpinned
            done, detail = recovery.vm_destroyed(self.mediator._port, domid)
            pins = recovery.release_domain_frames(self.machine, domid, rec.snap if rec else None)
            recovery.remove_domain_dir(self.runtime_dir, domid, self.logger)
            self.recovered["torn_down"].append(domid)
            event(self.logger, logging.WARNING, "recovery_torn_down", domid=domid, reason=why,
                  vm_destroyed=detail if done else f"refused: {detail}", pins_released=pins)
        for rec in plan.settle:
            try:
                recovery.restore(self.mediator, rec)
            except BadSnapshot as e:
                plan.reset.append((rec, str(e)))
                continue
            ctx = self.mediator.context(rec.domid)
            call = rec.open_call
            abandoned = 0
            intent = call.get("intent")
            undone = None
            claims: list[str] = []
            extras_free = False  # only once OP-TEE said it keeps nothing they back
            try:
                if call["fn"] == OPTEE_SMC_CALL_RETURN_FROM_RPC and call["tid"] in ctx.suspended:
                    # its guest got ENOTAVAIL for that resume: the call is over for it
                    intent = call_intent(ctx.suspended[call["tid"]])
                    abandoned = int(abandon_suspended(self.mediator, rec.domid, call["tid"]))
                ended = settle_orphans(self.mediator, rec.domid)
                # before the extra pins go: OP-TEE must keep no registration of them
                extras_free = True
                if isinstance(intent, dict):
                    lost = settle_lost_call(self.mediator, rec.domid, intent)
                    undone, extras_free = lost.done, lost.extras_free
                    self.lost_calls_settled += undone is not None
                claims = settle_claims(self.mediator, rec.domid)
            except Exception as e:  # the gate failed: nothing more can be settled now
                event(self.logger, logging.ERROR, "recovery_settle_failed", domid=rec.domid, error=e)
                ended = []
                extras_free = False
            self.abandoned += abandoned
            want = expected_pins(snapshot_domain(self.mediator, rec.domid))
            if extras_free:
                pins = recovery.drop_extra_pins(self.machine, rec.domid, want)
                held = 0
            else:
                # OP-TEE may reference them: held until VM_DESTROYED
                pins = 0
                held = self.mediator.hold_frames(rec.domid, recovery.extra_pins(self.machine, rec.domid, want))
            self.recovered["restored"].append(rec.domid)
            event(self.logger, logging.WARNING, "recovery_settled", domid=rec.domid,
                  open_call=f"{call['fn']:#x}", set_aside=call.get("set_aside") or "nothing",
                  abandoned=abandoned, threads_ended=len(ended),
                  lost_call=undone or "nothing to undo", claims=", ".join(claims) or "none",
                  pins_released=pins, pins_held=held, suspended=len(ctx.suspended),
                  shm_buffers=len(ctx.shm_buffers))
            await self._serve_recovered(rec)
        for rec in plan.restore:
            try:
                recovery.restore(self.mediator, rec)
            except BadSnapshot as e:
                # nothing was installed: reset it as above on the next start;
                # now, tear it down (its pins are exactly the snapshot's)
                done, detail = recovery.vm_destroyed(self.mediator._port, rec.domid)
                pins = recovery.release_domain_frames(self.machine, rec.domid, None)
                recovery.remove_domain_dir(self.runtime_dir, rec.domid, self.logger)
                self.recovered["torn_down"].append(rec.domid)
                event(self.logger, logging.ERROR, "recovery_torn_down", domid=rec.domid,
                      reason=str(e), pins_released=pins)
                continue
            ctx = self.mediator.context(rec.domid)
            # a call killed before its ``begin`` never reached OP-TEE: its pins go
            pins = recovery.drop_extra_pins(self.machine, rec.domid, expected_pins(rec.snap))
            self.recovered["restored"].append(rec.domid)
            event(self.logger, logging.INFO, "recovery_restored", domid=rec.domid,
                  suspended=len(ctx.suspended), shm_buffers=len(ctx.shm_buffers),
                  rpc_buffers=len(ctx.rpc_buffers), pinned_pages=ctx.pinned_pages,
                  pins_released=pins)
            await self._serve_recovered(rec)
        await self._recover_reset(plan)
        # a fresh journal of what is served now, before any backend serves
        self.checkpoint()
        for backend in self._to_start:
            await self.backend_nursery.start(backend.run)
        self._to_start = []
        # the lease runs from when the guests can reach this daemon again
        deadline = trio.current_time() + self.config.mediator.call_timeout_ms / 1000
        for domid in sorted(self._leases):
            await self.backend_nursery.start(self._lease, domid, deadline)

    # == leases on restored suspended calls (docs/faults.md) =================

    async def _lease(self, domid: int, deadline: float, *,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sleep until the lease of ``domid``'s restored suspended calls
        ends, then abandon those still unresumed. Runs in the trio thread like
        the backends, so the (synchronous) mediator is never entered twice.
        Cancelled when the domain is destroyed or the daemon stops."""
        scope = trio.CancelScope()
        self._lease_scopes[domid] = scope
        try:
            with scope:
                task_status.started()
                while self._leases.get(domid):
                    await trio.sleep_until(deadline)
                    if not self.expire_leases(domid):
                        # the journal cannot be written: try again a lease later
                        deadline = trio.current_time() + self.config.mediator.call_timeout_ms / 1000
        finally:
            if self._lease_scopes.get(domid) is scope:
                del self._lease_scopes[domid]
            self._leases.pop(domid, None)

    def expire_leases(self, domid: int) -> bool:
        """Abandon every restored suspended call of ``domid`` its guest has
        not resumed: OP-TEE is resumed failing its RPCs until it completes,
        what it held is released, a lost registration or session undone. A
        ``begin`` (a RETURN_FROM_RPC of that thread) is journaled first: a
        kill in the middle is then recovered like a lost resume (settle).
        False: the journal cannot be written, nothing was done for the rest."""
        leases = self._leases.get(domid, {})
        ctx = self.mediator.context(domid)
        for tid in sorted(leases):
            call = leases[tid]
            with ctx.lock:
                current = ctx.suspended.get(tid)
            if current is not call:  # resumed, or abandoned at re-attach
                del leases[tid]
                continue
            if self.journal is not None:
                if not self.journal_healthy and not self.checkpoint():
                    return False
                if not self._journal_begin(domid, OPTEE_SMC_CALL_RETURN_FROM_RPC, tid, None):
                    return False
            del leases[tid]
            intent = call_intent(call)
            undone = None
            try:
                ended = abandon_suspended(self.mediator, domid, tid)
                if ended:  # OP-TEE may have completed it: undo what the guest never learnt of
                    undone = settle_lost_call(self.mediator, domid, intent).done
                    self.lost_calls_settled += undone is not None
            except Exception as e:  # the gate went away: nothing more can be done now
                ended = False
                event(self.logger, logging.ERROR, "abandon_failed", domid=domid, thread=tid, error=e)
            finally:
                self._journal_state(domid)
            self.abandoned += ended
            self.leases_expired += 1
            event(self.logger, logging.WARNING, "lease_expired", domid=domid, thread=tid,
                  seq=call.seq, abandoned=int(ended), lost_call=undone or "nothing to undo",
                  lease_ms=self.config.mediator.call_timeout_ms)
        return True

    async def _recover_reset(self, plan) -> None:
        for rec, why in plan.reset:
            domid = rec.domid
            done, detail = recovery.vm_destroyed(self.mediator._port, domid)
            pins = recovery.release_domain_frames(self.machine, domid, rec.snap)
            limits = self._limits(rec.created["limits"])
            try:
                self.mediator.domain_init(domid, limits=limits,
                                          static_shm=bool(rec.created["static_shm"]))
            except (DomainRefused, DomainAlreadyInitialised, *_GATE_FAILURES) as e:
                recovery.remove_domain_dir(self.runtime_dir, domid, self.logger)
                self.recovered["torn_down"].append(domid)
                event(self.logger, logging.ERROR, "recovery_torn_down", domid=domid,
                      reason=f"{why}; VM_CREATED again failed: {e}", pins_released=pins)
                continue
            ctx = self.mediator.context(domid)
            if rec.snap is not None:  # the guest negotiated it once and will not again
                ctx.rpc_param_count = int(rec.snap.get("rpc_param_count", 0))
            self.recovered["reset"].append(domid)
            event(self.logger, logging.WARNING, "recovery_reset", domid=domid, reason=why,
                  vm_destroyed=detail if done else f"refused: {detail}", pins_released=pins)
            await self._serve_recovered(rec)

    @staticmethod
    def _limits(values):
        from stubdom.mediator import DomainLimits

        return DomainLimits(*(int(v) for v in values))

    async def _serve_recovered(self, rec: jr.DomainRecord) -> None:
        """Re-attach the domain's ring, answer what the dead daemon left on
        it, start its backend task."""
        domid = rec.domid
        domain = self.machine.domain(domid)
        policy = self.config.policy_for(domid)
        backend = DomainBackend(
            domid, self.runtime_dir / f"dom{domid}", self.config.mediator.ring_pages,
            hwdom=domain.is_hwdom, direct_mapped=domain.direct_mapped, daemon=self,
            logger=self.logger, poll_window_ns=self.config.mediator.poll_window_us * 1000,
            poller=self.ring_poller, attach=True)
        backend.log.level = LEVELS[policy.log_level]
        self._answer_stale(backend)
        ctx = self.mediator.context(domid)
        with ctx.lock:
            if ctx.suspended:  # their guests may have given them up while nobody listened
                self._leases[domid] = dict(ctx.suspended)
        self.domains[domid] = backend
        self._created[domid] = rec.created
        self._to_start.append(backend)

    def _answer_stale(self, backend: DomainBackend) -> None:
        """Every request on the ring now was sent to the dead daemon: its
        frontend has answered (or will answer) the guest ENOTAVAIL. Never run
        one (it may have run already): answer ENOTAVAIL too. A lost
        RETURN_FROM_RPC means the guest gave that call up: end it in OP-TEE."""
        from ring import Response

        ctx = self.mediator.context(backend.domid)
        try:
            stale = backend.ring.pop_batch()
        except Exception as e:  # a corrupted ring: the backend task reports it
            event(self.logger, logging.ERROR, "recovery_ring_unreadable", domid=backend.domid,
                  error=e)
            return
        for req in stale:
            a0 = req.a[0]
            if a0 == OPTEE_SMC_CALL_RETURN_FROM_RPC and (req.a[3] & _U32) in ctx.suspended:
                try:
                    intent = call_intent(ctx.suspended[req.a[3] & _U32])
                    ended = abandon_suspended(self.mediator, backend.domid, req.a[3] & _U32)
                    if ended:  # OP-TEE may have completed it: undo what the guest never learnt of
                        undone = settle_lost_call(self.mediator, backend.domid, intent).done
                        self.lost_calls_settled += undone is not None
                except Exception as e:  # the gate went away: the call stays suspended
                    ended = False
                    event(self.logger, logging.ERROR, "abandon_failed", domid=backend.domid,
                          thread=req.a[3] & _U32, error=e)
                self.abandoned += ended
            backend.ring.push(Response(req.id, 0, 0, _ENOTAVAIL))
            self.stale_answered += 1
        if stale:
            backend.log.event(logging.WARNING, "stale_requests_answered", count=len(stale),
                              abandoned=self.abandoned)

    def domain_log_level(self, domid: int) -> int | None:
        """The level of a served domain's guest-triggered lines (its policy's
        log_level as of creation or the last reload); None if not served."""
        backend = self.domains.get(domid)
        return None if backend is None else backend.log.level

    def check_open_session(self, domid: int, ta_uuid) -> tuple[int, int] | None:
        """The mediator's open_session_filter: None, or (ret, ret_origin) for
        the guest's OPEN_SESSION argument (judged on the mediator's shadow)."""
        refusal = self.policy.check_open_session(domid, ta_uuid, view=self._views.get(domid))
        if refusal is None:
            return None
        backend = self.domains.get(domid)
        if backend is not None:
            backend.stats.refusals[refusal.reason] += 1
            backend.log.event(logging.WARNING, "open_session_refused", reason=refusal.reason,
                              detail=refusal.describe())
        return refusal.msg_ret, refusal.msg_origin

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
        if self.journal is not None:
            # before VM_CREATED: a restart must know of every partition it may own
            if not self.journal_healthy and not self.checkpoint():
                raise ControlError(ErrorCode.INTERNAL, f"d{domid}: the journal cannot be written")
            try:
                self.journal.append(created)
            except JournalWriteError as e:
                self._journal_failed(e)
                raise ControlError(ErrorCode.INTERNAL, f"d{domid}: {e}") from None
        try:
            try:
                self.mediator.domain_init(domid, limits=policy.limits,
                                          static_shm=policy.static_shm_allowed)
            except BaseException:
                self._journal_gone(domid)  # no partition: nothing to recover
                raise
        except DomainRefused as e:
            raise ControlError(ErrorCode.TEE_REFUSED, str(e)) from None
        except _GATE_FAILURES as e:
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
            if self.journal is not None:
                self._created[domid] = created
                self._journal_state(domid)
                if not self.journal_healthy:
                    raise ControlError(ErrorCode.INTERNAL, f"d{domid}: the journal cannot be written")
            assert self.backend_nursery is not None
            await self.backend_nursery.start(backend.run)
        except BaseException:
            backend_ = self.domains.pop(domid, None)
            if backend_ is not None:
                backend_.close()
            self._created.pop(domid, None)
            await self._mediator_teardown(domid)
            self._journal_gone(domid)
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
        scope = self._lease_scopes.pop(domid, None)
        if scope is not None:  # relinquish ends its calls now
            scope.cancel()
        self._leases.pop(domid, None)
        await backend.stop()
        del self.domains[domid]
        backend.close()
        self.policy.forget(domid)
        self.fair.forget(domid)
        await self._mediator_teardown(domid)
        self._created.pop(domid, None)
        self._journal_gone(domid)
        event(self.logger, logging.INFO, "domain_destroyed", domid=domid,
              calls=sum(backend.stats.calls.values()), errors=backend.stats.errors,
              refusals=sum(backend.stats.refusals.values()))

    def _journal_gone(self, domid: int) -> None:
        if self.journal is None or not self.journal_healthy:
            return  # a checkpoint writes only the domains still served
        try:
            self.journal.append(jr.gone_record(domid))
        except JournalWriteError as e:
            self._journal_failed(e)

    async def _mediator_teardown(self, domid: int) -> None:
        try:
            while not self.mediator.relinquish_resources(domid):
                await trio.lowlevel.checkpoint()  # resumable: other domains go on between rounds
            self.mediator.domain_teardown(domid)
        except _GATE_FAILURES as e:
            event(self.logger, logging.ERROR, "vm_destroyed_failed", domid=domid, error=e)
            raise ControlError(ErrorCode.TEE_REFUSED, f"d{domid}: VM_DESTROYED: {e}") from None
        except TeardownInvariantBroken as e:
            event(self.logger, logging.ERROR, "teardown_invariant_broken", domid=domid, error=e)
            raise ControlError(ErrorCode.INTERNAL, str(e)) from None

    def _mediator_calls(self, domid: int) -> int:
        try:
            return self.mediator.context(domid).calls
        except Exception:
            return 0

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
            # keys are strings ("1"): msgpack readers with strict_map_key accept them
            out[str(d)] = self.domains[d].stats.snapshot(
                len(self.machine.pinned_frames(d)), self._mediator_calls(d))
        gate = self.gate_port.statistics()
        return {"domains": out, "gate": gate, "journal": self.journal_statistics(),
                "fairness": self.fair.statistics()}

    async def op_reload(self, req: Request) -> dict:
        path = req.str_arg("path", required=False)
        self.reload(path)
        return {"reloaded": True, "path": str(path or self.config_path or "<embedded default>")}

    def reload(self, path: str | None = None) -> None:
        """Swap in a new policy; a bad file keeps the old one (CONFIG_INVALID
        with every problem). Only the policy changes: ring size, runtime
        directory, polling window and the limits of domains already created
        stay as they were."""
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
        self.policy.swap(new)
        self.config = new
        for domid, backend in self.domains.items():  # log levels apply to running domains too
            backend.log.level = LEVELS[new.policy_for(domid).log_level]
        if path:
            self.config_path = path
        event(self.logger, logging.INFO, "reloaded", path=target or "<embedded default>")

    async def op_dump(self, req: Request) -> dict:
        domid = req.int_arg("domid")
        if domid not in self.domains:
            raise ControlError(ErrorCode.NO_SUCH_DOMAIN, f"d{domid} is not served by this daemon")
        ctx = self.mediator.context(domid)
        cap = DUMP_LIST_CAP
        with ctx.lock:
            calls = sorted(ctx.all_calls, key=lambda c: c.seq)
            shm = list(ctx.shm_buffers.values())
            rpc = list(ctx.rpc_buffers.values())
            suspended = {tid: c.seq for tid, c in ctx.suspended.items()}
            out = {
                "domid": domid,
                "limits": {"max_calls": ctx.limits.max_calls, "max_shm_buffers": ctx.limits.max_shm_buffers,
                           "max_pages_per_buffer": ctx.limits.max_pages_per_buffer,
                           "max_total_pages": ctx.limits.max_total_pages},
                "max_calls": ctx.max_calls, "max_rpc_buffers": ctx.max_rpc_buffers,
                "static_shm_allowed": ctx.static_shm_allowed, "rpc_param_count": ctx.rpc_param_count,
                "dying": ctx.dying, "internal_errors": ctx.internal_errors,
                "calls_in_flight": ctx.calls, "buffers": ctx.nr_buffers,
                "pinned_pages": ctx.pinned_pages, "shadow_pages": ctx.pool.total,
            }
        out["calls"] = [{"seq": c.seq, "function": f"{c.function:#x}", "thread": c.thread_id,
                         "rpc_state": c.rpc_state.value, "tmem_buffers": len(c.tmem)} for c in calls[:cap]]
        out["suspended"] = {str(t): s for t, s in list(suspended.items())[:cap]}
        out["shm_buffers"] = [{"cookie": b.cookie, "kind": b.kind.value, "pages": b.nr_pages,
                               "size": b.size, "static": b.static} for b in shm[:cap]]
        out["nr_shm_buffers"] = len(shm)
        out["rpc_buffers"] = [{"cookie": b.cookie, "pinned": b.mfn is not None} for b in rpc[:cap]]
        out["nr_rpc_buffers"] = len(rpc)
        pins = self.machine.pinned_frames(domid)
        out["pinned_frames"] = {f"{mfn:#x}": n for mfn, n in sorted(pins.items())[:cap]}
        out["nr_pinned_frames"] = len(pins)
        return out

    async def op_shutdown(self, req: Request) -> dict:
        event(self.logger, logging.INFO, "shutdown_requested", via="control")
        self.shutdown_requested.set()
        return {}

    # == drain ===============================================================

    def calls_in_flight(self) -> int:
        return sum(b.stats.in_flight + self._mediator_calls(d) for d, b in self.domains.items())

    async def drain(self, timeout_s: float) -> None:
        """Refuse new calls, let the admitted ones finish (bounded), then
        destroy every domain cleanly."""
        self.draining = True
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
