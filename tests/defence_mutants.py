"""Can the attack tests fail?  Remove one defence at a time and run them.

Each mutant below deletes or weakens exactly one check of the mediator (or
of the page-list parser, or of the EL2 port's client-ID stamp) in a
throw-away clone of the repository, then runs the tests that guard it:
every hostile, mediator, fuzz and OP-TEE ABI test, el2 placement only (the
mediator core is the same code under stubdom); the defences of the daemon,
the ring and the platform name their own tests.  A mutant of the ring's C
code (cffi_build/) gets the extension rebuilt in the clone.  A mutant that
leaves the tests green is a defence no test defends: the command says
SURVIVED and exits 1; tests killed by a signal (a SIGBUS no longer caught)
count as caught.  By hand, not in CI (about a minute per mutant on the
project's 2-core machine); docs/security.md has the last run.

    python tests/defence_mutants.py [NAME ...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the tests a mutant of the mediator core must fail
GUARDS = ("test_hostile", "test_mediator", "test_fuzz", "test_optee")
# ... and a mutant of the runtime directory's defences (they need root to play another user)
RUNDIR = ("test_rundir",)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str  # must occur exactly once in path
    new: str
    defence: str
    # the test files (name prefixes) that must catch it, and pytest's -k
    # ("" for none): the mediator core's defences are caught under el2 (the
    # same code runs under stubdom); the daemon's, the ring's and the
    # platform's need their own tests and the stubdom placement
    guards: tuple[str, ...] = GUARDS
    select: str = "not stubdom"


MUTANTS = (
    Mutant("p2m_type_unchecked", "stubdom/mediator/translate.py",
           "if entry.type != P2mType.p2m_ram_rw:", "if False:",
           "only p2m_ram_rw guest pages are handed to OP-TEE (not MMIO, not read-only)"),
    Mutant("pa0_accepted", "stubdom/mediator/translate.py", "if entry.mfn == 0:", "if False:",
           "machine address 0 is never handed to OP-TEE"),
    Mutant("buffer_limit_unchecked", "stubdom/mediator/translate.py",
           "if ctx.nr_buffers >= lim.max_shm_buffers:", "if False:", "per-domain limit: number of buffers"),
    Mutant("total_pages_unchecked", "stubdom/mediator/translate.py",
           "if counted + pages > lim.max_total_pages:", "if False:",
           "per-domain limit: total pinned pages"),
    Mutant("calls_limit_unchecked", "stubdom/mediator/core.py", "if ctx.calls >= ctx.max_calls:", "if False:",
           "per-domain limit: standard calls in flight"),
    Mutant("guest_a7_passed", "stubdom/mediator/port.py",
           "return _regs(self._tee.smc(tuple(regs[:7]) + (client_id(domid),)))",
           "return _regs(self._tee.smc(tuple(regs[:8])))",
           "the client ID in a7 is stamped by the port, never the guest's"),
    Mutant("rpc_shm_free_any_kind", "stubdom/mediator/core.py",
           "if buf is None or buf.kind is not ShmKind.RPC:", "if buf is None:",
           "OP-TEE's SHM_FREE unpins only RPC SHM, never a guest registration"),
    Mutant("pagelist_loop_unchecked", "stubdom/optee/pagelist.py", "if nxt in visited:", "if False:",
           "a page list whose next pointer loops is refused"),
    Mutant("pagelist_entry_unaligned", "stubdom/optee/pagelist.py", "if entry & PAGE_MASK:", "if False:",
           "a page-list entry must be page aligned"),
    Mutant("cookie_reuse", "stubdom/mediator/cookies.py", "    if used is not None:", "    if False:",
           "a cookie already claimed, of any kind and in any state, is refused"),
    Mutant("cookie_zero", "stubdom/mediator/cookies.py", "    if cookie == 0:", "    if False:",
           "cookie 0 (OP-TEE's 'no buffer') is refused"),
    Mutant("rmem_any_cookie", "stubdom/mediator/core.py",
           "if cookies.live_registration(ctx, p.shm_ref) is None:", "if False:",
           "an RMEM parameter names a live registration only"),
    Mutant("pending_registration_usable", "stubdom/mediator/cookies.py",
           "    if buf is None or buf.kind is not ShmKind.REGISTERED or buf.state is not ShmState.LIVE:\n"
           "        return None",
           "    if buf is None or buf.kind is not ShmKind.REGISTERED:\n        return None",
           "a pending or unregistering registration cannot be named (RMEM, REGD_ARG)"),
    Mutant("unregister_unclaimed", "stubdom/mediator/cookies.py",
           "        if buf is None or buf.kind is not ShmKind.REGISTERED or buf.state is not ShmState.LIVE:\n"
           "            used",
           "        if buf is None or buf.kind is not ShmKind.REGISTERED:\n            used",
           "UNREGISTER_SHM claims a live registration: a second one while it is in OP-TEE is refused"),
    Mutant("unanswered_registration_released", "stubdom/mediator/core.py", "            if call.begun:",
           "            if False:", "a registration OP-TEE may hold (no answer) stays pinned"),
    Mutant("shape_unchecked", "stubdom/mediator/core.py", "        if n > most:", "        if False:",
           "a call OP-TEE refuses for its number of params is refused before anything is pinned"),
    Mutant("teardown_keeps_lost_pins", "stubdom/mediator/core.py",
           "            for mfn, n in pinned.items():\n                self._machine.put_pages([mfn] * n)",
           "            pass", "teardown finishes: a lost pin is dropped after VM_DESTROYED"),
    Mutant("teardown_stops_destroy", "stubdom/platform/platform.py", "        finally:\n            # a broken",
           "        except ZeroDivisionError:\n            # a broken",
           "a broken teardown invariant never makes a domain undestroyable"),
    Mutant("undo_answer_ignored", "stubdom/mediator/recovery.py",
           "                if ret in (0, TEEC_ERROR_BAD_PARAMETERS):\n                    buf, call.register",
           "                if True:\n                    buf, call.register",
           "an abandoned registration is unpinned only once OP-TEE says it holds none",
           guards=("test_hostile_cookies",), select="gives_up"),
    Mutant("translation_in_one_piece", "stubdom/mediator/translate.py",
           "                yield\n                if ctx.dying:", "                if ctx.dying:",
           "a buffer is translated in steps another domain's requests run between",
           guards=("test_hostile_fairness",), select=""),
    Mutant("daemon_runs_a_call_whole", "stubdom/daemon/daemon.py", "await self.fair.step(domid)", "pass",
           "the daemon serves other domains between the steps of a call",
           guards=("test_hostile_fairness",), select="stubdom"),
    Mutant("el2_holds_the_interpreter", "stubdom/mediator/core.py", "    time.sleep(0)  #", "    pass  #",
           "at EL2 a step boundary lets another vCPU thread run",
           guards=("test_hostile_fairness",), select="el2"),
    Mutant("fast_path_ignores_policy", "stubdom/daemon/fastpath.py",
           "                if view.class_refusal(rule.function) is None:",
           "                if True:",
           "a call answered in C is one policy allows (the class, the domain enabled)",
           guards=("test_daemon_fastpath",), select=""),
    Mutant("fast_path_not_recompiled", "stubdom/daemon/daemon.py",
           "        self._recompile_fast()  #", "        pass  #",
           "a reload stops the calls it denies from being answered in C",
           guards=("test_daemon_fastpath",), select=""),
    Mutant("fast_path_answers_refused_forward", "cffi_build/teeif_fast.c",
           "            if (rc != 0) {", "            if (rc < 0) {",
           "a hypercall the gate refused answers nothing in C: the interpreter answers it",
           guards=("test_ring_fast",), select=""),
    # the SMC gate's checks, in C since issue 17 (cffi_build/teeif_gate.c)
    Mutant("gate_smc_unassigned_admitted", "cffi_build/teeif_gate.c",
           "        if (!is_assigned(g, domid))\n            return TEEIF_GATE_UNASSIGNED;\n        /* the SMCCC",
           "        /* the SMCCC",
           "the gate admits an SMC only for a domid the toolstack assigned",
           guards=("test_gate",), select=""),
    Mutant("gate_smc_owner_unchecked", "cffi_build/teeif_gate.c",
           "if (owner < TEEIF_GATE_OWNER_FIRST || owner > TEEIF_GATE_OWNER_LAST)", "if (0)",
           "the gate's SMCs reach the secure OS only (SMCCC owners 48..63), never PSCI or SiP",
           guards=("test_gate",), select=""),
    Mutant("gate_a7_passed", "cffi_build/teeif_gate.c",
           "req->a[7] = req->flags == TEEIF_GATE_OP_SMC ? (uint64_t)req->vcpu + 1 : TEEIF_GATE_HYP_CLIENT_ID;",
           "(void)0;",
           "the gate stamps the client ID in a7, never the stub domain's",
           guards=("test_gate",), select=""),
    Mutant("gate_hyp_a1_unchecked", "cffi_build/teeif_gate.c",
           "return req->a[1] == (uint64_t)domid + 1 ? TEEIF_GATE_ADMIT : refuse(status, TEEIF_GATE_EPERM);",
           "return TEEIF_GATE_ADMIT;",
           "VM_CREATED/VM_DESTROYED name the assigned domain a second time, as its client ID in a1",
           guards=("test_gate",), select=""),
    Mutant("gate_in_tee_unmarked", "cffi_build/teeif_gate.c", "        g->in_tee = req->vcpu;\n", "",
           "unassign waits for a hypercall of the domain the gate admitted into the TEE",
           guards=("test_gate",), select="unassign"),
    Mutant("no_anticipation", "stubdom/daemon/fairness.py", "        if not recent:\n            return",
           "        if True:\n            return",
           "a domain answered within the window has the first claim on the next step",
           guards=("test_daemon_fairness",), select=""),
    Mutant("recovery_drops_held_frames", "stubdom/daemon/recovery.py", "        if extras_free:",
           "        if True:", "recovery never unpins frames OP-TEE may still reference",
           guards=("test_hostile_cookies",), select="lost_with_the_daemon"),
    Mutant("static_shm_not_hwdom", "stubdom/mediator/core.py", "if not domain.is_hwdom:", "if False:",
           "the static shm region is the hardware domain's only"),
    Mutant("static_shm_not_direct", "stubdom/mediator/core.py", "if not domain.direct_mapped:", "if False:",
           "the static shm region needs a direct-mapped domain"),
    Mutant("double_resume", "stubdom/mediator/core.py",
           "call = ctx.suspended.pop(tid, None)", "call = ctx.suspended.get(tid)",
           "a suspended call is resumed once (a second RETURN_FROM_RPC gets ERESUME)"),
    # what the strict profile refuses that the xen profile leaves to OP-TEE
    # (docs/mediator.md, "Profiles"), and the xen profile's own defence
    Mutant("attr_unknown_unchecked", "stubdom/mediator/core.py",
           "if p.attr & ~_KNOWN_ATTR_BITS or t not in _KNOWN_TYPES:", "if False:",
           "strict: unknown attribute bits or types are refused by the mediator"),
    Mutant("meta_anywhere", "stubdom/mediator/core.py",
           "if p.is_meta and not (cmd == OPTEE_MSG_CMD_OPEN_SESSION and t in VALUE_TYPES):", "if False:",
           "strict: META only on OPEN_SESSION's value params"),
    Mutant("noncontig_anywhere", "stubdom/mediator/core.py",
           "if p.is_noncontig and t not in TMEM_TYPES:", "if False:",
           "strict: NONCONTIG only on a tmem"),
    Mutant("rpc_pages_uncounted", "stubdom/mediator/context.py",
           "        if self.profile.rpc_pages_count:\n            return self.pinned_pages",
           "        if False:\n            return self.pinned_pages",
           "strict: an RPC argument buffer's page counts against max_total_pages"),
    Mutant("argument_page_type_unchecked", "stubdom/mediator/core.py",
           "if entry_type not in self.profile.argument_page_types:", "if False:",
           "strict: a standard call's argument page must be p2m_ram_rw"),
    Mutant("refused_rpc_cookie_freed", "stubdom/mediator/core.py",
           "if refused and cookie == refused:", "if False:",
           "xen: OP-TEE's RPC FREE of a refused ALLOC's cookie releases nothing of the mediator's"),
    # local users and the runtime directory (docs/security.md): caught by the
    # test_rundir_* files, both placements
    Mutant("rundir_owner_unchecked", "stubdom/rundir/directory.py", "    if st.st_uid != uid:\n", "    if False:\n",
           "a runtime directory (or one in it) another user owns is refused", guards=RUNDIR, select=""),
    Mutant("rundir_writable_unchecked", "stubdom/rundir/directory.py", "    if st.st_mode & _GROUP_OTHER_WRITE:\n",
           "    if False:\n", "a runtime directory its group or others may write is refused",
           guards=RUNDIR, select=""),
    Mutant("rundir_above_owner_unchecked", "stubdom/rundir/directory.py",
           "if st.st_uid not in (uid, _ROOT_UID, unmapped):", "if False:",
           "a directory or link above the runtime directory another user owns is refused",
           guards=RUNDIR, select=""),
    Mutant("rundir_above_writable_unchecked", "stubdom/rundir/directory.py",
           "if stat.S_ISDIR(st.st_mode) and st.st_mode & _GROUP_OTHER_WRITE and not st.st_mode & stat.S_ISVTX:",
           "if False:", "a directory above it others may write, and not sticky, is refused",
           guards=RUNDIR, select=""),
    Mutant("rundir_created_umask", "stubdom/rundir/directory.py",
           "    os.chmod(path, DIR_MODE)  # mkdir's mode is narrowed by the umask; this is the mode\n", "",
           "directories in the runtime directory are 0700 whatever the umask", guards=RUNDIR, select=""),
    Mutant("platform_rundir_unchecked", "stubdom/platform/platform.py",
           "runtime = ensure_runtime_dir(config.mediator.runtime_dir)", "runtime = Path(config.mediator.runtime_dir)",
           "the platform checks its runtime directory (el2 too)", guards=RUNDIR, select=""),
    Mutant("gate_rundir_unchecked", "stubdom/platform/gate.py", "        ensure_runtime_dir(runtime_dir)\n", "",
           "the gate checks the runtime directory (platforms built without a configuration)",
           guards=RUNDIR, select=""),
    Mutant("daemon_rundir_unchecked", "stubdom/daemon/app.py",
           "        ensure_runtime_dir(config.mediator.runtime_dir)\n", "",
           "the daemon checks its runtime directory", guards=RUNDIR, select=""),
    Mutant("evtchn_listener_mode", "ring/_evtchn.py",
           "            os.fchmod(sock.fileno(), mode)\n            with _sockaddr(self.path) as addr:\n"
           "                sock.bind(addr)\n                os.chmod(addr, mode)",
           "            with _sockaddr(self.path) as addr:\n                sock.bind(addr)",
           "event-channel sockets (gate, domains) are 0600 whatever the umask", guards=RUNDIR, select=""),
    Mutant("control_socket_mode", "stubdom/daemon/control.py",
           "            os.fchmod(sock.fileno(), SOCKET_MODE)\n            with sockaddr(self.path) as addr:\n"
           "                await sock.bind(addr)\n                os.chmod(addr, SOCKET_MODE)",
           "            with sockaddr(self.path) as addr:\n                await sock.bind(addr)",
           "the control socket is 0600 whatever the umask", guards=RUNDIR, select=""),
    Mutant("journal_leftover_mode", "stubdom/daemon/journal.py", "            os.fchmod(fd, FILE_MODE)\n", "",
           "a checkpoint over a leftover journal.new is 0600", guards=RUNDIR, select=""),
    Mutant("control_client_peer_unchecked", "stubdom/daemon/control.py",
           'check_peer(stream.socket, self.path, "control client")', "pass",
           "the daemon closes on a control client of another user", guards=RUNDIR, select=""),
    Mutant("control_listener_peer_unchecked", "stubdom/public/control_client.py",
           'check_peer(sock, self.path, "stubdom-teed")', "pass",
           "the control protocol's client (the toolstack's and ctl's) refuses a control socket of "
           "another user", guards=RUNDIR, select=""),
    Mutant("gate_peer_unchecked", "stubdom/platform/gate.py",
           'peer = check_peer(chan.fileno(), self.evtchn_path, "stub domain")', "peer = None",
           "the gate refuses a stub domain of another user", guards=RUNDIR, select=""),
    Mutant("gate_client_peer_unchecked", "stubdom/public/gate_client.py",
           'check_peer(self._chan.fileno(), self.path, "SMC gate")', "pass",
           "the daemon refuses an SMC gate of another user", guards=RUNDIR, select=""),
    # -- frontends: reconnects, truncated rings, log floods (docs/security.md) --
    Mutant("reconnect_notify_dropped", "stubdom/daemon/backend.py",
           "if self.ring.recheck_notify():", "if False:",
           "a frontend that (re)connects is notified of answers already on the ring",
           guards=("test_frontends_reconnect",), select=""),
    Mutant("dead_channel_ends_batch", "stubdom/daemon/backend.py",
           "    except ring.PeerDied as e:\n        return e", "    except ring.PeerDied:\n        raise",
           "a frontend found dead mid-batch costs no answer to the requests already taken",
           guards=("test_frontends_reconnect",), select="mid_batch"),
    Mutant("sigbus_guard_off", "cffi_build/teeif_guard.c",
           "if (g == NULL || !is_ours(g, si)) {", "if (1) {",
           "a SIGBUS from a truncated ring fails that ring, not the process",
           # the tests whose victim is another process: the in-process ones would
           # take pytest down with them (which counts as caught too)
           guards=("test_frontends_truncate",), select="not domain_ring"),
    Mutant("recovery_keeps_broken_ring", "stubdom/daemon/backend.py",
           "except (ring.RingSizeError, ring.RingCorrupted, ring.RingTruncated) as e:", "except () as e:",
           "a ring broken while the daemon was down is replaced at restart, not fatal to recovery",
           guards=("test_frontends_truncate",), select="restart"),
    Mutant("gate_truncated_ring_kept", "stubdom/platform/gate.py",
           "except (RingCorrupted, RingTruncated) as e:", "except RingCorrupted as e:",
           "the gate resets a ring the stub domain truncated",
           guards=("test_frontends_truncate",), select="gate_ring"),
    Mutant("trap_path_truncation_raised", "stubdom/platform/stubdom.py",
           "            except RingTruncated as e:\n                self._break(e)",
           "            except RingCorrupted as e:\n                self._break(e)",
           "a domain ring truncated under the trap path cuts that domain off (ENOTAVAIL)",
           guards=("test_frontends_truncate",), select="domain_ring"),
    Mutant("ring_full_log_unlimited", "stubdom/platform/stubdom.py",
           'self._glog.warning("teeif ring full (daemon not answering): ENOTAVAIL")',
           'log.warning("d%d: teeif ring full (daemon not answering): ENOTAVAIL", self.domid)',
           "rate limit: the trap path's ring-full line", guards=("test_frontends_logflood",),
           select="ring_full"),
    Mutant("timeout_log_unlimited", "stubdom/platform/stubdom.py",
           'self._glog.warning("no answer from stubdom-teed within %g s: ENOTAVAIL",',
           'log.warning("d%d: no answer from stubdom-teed within %g s: ENOTAVAIL", self.domid,',
           "rate limit: the trap path's call-timeout line", guards=("test_frontends_logflood",),
           select="timing_out"),
    Mutant("status_log_unlimited", "stubdom/platform/stubdom.py",
           'self._glog.warning("stubdom-teed answered status %d: ENOTAVAIL", status)',
           'log.warning("d%d: stubdom-teed answered status %d: ENOTAVAIL", self.domid, status)',
           "rate limit: the trap path's failed-answer line", guards=("test_frontends_logflood",),
           select="failed_answers"),
    Mutant("reattach_log_unlimited", "stubdom/platform/stubdom.py",
           'self._glog.warning("cannot re-attach the teeif ring: %s", e)',
           'log.warning("d%d: cannot re-attach the teeif ring: %s", self.domid, e)',
           "rate limit: the trap path's failed re-attach line", guards=("test_frontends_logflood",),
           select="reattach"),
    Mutant("daemon_back_log_unlimited", "stubdom/platform/stubdom.py",
           'self._glog.log(logging.INFO, "stubdom-teed is back: event channel reconnected")',
           'log.info("d%d: stubdom-teed is back: event channel reconnected", self.domid)',
           "rate limit: the trap path's reconnected line", guards=("test_frontends_logflood",),
           select="hangs_up"),
    Mutant("gate_connect_log_unlimited", "stubdom/platform/gate.py",
           'self._peer_log.log(logging.INFO, "stub domain connected to the SMC gate")',
           'log.info("stub domain connected to the SMC gate")',
           "rate limit: the gate's stub-domain connection lines", guards=("test_frontends_logflood",),
           select="reconnecting_in_a_loop and stub_domain"),
    Mutant("gate_refused_peer_log_unlimited", "stubdom/platform/gate.py",
           'self._peer_log.warning("%s", e)  # a refused peer may retry in a loop', 'log.warning("%s", e)',
           "rate limit: the gate's line for a stub domain of another user (needs root to play one)",
           guards=("test_frontends_logflood",), select="another_users"),
    Mutant("gate_refusal_log_unlimited", "stubdom/platform/gate.py",
           'self._log_for(domid).log(logging.DEBUG, "gate refused op %d for d%d a0=%#x: %s",',
           'log.log(logging.DEBUG, "gate refused op %d for d%d a0=%#x: %s",',
           "rate limit: the gate's refusal lines", guards=("test_frontends_logflood",),
           select="was_not_given"),
    Mutant("gate_tee_error_log_unlimited", "stubdom/platform/gate.py",
           'self._log_for(domid).error("the TEE model raised on op %d for d%d a0=%#x", op, domid, a[0],',
           'log.error("the TEE model raised on op %d for d%d a0=%#x", op, domid, a[0],',
           "rate limit: the gate's per-domain secure-world failure lines",
           guards=("test_frontends_logflood",), select="secure_world"),
    Mutant("frontend_connected_log_unlimited", "stubdom/daemon/backend.py",
           'self.log.event(logging.INFO, "frontend_connected", connection=self.connections)',
           'event(self._logger, logging.INFO, "frontend_connected", domid=self.domid, '
           'connection=self.connections)',
           "rate limit: the daemon's frontend_connected line", guards=("test_frontends_logflood",),
           select="frontend_reconnecting"),
)



def _clone(dest: Path) -> None:
    """The committed tree (the ring extension is not in git: see _build)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)


