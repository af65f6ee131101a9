"""The fidelity document (docs/fidelity.md), written from a run: for every
benchmark workload, the SMCs, message commands and RPCs the guest issues and
sees in one steady-state call under each mediator profile, and what each
placement pays for them in traps, world switches, gate hypercalls and ring
entries — beside the upstream behaviour each sequence follows.

    stubdom-teed fidelity --out docs/fidelity.md

Each (profile, placement) pair boots the benchmark's own placement (one
domain, one vCPU, the benchmark's TEE and policy), prepares each workload as
the benchmark does, runs it once unrecorded (argument caches registered, the
TA's RPC argument cached, the REE file system's files created) and records
the next call.  Only counts that are the same in every run are written (a
test regenerates the document and compares): notifications and wake-ups,
which depend on who is already awake, are the benchmark's to measure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stubdom.guest.trace import TraceRecorder, compact
from stubdom.mediator.profile import PROFILE_NAMES, XEN_RELEASE

from .errors import BenchError
from .layout import Layout
from .placements import make_placement
from .workloads import WORKLOADS, Worker

__all__ = ["CROSSINGS", "FIDELITY_PLACEMENTS", "UPSTREAM", "Recording", "record", "fold", "render",
           "write_fidelity", "fidelity_main"]

#: The counts of one call a document can state (every run gives the same).
CROSSINGS = ("guest_traps", "smc_world_switches", "rpc_round_trips", "gate_hypercalls", "ring_pushes",
             "ring_pops", "p2m_lookups", "pages_pinned", "pages_unpinned", "bytes_copied")
_CROSSING_TITLES = ("guest traps", "world switches", "RPC round trips", "gate hypercalls",
                    "ring entries pushed", "popped", "p2m look-ups", "pages pinned", "unpinned", "bytes copied")
#: stubdom-poll moves the same entries as stubdom; only who waits differs.
FIDELITY_PLACEMENTS = ("el2", "stubdom")

_LINUX_CALL = ("Linux `optee_smc_do_call_with_arg` (drivers/tee/optee/smc_abi.c): with "
               "OPTEE_SMC_SEC_CAP_RPC_ARG the message is in the driver's registered argument cache and the call "
               "is CALL_WITH_REGD_ARG; without it (behind upstream Xen, which filters the capability) the "
               "message's physical address goes in CALL_WITH_ARG, and OP-TEE gets its RPC argument with an RPC "
               "ALLOC the first time a thread needs one, kept while the SHM cache is on")
_REGISTER = ("libteec `teec_pre_process_tmpref` registers the caller's buffer (TEEC_RegisterSharedMemory, "
             "TEE_IOC_SHM_REGISTER), Linux `optee_shm_register` issues REGISTER_SHM with a page list "
             "(CALL_WITH_RPC_ARG with RPC_ARG, CALL_WITH_ARG without), the INVOKE names it as an RMEM, and "
             "`teec_free_temp_refs` releases it: `tee_shm_release` → `optee_shm_unregister`, UNREGISTER_SHM")

#: What each workload is upstream: the libteec call and the Linux and OP-TEE
#: functions whose sequence the guest and the secure-world model follow.
UPSTREAM: dict[str, str] = {
    "fast_call": "OPTEE_SMC_CALL_GET_OS_REVISION, a fast call Linux makes once at probe "
                 "(`optee_msg_get_os_revision`); upstream Xen forwards it unchanged (optee.c "
                 "`optee_handle_call`). A measure of one trap and one world switch.",
    "invoke_value": "TEEC_InvokeCommand with one TEEC_VALUE_INOUT: TEE_IOC_INVOKE → `optee_invoke_func` "
                    "(call.c) → one INVOKE_COMMAND. " + _LINUX_CALL + ".",
    "digest_1p": "TEEC_InvokeCommand with two TEEC_TempMemoryReference (1 page in, 32 bytes out): " + _REGISTER
                 + ", for each of the two.",
    "digest_16p": "As digest_1p with 16 pages in.",
    "digest_129p": "As digest_1p with 129 pages in: the most one buffer may span behind upstream Xen "
                   "(MAX_SHM_BUFFER_PG).",
    "storage_rw": "The storage TA writes then reads one 4 KiB persistent object (TEE_CreatePersistentObject, "
                  "TEE_WriteObjectData, TEE_OpenPersistentObject, TEE_ReadObjectData): OP-TEE's REE FS "
                  "(core/tee/tee_ree_fs.c, fs_htree.c, fs_dirfile.c) opens, reads and writes dirf.db and the "
                  "object's hash-tree file through OPTEE_RPC_CMD_FS, with SHM_ALLOC / SHM_FREE of its transfer "
                  "buffer; tee-supplicant answers each. Both temporary memrefs are registered as in digest_1p.",
    "open_close": "TEEC_OpenSession + TEEC_CloseSession of the increment TA, a multi-instance REE TA: OP-TEE "
                  "loads it at every open (core/kernel/ree_fs_ta.c: LOAD_TA size query, SHM_ALLOC APPL that "
                  "tee-supplicant serves, LOAD_TA into it, SHM_FREE), then CLOSE_SESSION.",
}


@dataclass(frozen=True)
class Recording:
    """One workload's steady-state call under one profile and placement."""

    profile: str
    placement: str
    workload: str
    sequence: tuple[str, ...]
    counts: dict[str, int]


