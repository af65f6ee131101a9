"""The journal's own faults (docs/faults.md, "Faults and outcomes"): a full
disk, and a record cut short at the end of the file.

Two full disks. The first by the daemon's RLIMIT_FSIZE, lowered from outside
with prlimit(2) to less than the journal already is: every write to it (and
to a checkpoint beside it) fails with EFBIG, the way ENOSPC fails it — one
code path (Journal._write_all). CPython ignores SIGXFSZ, so the write fails
instead of killing the process. No root, no mount. Raising the limit back is
the space returning. The second is real: the journal's directory a small
tmpfs in the daemon's own mount namespace, filled until ENOSPC (below).
"""

from __future__ import annotations

import errno
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from daemon_support import Daemon
from faults_support import Stack, inc
from stubdom.daemon.journal import JOURNAL_FILE
from stubdom.guest import Context, GuestError, TeecError
from stubdom.guest.client import INOUT, Value
from stubdom.optee.smc import OPTEE_MSG_UID_0, OPTEE_SMC_CALL_WITH_REGD_ARG, OPTEE_SMC_CALLS_UID
from stubdom.platform import DomainCreationFailed
from stubdom.platform.launch import PrivateTmpfs, TmpfsUnavailable
from stubdom.public import ControlInternal
from stubdom.tee.tas import INCREMENT_UUID
from stubdom.tee.tas.increment import TA_INCREMENT_CMD_INC_VALUE

ONE_DOMAIN = """\
domains:
  - domid: 1
    nr_pages: 1024
    vcpus: 2
"""
_FRAME = struct.Struct("<II")
_HEADER = 16


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path, domains=ONE_DOMAIN) as s:
        yield s


def _journal(stack):
    return stack.config.mediator.runtime_dir / "stubdom-teed" / "journal"


def _fsize(stack, limit: int | None) -> None:
    hard = resource.prlimit(stack.daemon.proc.pid, resource.RLIMIT_FSIZE)[1]
    soft = hard if limit is None else limit
    resource.prlimit(stack.daemon.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))


def _journal_stats(stack) -> dict:
    with stack.ctl() as c:
        return c.call("stats")["journal"], c.call("stats", domid=1)["domains"]["1"]


def test_full_disk_refuses_state_changing_calls_before_the_tee_until_space_returns(stack):
    d1 = stack.boot(1)
    ctx = Context(d1)
    session = ctx.open_session(INCREMENT_UUID)
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(100, 0, INOUT)])[0].a == 101
    _fsize(stack, _HEADER)  # smaller than the journal: nothing more fits
    for v in (200, 201):
        with pytest.raises((TeecError, GuestError)):
            session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(v, 0, INOUT)])
    assert stack.counted.runs[200] == 0 and stack.counted.runs[201] == 0  # never reached the TEE
    # fast calls go on
    r = stack.platform.trap(1, 0, (OPTEE_SMC_CALLS_UID,) + (0,) * 7)
    assert r[0] == OPTEE_MSG_UID_0
    journal, dom = _journal_stats(stack)
    assert journal["healthy"] is False and journal["failures"] >= 2
    assert dom["refusals"].get("journal_unavailable", 0) >= 2
    _fsize(stack, None)  # space returns
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(300, 0, INOUT)])[0].a == 301
    journal, _ = _journal_stats(stack)
    assert journal["healthy"] is True
    assert "event=journal_writable" in stack.daemon.log()
    # what the checkpoint wrote is what a restart needs: same session after a kill
    stack.restart()
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(400, 0, INOUT)])[0].a == 401
    session.close()
    ctx.close()
    stack.destroy_all()
    stack.assert_clean()
    assert stack.platform.oracle.violations == []


def test_kill_while_the_disk_is_full_recovers_from_the_last_good_records(stack):
    d1 = stack.boot(1)
    ctx = Context(d1)
    session = ctx.open_session(INCREMENT_UUID)
    _fsize(stack, _HEADER)
    with pytest.raises((TeecError, GuestError)):
        session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(5, 0, INOUT)])
    stack.restart()  # a new process: no limit
    assert "event=recovery_restored domid=1" in stack.daemon.log(), stack.daemon.log()
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(6, 0, INOUT)])[0].a == 7
    assert stack.counted.runs[5] == 0
    session.close()
    ctx.close()
    stack.destroy_all()
    stack.assert_clean()


