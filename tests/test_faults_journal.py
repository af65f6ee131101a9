"""The journal's own faults (docs/faults.md, "Faults and outcomes"): a full
disk, and a record cut short at the end of the file.

The disk fills by the daemon's RLIMIT_FSIZE, lowered from outside with
prlimit(2) to less than the journal already is: every write to it (and to a
checkpoint beside it) fails with EFBIG, the way ENOSPC fails it — one code
path (Journal._write_all). CPython ignores SIGXFSZ, so the write fails
instead of killing the process. Deterministic, no root, no mount. Raising the
limit back is the space returning.
"""

from __future__ import annotations

import resource
import struct

import pytest

from stubdom.guest import Context, GuestError, TeecError
from stubdom.guest.client import INOUT, Value
from stubdom.optee.smc import OPTEE_SMC_CALLS_UID, OPTEE_SMC_RETURN_OK
from stubdom.optee.smc import OPTEE_MSG_UID_0
from stubdom.tee.tas import INCREMENT_UUID
from stubdom.tee.tas.increment import TA_INCREMENT_CMD_INC_VALUE
from test_faults_restart import Stack

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
    s = Stack(tmp_path, domains=ONE_DOMAIN)
    try:
        yield s
    finally:
        s.close()


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
