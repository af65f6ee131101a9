"""The daemon killed and started again (docs/faults.md): a real
stubdom-teed process beside an in-process platform whose increment TA counts
every execution by value (``Stack``), and one INC call (``inc``); shared by
the fault tests."""

from __future__ import annotations

import collections
import signal

from daemon_support import Daemon, write_config
from stubdom.config import load_config
from stubdom.daemon import ControlClient, control_socket_path
from stubdom.guest import Context, GuestError, MemoryStore, OpteeDriver, Supplicant
from stubdom.guest.client import INOUT, Value
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec
from stubdom.tee.tas import INCREMENT_UUID
from stubdom.tee.tas.increment import TA_INCREMENT_CMD_INC_VALUE

DOMAINS = """\
domains:
  - domid: 1
    nr_pages: 1024
    vcpus: 2
  - domid: 2
    nr_pages: 1024
    vcpus: 2
"""


class Counted:
    """Every INC_VALUE the TEE runs, by input value (each guest call uses a
    value of its own)."""

    def __init__(self, tee) -> None:
        self.runs: collections.Counter = collections.Counter()
        ta = tee.tas[INCREMENT_UUID]
        inner = ta.invoke

        def invoke(ctx, cmd, params):
            if cmd == TA_INCREMENT_CMD_INC_VALUE and params:
                self.runs[params[0].a] += 1
            return (yield from inner(ctx, cmd, params))

        ta.invoke = invoke


class Stack:
    def __init__(self, tmp_path, domains=DOMAINS, call_timeout_ms: int | None = None) -> None:
        self.tmp_path = tmp_path
        self.path = write_config(tmp_path, domains=domains)
        if call_timeout_ms is not None:  # also the lease of a restored suspended call
            text = self.path.read_text()
            assert "call_timeout_ms: 10000" in text
            self.path.write_text(text.replace("call_timeout_ms: 10000",
                                              f"call_timeout_ms: {call_timeout_ms}"))
        self.config = load_config(self.path)
        self.platform = Platform.for_config(self.config)
        self.counted = Counted(self.platform.tee)
        self.daemon = None
        self.drivers: dict[int, OpteeDriver] = {}
        self.start()

    def start(self) -> None:
        self.daemon = Daemon(self.path, self.tmp_path)
        line = self.daemon.wait_listening()
        assert "listening on" in line, self.daemon.log()

    def kill(self) -> None:
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(20)
        self.daemon.stop()

    def restart(self) -> None:
        self.kill()
        self.start()

    def boot(self, domid: int, store=None, supplicant=None) -> OpteeDriver:
        dc = self.config.domain(domid)
        domain = self.platform.create_domain(domain_spec(dc))
        d = OpteeDriver(self.platform.trap_entry(domid), domain, nr_vcpus=dc.vcpus, seed=domid,
                        supplicant=supplicant or Supplicant(store or MemoryStore()))
        d.probe()
        self.drivers[domid] = d
        return d

    def ctl(self) -> ControlClient:
        return ControlClient(control_socket_path(self.config.mediator.runtime_dir), timeout=30)

    def destroy_all(self) -> None:
        for domid, d in list(self.drivers.items()):
            try:
                d.shutdown()
            except GuestError:
                pass
            self.platform.destroy_domain(domid)
            del self.drivers[domid]

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.daemon.proc.poll() is None:
                self.destroy_all()
        finally:
            self.daemon.stop()
            self.platform.close()

    def assert_clean(self) -> None:
        """After every domain was destroyed: no pin, no partition."""
        assert self.platform.machine.pinned_frames() == {}
        for domid in (0, 1, 2, 3, 4):
            assert self.platform.tee.partition_stats(domid + 1) is None, domid
        assert not self.platform.oracle.violations, self.platform.oracle.violations


def inc(ctx: Context, value: int) -> int:
    session = ctx.open_session(INCREMENT_UUID)
    try:
        out = session.invoke(TA_INCREMENT_CMD_INC_VALUE, [Value(value, 0, INOUT)])
    finally:
        session.close()
    return out[0].a


# Slack over the lease (mediator.call_timeout_ms) for a loaded CI machine.
SERVICE_SLACK_S = 5.0