def _record_offsets(data: bytes) -> list[int]:
    pos, out = _HEADER, []
    while pos + _FRAME.size <= len(data):
        length, _crc = _FRAME.unpack_from(data, pos)
        out.append(pos)
        pos += _FRAME.size + length
    return out


def test_torn_last_record_is_dropped_and_the_records_before_it_are_used(stack):
    d1 = stack.boot(1)
    ctx = Context(d1)
    session = ctx.open_session(INCREMENT_UUID)
    shm = ctx.register_memory(2 * 4096)
    pins = stack.platform.machine.pinned_frames(1)
    # the last call: an INVOKE (begin, then its state record — the one torn)
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(10, 0, INOUT)])[0].a == 11
    stack.kill()
    path = _journal(stack)
    data = path.read_bytes()
    last = _record_offsets(data)[-1]
    cut = last + (len(data) - last) // 2
    path.write_bytes(data[:cut])
    stack.start()
    log = stack.daemon.log()
    assert f"torn_tail={len(data[:cut]) - last}" in log, log
    # the begin before it stands: the INVOKE is settled, nothing of it lasts
    assert "event=recovery_settled domid=1" in log and 'lost_call="nothing to undo"' in log, log
    assert stack.platform.machine.pinned_frames(1) == pins
    # the session and registration of the records before it work
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(20, 0, INOUT)])[0].a == 21
    shm.release()
    session.close()
    ctx.close()
    stack.destroy_all()
    stack.assert_clean()


# -- a real full disk: the journal's directory a small tmpfs --------------------------------
#
# The daemon runs in a mount namespace (PrivateTmpfs, held by a process of
# its own so the tmpfs outlives a killed daemon, as a disk would) in which
# <runtime_dir>/stubdom-teed is a tmpfs of TMPFS_SIZE bytes (16 pages); machine files,
# rings, the gate and the dom<N> listeners stay on the shared filesystem.
# The control socket lives in that directory too (control_socket_path), so
# the platform reaches it through a symlink left in the directory the
# namespace mounts over: control -> /proc/<holder>/root/<own_dir>/control.
# The test fills the tmpfs through the same /proc/<holder>/root; the
# journal's own growth then meets ENOSPC at its next page.

TWO_DOMAINS = """\
domains:
  - domid: 1
    nr_pages: 1024
    vcpus: 2
  - domid: 2
    nr_pages: 1024
    vcpus: 2
"""
_PAGE = resource.getpagesize()  # tmpfs allocates a file's data by pages
TMPFS_SIZE = 16 * _PAGE  # the journal of two domains, and room for a checkpoint beside it
MAX_CALLS_TO_FILL = 200  # an INC journals well under a page (~0.6 KiB)


class _NamespacedDaemon(Daemon):
    """daemon_support's Daemon, run through ``prefix`` (nsenter into the namespace)."""

    def __init__(self, config, tmp_path, prefix: list[str]) -> None:
        self.log_path = tmp_path / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.line = ""


class TmpfsStack(Stack):
    def __init__(self, tmp_path) -> None:
        self.own_dir = tmp_path / "run" / "stubdom-teed"
        self.disk = PrivateTmpfs(self.own_dir, TMPFS_SIZE)
        try:
            (self.own_dir / "control").symlink_to(self.disk.outside(self.own_dir / "control"))
            super().__init__(tmp_path, domains=TWO_DOMAINS)
        except BaseException:
            self.disk.close()
            raise

    def start(self) -> None:
        self.daemon = _NamespacedDaemon(self.path, self.tmp_path, self.disk.argv_prefix())
        line = self.daemon.wait_listening()
        assert "listening on" in line, self.daemon.log()

    def inside(self, name: str) -> Path:
        """A file of the journal's directory, as the daemon sees it."""
        return self.disk.outside(self.own_dir / name)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.disk.close()


@pytest.fixture
def tmpfs_stack(tmp_path):
    try:
        s = TmpfsStack(tmp_path)
    except TmpfsUnavailable as e:
        pytest.skip(str(e))  # names the call refused: unshare(2) or mount(2)
    try:
        yield s
    finally:
        s.close()


