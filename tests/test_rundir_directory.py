"""The runtime directory (docs/config.md, "The runtime directory";
docs/security.md, "Local users and the runtime directory"): its default, and
a directory another local user made or could change refused — by the rules
themselves, and by the platform and the daemon as commands (exit 2, one
line, nothing created in it), under both placements where both run."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from other_user import OTHER_GID, OTHER_UID, require_root
from stubdom.config import parse_config
from stubdom.platform import Gate
from stubdom.rundir import (
    RuntimeDirError,
    RuntimeDirRefused,
    default_runtime_dir,
    describe_uid,
    ensure_runtime_dir,
    make_private_dir,
    make_private_dirs,
)

ME = describe_uid(os.geteuid())  # who runs the tests, as the messages name them
NOT_OURS = "is not owned by uid 0 (root), who runs this command"  # in the tests that need root
FIX = "remove it, or set mediator.runtime_dir to a directory only you can write"
FIX_ABOVE = "set mediator.runtime_dir to a directory that only you and root can change, all the way up"


@pytest.fixture(params=[0o000, 0o377], ids=["umask-000", "umask-377"])
def any_umask(tmp_path, request):  # after tmp_path: pytest makes that one itself
    """None of it wider (000) nor narrower (377: not even the owner's write) than set."""
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def foreign_dir(path: Path, mode_bits: int) -> Path:
    """A directory another user made first (uid 65534), with ``mode_bits``."""
    path.mkdir()
    os.chown(path, OTHER_UID, OTHER_GID)
    os.chmod(path, mode_bits)
    return path


# -- the default ----------------------------------------------------------------------


@pytest.mark.parametrize("env, euid, expected", [
    ({"XDG_RUNTIME_DIR": "/run/user/0"}, 0, "/run/stubdom-teed"),  # root: the system's /run, never XDG
    ({}, 0, "/run/stubdom-teed"),
    ({"XDG_RUNTIME_DIR": "/run/user/1000", "TMPDIR": "/var/tmp"}, 1000, "/run/user/1000/stubdom-teed"),
    ({"XDG_RUNTIME_DIR": "relative/dir"}, 1000, "/tmp/stubdom-teed-1000"),  # not absolute: ignored
    ({"TMPDIR": "/var/tmp"}, 1000, "/var/tmp/stubdom-teed-1000"),
    ({}, 1000, "/tmp/stubdom-teed-1000"),
])
def test_default_runtime_dir(env, euid, expected):
    assert default_runtime_dir(env, euid) == Path(expected)


def test_a_configuration_without_runtime_dir_gets_the_default():
    assert parse_config("", "x.yaml").mediator.runtime_dir == default_runtime_dir()
    assert parse_config("mediator: {runtime_dir: null}\n", "x.yaml").mediator.runtime_dir == default_runtime_dir()


# -- creating it ------------------------------------------------------------------------


def test_created_0700_with_every_missing_directory_above_it_whatever_the_umask(tmp_path, any_umask):
    rt = tmp_path / "a" / "b" / "rt"
    assert ensure_runtime_dir(rt) == rt
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", rt)] == [0o700] * 3
    assert ensure_runtime_dir(rt) == rt  # an existing one of ours is used as it is


def test_an_existing_one_of_ours_not_writable_by_others_is_used_as_it_is(tmp_path):
    rt = tmp_path / "rt"
    rt.mkdir()
    os.chmod(rt, 0o755)
    assert ensure_runtime_dir(rt) == rt
    assert mode(rt) == 0o755


def test_a_sticky_world_writable_directory_above_it_is_fine_as_tmp_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    assert ensure_runtime_dir(shared / "rt") == shared / "rt"


def test_a_symbolic_link_on_the_way_is_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert ensure_runtime_dir(tmp_path / "link" / "rt") == tmp_path / "link" / "rt"
    assert (tmp_path / "real" / "rt").is_dir()


def test_make_private_dirs_makes_what_is_missing_0700_and_leaves_the_rest(tmp_path, any_umask):
    (tmp_path / "a").mkdir()
    os.chmod(tmp_path / "a", 0o755)
    make_private_dirs(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o755, 0o700, 0o700]


# -- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0o700, 0o755, 0o777])
def test_refused_when_another_user_owns_it(tmp_path, bits):
    require_root()
    rt = foreign_dir(tmp_path / "rt", bits)
    with pytest.raises(RuntimeDirRefused) as e:
        ensure_runtime_dir(rt)
    assert str(e.value) == (f"refusing runtime directory {rt}: it (owner uid 65534 (nobody), mode "
                            f"{bits:04o}) {NOT_OURS}; {FIX}")
    assert (e.value.path, e.value.owner, e.value.mode) == (str(rt), OTHER_UID, bits)
    assert list(rt.iterdir()) == []


@pytest.mark.parametrize("bits", [0o770, 0o707, 0o777, 0o1777])
def test_refused_when_its_group_or_others_may_write_it(tmp_path, bits):
    rt = tmp_path / "rt"
    rt.mkdir()
    os.chmod(rt, bits)
    with pytest.raises(RuntimeDirRefused) as e:
        ensure_runtime_dir(rt)
    assert str(e.value) == (f"refusing runtime directory {rt}: it (owner {ME}, mode {bits:04o}) "
                            f"is writable by its group or by others; {FIX}")
    assert (e.value.owner, e.value.mode) == (os.geteuid(), bits)


@pytest.mark.parametrize("bits", [0o777, 0o770])
def test_refused_below_a_directory_others_may_write_without_the_sticky_bit(tmp_path, bits):
    above = tmp_path / "above"
    above.mkdir()
    os.chmod(above, bits)
    with pytest.raises(RuntimeDirRefused) as e:
        ensure_runtime_dir(above / "rt")
    assert str(e.value) == (f"refusing runtime directory {above / 'rt'}: {above} on the way to it (owner {ME}, "
                            f"mode {bits:04o}) is writable by its group or by others and not sticky: they "
                            f"could rename the runtime directory away; {FIX_ABOVE}")
    assert not (above / "rt").exists()


def test_refused_below_a_directory_another_user_owns(tmp_path):
    require_root()
    above = foreign_dir(tmp_path / "above", 0o755)
    with pytest.raises(RuntimeDirRefused) as e:
        ensure_runtime_dir(above / "sub" / "rt")
    assert str(e.value) == (f"refusing runtime directory {above / 'sub' / 'rt'}: {above} on the way to it (owner "
                            f"uid 65534 (nobody), mode 0755) is owned by a user other than root: they could "
                            f"replace the runtime directory; {FIX_ABOVE}")
    assert list(above.iterdir()) == []


def test_refused_through_a_symbolic_link_another_user_owns(tmp_path):
    require_root()
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to("real")
    os.lchown(link, OTHER_UID, OTHER_GID)
    with pytest.raises(RuntimeDirRefused) as e:
        ensure_runtime_dir(link / "rt")
    assert str(e.value) == (f"refusing runtime directory {link / 'rt'}: {link} on the way to it (owner uid 65534 "
                            f"(nobody), mode 0777) is a symbolic link owned by a user other than root: they could "
                            f"replace the runtime directory; {FIX_ABOVE}")


def test_refused_when_it_is_not_a_directory(tmp_path):
    (tmp_path / "rt").write_text("")
    os.chmod(tmp_path / "rt", 0o600)
    with pytest.raises(RuntimeDirRefused, match=re.escape(f"(owner {ME}, mode 0600) is not a directory;")):
        ensure_runtime_dir(tmp_path / "rt")


USERNS_PROBE = """\
import sys
from stubdom.rundir import RuntimeDirRefused, ensure_runtime_dir
for path in sys.argv[1:]:
    try:
        ensure_runtime_dir(path)
        print("accepted")
    except RuntimeDirRefused as e:
        print("refused", e.owner, oct(e.mode))
"""


def test_in_a_user_namespace_an_unmapped_owner_above_is_judged_by_its_mode_alone(tmp_path):
    # as the fault tests' private tmpfs runs the daemon when not root: there
    # root's / and /tmp show as the overflow uid, as anyone unmapped does
    require_root()
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux) to enter a user namespace")
    safe, open_ = tmp_path / "safe", tmp_path / "open"
    for d, bits in ((safe, 0o755), (open_, 0o777)):
        d.mkdir()
        (d / "rt").mkdir(mode=0o700)  # ours: root, which the namespace maps
        os.chown(d, 1000, 1000)  # unmapped in a namespace that maps only root
        os.chmod(d, bits)
    proc = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-P", "-c", USERNS_PROBE,
                           str(safe / "rt"), str(safe), str(open_ / "rt")], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode and "unshare failed" in proc.stderr:
        pytest.skip(f"no user namespace: {proc.stderr.strip()}")
    overflow = int(Path("/proc/sys/kernel/overflowuid").read_text())
    assert proc.stdout.splitlines() == ["accepted",  # above it: its owner cannot be known, its mode is safe
                                        f"refused {overflow} 0o755",  # the runtime directory itself: not ours
                                        f"refused {overflow} 0o777"], proc.stderr  # above it, open to all


