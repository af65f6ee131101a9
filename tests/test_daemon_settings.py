"""Daemon settings a real stubdom-teed process must honour: the bound on a
gate hypercall (mediator.gate_timeout_ms), each domain's log level and the
per-domain rate limit on the log lines a guest can trigger.
Harness (config, daemon process) from test_daemon.py."""

from __future__ import annotations

import subprocess
import sys
import threading

from stubdom.config import load_config
from stubdom.platform.gate import GATE_OP_HYP, Gate
from stubdom.xen import Machine
from test_daemon import write_config


class _SilentTee:
    """A secure world that never returns from an SMC (until released)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def smc(self, regs):
        self.entered.set()
        self.release.wait()
        return (0xFFFFFFFF,) + (0,) * 7


def test_gate_timeout_ms_bounds_a_silent_gate(tmp_path):
    """The daemon's first hypercall (the probe's CALLS_UID) meets a secure
    world that never answers: the daemon gives up after gate_timeout_ms, not
    after some built-in bound, and says so."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("  drain_timeout_ms:", "  gate_timeout_ms: 250\n  drain_timeout_ms:"))
    config = load_config(path)
    assert config.mediator.gate_timeout_ms == 250
    run = config.mediator.runtime_dir
    tee = _SilentTee()
    machine = Machine.create(run / "machine", nr_frames=config.platform.nr_frames, seed=1)
    gate = Gate(run, tee, domain_exists=lambda domid: True)
    gate.start()
    try:
        proc = subprocess.run([sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert tee.entered.is_set()
    finally:
        tee.release.set()
        gate.close()
        machine.close()
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert (f"stubdom-teed: probing OP-TEE through the gate failed: SMC gate op {GATE_OP_HYP} "
            f"for d0: no answer within 0.25 s\n") in proc.stderr, proc.stderr
    assert not (run / "stubdom-teed").exists()

