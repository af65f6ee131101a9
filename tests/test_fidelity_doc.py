"""docs/fidelity.md is what a run produces: the document is regenerated
here (both profiles, el2 and a real stub-domain daemon) and must equal the
committed file, so every sequence and count it states is pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from stubdom.bench import WORKLOADS, Layout
from stubdom.bench.fidelity import fold, record, write_fidelity
from stubdom.bench.options import parse_options
from stubdom.bench.stubdom_run import daemon_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"


def test_the_committed_document_is_what_a_run_writes(tmp_path):
    text = write_fidelity(tmp_path / "fidelity.md", list(WORKLOADS), workdir=tmp_path)
    assert DOC.read_text() == text, (
        "docs/fidelity.md differs from a run: regenerate it with "
        "`stubdom-teed fidelity --out docs/fidelity.md` and read the diff")


@pytest.mark.parametrize("placement", ["el2", "stubdom"])
def test_each_profile_speaks_its_protocol(tmp_path, placement):
    """xen: the guest negotiated no RPC_ARG (Xen filters it), so every
    yielding call is CALL_WITH_ARG; strict: the argument cache (REGD_ARG)
    and CALL_WITH_RPC_ARG for registrations."""
    xen = {r.workload: r for r in record("xen", placement, ["invoke_value", "digest_1p"], tmp_path / "x")}
    strict = {r.workload: r for r in record("strict", placement, ["invoke_value", "digest_1p"], tmp_path / "s")}
    assert xen["invoke_value"].sequence == ("CALL_WITH_ARG INVOKE_COMMAND", "<- OK")
    assert strict["invoke_value"].sequence == ("CALL_WITH_REGD_ARG INVOKE_COMMAND", "<- OK")
    assert [line.split()[0] for line in xen["digest_1p"].sequence[::2]] == ["CALL_WITH_ARG"] * 5
    assert [line for line in strict["digest_1p"].sequence[::2]] == [
        "CALL_WITH_RPC_ARG REGISTER_SHM", "CALL_WITH_RPC_ARG REGISTER_SHM", "CALL_WITH_REGD_ARG INVOKE_COMMAND",
        "CALL_WITH_RPC_ARG UNREGISTER_SHM", "CALL_WITH_RPC_ARG UNREGISTER_SHM"]
    crossings = 1 if placement == "stubdom" else 0
    for r in (*xen.values(), *strict.values()):
        assert r.counts["gate_hypercalls"] == crossings * r.counts["smc_world_switches"]
        assert r.counts["ring_pushes"] == 2 * crossings * r.counts["guest_traps"]


def test_fold_keeps_every_line():
    seq = ["CALL_WITH_ARG INVOKE_COMMAND", "<- RPC CMD FS READ", "CALL_RETURN_FROM_RPC", "<- RPC CMD FS READ",
           "CALL_RETURN_FROM_RPC", "<- RPC CMD FS CLOSE", "CALL_RETURN_FROM_RPC", "<- OK"]
    assert fold(seq) == ["CALL_WITH_ARG INVOKE_COMMAND", "<- RPC CMD FS READ, CALL_RETURN_FROM_RPC  (× 2)",
                         "<- RPC CMD FS CLOSE, CALL_RETURN_FROM_RPC", "<- OK"]
    assert fold([]) == []
    assert fold(["<- RPC CMD FS READ"]) == ["<- RPC CMD FS READ"]  # an RPC not (yet) answered


def test_the_bench_runs_the_xen_profile_unless_told(tmp_path):
    assert parse_options([]).mediator_profile == "xen"
    assert parse_options(["--mediator-profile", "strict"]).mediator_profile == "strict"
    with pytest.raises(SystemExit):
        parse_options(["--mediator-profile", "linux"])
    cfg = daemon_config(Layout(1, 1), tmp_path, poll_window_us=0, seed=1, mediator_profile="xen")
    assert cfg["mediator"]["profile"] == "xen"
