"""One sample of a soak: the figures (memory of both processes, pins, TEE
resources, the daemon's journal, the load's counters) and the invariants
checked at that moment, each failure recorded as a violation."""

from __future__ import annotations

import os
import time
from pathlib import Path

from stubdom.mediator import client_id

from .platforms import HostilePlatform
from .soak_load import Fleet
from .soak_violations import Violations

__all__ = ["Sampler", "proc_count", "proc_memory_kib"]

_MEMORY_FIELDS = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def proc_memory_kib(pid: int | None) -> dict[str, int]:
    """VmRSS and its parts (RssAnon: the process's own heap and stacks;
    RssFile / RssShmem: touched pages of file and shared mappings, here
    mostly the machine's RAM file) of a process (this one when None), KiB."""
    out = {}
    with open(f"/proc/{'self' if pid is None else pid}/status") as f:
        for line in f:
            key = _MEMORY_FIELDS.get(line.split(maxsplit=1)[0] if line.strip() else "")
            if key:
                out[key] = int(line.split()[1])
    return out


def proc_count(pid: int | None, what: str) -> int:
    """Threads (``"threads"``) or open file descriptors (``"fds"``) of a
    process (this one when None); -1 when it is gone."""
    base = f"/proc/{'self' if pid is None else pid}"
    try:
        if what == "fds":
            return len(os.listdir(f"{base}/fd"))
        with open(f"{base}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return -1
    raise ValueError(f"{base}/status has no Threads line")


class Sampler:
    """Samples ``platform`` and checks the invariants (docs/architecture.md):

    * the isolation oracle recorded nothing (every TEE access was to a frame
      the calling domain owns and had pinned) — ``oracle``;
    * the daemon is alive (invariant 8) — ``daemon_died``;
    * per live domain: the mediator reports no internal error
      (``internal_errors``), the daemon no backend failure
      (``backend_failures``), and pinned pages, shared buffers and calls in
      flight are within the domain's limits, the machine's pins of the
      domain within its pinned pages plus the shadow pool (``limits``).
    The SMC check (every SMC at the TEE carries a live client ID) runs as
    SMCs arrive (:meth:`Fleet.check`)."""

    def __init__(self, platform: HostilePlatform, fleet: Fleet, violations: Violations,
                 journal: Path | None) -> None:
        self.p = platform
        self.fleet = fleet
        self.violations = violations
        self.journal = journal
        self.daemon_pid = platform.daemon.pid if platform.daemon is not None else None
        self.daemon_dead = False
        self._seen: dict[tuple[int, int, str], int] = {}  # (domid, incarnation, counter) -> last value

    def _once(self, domid: int, counter: str, value: int, detail: str) -> None:
        key = (domid, self.fleet.generation[domid], counter)
        if value > self._seen.get(key, 0):
            self._seen[key] = value
            self.violations.add(counter, f"d{domid}: {counter} = {value}: {detail}")

    def _check_domain(self, domid: int, totals: dict) -> None:
        state = self.p.mediator_state(domid)
        self._once(domid, "internal_errors", state["internal_errors"], str(state)[:2000])
        lim = state["limits"]
        over = []
        if state["pinned_pages"] > lim["max_total_pages"]:
            over.append(f"pinned_pages {state['pinned_pages']} > {lim['max_total_pages']}")
        if state["buffers"] > lim["max_shm_buffers"]:
            over.append(f"buffers {state['buffers']} > {lim['max_shm_buffers']}")
        if state["calls_in_flight"] > lim["max_calls"]:
            over.append(f"calls_in_flight {state['calls_in_flight']} > {lim['max_calls']}")
        # The machine's own count (the domain runs on meanwhile: compared
        # with the limit, not with the dump taken a moment earlier).
        machine_pins = sum(self.p.machine.pinned_frames(domid).values())
        if machine_pins > lim["max_total_pages"] + state.get("shadow_pages", 0):
            over.append(f"machine pins {machine_pins} > max_total_pages {lim['max_total_pages']} + shadow_pages "
                        f"{state.get('shadow_pages', 0)}")
        if over:
            self.violations.add("limits", f"d{domid}: " + "; ".join(over))
        stats = self.p.daemon_stats(domid)
        if stats is not None:
            self._once(domid, "backend_failures", stats["backend_failures"], str(stats)[:2000])
        totals["mediator_pinned_pages"] += state["pinned_pages"]
        totals["mediator_buffers"] += state["buffers"]
        totals["calls_in_flight"] += state["calls_in_flight"]
        tee = self.p.tee.partition_stats(client_id(domid))
        if tee is not None:
            totals["tee_sessions"] += tee.sessions
            totals["tee_threads_suspended"] += tee.threads_suspended
            totals["tee_registered_shm"] += tee.registered_shm

    def check_daemon(self) -> bool:
        """False (and one ``daemon_died`` violation) once the daemon exited."""
        if self.p.daemon is None or self.daemon_dead:
            return not self.daemon_dead
        code = self.p.daemon.proc.poll()
        if code is None:
            return True
        self.daemon_dead = True
        tail = "".join(self.p.daemon_log().splitlines(keepends=True)[-10:])
        self.violations.add("daemon_died", f"stubdom-teed (pid {self.daemon_pid}) exited with status {code}; "
                            f"log tail:\n{tail}")
        return False

    def check_oracle(self) -> None:
        found = self.p.oracle.clear()
        for v in found[:5]:
            self.violations.add("oracle", v.describe())
        if len(found) > 5:
            self.violations.add("oracle", f"... and {len(found) - 5} more isolation violations")

    def sample(self, t_s: float, counters: dict) -> dict:
        """Check the invariants and return the figures at ``t_s`` seconds
        into the run (``counters``: the load's running totals)."""
        self.check_oracle()
        alive = self.check_daemon()
        totals = dict.fromkeys(("mediator_pinned_pages", "mediator_buffers", "calls_in_flight", "tee_sessions",
                                "tee_threads_suspended", "tee_registered_shm"), 0)
        if alive:
            with self.fleet.lock:
                domids = self.fleet.domids()
                for domid in domids:
                    try:
                        self._check_domain(domid, totals)
                    except Exception as e:
                        self.violations.add("sample_failed", f"d{domid}: {e!r}", e)
        pinned = self.p.machine.pinned_frames()
        mem = proc_memory_kib(None)
        row = {
            "t_s": round(t_s, 2),
            "platform_rss_kib": mem["rss"], "platform_anon_kib": mem["anon"],
            "platform_shared_kib": mem["file"] + mem["shmem"],
            "platform_threads": proc_count(None, "threads"),
            "platform_fds": proc_count(None, "fds"),
            "daemon_rss_kib": None, "daemon_anon_kib": None, "daemon_shared_kib": None, "daemon_threads": None,
            "daemon_fds": None, "journal_bytes": None,
            "machine_pinned_frames": len(pinned),
            "machine_pins": sum(pinned.values()),
            "dying_domains": len(self.p.machine.dying_domains()),
            "tee_partitions": len(self.p.tee.guest_ids()),
            **totals,
            "smcs_at_tee": len(self.p.tee_smcs),
            "oracle_accesses": self.p.oracle.accesses,
            "violations": len(self.violations),
            **counters,
            "loadavg_1m": os.getloadavg()[0],
        }
        if self.daemon_pid is not None and not self.daemon_dead:
            try:
                mem = proc_memory_kib(self.daemon_pid)
                row["daemon_rss_kib"], row["daemon_anon_kib"] = mem["rss"], mem["anon"]
                row["daemon_shared_kib"] = mem["file"] + mem["shmem"]
                row["daemon_threads"] = proc_count(self.daemon_pid, "threads")
                row["daemon_fds"] = proc_count(self.daemon_pid, "fds")
            except (OSError, ValueError):
                pass  # exited between the check and here: the next sample says so
        if self.journal is not None:
            try:
                row["journal_bytes"] = self.journal.stat().st_size
            except OSError:
                row["journal_bytes"] = 0
        row["wall"] = time.strftime("%H:%M:%S", time.gmtime())
        return row
