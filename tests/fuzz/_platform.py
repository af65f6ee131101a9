"""A real platform for the harnesses that reach the mediator: el2 by
default (the mediator core in this process: the same code the daemon runs,
without a process hop per input), or stubdom (a real stubdom-teed beside
the platform) with STUBDOM_FUZZ_PLACEMENT=stubdom; the isolation oracle
requiring pins; one attacker domain recreated whenever it holds anything,
so every input starts from a clean domain and every teardown is checked."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from stubdom.hostile import BASE_CAPS, HostileGuest, destroy_and_check, make_platform
from stubdom.mediator import DomainLimits, client_id
from stubdom.optee import OPTEE_SMC_SEC_CAP_RPC_ARG
from stubdom.platform import DomainSpec

__all__ = ["Rig", "rig"]

DOMID = 1
LIMITS = DomainLimits(max_calls=2, max_shm_buffers=8, max_pages_per_buffer=16, max_total_pages=64)
RECYCLE_EVERY = 500  # inputs between recreations even when clean (fresh pages)
MAX_RPCS = 64  # RPCs served per input before walking away from the call


class Rig:
    """The platform and its attacker domain; ``setup(guest)`` runs after
    every (re)creation and whatever it leaves is the clean baseline."""

    def __init__(self, p, setup=None, max_sessions: int = 0) -> None:
        self.p = p
        self.max_sessions = max_sessions  # sessions a harness keeps open across inputs
        self.inputs = 0
        self._setup = setup
        self.guest = self._create()

    def _create(self) -> HostileGuest:
        self.p.create_domain(DomainSpec(DOMID, nr_pages=2048))
        g = HostileGuest(self.p, DOMID)
        g.negotiate()
        if self._setup is not None:
            self._setup(g)
        self.baseline = self.p.mediator_state(DOMID)["buffers"]
        return g

    def check(self) -> None:
        """After every input: oracle clean, no mediator bug, limits held;
        recreate the domain (checking its teardown) when it holds anything
        beyond the baseline."""
        self.inputs += 1
        self.p.oracle.assert_clean()
        state = self.p.mediator_state(DOMID)
        assert state["internal_errors"] == 0, state
        assert state["pinned_pages"] <= LIMITS.max_total_pages, state
        assert state["buffers"] <= LIMITS.max_shm_buffers and state["calls_in_flight"] <= LIMITS.max_calls, state
        tee = self.p.tee.partition_stats(client_id(DOMID))
        if (state["calls_in_flight"] or state["buffers"] != self.baseline or state["nr_rpc_buffers"]
                or tee.sessions > self.max_sessions or self.inputs % RECYCLE_EVERY == 0):
            self.recycle()

    def recycle(self) -> None:
        destroy_and_check(self.p, DOMID)
        self.guest = self._create()


@contextlib.contextmanager
def rig(workdir: Path, setup=None, *, max_sessions: int = 0):
    placement = os.environ.get("STUBDOM_FUZZ_PLACEMENT", "el2")
    with make_platform(Path(workdir) / "platform", placement, limits=LIMITS,
                       caps=BASE_CAPS | OPTEE_SMC_SEC_CAP_RPC_ARG, threads=2, guest_count=2,
                       nr_frames=16384, smc_history=4096) as p:  # flat memory in long runs
        yield Rig(p, setup, max_sessions)
