"""The command line's own behaviour (sub-commands are tested with their packages)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["bench", "soak"])
def test_bench_extra_missing_is_named(command):
    # a child interpreter in which hdrhistogram cannot be imported, as after
    # a plain `pip install .`
    code = ("import sys; sys.modules['hdrh'] = None\n"
            "from stubdom.cli import main\n"
            f"sys.exit(main([{command!r}, '--help']))\n")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"stubdom-teed {command}: needs the bench extra "
                                "(pip install 'stubdom-teed[bench]'): module 'hdrh' is missing")
