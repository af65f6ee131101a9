"""Can the attack tests fail?  Remove one defence at a time and run them.

Each mutant below deletes or weakens exactly one check of the mediator (or
of the page-list parser, or of the EL2 port's client-ID stamp) in a
throw-away clone of the repository, then runs the tests that guard it:
every hostile, mediator, fuzz and OP-TEE ABI test, el2 placement only (the
mediator core is the same code under stubdom).  A mutant that leaves them
all green is a defence no test defends: the command says SURVIVED and exits
1.  By hand, not in CI (about a minute per mutant on the project's 2-core
machine); docs/security.md has the last run.

    python tests/defence_mutants.py [NAME ...]
"""

from __future__ import annotations

import os
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
    # the test files (name prefixes) that must catch it, and pytest's -k:
    # the mediator core's defences are caught under el2 (the same code runs
    # under stubdom); the daemon's, the ring's and the platform's need their
    # own tests and the stubdom placement
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
           "if ctx.pinned_pages + pages > lim.max_total_pages:", "if False:",
           "per-domain limit: total pinned pages"),
    Mutant("calls_limit_unchecked", "stubdom/mediator/core.py", "if ctx.calls >= ctx.max_calls:", "if False:",
           "per-domain limit: standard calls in flight"),
    Mutant("guest_a7_passed", "stubdom/mediator/port.py",
           "return tuple(self._tee.smc(tuple(regs[:7]) + (client_id(domid),)))",
           "return tuple(self._tee.smc(tuple(regs[:8])))",
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
    Mutant("undo_answer_ignored", "stubdom/mediator/snapshot.py",
           "    if ret in (0, TEEC_ERROR_BAD_PARAMETERS):\n        call.register = None",
           "    if True:\n        call.register = None",
           "an abandoned registration is unpinned only once OP-TEE says it holds none",
           guards=("test_hostile_cookies",), select="gives_up"),
    Mutant("recovery_drops_held_frames", "stubdom/daemon/daemon.py", "            if extras_free:",
           "            if True:", "recovery never unpins frames OP-TEE may still reference",
           guards=("test_hostile_cookies",), select="lost_with_the_daemon"),
    Mutant("static_shm_not_hwdom", "stubdom/mediator/core.py", "if not domain.is_hwdom:", "if False:",
           "the static shm region is the hardware domain's only"),
    Mutant("static_shm_not_direct", "stubdom/mediator/core.py", "if not domain.direct_mapped:", "if False:",
           "the static shm region needs a direct-mapped domain"),
    Mutant("double_resume", "stubdom/mediator/core.py",
           "call = ctx.suspended.pop(tid, None)", "call = ctx.suspended.get(tid)",
           "a suspended call is resumed once (a second RETURN_FROM_RPC gets ERESUME)"),
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
           "runtime = ensure_runtime_dir(med.runtime_dir)", "runtime = Path(med.runtime_dir)",
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
    Mutant("toolstack_peer_unchecked", "stubdom/platform/toolstack.py",
           'check_peer(sock, self.path, "stubdom-teed")', "pass",
           "the toolstack refuses a control socket of another user", guards=RUNDIR, select=""),
    Mutant("ctl_peer_unchecked", "stubdom/daemon/client.py",
           'check_peer(self._sock, self.path, "stubdom-teed")', "pass",
           "ctl refuses a control socket of another user", guards=RUNDIR, select=""),
    Mutant("gate_peer_unchecked", "stubdom/platform/gate.py",
           'check_peer(chan.fileno(), self.evtchn_path, "stub domain")', "pass",
           "the gate refuses a stub domain of another user", guards=RUNDIR, select=""),
    Mutant("gate_client_peer_unchecked", "stubdom/platform/gate.py",
           'check_peer(self._chan.fileno(), self.path, "SMC gate")', "pass",
           "the daemon refuses an SMC gate of another user", guards=RUNDIR, select=""),
)



def _clone(dest: Path) -> None:
    """The committed tree plus the built ring extension (not in git)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    for so in (ROOT / "ring").glob("_ring*.so"):
        (dest / "ring" / so.name).write_bytes(so.read_bytes())


def run(m: Mutant, work: Path) -> tuple[bool, str]:
    """(caught, first failure or summary)."""
    d = work / m.name
    _clone(d)
    f = d / m.path
    src = f.read_text()
    if src.count(m.old) != 1:
        raise SystemExit(f"{m.name}: {m.old!r} occurs {src.count(m.old)} times in {m.path}; update the mutant")
    f.write_text(src.replace(m.old, m.new))
    tests = sorted(str(p.relative_to(d)) for p in (d / "tests").glob("test_*.py") if p.name.startswith(m.guards))
    env = dict(os.environ, PYTHONPATH=str(d))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", m.select,
                        *tests], cwd=d, env=env, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    failed = next((ln for ln in lines if ln.startswith(("FAILED", "ERROR tests"))), lines[-1] if lines else "")
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
            print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:26} {m.defence} | {first}", flush=True)
            if not caught:
                survived.append(m.name)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} mutants caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