def _fill(stack) -> int:
    """Write a filler until the tmpfs says ENOSPC; returns its size."""
    fd = os.open(stack.inside("filler"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        while True:
            try:
                size += os.write(fd, b"\xa5" * _PAGE)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                return size
    finally:
        os.close(fd)


def _last_record(stack) -> dict:
    data = stack.inside(JOURNAL_FILE).read_bytes()
    pos = _record_offsets(data)[-1]
    length, _crc = _FRAME.unpack_from(data, pos)
    assert pos + _FRAME.size + length == len(data), "a torn record after a failed write"
    return msgpack.unpackb(data[pos + _FRAME.size:pos + _FRAME.size + length], strict_map_key=False)


def _journal_write_failures(log: str) -> list[str]:
    return [line for line in log.splitlines() if "event=journal_write_failed" in line]


def _inc_record_sizes(stack) -> tuple[int, int]:
    """Bytes (framed) of an INC's begin and state: the last two records,
    the same as the INC's before (msgpack of the same shape)."""
    data = stack.inside(JOURNAL_FILE).read_bytes()
    offs = _record_offsets(data) + [len(data)]
    sizes = [b - a for a, b in zip(offs, offs[1:])]
    kinds = [msgpack.unpackb(data[a + _FRAME.size:b], strict_map_key=False)["t"]
             for a, b in zip(offs, offs[1:])]
    assert kinds[-4:] == ["begin", "state"] * 2 and sizes[-4:-2] == sizes[-2:], (kinds, sizes)
    return sizes[-2], sizes[-1]


def _first_refused_record(size: int, begin: int, state: int) -> tuple[int, str]:
    """On a full tmpfs a write fits only in the journal's last page: which
    INC's record is the first to need a new one (calls fully journaled
    before it, its kind)."""
    end = -(-size // _PAGE) * _PAGE
    calls = 0
    while True:
        if size + begin > end:
            return calls, "begin"
        if size + begin + state > end:
            return calls, "state"
        size += begin + state
        calls += 1


def _inc(session, v: int) -> None:
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(v, 0, INOUT)])[0].a == v + 1


def _fill_until_refused(stack, session, first_value: int, kind: str | None = None) -> tuple[int, str]:
    """INC until the journal's next record meets a page boundary at ``kind``
    (any if None), fill the disk, then INC until one is refused: every
    answered one ran once, the refused one never reached the TEE, and the
    record that failed is the one page granularity says. Returns (the
    refused value, the kind of record that failed)."""
    v = first_value
    for _ in range(2):
        _inc(session, v)
        v += 1
    begin, state = _inc_record_sizes(stack)
    for _ in range(MAX_CALLS_TO_FILL):
        ok, failing = _first_refused_record(stack.inside(JOURNAL_FILE).stat().st_size, begin, state)
        if kind in (None, failing):
            break
        _inc(session, v)
        v += 1
    else:
        raise AssertionError(f"no INC's {kind} record meets a page boundary")
    assert _fill(stack) > 0
    st = os.statvfs(stack.inside(""))
    assert (st.f_blocks * st.f_frsize, st.f_bavail) == (TMPFS_SIZE, 0)
    # a state that fails leaves its call answered; the next one is refused
    expect = v + ok + (failing == "state")
    first = v
    for v in range(first, first + MAX_CALLS_TO_FILL):
        try:
            out = session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(v, 0, INOUT)])
        except (TeecError, GuestError):
            assert stack.counted.runs[v] == 0, v  # refused before the TEE
            assert v == expect, (v, expect, failing)
            return v, failing
        assert out[0].a == v + 1 and stack.counted.runs[v] == 1
    raise AssertionError(f"{MAX_CALLS_TO_FILL} calls on a full disk all journaled")


