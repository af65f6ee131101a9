"""The EL2 placement: the mediator core runs inside the hypervisor, in the
trapping vCPU's own thread of control, and issues SMCs itself (as Xen's
xen/arch/arm/tee/optee.c does)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from stubdom.mediator import DirectTeePort, DomainLimits, Mediator, OpenSessionFilter
from stubdom.mediator.errors import DomainRefused
from stubdom.mediator.profile import DEFAULT_PROFILE, Profile
from stubdom.optee.teec import TEE_NUM_PARAMS
from stubdom.trace import TRACER, now_ns

from .errors import DomainCreationFailed
from .regs import Regs

__all__ = ["El2Placement"]


class El2Placement:
    """Placement protocol (stubdom/platform/vsmc.py) over one Mediator.

    ``Platform(..., placement=El2Placement)`` works as is; for other limits
    use ``placement=lambda p: El2Placement(p, limits=...)``; ``open_session_filter``
    is the mediator's policy hook (see Mediator); ``profile`` the protocol it
    speaks to guests (stubdom/mediator/profile.py).  The mediator
    probes the TEE when the placement is made (TeeProbeFailed stops it).
    """

    name = "el2"

    def __init__(self, platform, *, limits: DomainLimits | None = None,
                 domain_limits: Mapping[int, DomainLimits] | None = None,
                 static_shm: bool = True, open_session_filter: OpenSessionFilter | None = None,
                 logger: logging.Logger | None = None,
                 log_clock: Callable[[], float] | None = None,
                 tee_num_params: int | None = None,
                 profile: Profile = DEFAULT_PROFILE) -> None:
        """``limits`` for every domain but those ``domain_limits`` names (a
        per-domain policy, as a configuration's ``domains`` entries give)."""
        self.port = DirectTeePort(platform.tee)
        self.mediator = Mediator(platform.machine, self.port, logger=logger, log_clock=log_clock,
                                 open_session_filter=open_session_filter, profile=profile,
                                 tee_num_params=TEE_NUM_PARAMS if tee_num_params is None else tee_num_params)
        self._limits = limits or DomainLimits()
        self._domain_limits = dict(domain_limits or {})
        self._static_shm = static_shm

    def domain_init(self, domid: int) -> None:
        try:
            self.mediator.domain_init(domid, limits=self._domain_limits.get(domid, self._limits),
                                      static_shm=self._static_shm)
        except DomainRefused as e:
            raise DomainCreationFailed(domid, str(e)) from e

    def handle_call(self, domid: int, vcpu: int, regs: Regs) -> Regs | None:
        if TRACER.on and (call := TRACER.current()) is not None:
            t0 = now_ns()
            out = self.mediator.handle_call(domid, vcpu, regs)
            TRACER.span(call, "mediate", "vcpu", t0, now_ns())
            return out
        return self.mediator.handle_call(domid, vcpu, regs)

    def relinquish_resources(self, domid: int) -> bool:
        return self.mediator.relinquish_resources(domid)

    def domain_teardown(self, domid: int) -> None:
        self.mediator.domain_teardown(domid)
