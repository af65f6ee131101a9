"""Guest page allocator, shared-memory buffers and page lists in guest memory."""

from __future__ import annotations

import pytest

from stubdom.guest import (
    PAGE_SIZE,
    OutOfGuestPages,
    PageAllocator,
    PageNotAllocated,
    Shm,
    ShmOwner,
    StaticPool,
    StaticShmOutOfMemory,
)
from stubdom.optee import read_page_list
from stubdom.xen import Machine


@pytest.fixture
def machine(tmp_path):
    m = Machine.create(tmp_path / "machine", nr_frames=16384)
    yield m
    m.close()


@pytest.fixture
def domu(machine):
    return machine.create_domain(1, nr_pages=1024)


def test_allocator_covers_exactly_the_domains_ram(domu):
    alloc = PageAllocator.for_domain(domu, seed=7)
    ram = {gfn * PAGE_SIZE for gfn in domu.ram_gfns()}
    got = alloc.alloc(len(ram))
    assert set(got) == ram and len(got) == len(ram)
    assert alloc.free_count == 0


def test_allocations_are_scattered_and_reproducible(domu):
    a = PageAllocator.for_domain(domu, seed=3).alloc(64)
    b = PageAllocator.for_domain(domu, seed=3).alloc(64)
    c = PageAllocator.for_domain(domu, seed=4).alloc(64)
    assert a == b and a != c
    contiguous = sum(1 for x, y in zip(a, a[1:]) if y == x + PAGE_SIZE)
    assert contiguous < 8  # a buddy-like sorted order would give 63


def test_exhaustion_allocates_nothing(domu):
    alloc = PageAllocator.for_domain(domu)
    alloc.alloc(1000)
    with pytest.raises(OutOfGuestPages, match="wanted 25, 24 free"):
        alloc.alloc(25)
    assert alloc.free_count == 24


def test_free_returns_pages_and_refuses_double_free(domu):
    alloc = PageAllocator.for_domain(domu)
    pages = alloc.alloc(3)
    alloc.free(pages[:2])
    assert alloc.allocated_count == 1
    with pytest.raises(PageNotAllocated, match=hex(pages[0])):
        alloc.free([pages[2], pages[0]])
    assert alloc.allocated_count == 1  # all or nothing
    alloc.free_page(pages[2])
    assert alloc.allocated_count == 0


def test_exclude_keeps_platform_pages_out(domu):
    first = domu.ram_gfns()[0] * PAGE_SIZE
    alloc = PageAllocator.for_domain(domu, exclude=[first])
    assert not alloc.owns(first) and alloc.total == 1023


def test_shm_reads_and_writes_across_scattered_pages(domu):
    alloc = PageAllocator.for_domain(domu, seed=1)
    pages = alloc.alloc(3)
    shm = Shm(domu, cookie=1, size=3 * PAGE_SIZE - 100, owner=ShmOwner.KERNEL, pages=pages, page_offset=100)
    data = bytes(range(256)) * 47
    shm.write(50, data)
    assert shm.read(50, len(data)) == data
    # the bytes really live at the scattered IPAs
    assert domu.read(pages[1], 16) == data[PAGE_SIZE - 150 : PAGE_SIZE - 150 + 16]
    assert shm.ipa(PAGE_SIZE - 100) == pages[1]
    with pytest.raises(ValueError, match="outside"):
        shm.read(shm.size - 1, 2)


def test_static_pool_first_fit_with_512_byte_granules():
    pool = StaticPool(0x4200_0000, 0x4200_4000)
    a = pool.alloc(100)
    b = pool.alloc(600, align=16)
    c = pool.alloc(10, align=PAGE_SIZE)
    assert (a, b, c) == (0x4200_0000, 0x4200_0200, 0x4200_1000)
    pool.free(b)
    assert pool.alloc(1000) == 0x4200_0200
    with pytest.raises(StaticShmOutOfMemory):
        pool.alloc(0x4000)
    for addr in (a, 0x4200_0200, c):
        pool.free(addr)
    assert pool.free_bytes == 0x4000 and pool.used_count == 0


@pytest.mark.parametrize("n_pages", [1, 511, 512, 1023])
def test_page_list_written_by_the_driver_decodes(domu, n_pages, tmp_path):
    from stubdom.guest.driver import OpteeDriver

    alloc = PageAllocator(
        [g * PAGE_SIZE for g in range(0x40000, 0x40000 + 2048)], seed=5
    )  # beyond the domain's RAM is fine for layout: only list pages are written
    drv = OpteeDriver(lambda v, r: r, domu, allocator=PageAllocator.for_domain(domu, seed=9))
    pages = alloc.alloc(n_pages)
    list_ipas = drv._write_page_list(pages)
    assert len(list_ipas) == -(-n_pages // 511)
    size = n_pages * PAGE_SIZE - 300
    parsed = read_page_list(
        lambda addr: domu.read(addr, PAGE_SIZE), list_ipas[0] | 300, size, max_entries=4096
    )
    assert list(parsed.entries) == pages
    assert list(parsed.list_pages) == list_ipas
