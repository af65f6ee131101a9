"""The daemon dying between VM_CREATED and its answer to ``domain_create``
(docs/faults.md, "Faults and outcomes").

OP-TEE made the domain's partition, the daemon is gone, the platform's
``domain_init`` gets no answer: the platform takes the domain back from the
stub domain (waiting for a hypercall of it still in the TEE) and sends
VM_DESTROYED itself, so no partition is orphaned — the restarted daemon
could not end it (the gate refuses a domain no longer assigned).

The kill is exact: the platform's TEE is wrapped (what the SMC gate calls)
and the wrapper SIGKILLs the daemon right after OP-TEE answered VM_CREATED,
before the gate hands the answer back.
"""

from __future__ import annotations

import threading

import pytest

from faults_support import Stack, inc
from stubdom.guest import Context
from stubdom.optee import OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED
from stubdom.platform.errors import DomainCreationFailed
from stubdom.platform.platform import domain_spec

M32 = 0xFFFFFFFF
ONE_DOMAIN = """\
domains:
  - domid: 1
    nr_pages: 1024
    vcpus: 2
"""


@pytest.fixture
def stack(tmp_path):
    with Stack(tmp_path, domains=ONE_DOMAIN) as s:
        yield s


def test_daemon_killed_after_vm_created_leaves_no_partition(stack):
    tee = stack.platform.tee
    inner = tee.smc
    seen: list[int] = []  # VM_CREATED / VM_DESTROYED of client 2, in order
    fired = threading.Event()

    def smc(regs):
        r = inner(regs)
        if regs[0] & M32 in (OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED) and regs[1] == 2:
            seen.append(regs[0] & M32)
            if regs[0] & M32 == OPTEE_SMC_VM_CREATED and not fired.is_set():
                assert tee.partition_stats(2) is not None  # OP-TEE made it
                stack.daemon.proc.kill()
                stack.daemon.proc.wait(20)
                fired.set()
        return r

    tee.smc = smc  # the instance attribute the gate calls
    with pytest.raises(DomainCreationFailed, match="cannot create domain 1: stubdom-teed") as e:
        stack.platform.create_domain(domain_spec(stack.config.domain(1)))
    assert fired.is_set(), e.value
    assert seen == [OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED]  # the platform's, after it
    assert tee.partition_stats(2) is None  # not orphaned
    assert stack.platform.placement.fallback_destroys == 1
    assert stack.platform.placement.gate.assigned() == frozenset()
    assert 1 not in stack.platform.machine.domains()
    # what is still pinned are the dead daemon's shadow pages (taken before
    # VM_CREATED), which only a daemon can account for: the restarted one
    # finds the domain's ``domain`` record without a ``state`` and the
    # frames' owner, and tears it down
    machine = stack.platform.machine
    assert {machine.frame_owner(m) for m in machine.pinned_frames()} <= {1}
    stack.daemon.stop()
    stack.start()
    log = stack.daemon.log()
    assert "event=recovery_torn_down domid=1" in log, log
    assert machine.pinned_frames() == {}
    assert tee.partition_stats(2) is None
    # then it serves a new domain 1
    d1 = stack.boot(1)
    with Context(d1) as ctx:
        assert inc(ctx, 7) == 8
    assert tee.partition_stats(2) is not None
    stack.destroy_all()
    stack.assert_clean()