def _build(dest: Path, m: Mutant) -> None:
    """The ring extension for the clone: a copy of the one built here, or,
    for a mutant of the C code, built from the clone's (mutated) sources."""
    if not m.path.startswith("cffi_build/"):
        for so in (ROOT / "ring").glob("_ring*.so"):
            (dest / "ring" / so.name).write_bytes(so.read_bytes())
        return
    r = subprocess.run([sys.executable, "cffi_build/build_ring.py"], cwd=dest, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{m.name}: building the mutated extension failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def run(m: Mutant, work: Path) -> tuple[bool, str]:
    """(caught, first failure or summary)."""
    d = work / m.name
    _clone(d)
    f = d / m.path
    src = f.read_text()
    if src.count(m.old) != 1:
        raise SystemExit(f"{m.name}: {m.old!r} occurs {src.count(m.old)} times in {m.path}; update the mutant")
    f.write_text(src.replace(m.old, m.new))
    _build(d, m)
    tests = sorted(str(p.relative_to(d)) for p in (d / "tests").glob("test_*.py") if p.name.startswith(m.guards))
    env = dict(os.environ, PYTHONPATH=str(d))
    select = ["-k", m.select] if m.select else []
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *select,
                        *tests], cwd=d, env=env, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    # a failed test says more than the errors its fixtures' teardown then raises
    failed = next((ln for ln in lines if ln.startswith("FAILED")),
                  next((ln for ln in lines if ln.startswith("ERROR tests")), lines[-1] if lines else ""))
    if r.returncode < 0:  # the tests' own process died: the defence is missed
        return True, f"pytest killed by {signal.Signals(-r.returncode).name}"
    if r.returncode not in (0, 1):
        raise SystemExit(f"{m.name}: pytest exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.returncode == 1, failed


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or m.name in argv]
    unknown = set(argv) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant(s) {sorted(unknown)}; known: {[m.name for m in MUTANTS]}")
    survived = []
    with tempfile.TemporaryDirectory(prefix="stubdom-mutants-") as tmp:
        for m in chosen:
            caught, first = run(m, Path(tmp))
            print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:32} {m.defence} | {first}", flush=True)
            if not caught:
                survived.append(m.name)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} mutants caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
