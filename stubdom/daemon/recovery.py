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
from dataclasses import dataclass, field, replace
from pathlib import Path

from stubdom.mediator import BadSnapshot, expected_pins, restore_domain
from stubdom.mediator.port import client_id
from stubdom.mediator.snapshot import without_resumed_call
from stubdom.optee.smc import OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_VM_DESTROYED
from stubdom.xen.errors import MachineError

from .journal import DomainRecord, Replay

__all__ = ["RecoveryPlan", "plan_recovery", "release_domain_frames", "vm_destroyed",
           "remove_domain_dir"]

_DOM_DIR = re.compile(r"dom(\d+)\Z")


@dataclass
class RecoveryPlan:
    restore: list[DomainRecord] = field(default_factory=list)
    settle: list[DomainRecord] = field(default_factory=list)  # restore, then settle the open call
    reset: list[tuple[DomainRecord, str]] = field(default_factory=list)
    teardown: list[tuple[int, str]] = field(default_factory=list)


def served_dirs(runtime_dir: Path) -> set[int]:
    """Domains with a ``dom<N>/`` directory: created by a daemon here."""
    out = set()
    try:
        names = os.listdir(runtime_dir)
    except OSError:
        return out
    for name in names:
        m = _DOM_DIR.match(name)
        if m and (runtime_dir / name).is_dir():
            out.add(int(m.group(1)))
    return out


def plan_recovery(replay: Replay | None, machine, runtime_dir: Path) -> RecoveryPlan:
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


def _set_aside(rec: DomainRecord, have) -> DomainRecord | None:
    """``rec`` with the call that was in OP-TEE at the kill set aside (see
    :func:`~stubdom.mediator.snapshot.without_resumed_call`), its intent in
    the open call for :func:`settle_lost_call`; None if that call does not
    explain every pin the snapshot holds that the frame table lacks."""
    call = rec.open_call
    tid = call.get("tid") if call["fn"] == OPTEE_SMC_CALL_RETURN_FROM_RPC else None
    try:
        out = without_resumed_call(rec.snap, tid, have, call.get("intent"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a snapshot that does not describe a context: reset
    if out is None:
        return None
    snap, intent, gone = out
    return replace(rec, snap=snap, open_call=dict(call, intent=intent if intent else call.get("intent"),
                                                  set_aside=gone))


def release_domain_frames(machine, domid: int, snap: dict | None = None) -> int:
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


def vm_destroyed(port, domid: int) -> tuple[bool, str]:
    """VM_DESTROYED through the gate: (done, detail)."""
    try:
        r = port.hyp_call((OPTEE_SMC_VM_DESTROYED, client_id(domid), 0, 0, 0, 0, 0, 0))
    except Exception as e:  # GateRefused (not assigned), GateTimeout, GateClosed
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


def restore(mediator, rec: DomainRecord) -> None:
    """Raises BadSnapshot if the snapshot does not restore."""
    if rec.snap.get("domid") != rec.domid:
        raise BadSnapshot(rec.domid, f"snapshot names d{rec.snap.get('domid')!r}")
    restore_domain(mediator, rec.snap)


def extra_pins(machine, domid: int, want) -> dict[int, int]:
    """{mfn: pins} the frame table holds for ``domid`` beyond ``want``."""
    have = machine.pinned_frames(domid)
    return {mfn: n - want.get(mfn, 0) for mfn, n in have.items() if n > want.get(mfn, 0)}


def drop_extra_pins(machine, domid: int, want) -> int:
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
