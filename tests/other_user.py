"""Another local user, for the runtime-directory tests (docs/security.md,
"Local users and the runtime directory"): uid/gid 65534 (nobody/nogroup),
played by a child process that drops root before it execs a Python of its
own, as another user's program would run. The scripts it runs use the
standard library only. Needs root; the tests skip, saying why, otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

OTHER_UID = 65534
OTHER_GID = 65534


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: chown(2) to, and setuid(2) to, uid 65534 play another local user")


def _interpreters() -> list[str]:
    """This interpreter, then the system's (a venv or pyenv under /root is
    out of another user's reach)."""
    found = [sys.executable, os.path.realpath(sys.executable)]
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    return list(dict.fromkeys(found + ([system] if system else [])))


def _popen(python: str, script: str, args, cwd: Path) -> subprocess.Popen:
    # Popen enters cwd before it drops root: the tests need not open every
    # directory above cwd to the other user
    return subprocess.Popen([python, "-I", "-c", script, *args], cwd=cwd, user=OTHER_UID, group=OTHER_GID,
                            extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    """Close its stdin (the scripts that wait, wait for that), wait for it;
    (stdout, stderr)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class OtherUser:
    """Runs stdlib-only Python scripts as uid/gid 65534, no supplementary groups."""

    def __init__(self, python: str) -> None:
        self.python = python

    def spawn(self, script: str, *args: str, cwd: Path) -> subprocess.Popen:
        """``python -I -c script args`` in ``cwd``; text pipes on stdin, stdout, stderr."""
        return _popen(self.python, script, args, cwd)


def find_other_user(tmp_path_factory: pytest.TempPathFactory) -> OtherUser:
    """The ``other_user`` fixture's (conftest.py). Skips unless this is root
    and uid 65534 can run some Python 3.8+."""
    require_root()
    tried = []
    for python in _interpreters():
        try:
            probe = _popen(python, "import sys; print(sys.version_info >= (3, 8))", (),
                           tmp_path_factory.getbasetemp())
        except OSError as e:
            tried.append(f"{python}: {e.strerror}")
            continue
        out, err = finish(probe)
        if out == "True\n":
            return OtherUser(python)
        tried.append(f"{python}: {err.strip() or out.strip() or probe.returncode}")
    pytest.skip(f"uid {OTHER_UID} can run no Python 3.8+ ({'; '.join(tried)})")
