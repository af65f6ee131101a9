"""The platform process: machine, secure world, trap path and toolstack.

This is the "Xen + secure world" box of docs/architecture.md: it owns the machine model,
the OP-TEE model (which outlives every domain) and the isolation oracle, and
it creates and destroys domains the way a toolstack does: populate the
domain's memory, let the placement initialise its mediator state (which sends
VM_CREATED), and hand out the domain's trap entry for its vCPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from stubdom.rundir import ensure_runtime_dir
from stubdom.tee import IsolationOracle, OpteeModel, TeeConfig
from stubdom.xen import Domain, Machine

from .errors import DomainCreationFailed, UnknownDomain
from .regs import Regs
from .vsmc import Placement, route_smc

if TYPE_CHECKING:
    from .stubdom import StubdomPlacement


@dataclass(frozen=True)
class DomainSpec:
    """What the toolstack is asked to build (a tiny xl.cfg)."""

    domid: int
    nr_pages: int
    hwdom: bool = False
    direct_mapped: bool = False
    # Map OP-TEE's static shm carve-out 1:1 into the domain at creation, as a
    # dom0 device tree's reserved-memory node does. Only the machine model's
    # mechanism: the mediator decides policy on GET_SHM_CONFIG.
    static_shm: bool = False
    vcpus: int = 1


def domain_spec(domain_config) -> DomainSpec:
    """The DomainSpec of a pre-declared domain of the configuration
    (stubdom.config.DomainConfig)."""
    return DomainSpec(
        domid=domain_config.domid,
        nr_pages=domain_config.nr_pages,
        hwdom=domain_config.hwdom,
        direct_mapped=domain_config.direct_mapped,
        static_shm=domain_config.static_shm,
        vcpus=domain_config.vcpus,
    )


_P = TypeVar("_P", bound=Placement)


class Platform(Generic[_P]):
    """One simulated machine with its secure world and one placement (of
    the type its ``placement`` factory makes)."""

    def __init__(
        self,
        path: Path,
        *,
        nr_frames: int,
        tee_config: TeeConfig,
        placement: Callable[[Platform[_P]], _P],
        require_pins: bool = True,
        seed: int = 0,
        static_shm: tuple[int, int] | None = None,
    ) -> None:
        # static_shm: (base, size) of OP-TEE's carve-out; None = the machine's default
        shm = {} if static_shm is None else {"static_shm_base": static_shm[0], "static_shm_size": static_shm[1]}
        self.machine = Machine.create(Path(path), nr_frames=nr_frames, seed=seed, **shm)
        try:
            self.oracle = IsolationOracle(self.machine, require_pins=require_pins)
            self.tee = OpteeModel(self.machine, tee_config, self.oracle)
            self.placement: _P = placement(self)
        except BaseException:
            self.machine.close()
            raise
        self._specs: dict[int, DomainSpec] = {}

    @classmethod
    def for_config(cls, config, *, placement: Callable[[Platform[Any]], Any] | None = None,
                   control_timeout: float = 10.0) -> Self:
        """The platform a stubdom-teed configuration describes (the
        contract of stubdom.config.Config): the machine at
        ``<runtime_dir>/machine``; under ``placement: el2`` the mediator of
        ``mediator.profile`` in it (under ``stubdom`` the daemon builds its
        own from the same file); under ``placement: stubdom`` the SMC gate is
        serving before this returns, so the daemon can start beside it. Domains
        are not created: see :func:`domain_spec`. The runtime directory is
        created with mode 0700, or refused (``stubdom.rundir.RuntimeDirError``)
        when another user could change it. Which placement it has is the
        configuration's: the caller's annotation (``Platform[Placement]``,
        or a subclass's) says what it relies on."""
        runtime = ensure_runtime_dir(config.mediator.runtime_dir)
        factory = placement or _configured_placement(config, runtime, control_timeout)
        return cls(runtime / "machine", nr_frames=config.platform.nr_frames, tee_config=config.tee,
                   placement=factory, seed=config.platform.seed,
                   static_shm=(config.static_shm.base, config.static_shm.size))

    def as_stubdom(self) -> StubdomPlacement:
        """The placement, which is the stub domain's (``placement: stubdom``,
        as the caller's configuration says); TypeError if it is not."""
        from .stubdom import StubdomPlacement

        if not isinstance(self.placement, StubdomPlacement):
            raise TypeError(f"placement {getattr(self.placement, 'name', '?')!r} is not the stub domain's")
        return self.placement

    # -- toolstack ---------------------------------------------------------

    def create_domain(self, spec: DomainSpec, *, external: bool = False) -> Domain:
        """Build the domain and let the placement initialise it. ``external``:
        its frontend is another program's (placement stubdom only:
        ``StubdomPlacement.external(domid)`` says where its ring is); no
        trap entry of this platform reaches it."""
        init: Callable[[int], None] = self.placement.domain_init
        if external:
            init_external: Callable[[int], None] | None = getattr(self.placement, "domain_init_external", None)
            if init_external is None:
                raise DomainCreationFailed(spec.domid, f"placement {getattr(self.placement, 'name', '?')!r} "
                                           f"has no external frontends (placement stubdom has)")
            init = init_external
        domain = self.machine.create_domain(
            spec.domid, nr_pages=spec.nr_pages, hwdom=spec.hwdom, direct_mapped=spec.direct_mapped
        )
        try:
            if spec.static_shm:
                domain.map_static_shm()
            init(spec.domid)
        except DomainCreationFailed:
            self.machine.destroy_domain(spec.domid)
            raise
        self._specs[spec.domid] = spec
        return domain

    def destroy_domain(self, domid: int) -> None:
        """Stop the domain's vCPUs (the caller's threads must be done), let the
        placement relinquish everything, then free the domain's memory."""
        if domid not in self._specs:
            raise UnknownDomain(domid)
        while not self.placement.relinquish_resources(domid):
            pass  # resumable teardown: each round releases a bounded chunk
        try:
            self.placement.domain_teardown(domid)
        finally:
            # a broken teardown invariant is reported (raised) once the
            # domain is gone: it must never make a domain undestroyable
            self.machine.destroy_domain(domid)
            del self._specs[domid]

    def domain(self, domid: int) -> Domain:
        if domid not in self._specs:
            raise UnknownDomain(domid)
        return self.machine.domain(domid)

    def domids(self) -> list[int]:
        return sorted(self._specs)

    # -- trap path ---------------------------------------------------------

    def trap(self, domid: int, vcpu: int, regs: Sequence[int]) -> Regs:
        """A vCPU of ``domid`` executed SMC with ``regs``: the registers it resumes with."""
        if domid not in self._specs:
            raise UnknownDomain(domid)
        return route_smc(self.placement, domid, vcpu, regs)

    def trap_entry(self, domid: int) -> Callable[[int, Sequence[int]], Regs]:
        """The trap entry a guest driver is given: (vcpu, regs) -> regs."""
        if domid not in self._specs:
            raise UnknownDomain(domid)

        def entry(vcpu: int, regs: Sequence[int]) -> Regs:
            return route_smc(self.placement, domid, vcpu, regs)

        return entry

    def close(self) -> None:
        """Destroy every domain, stop the placement (under stubdom: the SMC
        gate's thread and the control connection), unmap the machine."""
        try:
            for domid in list(self._specs):
                self.destroy_domain(domid)
        finally:
            close = getattr(self.placement, "close", None)
            if close is not None:
                close()
            self.machine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _configured_placement(config: Any, runtime: Path, control_timeout: float) -> Callable[[Platform[Any]], Any]:
    """The placement factory of the configuration's ``mediator.placement``
    (Platform.for_config): which one is known at run time only."""
    med = config.mediator
    if med.placement == "stubdom":
        from .stubdom import stubdom_placement

        return stubdom_placement(runtime, poll_window_us=med.poll_window_us,
                                 call_timeout_ms=med.call_timeout_ms, control_timeout=control_timeout)
    if med.placement == "el2":
        from stubdom.mediator.profile import profile_named

        from .el2 import El2Placement

        limits = config.default_policy.limits
        own = {d.domid: d.policy.limits for d in config.domains}
        profile = profile_named(med.profile)
        return lambda p: El2Placement(p, limits=limits, domain_limits=own,
                                      tee_num_params=med.tee_num_params, profile=profile)
    raise ValueError(f"unknown placement {med.placement!r}")
