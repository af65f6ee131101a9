"""Processes of a simulated guest use the Linux TEE device interface (issue
14): the project's own C programs, built against <linux/tee.h> and run with
the LD_PRELOAD library, against a real ``stubdom-teed guest-dev`` process on
a platform under each placement (el2, and stubdom with a real stubdom-teed).
Every world ends with the domain destroyed and nothing pinned, no OP-TEE
partition and no isolation-oracle record left (guestdev_support.stop_world).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from guestdev_support import READY_WAIT, build_programs, start_world, stop_world
from other_user import finish
from stubdom.guest.uapi import (
    TEE_GEN_CAP_GP,
    TEE_GEN_CAP_MEMREF_NULL,
    TEE_GEN_CAP_PRIVILEGED,
    TEE_GEN_CAP_REG_MEM,
    TEE_IMPL_ID_OPTEE,
    TEE_OPTEE_CAP_TZ,
)
from stubdom.optee.teec import TEEC_ERROR_OUT_OF_MEMORY
from stubdom.platform import run_platform

WORK_ROUNDS = 2


@pytest.fixture(scope="module")
def bins(tmp_path_factory) -> dict[str, Path]:
    return build_programs(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module", params=["el2", "stubdom"])
def world(request, tmp_path_factory, bins):
    w = start_world(tmp_path_factory.mktemp(request.param), request.param)
    try:
        yield w
    finally:
        stop_world(w)


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def _lines(out: str) -> dict[str, str]:
    got = {}
    for line in out.splitlines():
        head, _, rest = line.partition(" ")
        if head in ("ok", "FAIL"):
            name, _, detail = rest.partition(" ")
            got[name.rstrip(":")] = f"{head} {detail}".strip()
        elif rest:
            got[head] = rest
    return got


def test_every_ioctl_with_good_arguments(world, bins) -> None:
    proc = world.run(bins["tee_ioctl_client"], "all")
    assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
    got = _lines(proc.stdout)
    # TEE_IOC_VERSION as Linux's optee_get_version computes it for this guest:
    # GP, REG_MEM (dynamic shm), MEMREF_NULL; PRIVILEGED on the supplicant's node
    gen = TEE_GEN_CAP_GP | TEE_GEN_CAP_REG_MEM | TEE_GEN_CAP_MEMREF_NULL
    assert got["version"] == f"ok tee0 impl_id {TEE_IMPL_ID_OPTEE} impl_caps {TEE_OPTEE_CAP_TZ} gen_caps {gen}"
    assert got["version-priv"] == (f"ok teepriv0 impl_id {TEE_IMPL_ID_OPTEE} impl_caps {TEE_OPTEE_CAP_TZ} "
                                   f"gen_caps {gen | TEE_GEN_CAP_PRIVILEGED}")
    assert got["shm-alloc"].endswith("size 8192")  # 5000 bytes: whole pages
    # the secure world hashed exactly the bytes the process had, and wrote the
    # digest where the process reads it, through both kinds of memory
    alloc = bytearray(_pattern(5000, 3))
    assert got["digest-alloc"] == hashlib.sha256(alloc).hexdigest()
    alloc[0] ^= 0xFF
    assert got["digest-alloc-changed"] == hashlib.sha256(alloc).hexdigest()
    assert got["digest-null-input"] == hashlib.sha256(b"").hexdigest()
    reg = bytearray(_pattern(6000, 5))
    assert got["digest-reg"] == hashlib.sha256(reg).hexdigest()
    reg[1] ^= 0x55
    assert got["digest-reg-changed"] == hashlib.sha256(reg).hexdigest()
    assert got["digest-fork"] == hashlib.sha256(_pattern(4096, 9)).hexdigest()
    world.assert_quiet()


def test_bad_ioctls_get_linux_errors_and_never_reach_the_secure_world(world, bins) -> None:
    proc = world.spawn(bins["tee_ioctl_client"], "bad", stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        before = world.stats()["traps"]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        checks = []
        for line in proc.stdout:
            if line == "done\n":
                break
            checks.append(line.rstrip("\n"))
        after = world.stats()["traps"]
        proc.stdin.write("end\n")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and rest.endswith("finished\n"), "\n".join(checks) + rest + err
    assert len(checks) == 45 and all(c.startswith("ok ") for c in checks), "\n".join(checks)
    assert after == before  # not one SMC among them
    world.assert_quiet()


def test_cancel_ends_a_running_invocation(world, bins) -> None:
    proc = world.run(bins["tee_ioctl_client"], "cancel")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = _lines(proc.stdout)["cancel"]
    assert line.startswith("ok ret 0xffff0002 origin 4 "), line  # TEE_ERROR_CANCEL from the TA
    world.assert_quiet()


def test_killed_process_holding_memory_is_released(world, bins) -> None:
    proc = world.spawn(bins["tee_ioctl_client"], "hold")
    try:
        assert proc.stdout.readline() == "ok hold-setup\n"
        assert proc.stdout.readline() == "holding\n"
        held = world.stats()
        assert held["contexts"] == 1 and held["sessions"] == 1, held
        assert held["shm"]["tee0"] == 2 and held["mm"]["backed_pages"] == 3 and held["mm"]["mappings"] == 1, held
        assert world.partition().sessions == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    # its descriptors closed with it: session closed, buffers unregistered,
    # its pages given back to the guest
    world.assert_quiet()


def test_several_clients_and_one_supplicant(world, bins, tmp_path) -> None:
    supp = world.spawn(bins["tee_mini_supplicant"], str(tmp_path), "3")
    try:
        assert supp.stdout.readline() == "serving\n"
        clients = [world.spawn(bins["tee_ioctl_client"], "work", str(WORK_ROUNDS)) for _ in range(2)]
        clients += [world.spawn(bins["tee_ioctl_client"], "storage", f"object-{i}") for i in range(3)]
        for c in clients:
            out, err = c.communicate(timeout=300)
            assert c.returncode == 0 and "FAIL" not in out, out + err
        world.assert_quiet(supplicant=True)
        # OP-TEE's REE FS: the objects' files were written, then removed; the
        # directory file stays
        assert list(tmp_path.rglob("*")) == [tmp_path / "dirf.db"]
    finally:
        supp.send_signal(signal.SIGTERM)
        supp.communicate(timeout=60)
    world.assert_quiet()


def test_supplicant_gone_mid_request_then_restarted(world, bins, tmp_path) -> None:
    # it takes OP-TEE's first request (the SHM_ALLOC for dirf.db's name) and
    # dies: the request fails and OP-TEE cannot open dirf.db; it then asks
    # again (to remove the dirf.db it could not open, ree_fs_open_primitive),
    # and that request waits for a supplicant, as Linux makes OP-TEE wait
    dying = world.spawn(bins["tee_mini_supplicant"], str(tmp_path), "2", "die-on-request", "1")
    assert dying.stdout.readline() == "serving\n"
    client = world.spawn(bins["tee_ioctl_client"], "storage-write", "object")
    out, _ = dying.communicate(timeout=60)
    assert "dying on request 1 (cmd 6)" in out, out
    # a new supplicant opens the device at once and serves the waiting request;
    # the write fails with what the first failure was: out of memory
    supp = world.spawn(bins["tee_mini_supplicant"], str(tmp_path), "2")
    try:
        assert supp.stdout.readline() == "serving\n"
        out, err = client.communicate(timeout=120)
        assert f"storage-write ret {TEEC_ERROR_OUT_OF_MEMORY:#x}" in out, out + err
        world.assert_quiet(supplicant=True)
        # a second supplicant is refused
        second = world.run(bins["tee_mini_supplicant"], str(tmp_path))
        assert second.returncode == 1 and "Device or resource busy" in second.stderr, second.stderr
        proc = world.run(bins["tee_ioctl_client"], "storage-write", "kept")
        assert "storage-write ret 0\n" in proc.stdout, proc.stdout
        # the REE FS files: dirf.db and the object's hash tree, its data in clear
        assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "dirf.db"]
        assert _pattern(9000, 4)[:4000] in (tmp_path / "0").read_bytes()
        proc = world.run(bins["tee_ioctl_client"], "storage", "kept")
        assert proc.returncode == 0, proc.stdout
    finally:
        supp.send_signal(signal.SIGTERM)
        supp.communicate(timeout=60)
    world.assert_quiet()


def test_platform_command_serves_a_guest_dev_beside_its_own_guests(tmp_path, bins) -> None:
    """`stubdom-teed platform` (run_platform) with a guest of its own: a
    guest-dev guest attaches, its process runs, and the platform's guest
    keeps completing rounds meanwhile. The guest-dev guest runs no
    tee-supplicant, so its TAs are early ones (an REE TA's OPEN_SESSION
    would wait for a supplicant, as optee_supp_thrd_req does)."""
    cfg = tmp_path / "xen.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        tee:
          tas: {{increment: early, digest: early, storage: early, wait: early}}
        mediator:
          placement: el2
          runtime_dir: {tmp_path / 'run'}
        platform:
          nr_frames: 16384
        domains:
          - domid: 1
            nr_pages: 256
            vcpus: 1
        """))
    out, stop, status = io.StringIO(), threading.Event(), []
    t = threading.Thread(target=lambda: status.append(run_platform(str(cfg), interval=0.05, stop=stop, out=out)))
    t.start()
    try:
        deadline = time.monotonic() + READY_WAIT
        while "attach at" not in out.getvalue():
            assert t.is_alive() and time.monotonic() < deadline, out.getvalue()
            time.sleep(0.02)
        env_file = tmp_path / "env"
        guest = subprocess.Popen([sys.executable, "-P", "-m", "stubdom", "guest-dev", "--config", str(cfg),
                                  "--domid", "3", "--pages", "512", "--env-file", str(env_file)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while not env_file.exists():
            assert guest.poll() is None and time.monotonic() < deadline, guest.stdout.read()
            time.sleep(0.02)
        env = dict(os.environ)
        env.update(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        rounds_before = out.getvalue().count("d1 ok")
        proc = subprocess.run([str(bins["tee_ioctl_client"]), "work", "1"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        while out.getvalue().count("d1 ok") <= rounds_before:  # its own guest still runs
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.02)
        guest.send_signal(signal.SIGTERM)
        gout, _ = guest.communicate(timeout=120)
        assert guest.returncode == 0 and "d3 destroyed" in gout, gout
    finally:
        stop.set()
        t.join(120)
    assert status == [0], out.getvalue()
    assert "isolation oracle: 0 violations" in out.getvalue()


# Another user's process: connects to ./tee and prints what came back.
OTHER_PROCESS = """\
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("tee")
try:
    got = s.recv(4096)
except ConnectionResetError:
    got = b""
print(repr(got), flush=True)
"""


def test_another_users_process_is_refused(world, other_user) -> None:
    """The device socket is this user's (0600); with the modes taken away,
    the server still closes on another user's process before reading."""
    directory, mode = world.socket.parent, world.socket.parent.stat().st_mode & 0o777
    directory.chmod(0o755)
    world.socket.chmod(0o666)
    try:
        out, err = finish(other_user.spawn(OTHER_PROCESS, cwd=directory))
    finally:
        world.socket.chmod(0o600)
        directory.chmod(mode)
    assert out == "b''\n", err
    world.assert_quiet()


@pytest.mark.parametrize("placement", ["el2", "stubdom"])
def test_ree_tas_are_loaded_by_the_guests_supplicant(tmp_path, bins, placement) -> None:
    """TAs loaded from the REE: OP-TEE asks the guest's supplicant for each
    at every OPEN_SESSION (LOAD_TA, size then image), which reads
    <uuid>.ta from its TA directory as tee-supplicant does; without the
    file the open fails with ITEM_NOT_FOUND."""
    from stubdom.guest.tastore import write_ta_images

    (tmp_path / "world").mkdir()
    w = start_world(tmp_path / "world", placement, ta_kind="ree")
    try:
        ta_dir = tmp_path / "ta"
        write_ta_images(ta_dir)
        store = tmp_path / "store"
        store.mkdir()
        supp = w.spawn(bins["tee_mini_supplicant"], str(store), "2", "ta-dir", str(ta_dir))
        try:
            assert supp.stdout.readline() == "serving\n"
            proc = w.run(bins["tee_ioctl_client"], "work", "1")
            assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
            proc = w.run(bins["tee_ioctl_client"], "storage", "loaded")
            assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
            # every open asked for its TA: LOAD_TA (0), SHM_ALLOC (6), LOAD_TA, SHM_FREE (7)
            supp.send_signal(signal.SIGTERM)
            out, _ = supp.communicate(timeout=60)
            requests = [int(line.split()[1]) for line in out.splitlines() if line.startswith("request ")]
            assert requests[:4] == [0, 6, 0, 7], requests
            (ta_dir / "8aaaf200-2450-11e4-abe2-0002a5d5c51b.ta").unlink()
            supp = w.spawn(bins["tee_mini_supplicant"], str(store), "2", "ta-dir", str(ta_dir))
            assert supp.stdout.readline() == "serving\n"
            proc = w.run(bins["tee_ioctl_client"], "work", "1")
            assert proc.returncode != 0 and "FAIL" in proc.stdout, proc.stdout
        finally:
            supp.send_signal(signal.SIGTERM)
            supp.communicate(timeout=60)
        w.assert_quiet()
    finally:
        stop_world(w)
