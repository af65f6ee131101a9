"""What the SMC gate's tests share: a machine with two small domains, the
OP-TEE model over it, and a Gate serving a TEE wrapper until the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from stubdom.platform import Gate
from stubdom.tee import IsolationOracle, OpteeModel, TeeConfig
from stubdom.xen import Machine

DOMIDS = (1, 2)


@contextmanager
def gate_machine(tmp_path: Path) -> Iterator[Machine]:
    """A machine (it holds the static region at 0x42000000) with domains 1 and 2 of 16 pages."""
    m = Machine.create(tmp_path / "machine", nr_frames=16384)
    for domid in DOMIDS:
        m.create_domain(domid, nr_pages=16)
    try:
        yield m
    finally:
        m.close()


def optee_model(machine: Machine) -> OpteeModel:
    return OpteeModel(machine, TeeConfig(), IsolationOracle(machine))


@contextmanager
def serving_gate(tmp_path: Path, machine: Machine, tee, let_go: Callable[[], None]) -> Iterator[Gate]:
    """A started Gate over ``tee``; ``let_go`` runs before close, so that a
    test that failed holding an SMC does not hang close()."""
    g = Gate(tmp_path, tee, domain_exists=lambda d: d in machine.domains())
    g.start()
    try:
        yield g
    finally:
        let_go()
        g.close()