def test_a_directory_that_cannot_be_created_or_examined_is_a_clear_error(tmp_path):
    long = tmp_path / ("x" * 300)  # past NAME_MAX, for root too
    with pytest.raises(RuntimeDirError) as e:
        ensure_runtime_dir(long / "rt")
    assert str(e.value) == f"cannot use runtime directory {long / 'rt'} ({long}): File name too long"


def test_a_platform_built_without_a_configuration_is_refused_by_its_gate(tmp_path):
    # the benchmark builds its platform itself: the gate checks the directory
    require_root()
    rt = foreign_dir(tmp_path / "rt", 0o755)
    with pytest.raises(RuntimeDirRefused, match=f"refusing runtime directory {rt}: it \\(owner uid 65534"):
        Gate(rt, tee=None, domain_exists=lambda domid: False)
    assert list(rt.iterdir()) == []


def test_a_directory_inside_another_user_made_is_refused(tmp_path):
    require_root()
    d = foreign_dir(tmp_path / "xen", 0o700)
    with pytest.raises(RuntimeDirRefused, match=f"refusing runtime directory {d}: it \\(owner uid 65534"):
        make_private_dir(d)


# -- the commands: exit 2, one line, nothing created --------------------------------------------


def _config(tmp_path: Path, rt: Path, placement: str) -> Path:
    path = tmp_path / "xen.yaml"
    path.write_text(textwrap.dedent(f"""\
        mediator: {{placement: {placement}, runtime_dir: {rt}}}
        platform: {{nr_frames: 16384}}
        domains:
          - {{domid: 1, nr_pages: 256}}
        """))
    return path