def record(profile: str, placement: str, workloads: Sequence[str], root: Path, *,
           seed: int = 1) -> list[Recording]:
    """Boot ``placement`` under ``profile`` and record each workload once."""
    layout = Layout(domains=1, vcpus_per_domain=1)
    recorder = TraceRecorder()
    bench = make_placement(placement, root, layout, seed=seed, mediator_profile=profile, guest_trace=recorder)
    out = []
    try:
        bench.start()
        domid = layout.domids[0]
        for name in workloads:
            worker = Worker(bench.drivers[domid], domid, 0, seed)
            try:
                call = WORKLOADS[name].prepare(worker)
                call()  # the steady state: caches registered, files created
                recorder.take()
                before = bench.counts()
                call()
                after = bench.counts()
                seen = recorder.take()
            finally:
                worker.close()
            recorder.take()
            out.append(Recording(profile, placement, name, tuple(compact(seen)),
                                 {op: after.get(op, 0) - before.get(op, 0) for op in CROSSINGS}))
    finally:
        bench.close()
    return out


def fold(sequence: Sequence[str]) -> list[str]:
    """The sequence as a reader takes it in: each RPC on one line with the
    guest's CALL_RETURN_FROM_RPC that answers it, and a run of identical
    lines as one line with its count (``× 4``). Nothing is dropped."""
    paired: list[str] = []
    i = 0
    while i < len(sequence):
        line = sequence[i]
        if line.startswith("<- RPC") and i + 1 < len(sequence) and sequence[i + 1] == "CALL_RETURN_FROM_RPC":
            paired.append(f"{line}, CALL_RETURN_FROM_RPC")
            i += 2
        else:
            paired.append(line)
            i += 1
    out: list[str] = []
    n = 0
    for j, line in enumerate(paired):
        n += 1
        if j + 1 == len(paired) or paired[j + 1] != line:
            out.append(line if n == 1 else f"{line}  (× {n})")
            n = 0
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def render(recordings: Sequence[Recording], workloads: Sequence[str]) -> str:
    """docs/fidelity.md from the recordings of every profile and placement."""
    by = {(r.profile, r.placement, r.workload): r for r in recordings}
    profiles = [p for p in PROFILE_NAMES if any(r.profile == p for r in recordings)]
    placements = [p for p in FIDELITY_PLACEMENTS if any(r.placement == p for r in recordings)]
    L = [
        "# Fidelity: what each workload sends, under each profile and placement",
        "",
        "Generated by `stubdom-teed fidelity --out docs/fidelity.md` (stubdom/bench/fidelity.py) from a run; "
        "tests/test_fidelity_doc.py regenerates it and fails if this file differs. Do not edit by hand.",
        "",
        "Every benchmark workload, run as `stubdom-teed bench` runs it (one domain, one vCPU, the benchmark's "
        "TEE with RPC_ARG and dynamic shared memory, the benchmark's policy), once to reach the steady state "
        "and once recorded. The guest is the Linux-shaped driver, supplicant and libteec-shaped client of "
        "docs/guest-driver.md; the secure world is the OP-TEE model of docs/tee-model.md. The profiles are "
        f"docs/mediator.md's: `xen` is upstream Xen {XEN_RELEASE}'s optee.c (the guest negotiates no "
        "RPC_ARG), `strict` is this project's protocol. The benchmark runs `xen` unless "
        "`--mediator-profile strict` is given.",
        "",
        "The sequence is what the guest issues and sees: each SMC (function and message command), each RPC "
        "OP-TEE answers with (`<- RPC`, with its command and detail) followed by the guest's "
        "CALL_RETURN_FROM_RPC that answers it, and the final return (`<-`); `(× n)` is n identical lines in a "
        "row. The "
        "mediator core is the same in both placements, so a profile's sequence is one for both (the "
        "generator checks it); what differs is what each crossing costs. Counts are per call: a guest trap "
        "is an SMC the vCPU traps to the hypervisor; a world switch an SMC into the secure world and its "
        "return; an RPC round trip a return to the normal world for an RPC; a gate hypercall an SMC the "
        "stub domain asks the hypervisor to issue; ring entries are the teeif requests and responses "
        "between the platform and the stub domain; p2m look-ups, pins, unpins and bytes copied are the "
        "mediator core's own, counted where it runs (in the daemon under stubdom). stubdom-poll moves the "
        "same entries as stubdom "
        "(notifications and wake-ups, which depend on who is awake, are measured by the benchmark, "
        "docs/performance.md).",
        "",
        "## Summary",
        "",
    ]
    header = ["workload", *(f"{p}: SMCs / RPCs" for p in profiles)]
    rows = []
    for wl in workloads:
        cells = [f"`{wl}`"]
        for p in profiles:
            r = by.get((p, placements[0], wl))
            cells.append("-" if r is None else f"{r.counts['guest_traps']} / {r.counts['rpc_round_trips']}")
        rows.append(cells)
    L += _table(header, rows) + [""]
    for wl in workloads:
        L += [f"## `{wl}`", "", WORKLOADS[wl].description + ".", "", "Upstream: " + UPSTREAM[wl], ""]
        for p in profiles:
            seqs = {pl: by[(p, pl, wl)].sequence for pl in placements if (p, pl, wl) in by}
            first = next(iter(seqs.values()), ())
            if any(s != first for s in seqs.values()):
                raise BenchError(f"{wl} under the {p} profile: the placements' sequences differ: {seqs}")
            L += [f"### `{p}` profile", "", "```", *fold(first), "```", ""]
        rows = [[f"`{p}`", pl, *[str(by[(p, pl, wl)].counts[op]) for op in CROSSINGS]]
                for p in profiles for pl in placements if (p, pl, wl) in by]
        L += _table(["profile", "placement", *_CROSSING_TITLES], rows) + [""]
    return "\n".join(L)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stubdom-teed fidelity",
                                description="Record every benchmark workload's SMC/RPC sequence under each "
                                            "mediator profile and placement and write docs/fidelity.md")
    p.add_argument("--out", default="fidelity.md", help="the Markdown file to write (default fidelity.md)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where runtime directories go (default /dev/shm, else the temporary directory)")
    return p


def write_fidelity(out: Path, workloads: Sequence[str], *, workdir: Path | None = None) -> str:
    """Record everything and write the document to ``out``; its text."""
    if workdir is None and os.path.isdir("/dev/shm"):
        workdir = Path("/dev/shm")
    recordings: list[Recording] = []
    with tempfile.TemporaryDirectory(prefix="stubdom-fidelity-", dir=workdir) as tmp:
        for profile in PROFILE_NAMES:
            for placement in FIDELITY_PLACEMENTS:
                root = Path(tmp) / f"{profile}-{placement}"
                root.mkdir()
                recordings += record(profile, placement, workloads, root)
    text = render(recordings, workloads) + "\n"
    out.write_text(text)
    return text


def fidelity_main(argv: Sequence[str]) -> int:
    opts = _parser().parse_args(argv)
    workloads = [w.strip() for w in opts.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        _parser().error(f"--workloads {opts.workloads!r}: not one of {', '.join(WORKLOADS)}")
    try:
        write_fidelity(Path(opts.out), workloads, workdir=Path(opts.workdir) if opts.workdir else None)
    except BenchError as e:
        print(f"stubdom-teed fidelity: {e}", file=sys.stderr)
        return 1
    print(opts.out)
    return 0
