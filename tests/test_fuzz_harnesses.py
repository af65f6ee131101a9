"""Every coverage-guided harness in tests/fuzz/ runs its one-input function
over its seed corpus and its committed regression inputs
(tests/fuzz/corpus/<name>/), plus a few hundred hypothesis-generated
mutations of them: the harnesses keep working, and what they once found
stays fixed.  The real fuzzing runs are in docs/fuzzing.md."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
HARNESSES = ("msgarg", "pagelist", "mediator_args", "rpc_cmd", "ring_entries", "control_wire", "config_yaml")


@pytest.fixture
def harness(request, monkeypatch):
    monkeypatch.syspath_prepend(str(FUZZ_DIR))
    return importlib.import_module(request.param)


def test_every_harness_is_listed():
    found = {p.stem for p in FUZZ_DIR.glob("*.py") if not p.name.startswith("_")}
    assert found == set(HARNESSES)


@pytest.mark.parametrize("harness", HARNESSES, indirect=True)
def test_harness_over_its_corpus(harness, tmp_path):
    import _runner

    inputs = _runner.corpus(harness.NAME, harness.seeds)
    assert len(inputs) >= 4
    with harness.target(tmp_path) as one_input:
        for data in inputs:
            one_input(data)

        # A few mutations of the seeds, as the fuzzer would start.
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(seed=st.sampled_from(inputs), flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)),
                                                            max_size=8))
        def mutated(seed, flips):
            data = bytearray(seed)
            for pos, x in flips:
                if data:
                    data[pos % len(data)] ^= x
            one_input(bytes(data))

        mutated()


def test_the_runner_fuzzes_without_atheris(tmp_path, monkeypatch, capsys):
    """``--hypothesis`` (the fallback when atheris is missing) runs a harness."""
    monkeypatch.syspath_prepend(str(FUZZ_DIR))
    import _runner
    import msgarg

    assert _runner.main("msgarg", msgarg.target, msgarg.seeds, ["-runs=50", "--hypothesis"]) == 0
    assert "hypothesis byte fuzzing, 50 examples" in capsys.readouterr().err


def test_reader_pads_with_zeros(monkeypatch):
    monkeypatch.syspath_prepend(str(FUZZ_DIR))
    from _runner import Reader

    r = Reader(b"\x01\x02\x03")
    assert (r.u16(), r.u32(), r.take(2), r.remaining()) == (0x0201, 3, b"\0\0", 0)