@pytest.mark.parametrize("placement", ["el2", "stubdom"])
def test_a_platform_built_from_a_configuration_checks_the_directory_itself(tmp_path, placement):
    """Platform.for_config, the route of every program that builds a
    platform from a file (the platform command checks first, the library
    must not count on it)."""
    from stubdom.config import load_config
    from stubdom.platform import Platform

    rt = tmp_path / "rt"
    rt.mkdir()
    os.chmod(rt, 0o777)
    config = load_config(_config(tmp_path, rt, placement))
    refused = f"refusing runtime directory {rt}: .*writable by its group or by others"
    with pytest.raises(RuntimeDirRefused, match=refused):
        Platform.for_config(config)
    assert list(rt.iterdir()) == []


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "stubdom", *argv], capture_output=True, text=True,
                          timeout=120)


PRE_CREATED = [
    # (owner, mode, the reason the refusal gives)
    pytest.param(OTHER_UID, 0o777, NOT_OURS, id="another-user-0777"),  # the squatter
    pytest.param(OTHER_UID, 0o700, NOT_OURS, id="another-user-0700"),
    pytest.param(0, 0o777, "is writable by its group or by others", id="ours-0777"),
]


@pytest.mark.parametrize("placement", ["el2", "stubdom"])
@pytest.mark.parametrize("owner, bits, reason", PRE_CREATED)
def test_platform_command_refuses_a_runtime_directory_another_user_could_change(tmp_path, placement, owner,
                                                                              bits, reason):
    require_root()
    rt = tmp_path / "rt"
    rt.mkdir()
    os.chown(rt, owner, owner)
    os.chmod(rt, bits)
    proc = _run("platform", "--config", str(_config(tmp_path, rt, placement)), "--rounds", "1")
    owner_text = describe_uid(owner)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stdout + proc.stderr
    assert proc.stderr == (f"platform: refusing runtime directory {rt}: it (owner {owner_text}, mode {bits:04o}) "
                           f"{reason}; {FIX}\n")
    assert list(rt.iterdir()) == []


@pytest.mark.parametrize("owner, bits, reason", PRE_CREATED)
def test_daemon_refuses_a_runtime_directory_another_user_could_change(tmp_path, owner, bits, reason):
    require_root()
    rt = tmp_path / "rt"
    rt.mkdir()
    os.chown(rt, owner, owner)
    os.chmod(rt, bits)
    proc = _run("--config", str(_config(tmp_path, rt, "stubdom")))
    owner_text = describe_uid(owner)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stdout + proc.stderr
    assert proc.stderr == (f"stubdom-teed: refusing runtime directory {rt}: it (owner {owner_text}, mode "
                           f"{bits:04o}) {reason}; {FIX}\n")
    assert list(rt.iterdir()) == []


@pytest.mark.parametrize("placement", ["el2", "stubdom"])
def test_platform_command_refuses_below_a_directory_others_may_write(tmp_path, placement):
    above = tmp_path / "shared"
    above.mkdir()
    os.chmod(above, 0o777)
    rt = above / "rt"
    proc = _run("platform", "--config", str(_config(tmp_path, rt, placement)), "--rounds", "1")
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"platform: refusing runtime directory {rt}: {above} on the way to it "
                                  f"(owner uid {os.geteuid()}")
    assert not rt.exists()


def test_daemon_creates_its_runtime_directory_0700_whatever_the_umask(tmp_path):
    rt = tmp_path / "rt"
    proc = subprocess.run([sys.executable, "-P", "-m", "stubdom", "--config", str(_config(tmp_path, rt, "stubdom"))],
                          capture_output=True, text=True, timeout=120, umask=0)
    assert proc.returncode == 1 and "no SMC gate at" in proc.stderr, proc.stderr  # no platform: it stops there
    assert mode(rt) == 0o700
