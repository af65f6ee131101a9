"""The runtime directory: where it is by default, and making sure no other
local user controls it before anything is created in it.

Everything the platform and the daemon share lives under one directory: the
machine's files, the SMC gate, the control socket, the domains' rings. A
user who can write that directory (or one above it) can rename what is in it
and put a socket of their own at a known path; so both programs call
:func:`ensure_runtime_dir` at start, and create every directory in it with
:func:`make_private_dir`. docs/config.md states the rules.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .errors import RuntimeDirError, RuntimeDirRefused, describe_trusted, describe_uid

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "SOCKET_MODE",
    "default_runtime_dir",
    "ensure_runtime_dir",
    "make_private_dir",
    "make_private_dirs",
]

DIR_MODE = 0o700  # the runtime directory when we create it, and every directory in it
FILE_MODE = 0o600  # every regular file in it: machine RAM, frame table, p2m, rings, journal
SOCKET_MODE = 0o600  # every socket in it: Linux's connect(2) needs write permission on the file

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_MAX_SYMLINKS = 40  # what Linux follows in one lookup before ELOOP (MAXSYMLINKS)
_ROOT_UID = 0


def default_runtime_dir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """The runtime directory a configuration without ``mediator.runtime_dir``
    gets, chosen as system daemons and per-user services choose theirs:

    * as root: ``/run/stubdom-teed`` (a system service's RuntimeDirectory=);
      root's login sessions also have an XDG_RUNTIME_DIR (/run/user/0) that a
      daemon started by the init system would not see, so it is not used;
    * otherwise ``$XDG_RUNTIME_DIR/stubdom-teed`` when that is set to an
      absolute path (the XDG Base Directory spec's per-user runtime dir);
    * otherwise ``${TMPDIR:-/tmp}/stubdom-teed-<uid>``, one per user as
      tmux's socket directory is: another user who creates it first makes
      the programs refuse it, never use it.
    """
    env = os.environ if environ is None else environ
    uid = os.geteuid() if euid is None else euid
    if uid == _ROOT_UID:
        return Path("/run/stubdom-teed")
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "stubdom-teed"
    tmp = env.get("TMPDIR", "")
    return Path(tmp if os.path.isabs(tmp) else "/tmp") / f"stubdom-teed-{uid}"


def ensure_runtime_dir(path: str | os.PathLike[str]) -> Path:
    """Create the runtime directory (and any missing directory above it) with
    mode 0700 whatever the umask, or check the existing one. Returns it as an
    absolute path.

    Refused (:class:`RuntimeDirRefused`): the directory not owned by this
    process's effective uid, or writable by its group or others; any
    directory above it owned by neither that uid nor root, or writable by its
    group or others without the sticky bit (/tmp is fine: in a sticky
    directory only an entry's owner may rename it); a symbolic link on the way
    owned by neither. Symbolic links are followed, each checked where it
    lies. In a user namespace, a directory above it whose owner the namespace
    does not map is judged by its mode alone (see :func:`_check_above`).
    :class:`RuntimeDirError`: a directory cannot be created or examined.
    """
    runtime = Path(os.path.abspath(path))
    uid = os.geteuid()
    real = _walk(runtime, uid, _unmapped_owner())
    _check_own(runtime, _lstat(runtime, real), uid)
    return runtime


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """A directory inside an already checked runtime directory: created with
    mode 0700 whatever the umask, or, if it exists, checked as the runtime
    directory itself is (a directory, not a link, owned by this process's
    effective uid, not writable by its group or others)."""
    path = Path(path)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        _check_own(path, _lstat(path, path), os.geteuid())
        return path
    except OSError as e:
        raise RuntimeDirError(str(path), str(path), f"cannot create it: {e.strerror}") from None
    os.chmod(path, DIR_MODE)  # mkdir's mode is narrowed by the umask; this is the mode
    return path


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` whose new directories are 0700 whatever the umask;
    existing ones are left alone (whoever puts a runtime directory below them
    checks them). For the directories the demo, the benchmark and the tests
    keep runtime directories in: made with the umask's mode, a group-writable
    one would be refused above them."""
    path = Path(path)
    for d in (*reversed(path.parents), path):
        if not d.exists():
            make_private_dir(d)
    return path


def _check_own(path: Path, st: os.stat_result, uid: int) -> None:
    """The runtime directory itself, or a directory in it (lstat'ed: a link
    is not a directory)."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirRefused(str(path), str(path), st.st_uid, mode, "is not a directory")
    if st.st_uid != uid:
        raise RuntimeDirRefused(str(path), str(path), st.st_uid, mode,
                                f"is not owned by {describe_uid(uid)}, who runs this command")
    if st.st_mode & _GROUP_OTHER_WRITE:
        raise RuntimeDirRefused(str(path), str(path), st.st_uid, mode, "is writable by its group or by others")


def _lstat(runtime: Path, path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise RuntimeDirError(str(runtime), str(path), e.strerror or str(e)) from None


def _unmapped_owner() -> int | None:
    """The uid that owners this process's user namespace does not map show
    as (the kernel's overflowuid), or None in the initial namespace, where
    every owner is known."""
    try:
        with open("/proc/self/uid_map") as f:
            if f.read().split() == ["0", "0", "4294967295"]:
                return None
        with open("/proc/sys/kernel/overflowuid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _check_above(runtime: Path, path: Path, st: os.stat_result, uid: int, unmapped: int | None) -> None:
    """A directory (or link) the lookup of the runtime directory goes through.
    In a user namespace that does not map them, root's directories (/, /tmp)
    show as ``unmapped``, as would anyone else's: their owner cannot be
    known, so only their mode is checked (docs/config.md)."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (uid, _ROOT_UID, unmapped):
        kind = "is a symbolic link" if stat.S_ISLNK(st.st_mode) else "is"
        raise RuntimeDirRefused(str(runtime), str(path), st.st_uid, mode,
                                f"{kind} owned by a user other than {describe_trusted(uid)}: they could "
                                f"replace the runtime directory")
    if stat.S_ISDIR(st.st_mode) and st.st_mode & _GROUP_OTHER_WRITE and not st.st_mode & stat.S_ISVTX:
        raise RuntimeDirRefused(str(runtime), str(path), st.st_uid, mode,
                                "is writable by its group or by others and not sticky: they could "
                                "rename the runtime directory away")


def _walk(runtime: Path, uid: int, unmapped: int | None) -> Path:
    """Look ``runtime`` up one component at a time from /, as the kernel
    would, checking every directory looked in and every symbolic link
    followed, and creating what is missing (mode 0700). Returns the real path
    of the directory reached (not checked itself: the caller's rules for it
    are stricter)."""
    todo = list(reversed(runtime.parts[1:]))  # a stack: the next component last
    current = Path("/")
    checked: set[Path] = set()
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        if current not in checked:
            _check_above(runtime, current, _lstat(runtime, current), uid, unmapped)
            checked.add(current)
        step = current / name
        try:
            st = os.lstat(step)
        except FileNotFoundError:
            try:
                os.mkdir(step, DIR_MODE)
            except FileExistsError:
                pass  # created meanwhile by someone who may write ``current``: checked next
            except OSError as e:
                raise RuntimeDirError(str(runtime), str(step), f"cannot create it: {e.strerror}") from None
            else:
                os.chmod(step, DIR_MODE)
            st = _lstat(runtime, step)
        except OSError as e:
            raise RuntimeDirError(str(runtime), str(step), e.strerror or str(e)) from None
        if stat.S_ISLNK(st.st_mode):
            # in a sticky directory anyone may have made it: its owner counts
            _check_above(runtime, step, st, uid, unmapped)
            links += 1
            if links > _MAX_SYMLINKS:
                raise RuntimeDirError(str(runtime), str(step), f"more than {_MAX_SYMLINKS} symbolic links")
            target = Path(os.readlink(step))
            if target.is_absolute():
                current = Path("/")
                todo.extend(reversed(target.parts[1:]))
            else:
                todo.extend(reversed(target.parts))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeDirRefused(str(runtime), str(step), st.st_uid, stat.S_IMODE(st.st_mode),
                                    "is not a directory")
        current = step
    return current
