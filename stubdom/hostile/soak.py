"""``stubdom-teed soak``: N domains for M minutes, honest and hostile,
invariants checked every few seconds, memory measured; soak.json and
soak.md written to ``--out``.  See docs/soak.md.

    stubdom-teed soak --placement stubdom --domains 6 --hostile 3 --minutes 30 --churn-every 60 --out DIR

While it runs, ``DIR/soak.live.json`` says where everything is (the
platform's pid, the daemon's, the machine directory, the domains and their
roles) and how far the run got; it is removed at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from stubdom.measure import machine_description
from stubdom.mediator import DomainLimits
from stubdom.optee import OPTEE_SMC_SEC_CAP_RPC_ARG

from .platforms import BASE_CAPS, HostilePlatform, make_platform
from .soak_load import Fleet, HonestWorker, HostileWorker
from .soak_options import FIRST_DOMID, SoakOptions, SoakOptionsError, parse_soak_options
from .soak_report import JSON_NAME, LIVE_NAME, REPORT_NAME, build_document, write_outputs
from .soak_sample import Sampler
from .soak_violations import Violations

__all__ = ["run_soak", "soak_main"]

# Every domain's limits (the configuration's defaults): tight, so the floods
# reach each of them within their page budget, with room for the honest
# workloads (a registered digest holds 2 buffers, storage an RPC buffer).
SOAK_LIMITS = DomainLimits(max_calls=3, max_shm_buffers=8, max_pages_per_buffer=16, max_total_pages=48)
# OP-TEE as upstream builds it today: RPC_ARG too (CALL_WITH_REGD_ARG needs it).
SOAK_CAPS = BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG
# Machine frames beyond what the domains' RAM needs (mediator heap pages,
# the shadow pool, dying domains' zombies).
_SPARE_FRAMES = 8192
# A worker still inside a guest call when asked to stop gets this long past
# the call timeout before it counts as hung.
_JOIN_SLACK_S = 30.0


def _catalogue(opts: SoakOptions):
    if not opts.hostile:
        return None
    try:
        from . import attacks
    except ImportError as e:
        raise SoakOptionsError("--hostile", opts.hostile, f"the attack catalogue is not available ({e})") from None
    return attacks


def _write_live(out: Path, p: HostilePlatform, fleet: Fleet, t_s: float, violations: Violations) -> None:
    doc = {"pid": os.getpid(), "placement": p.placement_name, "machine": str(p.machine.path),
           "daemon_pid": p.daemon.pid if p.daemon is not None else None,
           "domains": {str(d): fleet.roles.get(d) for d in fleet.domids()}, "t_s": round(t_s, 1),
           "violations": len(violations)}
    tmp = out / (LIVE_NAME + ".new")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, out / LIVE_NAME)


def _counters(honest: list[HonestWorker], hostile: list[HostileWorker], fleet: Fleet) -> dict:
    return {"honest_calls": sum(w.total_calls for w in honest),
            "honest_failures": sum(w.failures for w in honest),
            "attack_iterations": sum(w.total_iterations for w in hostile),
            "churns": sum(w.churns for w in hostile),
            "smcs_checked": fleet.smcs_checked}


def _stop(workers, timeout: float, violations: Violations) -> None:
    for w in workers:
        w.stop()
    deadline = time.monotonic() + timeout
    for w in workers:
        if not w.join(max(0.0, deadline - time.monotonic())):
            violations.add("worker_hung", f"d{w.domid}'s {type(w).__name__} did not stop within {timeout:g} s")


def _final_checks(p: HostilePlatform, fleet: Fleet, sampler: Sampler, hung: set[int],
                  violations: Violations) -> dict:
    """Destroy every domain (checked); then nothing pinned, no dying
    domain, no TEE partition, the oracle clean."""
    for domid in fleet.domids():
        if domid not in hung:
            fleet.destroy(domid, "final_destroy_check")
    pinned = p.machine.pinned_frames()
    if pinned and not hung:
        violations.add("final_pinned", f"frames still pinned after every domain was destroyed: "
                       f"{dict(list(pinned.items())[:20])}")
    dying = p.machine.dying_domains()
    if dying and not hung:
        violations.add("final_dying", f"domains still dying (zombie frames): {dying}")
    partitions = p.tee.guest_ids()
    if partitions and not hung:
        violations.add("final_partition", f"TEE partitions left: client IDs {partitions}")
    sampler.check_oracle()
    return {"pinned_frames": len(pinned), "dying_domains": dying and {str(k): v for k, v in dying.items()},
            "tee_partitions": partitions, "domains_left": sorted(set(fleet.domids()) | fleet.wrecked)}


def _run(p: HostilePlatform, opts: SoakOptions, cat, violations: Violations, journal: Path | None) -> dict:
    out = opts.out
    fleet = Fleet(p, violations)
    p.tee_smcs.check = fleet.check  # from here on: the daemon's start-up probes are behind us
    honest: list[HonestWorker] = []
    hostile: list[HostileWorker] = []
    domid = FIRST_DOMID
    for i in range(opts.honest):
        honest.append(HonestWorker(fleet, domid, nr_pages=opts.honest_pages, seed=opts.seed * 1000 + i))
        domid += 1
    for i in range(opts.hostile):
        hostile.append(HostileWorker(fleet, domid, victim=honest[i % len(honest)].domid,
                                     nr_pages=opts.hostile_pages, seed=opts.seed, attack_s=opts.attack_every,
                                     churn_s=opts.churn_every, catalogue=cat))
        domid += 1
    sampler = Sampler(p, fleet, violations, journal)
    samples: list[dict] = []
    bar = tqdm(total=round(opts.duration_s), desc=f"soak {opts.placement}", unit="s", file=sys.stderr,
               disable=not opts.progress, leave=False)
    t0 = time.monotonic()
    for w in honest + hostile:
        w.start()
    shown = 0
    try:
        next_at = t0
        while True:
            t = time.monotonic() - t0
            samples.append(sampler.sample(t, _counters(honest, hostile, fleet)))
            _write_live(out, p, fleet, t, violations)
            bar.update(min(round(t), round(opts.duration_s)) - shown)
            shown = min(round(t), round(opts.duration_s))
            bar.set_postfix(violations=len(violations), calls=samples[-1]["honest_calls"], refresh=False)
            if t >= opts.duration_s or sampler.daemon_dead:
                break
            next_at = min(next_at + opts.sample_every, t0 + opts.duration_s)
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        bar.close()
        join_s = opts.call_timeout_ms / 1000 + _JOIN_SLACK_S
        _stop(hostile, join_s, violations)
        _stop(honest, join_s, violations)
    hung = {w.domid for w in honest + hostile if w.join(0) is False}
    elapsed = time.monotonic() - t0
    samples.append(sampler.sample(elapsed, _counters(honest, hostile, fleet)))
    final = _final_checks(p, fleet, sampler, hung, violations)
    ended = "daemon_died" if sampler.daemon_dead else "duration"
    return {"elapsed_s": round(elapsed, 1), "ended": ended, "samples": samples, "honest": honest, "hostile": hostile,
            "final": final, "fleet": fleet, "catalogue": sorted(cat.ATTACKS) if cat is not None else []}


def run_soak(opts: SoakOptions, argv: list[str] | None = None, *, catalogue=None) -> dict:
    """Run the soak described by ``opts``; write and return the document.
    ``catalogue``: what provides ``ATTACKS``, ``AttackLoop`` and
    ``AttackOutcomeWrong`` (default :mod:`stubdom.hostile.attacks`)."""
    cat = catalogue if catalogue is not None or not opts.hostile else _catalogue(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    violations = Violations()
    nr_frames = max(32768, opts.honest * opts.honest_pages + opts.hostile * opts.hostile_pages + _SPARE_FRAMES)
    with tempfile.TemporaryDirectory(prefix="stubdom-soak-", dir=opts.work_dir) as root:
        p = make_platform(Path(root), opts.placement, caps=SOAK_CAPS, limits=SOAK_LIMITS,
                          guest_count=max(8, opts.domains), nr_frames=nr_frames,
                          seed=opts.seed, smc_history=opts.smc_history, call_timeout_ms=opts.call_timeout_ms)
        journal = Path(root) / "run" / "stubdom-teed" / "journal" if p.daemon is not None else None
        try:
            result = _run(p, opts, cat, violations, journal)
        finally:
            try:
                p.close()
            except Exception as e:
                violations.add("close_failed", f"closing the platform: {e!r}", e)
            (out / LIVE_NAME).unlink(missing_ok=True)
        if p.daemon is not None and p.daemon_exit not in (0, None) and "daemon_died" not in violations.kinds():
            violations.add("daemon_exit", f"stubdom-teed exited with status {p.daemon_exit} on SIGTERM")
        result["daemon_exit"] = p.daemon_exit
    doc = build_document(result, opts, argv=list(argv or []), machine=machine, created=created,
                         violations=violations, platform={"caps": SOAK_CAPS, "limits": dataclasses.asdict(SOAK_LIMITS),
                                                          "nr_frames": nr_frames})
    write_outputs(doc, out)
    return doc


def soak_main(argv: list[str]) -> int:
    """Entry point of ``stubdom-teed soak``: 0 when every invariant held
    and memory was flat (or the run too short to judge), 1 otherwise, 2 on
    bad options."""
    try:
        opts = parse_soak_options(list(argv))
        doc = run_soak(opts, argv)
    except SoakOptionsError as e:
        print(f"stubdom-teed soak: {e}", file=sys.stderr)
        return 2
    v = doc["verdicts"]
    print(f"soak: {doc['options']['placement']}, {doc['elapsed_s']:.0f} s, {doc['totals']['honest_calls']} honest "
          f"calls, {doc['totals']['attack_iterations']} attack iterations, {doc['totals']['churns']} churns, "
          f"{doc['violations']['count']} violation(s); invariants {v['invariants']}, memory {v['memory']} "
          f"-> {opts.out / JSON_NAME}, {opts.out / REPORT_NAME}")
    return 0 if v["overall"] == "pass" else 1