def test_real_full_disk_refuses_state_changing_calls_until_space_returns(tmpfs_stack):
    stack = tmpfs_stack
    # only the journal's directory is the tmpfs, and only in the daemon's namespace
    assert stack.inside(JOURNAL_FILE).is_file() and not _journal(stack).exists()
    assert not any(line.split()[4] == str(stack.own_dir)
                   for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert stack.daemon.proc.pid != stack.disk.holder.pid
    assert (os.stat(f"/proc/{stack.daemon.proc.pid}/ns/mnt").st_ino
            == os.stat(f"/proc/{stack.disk.holder.pid}/ns/mnt").st_ino
            != os.stat("/proc/self/ns/mnt").st_ino)
    d1 = stack.boot(1)
    ctx = Context(d1)
    session = ctx.open_session(INCREMENT_UUID)
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(100, 0, INOUT)])[0].a == 101
    refused, _ = _fill_until_refused(stack, session, 1000)
    for v in (refused + 1, refused + 2):  # each tries a checkpoint first, which cannot fit
        with pytest.raises((TeecError, GuestError)):
            session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(v, 0, INOUT)])
        assert stack.counted.runs[v] == 0
    # the real path: the daemon logged ENOSPC, once (when it turned unhealthy)
    failed = _journal_write_failures(stack.daemon.log())
    assert len(failed) == 1 and f"errno={errno.ENOSPC}" in failed[0], failed
    # fast calls go on
    r = stack.platform.trap(1, 0, (OPTEE_SMC_CALLS_UID,) + (0,) * 7)
    assert r[0] == OPTEE_MSG_UID_0
    journal, dom = _journal_stats(stack)
    assert journal["healthy"] is False and journal["failures"] >= 3
    assert dom["refusals"].get("journal_unavailable", 0) >= 3
    # a new domain cannot be journaled: INTERNAL, and the platform ends it
    with pytest.raises(DomainCreationFailed) as exc:
        stack.boot(2)
    assert isinstance(exc.value.__cause__, ControlInternal), exc.value
    assert stack.platform.tee.partition_stats(2 + 1) is None
    assert stack.platform.machine.pinned_frames(2) == {}
    # space returns: the next state-changing call checkpoints first, then runs
    stack.inside("filler").unlink()
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(300, 0, INOUT)])[0].a == 301
    journal, _ = _journal_stats(stack)
    assert journal["healthy"] is True
    assert "event=journal_writable" in stack.daemon.log()
    d2 = stack.boot(2)  # and domains are created again
    ctx2 = Context(d2)
    assert inc(ctx2, 50) == 51
    # what the checkpoint wrote is what a restart needs: same session after a kill
    stack.restart()
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(400, 0, INOUT)])[0].a == 401
    session.close()
    ctx.close()
    ctx2.close()
    stack.destroy_all()
    stack.assert_clean()


@pytest.mark.parametrize("failing", ["begin", "state"])
def test_kill_while_the_real_disk_is_full_recovers_from_the_last_good_records(tmpfs_stack, failing):
    stack = tmpfs_stack
    d1 = stack.boot(1)
    ctx = Context(d1)
    session = ctx.open_session(INCREMENT_UUID)
    shm = ctx.register_memory(2 * 4096)
    pins = stack.platform.machine.pinned_frames(1)
    refused, _ = _fill_until_refused(stack, session, 1000, failing)
    # the last good record: the state of the call before (its begin failed),
    # or the begin of the call before (its state failed: answered, still open)
    last = _last_record(stack)
    assert last["t"] == {"begin": "state", "state": "begin"}[failing] and last["domid"] == 1, last
    stack.restart()  # the disk is still full: the tmpfs outlived the process
    log = stack.daemon.log()
    if failing == "begin":
        assert "event=recovery_restored domid=1" in log, log
    else:  # the journal's view is one call behind (docs/faults.md, "A limit")
        assert "event=recovery_settled domid=1" in log and 'lost_call="nothing to undo"' in log, log
        assert last["id"] and last["fn"] == OPTEE_SMC_CALL_WITH_REGD_ARG, last  # the guest's argument cache
    assert "event=recovery_reset" not in log, log
    assert stack.platform.machine.pinned_frames(1) == pins
    # its startup checkpoint does not fit: refused, never in the TEE, fast calls go on
    assert f"stubdom-teed: cannot write the journal {stack.own_dir / JOURNAL_FILE}" in log, log
    failed = _journal_write_failures(log)
    assert len(failed) == 1 and f"errno={errno.ENOSPC}" in failed[0], failed
    with pytest.raises((TeecError, GuestError)):
        session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(refused + 1, 0, INOUT)])
    assert stack.counted.runs[refused] == 0 and stack.counted.runs[refused + 1] == 0
    r = stack.platform.trap(1, 0, (OPTEE_SMC_CALLS_UID,) + (0,) * 7)
    assert r[0] == OPTEE_MSG_UID_0
    stack.inside("filler").unlink()
    assert session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(6, 0, INOUT)])[0].a == 7
    assert "event=journal_writable" in stack.daemon.log()
    shm.release()
    session.close()
    ctx.close()
    stack.destroy_all()
    stack.assert_clean()
