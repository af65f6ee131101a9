"""The secure-world test harness (tests/tee_support.py): the normal world
it plays allocates pages its domain owns, pinned while they are in use."""

from __future__ import annotations

from pathlib import Path

from stubdom.xen import PAGE_SIZE
from tee_support import setup_guests


def test_allocated_pages_are_owned_and_pinned(tmp_path: Path) -> None:
    machine, _tee, oracle, (nw,) = setup_guests(tmp_path, 1)
    ma = nw.alloc_page()
    assert machine.frame_owner(ma // PAGE_SIZE) == 1
    assert machine.frame_refcount(ma // PAGE_SIZE) == 1
    nw.release_page(ma)
    assert machine.frame_refcount(ma // PAGE_SIZE) == 0
    assert oracle.violations == []
    machine.close()

