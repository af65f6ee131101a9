"""Recovery after a restart: what a daemon that died left behind, reconciled
with the journal, the machine's frame table and the secure world
(docs/faults.md, "Recovery").

Per domain the restarted daemon finds (journal ∪ ``dom<N>/`` directories ∪
owners of pinned frames):

- **restore** — the journal has it at rest (its last record a snapshot, no
  call open) and every frame the snapshot holds pinned still is: the
  mediator context is rebuilt from the snapshot (no SMC: OP-TEE kept its
  sessions and suspended threads), the ring re-attached. Pins beyond the
  snapshot's belong to a call killed while being validated, before its
  ``begin`` and its first SMC: dropped.
- **settle** — a call was in OP-TEE at the kill (a ``begin`` with no
  ``state``): restore, end what that call left in OP-TEE, undo its lasting
  effect, drop the extra pins. If pins the snapshot holds are gone, and that
  call explains each (a RETURN_FROM_RPC of a call the snapshot holds
  suspended, its temporary buffers, RPC buffers and RPC SHM buffers OP-TEE
  gave back; the registration an UNREGISTER_SHM removed), the snapshot is
  restored without them.
- **reset** — the journal has it, but a pin its snapshot holds is gone and
  the open call does not explain it, or the snapshot does not restore: the
  daemon cannot vouch for what OP-TEE holds.
  Every pin of the domain is released (after VM_DESTROYED, so OP-TEE
  touches none of them again), then VM_CREATED gives it a fresh partition
  and a fresh context (the negotiated RPC argument count is kept). Its
  sessions are gone; its guest gets OP-TEE's errors for them.
- **tear down** — anything the journal does not vouch for (no record, a
  domain whose creation never completed, a domain the machine no longer
  has): pins released, VM_DESTROYED (the gate refuses it for a domain no
  longer assigned: then the platform's own VM_DESTROYED is what frees it),
  ``dom<N>/`` removed. The toolstack's domain_destroy then answers
  NO_SUCH_DOMAIN.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from stubdom.mediator import BadSnapshot, expected_pins, without_resumed_call
from stubdom.optee.smc import OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_RETURN_ENOTAVAIL
from stubdom.optee.smccc import function_id
from stubdom.public.errors import GateError
from stubdom.xen.errors import MachineError

from .journal import DomainRecord, Replay
from .logs import event

if TYPE_CHECKING:
    from stubdom.mediator import Mediator, Snapshot
    from stubdom.xen import Machine

    from .backend import DomainBackend
    from .calljournal import CallJournal
    from .leases import Leases

__all__ = ["RecoveryPlan", "plan_recovery", "release_domain_frames", "vm_destroyed",
           "remove_domain_dir", "GATE_FAILURES", "GivenUp", "give_up", "Recovery"]

# The gate refused a hypercall (status != 0: GateRefused), timed out or went
# away: what a recovery step may meet without it being a bug.
GATE_FAILURES = (GateError,)
# What a guest gets for a request a dead predecessor left on the ring.
STALE_ANSWER = (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7

_DOM_DIR = re.compile(r"dom(\d+)\Z")


@dataclass
class RecoveryPlan:
    restore: list[DomainRecord] = field(default_factory=list)
    settle: list[DomainRecord] = field(default_factory=list)  # restore, then settle the open call
    reset: list[tuple[DomainRecord, str]] = field(default_factory=list)
    teardown: list[tuple[int, str]] = field(default_factory=list)


def served_dirs(runtime_dir: Path) -> set[int]:
    """Domains with a ``dom<N>/`` directory: created by a daemon here."""
    out: set[int] = set()
    try:
        names = os.listdir(runtime_dir)
    except OSError:
        return out
    for name in names:
        m = _DOM_DIR.match(name)
        if m and (runtime_dir / name).is_dir():
            out.add(int(m.group(1)))
    return out


def plan_recovery(replay: Replay | None, machine: Machine, runtime_dir: Path) -> RecoveryPlan:
    """Decide per domain; nothing is changed yet. ``replay`` None: no
    journal could be trusted, nothing is restored."""
    plan = RecoveryPlan()
    known = replay.domains if replay is not None else {}
    live = set(machine.domains())
    pinned_owners = {machine.frame_owner(m) for m in machine.pinned_frames()}
    candidates = set(known) | served_dirs(runtime_dir) | {d for d in pinned_owners if d < 0x7FF0}
    for domid in sorted(candidates):
        rec = known.get(domid)
        if rec is None:
            plan.teardown.append((domid, "not in the journal"))
        elif domid not in live:
            plan.teardown.append((domid, "the machine no longer has it"))
        elif rec.snap is None:
            plan.teardown.append((domid, "its creation never completed"))
        else:
            want = expected_pins(rec.snap)
            have = machine.pinned_frames(domid)
            short = {m for m, n in want.items() if have.get(m, 0) < n}
            if rec.open_call is not None and not short:
                # every pin the snapshot holds is still there: restore it,
                # end what the open call left in OP-TEE, drop the extra pins
                plan.settle.append(rec)
            elif rec.open_call is not None and (aside := _set_aside(rec, have)) is not None:
                # the missing pins are all the open call's: restore without it
                plan.settle.append(aside)
            elif rec.open_call is not None:
                plan.reset.append((rec, f"a call ({rec.open_call['fn']:#x}) was in the TEE and "
                                        f"released pins the snapshot holds ({sorted(hex(m) for m in short)[:4]})"))
            elif short:
                extra = {hex(m) for m in set(have) - set(want)}
                missing = {hex(m) for m in set(want) - set(have)}
                plan.reset.append((rec, f"pins differ (unexpected {sorted(extra)[:4]}, "
                                        f"missing {sorted(missing)[:4]})"))
            else:
                # at rest, every pin the snapshot holds is there; more pins
                # are a call killed before its ``begin`` (the mediator pins
                # while validating, the ``begin`` precedes the first SMC):
                # nothing of it reached OP-TEE, its pins are dropped after
                # the restore
                plan.restore.append(rec)
    return plan


def _set_aside(rec: DomainRecord, have: Mapping[int, int]) -> DomainRecord | None:
    """``rec`` with the call that was in OP-TEE at the kill set aside (see
    :func:`~stubdom.mediator.snapshot.without_resumed_call`), its intent in
    the open call for :func:`settle_lost_call`; None if that call does not
    explain every pin the snapshot holds that the frame table lacks (or
    ``rec`` has no snapshot or no open call: nothing to set aside)."""
    call = rec.open_call
    if call is None or rec.snap is None:
        return None
    tid = call.get("tid") if call["fn"] == OPTEE_SMC_CALL_RETURN_FROM_RPC else None
    try:
        out = without_resumed_call(rec.snap, tid, have, call.get("intent"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a snapshot that does not describe a context: reset
    if out is None:
        return None
    snap, intent, gone = out
    open_call = call.copy()
    open_call["intent"] = intent if intent else call.get("intent")
    open_call["set_aside"] = gone
    return replace(rec, snap=snap, open_call=open_call)


def release_domain_frames(machine: Machine, domid: int, snap: Snapshot | None = None) -> int:
    """Drop every pin the frame table holds for ``domid`` and free its
    hypervisor heap pages (the shadow pages); returns the pins dropped.
    Only once OP-TEE can no longer touch them (after VM_DESTROYED)."""
    pins = machine.pinned_frames(domid)
    dropped = 0
    for mfn, n in pins.items():
        machine.put_pages([mfn] * n)
        dropped += n
    extra = set(pins)
    if snap is not None:
        extra.update(int(m) for m in snap.get("pool", {}).get("frame_zero", []))
    for mfn in sorted(extra):
        try:
            machine.free_domheap_pages(domid, [mfn])
        except MachineError:
            pass  # a guest frame, or gone with a destroyed domain
    return dropped


def vm_destroyed(mediator: Mediator, domid: int) -> tuple[bool, str]:
    """VM_DESTROYED through the gate: (done, detail)."""
    try:
        r = mediator.vm_destroyed(domid)
    except GATE_FAILURES as e:  # GateRefused (not assigned), GateTimeout, GateClosed
        return False, str(e)
    return True, f"a0={r[0]:#x}"


def remove_domain_dir(runtime_dir: Path, domid: int, logger: logging.Logger) -> None:
    d = runtime_dir / f"dom{domid}"
    for name in ("evtchn", "ring"):
        try:
            (d / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("cannot remove %s: %s", d / name, e.strerror)
    try:
        d.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("cannot remove %s: %s", d, e.strerror)


def restore(mediator: Mediator, rec: DomainRecord) -> Snapshot:
    """Returns the snapshot restored; raises BadSnapshot if there is none or
    it does not restore."""
    snap = rec.snap
    if snap is None:
        raise BadSnapshot(rec.domid, "no snapshot (its creation never completed)")
    if snap.get("domid") != rec.domid:
        raise BadSnapshot(rec.domid, f"snapshot names d{snap.get('domid')!r}")
    mediator.restore(snap)
    return snap


def extra_pins(machine: Machine, domid: int, want: dict[int, int]) -> dict[int, int]:
    """{mfn: pins} the frame table holds for ``domid`` beyond ``want``."""
    have = machine.pinned_frames(domid)
    return {mfn: n - want.get(mfn, 0) for mfn, n in have.items() if n > want.get(mfn, 0)}


def drop_extra_pins(machine: Machine, domid: int, want: dict[int, int]) -> int:
    """Release pins the frame table holds for ``domid`` beyond ``want``
    (what the restored context accounts for) and free the hypervisor heap
    pages left with none (shadow pages the dead daemon took). Returns the
    pins dropped."""
    have = machine.pinned_frames(domid)
    dropped = 0
    freed_candidates = []
    for mfn, n in have.items():
        extra = n - want.get(mfn, 0)
        if extra > 0:
            machine.put_pages([mfn] * extra)
            dropped += extra
            if not want.get(mfn, 0):
                freed_candidates.append(mfn)
    for mfn in freed_candidates:
        try:
            machine.free_domheap_pages(domid, [mfn])
        except MachineError:
            pass  # a guest frame
    return dropped


# == a suspended call whose guest is gone =====================================

@dataclass(frozen=True, slots=True)
class GivenUp:
    ended: bool  # OP-TEE completed it (what it held released)
    undone: str | None  # what was undone of it in OP-TEE (settle_lost_call), for the log
    error: str | None  # the gate failed: the call stays suspended, released with the domain


def give_up(mediator: Mediator, domid: int, tid: int) -> GivenUp:
    """End the call suspended on ``tid`` for a guest that will never resume
    it (its resume was lost with a dead daemon, or its lease ran out):
    abandon it in OP-TEE, then undo what OP-TEE may have done for it that
    its guest never learnt of. Only the gate's failures are caught."""
    intent = mediator.intent_of(domid, tid)
    try:
        ended = mediator.abandon(domid, tid)
        undone = mediator.settle_lost_call(domid, intent).done if ended and intent else None
    except GATE_FAILURES as e:
        return GivenUp(False, None, str(e))
    return GivenUp(ended, undone, None)


