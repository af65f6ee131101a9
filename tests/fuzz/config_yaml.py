"""Fuzz harness: the YAML configuration loader (``stubdom.config.parse_config``)
over arbitrary text — what an operator's editor, a template or a typo can
produce.

Property: any text either parses into a Config or raises ``ConfigError``
whose every problem is a ``file:line: key: message`` line naming the file;
nothing else escapes (no YAML, Python or model exception).

    python tests/fuzz/config_yaml.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import re
import sys
from importlib.resources import files
from pathlib import Path

from _runner import main

from stubdom.config import Config, ConfigError, parse_config

NAME = "config_yaml"
SOURCE = "fuzz.yaml"
PROBLEM = re.compile(r"^fuzz\.yaml(:\d+)?: ")


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        config = parse_config(text, SOURCE, base_dir=Path("/nonexistent-fuzz-base"))
    except ConfigError as e:
        assert e.problems, "a ConfigError without problems"
        for line in e.problems:
            assert PROBLEM.match(line), line
        return
    assert isinstance(config, Config)


def seeds() -> list[bytes]:
    out = [(files("stubdom.config") / "xen.yaml").read_bytes()]
    root = Path(__file__).resolve().parents[2] / "configs"
    out += [p.read_bytes() for p in sorted(root.glob("*.yaml"))]
    out += [b"", b"tee: {threads: 0x10}\n", b"domains:\n  - domid: 1\n  - domid: 1\n",
            b"mediator: &a {placement: el2}\nplatform: *a\n", b"- 1\n- 2\n", b"tee: !!python/none x\n"]
    return out


@contextlib.contextmanager
def target(workdir):
    yield one_input


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds, max_len=16384))
