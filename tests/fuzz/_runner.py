"""What every coverage-guided harness in tests/fuzz/ shares: the command
line, atheris when it is installed, hypothesis-driven byte fuzzing when it
is not, and a small reader of fuzz bytes.

Each harness module defines

    seeds() -> list[bytes]                       a small seed corpus
    target(workdir: Path) -> ContextManager[Callable[[bytes], None]]
                                                 the one-input function

and ends with ``if __name__ == "__main__": sys.exit(main(NAME, target, seeds))``.
The one-input function raises (AssertionError or any unexpected exception)
exactly when it found a bug; every defined error of the parser is caught
inside it.  Crashes found become regression inputs in
tests/fuzz/corpus/<name>/ (run by tests/test_fuzz_harnesses.py).

    python tests/fuzz/<name>.py [-runs=N] [-max_len=N] [CORPUS_DIR ...] [--hypothesis]
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = ["Reader", "main", "corpus_dir", "corpus"]

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS = 10_000


def corpus_dir(name: str) -> Path:
    """The committed regression inputs of harness ``name``."""
    return HERE / "corpus" / name


def corpus(name: str, seeds: Callable[[], list[bytes]]) -> list[bytes]:
    """Seeds plus every committed regression input."""
    d = corpus_dir(name)
    files = sorted(d.iterdir()) if d.is_dir() else []
    return list(seeds()) + [f.read_bytes() for f in files if f.is_file() and not f.name.startswith(".")]


class Reader:
    """Consumes fuzz bytes front to back; past the end everything is 0 (so
    every input is valid and the fuzzer's mutations stay meaningful)."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def take(self, n: int) -> bytes:
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out + bytes(n - len(out))

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def rest(self) -> bytes:
        out = self._data[self._pos:]
        self._pos = len(self._data)
        return out

    def remaining(self) -> int:
        return max(0, len(self._data) - self._pos)


def _flags(argv: list[str]) -> tuple[dict[str, str], list[str], bool]:
    flags, dirs, use_hypothesis = {}, [], False
    for a in argv:
        if a == "--hypothesis":
            use_hypothesis = True
        elif a.startswith("-") and "=" in a:
            k, v = a.lstrip("-").split("=", 1)
            flags[k] = v
        else:
            dirs.append(a)
    return flags, dirs, use_hypothesis


def _hypothesis(one_input: Callable[[bytes], None], seeds: list[bytes], runs: int, max_len: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    for s in seeds:
        one_input(s)

    @settings(max_examples=runs, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=max_len),
                     st.sampled_from(seeds).flatmap(lambda s: st.binary(max_size=len(s) + 64).map(
                         lambda noise: bytes(a ^ b for a, b in zip(s.ljust(len(noise), b"\0"), noise))
                         + s[len(noise):]))))
    def fuzz(data):
        one_input(data)

    fuzz()
    return 0


def main(name: str, target, seeds: Callable[[], list[bytes]], argv: list[str] | None = None,
         *, max_len: int = 4096) -> int:
    """Run harness ``name``: atheris (libFuzzer) when installed, else
    hypothesis over bytes; seeds and corpus/<name>/ first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags, dirs, use_hypothesis = _flags(argv)
    runs = int(flags.get("runs", DEFAULT_RUNS))
    max_len = int(flags.get("max_len", max_len))
    initial = corpus(name, seeds)
    if importlib.util.find_spec("atheris") is None:
        use_hypothesis = True
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        if use_hypothesis:
            print(f"{name}: hypothesis byte fuzzing, {runs} examples", file=sys.stderr)
            with target(Path(tmp)) as one_input:
                rc = _hypothesis(one_input, initial, runs, max_len)
            print(f"{name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
            return rc
        # libFuzzer ends the process with exit() and never returns to Python:
        # fuzz in a child, so that this process removes the work directory.
        pid = os.fork()
        if pid == 0:
            try:
                _atheris(name, target, Path(tmp), initial, flags, dirs, runs, max_len)
            except BaseException:  # a crash: the input is saved already
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        print(f"{name}: libFuzzer exited {rc} after {time.monotonic() - started:.0f} s", file=sys.stderr)
        return rc


def _atheris(name, target, tmp: Path, initial, flags, dirs, runs, max_len) -> None:
    import atheris

    seed_dir = tmp / "seeds"
    seed_dir.mkdir()
    for i, s in enumerate(initial):
        (seed_dir / f"seed-{i:04d}").write_bytes(s)
    # libFuzzer writes new inputs into the first directory and reads them all.
    dirs = [*dirs, str(seed_dir)]
    args = [f"-{k}={v}" for k, v in flags.items() if k not in ("max_len", "runs")]
    args += [f"-max_len={max_len}", f"-runs={runs}"]
    work = tmp / "work"
    work.mkdir()
    prefix = flags.get("artifact_prefix", "./")

    with target(work) as one_input:
        def guarded(data: bytes) -> None:
            try:
                one_input(data)
            except BaseException:
                crash = Path(f"{prefix}crash-{hashlib.sha1(data).hexdigest()}")
                crash.write_bytes(data)
                print(f"{name}: crashing input saved to {crash}", file=sys.stderr)
                raise

        atheris.instrument_all()
        atheris.Setup([sys.argv[0], *args, *dirs], guarded)
        atheris.Fuzz()