# == the plan, carried out =====================================================

class Recovery:
    """Carries out :func:`plan_recovery` for a daemon that starts over a dead
    predecessor's work (docs/faults.md, "Recovery, per domain"). ``serve``
    re-attaches a domain the daemon keeps serving and returns its backend
    (not yet started); ``journal`` is the daemon's CallJournal; ``leases``
    gets the restored suspended calls whose guests may have given them up."""

    def __init__(self, *, mediator: Mediator, machine: Machine, runtime_dir: Path, journal: CallJournal,
                 leases: Leases, logger: logging.Logger, serve: Callable[[DomainRecord], DomainBackend]) -> None:
        self._mediator = mediator
        self._machine = machine
        self._runtime_dir = runtime_dir
        self._journal = journal
        self._leases = leases
        self._logger = logger
        self._serve = serve
        self.recovered: dict[str, list[int]] = {"restored": [], "reset": [], "torn_down": []}
        self.stale_answered = 0  # requests of a dead predecessor answered ENOTAVAIL
        self.abandoned = 0  # suspended calls ended because their resume was lost or expired
        self.lost_calls_settled = 0  # lost calls' registrations/sessions undone or finished

    def statistics(self) -> dict:
        return {"recovered": self.recovered, "stale_answered": self.stale_answered,
                "abandoned": self.abandoned, "lost_calls_settled": self.lost_calls_settled}

    def recover(self, replay: Replay | None) -> list[DomainBackend]:
        """Reconcile what the predecessor left (``replay``: its journal, None
        if there was none or it was refused) with the machine and the secure
        world; returns the backends of the domains served again (to start
        once the journal has been checkpointed)."""
        plan = plan_recovery(replay, self._machine, self._runtime_dir)
        backends: list[DomainBackend] = []
        for domid, why in plan.teardown:
            rec = replay.domains.get(domid) if replay is not None else None
            self._tear_down(domid, why, rec.snap if rec else None, logging.WARNING)
        for rec in plan.settle:
            try:
                restore(self._mediator, rec)
            except BadSnapshot as e:
                plan.reset.append((rec, str(e)))
                continue
            self._settle(rec)
            backends.append(self._attach(rec))
        for rec in plan.restore:
            try:
                snap = restore(self._mediator, rec)
            except BadSnapshot as e:
                # nothing was installed: tear it down (its pins are exactly the snapshot's)
                self._tear_down(rec.domid, str(e), None, logging.ERROR)
                continue
            # a call killed before its ``begin`` never reached OP-TEE: its pins go
            pins = drop_extra_pins(self._machine, rec.domid, expected_pins(snap))
            self.recovered["restored"].append(rec.domid)
            dump = self._mediator.dump(rec.domid, 0)
            event(self._logger, logging.INFO, "recovery_restored", domid=rec.domid,
                  suspended=len(self._mediator.suspended(rec.domid)), shm_buffers=dump["nr_shm_buffers"],
                  rpc_buffers=dump["nr_rpc_buffers"], pinned_pages=dump["pinned_pages"],
                  pins_released=pins)
            backends.append(self._attach(rec))
        for rec, why in plan.reset:
            backend = self._reset(rec, why)
            if backend is not None:
                backends.append(backend)
        return backends

    def _tear_down(self, domid: int, why: str, snap: Snapshot | None, level: int) -> None:
        # VM_DESTROYED first: OP-TEE must not touch a frame once it is unpinned
        done, detail = vm_destroyed(self._mediator, domid)
        pins = release_domain_frames(self._machine, domid, snap)
        remove_domain_dir(self._runtime_dir, domid, self._logger)
        self.recovered["torn_down"].append(domid)
        event(self._logger, level, "recovery_torn_down", domid=domid, reason=why,
              vm_destroyed=detail if done else f"refused: {detail}", pins_released=pins)

    def _settle(self, rec: DomainRecord) -> None:
        """A call was in OP-TEE at the kill: end what it left there, undo its
        lasting effect, then drop the pins beyond the restored context — only
        once OP-TEE said it keeps nothing they back (else they are held for
        the domain until VM_DESTROYED)."""
        m, domid = self._mediator, rec.domid
        call = rec.open_call
        assert call is not None  # plan_recovery settles only records with an open call
        intent = call.get("intent")
        abandoned, ended, undone, claims = 0, [], None, []
        extras_free = False
        try:
            if call["fn"] == OPTEE_SMC_CALL_RETURN_FROM_RPC and call["tid"] in m.suspended(domid):
                # its guest got ENOTAVAIL for that resume: the call is over for it
                intent = m.intent_of(domid, call["tid"])
                abandoned = int(m.abandon(domid, call["tid"]))
            ended = m.end_unknown_threads(domid)
            extras_free = True
            if isinstance(intent, dict):
                lost = m.settle_lost_call(domid, intent)
                undone, extras_free = lost.done, lost.extras_free
                self.lost_calls_settled += undone is not None
            claims = m.settle_claims(domid)
        except GATE_FAILURES as e:  # nothing more can be settled now
            event(self._logger, logging.ERROR, "recovery_settle_failed", domid=domid, error=e)
            extras_free = False
        self.abandoned += abandoned
        want = expected_pins(m.snapshot(domid))
        if extras_free:
            pins, held = drop_extra_pins(self._machine, domid, want), 0
        else:  # OP-TEE may reference them
            pins, held = 0, m.hold_frames(domid, extra_pins(self._machine, domid, want))
        self.recovered["restored"].append(domid)
        dump = m.dump(domid, 0)
        event(self._logger, logging.WARNING, "recovery_settled", domid=domid,
              open_call=f"{call['fn']:#x}", set_aside=call.get("set_aside") or "nothing",
              abandoned=abandoned, threads_ended=len(ended),
              lost_call=undone or "nothing to undo", claims=", ".join(claims) or "none",
              pins_released=pins, pins_held=held, suspended=len(m.suspended(domid)),
              shm_buffers=dump["nr_shm_buffers"])

    def _reset(self, rec: DomainRecord, why: str) -> DomainBackend | None:
        """VM_DESTROYED, every pin released, VM_CREATED: a fresh partition
        and context (the negotiated RPC argument count kept: the guest will
        not negotiate again). None: VM_CREATED failed, torn down."""
        from stubdom.mediator import DomainAlreadyInitialised, DomainLimits, DomainRefused

        domid = rec.domid
        done, detail = vm_destroyed(self._mediator, domid)
        pins = release_domain_frames(self._machine, domid, rec.snap)
        try:
            self._mediator.domain_init(
                domid, limits=DomainLimits(*(int(v) for v in rec.created["limits"])),
                static_shm=bool(rec.created["static_shm"]),
                rpc_param_count=int(rec.snap.get("rpc_param_count", 0)) if rec.snap is not None else 0)
        except (DomainRefused, DomainAlreadyInitialised, *GATE_FAILURES) as e:
            remove_domain_dir(self._runtime_dir, domid, self._logger)
            self.recovered["torn_down"].append(domid)
            event(self._logger, logging.ERROR, "recovery_torn_down", domid=domid,
                  reason=f"{why}; VM_CREATED again failed: {e}", pins_released=pins)
            return None
        self.recovered["reset"].append(domid)
        event(self._logger, logging.WARNING, "recovery_reset", domid=domid, reason=why,
              vm_destroyed=detail if done else f"refused: {detail}", pins_released=pins)
        return self._attach(rec)

    def _attach(self, rec: DomainRecord) -> DomainBackend:
        """Serve the domain again: its backend on the re-attached ring, what
        the dead daemon left on it answered, its restored suspended calls on
        a lease."""
        backend = self._serve(rec)
        self._answer_stale(backend)
        suspended = self._mediator.suspended(rec.domid)
        if suspended:  # their guests may have given them up while nobody listened
            self._leases.grant(rec.domid, suspended)
        self._journal.serving(rec.domid, rec.created)
        return backend

    def _answer_stale(self, backend: DomainBackend) -> None:
        """Every request on the ring now was sent to the dead daemon: its
        frontend has answered (or will answer) the guest ENOTAVAIL. Never run
        one (it may have run already): answer ENOTAVAIL too. A lost
        RETURN_FROM_RPC means the guest gave that call up: end it in OP-TEE."""
        from ring import Response, RingError

        domid = backend.domid
        ring_ = backend.ring
        assert ring_ is not None  # DomainBackend.__init__ leaves it a ring, attached or created
        try:
            stale = ring_.pop_batch()
        except Exception as e:  # a corrupted ring: the backend task reports it
            event(self._logger, logging.ERROR, "recovery_ring_unreadable", domid=domid, error=e)
            return
        for req in stale:
            tid = req.a[3] & 0xFFFFFFFF
            if function_id(req.a[0]) == OPTEE_SMC_CALL_RETURN_FROM_RPC and tid in self._mediator.suspended(domid):
                given = give_up(self._mediator, domid, tid)
                if given.error is not None:
                    event(self._logger, logging.ERROR, "abandon_failed", domid=domid, thread=tid,
                          error=given.error)
                self.abandoned += given.ended
                self.lost_calls_settled += given.undone is not None
            try:
                ring_.push(Response(req.id, 0, 0, STALE_ANSWER))
            except RingError as e:  # truncated since the pop: the backend task reports it
                event(self._logger, logging.ERROR, "recovery_ring_unreadable", domid=domid, error=e)
                return
            self.stale_answered += 1
        if stale:
            backend.log.event(logging.WARNING, "stale_requests_answered", count=len(stale),
                              abandoned=self.abandoned)
