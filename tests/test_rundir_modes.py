"""Every directory, file and socket the platform and the daemon create in
the runtime directory has the mode they set, whatever the umask: run here
with umask 0, the real daemon process beside the platform, a domain up
(docs/config.md, "The runtime directory")."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from faults_support import Stack
from stubdom.config import load_config
from stubdom.daemon.journal import Journal
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec

DIR, FILE, SOCK = "dir", "file", "socket"

MACHINE = {
    ".": (DIR, 0o700),
    "machine": (DIR, 0o700),
    "machine/p2m": (DIR, 0o700),
    "machine/p2m/dom1.p2m": (FILE, 0o600),
    "machine/lock": (FILE, 0o600),
    "machine/ram": (FILE, 0o600),
    "machine/frametable": (FILE, 0o600),
    "machine/domains": (FILE, 0o600),
}
STUBDOM = {
    **MACHINE,
    "xen": (DIR, 0o700),
    "xen/gate": (DIR, 0o700),
    "xen/gate/ring": (FILE, 0o600),
    "xen/gate/evtchn": (SOCK, 0o600),
    "stubdom-teed": (DIR, 0o700),
    "stubdom-teed/control": (SOCK, 0o600),
    "stubdom-teed/journal": (FILE, 0o600),
    "dom1": (DIR, 0o700),
    "dom1/ring": (FILE, 0o600),
    "dom1/evtchn": (SOCK, 0o600),
}


@pytest.fixture
def umask0(tmp_path):  # after tmp_path: pytest makes that one itself
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under ``root`` (itself as "."): its kind and mode."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        kind = (DIR if stat.S_ISDIR(st.st_mode) else FILE if stat.S_ISREG(st.st_mode)
                else SOCK if stat.S_ISSOCK(st.st_mode) else oct(stat.S_IFMT(st.st_mode)))
        out["." if path == root else str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return out


def test_stubdom_everything_in_the_runtime_directory_has_its_mode_under_umask_0(tmp_path, umask0):
    with Stack(tmp_path) as stack:  # the daemon inherits umask 0
        stack.boot(1)
        assert tree(stack.config.mediator.runtime_dir) == STUBDOM


def test_el2_everything_in_the_runtime_directory_has_its_mode_under_umask_0(tmp_path, umask0):
    path = tmp_path / "el2.yaml"
    path.write_text(textwrap.dedent(f"""\
        mediator: {{placement: el2, runtime_dir: {tmp_path / 'run'}}}
        platform: {{nr_frames: 16384}}
        domains:
          - {{domid: 1, nr_pages: 256}}
        """))
    config = load_config(path)
    with Platform.for_config(config) as platform:
        platform.create_domain(domain_spec(config.domain(1)))
        assert tree(config.mediator.runtime_dir) == MACHINE


def test_a_checkpoint_over_a_leftover_file_still_gets_0600(tmp_path, umask0):
    (tmp_path / "journal.new").write_bytes(b"left by a crash")
    os.chmod(tmp_path / "journal.new", 0o666)
    journal = Journal(tmp_path / "journal")
    journal.rewrite([])
    journal.close()
    assert tree(tmp_path) == {".": (DIR, stat.S_IMODE(os.stat(tmp_path).st_mode)), "journal": (FILE, 0o600)}
