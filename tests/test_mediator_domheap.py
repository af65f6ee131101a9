"""Machine.alloc_domheap_pages / free_domheap_pages: the frames a mediator
keeps on a domain's behalf (owned by it, in no p2m, not in tot_pages)."""

import pytest

from stubdom.xen import (
    PAGE_SHIFT,
    PAGE_SIZE,
    FramePinned,
    Machine,
    NoSuchDomain,
    NotOwner,
    OutOfFrames,
)
from stubdom.xen.constants import DOMID_INVALID


@pytest.fixture
def machine(tmp_path):
    m = Machine.create(tmp_path / "m", nr_frames=16384, seed=7)
    yield m
    m.close()


def test_heap_pages_are_owned_unmapped_and_not_counted(machine):
    dom = machine.create_domain(1, nr_pages=64)
    before = dom.nr_pages
    mfns = machine.alloc_domheap_pages(1, 3)
    assert len(set(mfns)) == 3
    for mfn in mfns:
        assert machine.frame_owner(mfn) == 1
        assert machine.frame_refcount(mfn) == 0
        assert machine.read_machine(mfn << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE)
    mapped = {dom.lookup(g).mfn for g in dom.ram_gfns()}
    assert not mapped & set(mfns)
    assert dom.nr_pages == before
    # Pinnable by the owner, as the isolation oracle requires.
    machine.get_pages(mfns, 1)
    with pytest.raises(FramePinned):
        machine.free_domheap_pages(1, mfns)
    machine.put_pages(mfns)
    machine.free_domheap_pages(1, mfns)
    for mfn in mfns:
        assert machine.frame_owner(mfn) == DOMID_INVALID
    machine.destroy_domain(1)


def test_heap_pages_refused_for_dead_domain_and_wrong_owner(machine):
    machine.create_domain(1, nr_pages=8)
    machine.create_domain(2, nr_pages=8)
    mfns = machine.alloc_domheap_pages(1, 1)
    with pytest.raises(NotOwner):
        machine.free_domheap_pages(2, mfns)
    with pytest.raises(OutOfFrames):
        machine.alloc_domheap_pages(2, machine.free_frames + 1)
    machine.free_domheap_pages(1, mfns)
    with pytest.raises(NotOwner):  # already free
        machine.free_domheap_pages(1, mfns)
    machine.destroy_domain(1)
    with pytest.raises(NoSuchDomain):
        machine.alloc_domheap_pages(1, 1)
    machine.destroy_domain(2)


def test_freed_heap_page_is_scrubbed_before_reuse(machine):
    machine.create_domain(1, nr_pages=8)
    (mfn,) = machine.alloc_domheap_pages(1, 1)
    machine.write_machine(mfn << PAGE_SHIFT, b"secret" * 10)
    machine.free_domheap_pages(1, [mfn])
    machine.destroy_domain(1)
    machine.create_domain(3, nr_pages=8)
    again = machine.alloc_domheap_pages(3, machine.free_frames)
    assert mfn in again
    assert machine.read_machine(mfn << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE)
