"""Non-contiguous page lists: layout, builder, and the hostile-input parser."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stubdom.optee import (
    ENTRIES_PER_LIST_PAGE,
    EmptyPageList,
    FieldOutOfRange,
    NullAddress,
    PageList,
    PageListLoop,
    PageListShapeMismatch,
    PageListTooLong,
    TruncatedPage,
    UnalignedAddress,
    build_page_list,
    list_pages_needed,
    make_buf_ptr,
    pages_needed,
    read_page_list,
    split_buf_ptr,
)
from stubdom.optee import pagelist as pl

PAGE = 4096


class FakeMemory:
    """Physical memory as a dict of 4 KiB pages; read_page returns a copy and
    records every address read."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}
        self.reads: list[int] = []

    def store(self, addr: int, data: bytes) -> None:
        assert len(data) == PAGE and addr % PAGE == 0
        self.pages[addr] = bytes(data)

    def store_list(self, list_addrs: list[int], pages: list[bytes]) -> None:
        for a, p in zip(list_addrs, pages, strict=True):
            self.store(a, p)

    def read_page(self, addr: int) -> bytes:
        self.reads.append(addr)
        if addr not in self.pages:
            raise LookupError(f"no page at {addr:#x}")
        return bytes(self.pages[addr])


def raw_list_page(entries: list[int], next_ptr: int = 0) -> bytes:
    slots = entries + [0] * (511 - len(entries))
    return struct.pack("<512Q", *slots, next_ptr)


def data_pages(n: int, base: int = 0x8000_0000) -> list[int]:
    # scattered, non-contiguous frames
    return [base + PAGE * (3 * i + (i % 5)) for i in range(n)]


def test_layout_constants() -> None:
    assert pl.PAGE_SIZE == 4096
    assert pl.PAGE_MASK == 0xFFF
    assert pl.ENTRY_SIZE == 8
    assert ENTRIES_PER_LIST_PAGE == 511
    assert pl.NEXT_POINTER_SLOT == 511
    assert pl.NEXT_POINTER_OFFSET == 4088


@pytest.mark.parametrize(
    ("size", "offset", "pages"),
    [(0, 0, 0), (1, 0, 1), (4096, 0, 1), (4097, 0, 2), (1, 4095, 1), (2, 4095, 2),
     (0, 100, 1), (4096, 1, 2), (512 * 1024, 0, 128), (512 * 1024, 1, 129)],
)
def test_pages_needed(size: int, offset: int, pages: int) -> None:
    assert pages_needed(size, offset) == pages


def test_pages_needed_rejects_bad_input() -> None:
    with pytest.raises(FieldOutOfRange, match="page offset = 4096"):
        pages_needed(1, 4096)
    with pytest.raises(FieldOutOfRange, match="buffer size = -1"):
        pages_needed(-1, 0)


@pytest.mark.parametrize(("n", "lists"), [(0, 0), (1, 1), (511, 1), (512, 2), (1022, 2), (1023, 3)])
def test_list_pages_needed(n: int, lists: int) -> None:
    assert list_pages_needed(n) == lists


def test_buf_ptr_split_and_make() -> None:
    assert split_buf_ptr(0x1234_5678_9ABC) == (0x1234_5678_9000, 0xABC)
    assert make_buf_ptr(0x1234_5678_9000, 0xABC) == 0x1234_5678_9ABC
    with pytest.raises(UnalignedAddress, match="list page address 0x1001 is not 4 KiB aligned"):
        make_buf_ptr(0x1001, 0)
    with pytest.raises(FieldOutOfRange, match="page offset = 4096"):
        make_buf_ptr(0x1000, 4096)


# -- Builder -----------------------------------------------------------------------------------


def test_build_exact_bytes() -> None:
    pages = build_page_list([0x10000, 0x20000, 0x30000], [0x5000])
    assert len(pages) == 1 and len(pages[0]) == 4096
    assert struct.unpack_from("<3Q", pages[0], 0) == (0x10000, 0x20000, 0x30000)
    assert pages[0][24:] == bytes(4096 - 24)  # unused slots and next pointer are 0


def test_build_next_pointers_and_dangling_last_next() -> None:
    entries = data_pages(1022)
    pages = build_page_list(entries, [0x7000, 0x3000], last_next=0x9000)
    assert struct.unpack_from("<Q", pages[0], 4088)[0] == 0x3000
    assert struct.unpack_from("<Q", pages[1], 4088)[0] == 0x9000
    assert struct.unpack_from("<Q", pages[1], 0)[0] == entries[511]
    assert struct.unpack_from("<Q", pages[1], 510 * 8)[0] == entries[1021]


def test_build_rejects_bad_addresses() -> None:
    with pytest.raises(UnalignedAddress, match="page-list entry 0x10010 \\(entry 1\\)"):
        build_page_list([0x10000, 0x10010], [0x5000])
    with pytest.raises(NullAddress, match="page-list entry is address 0 \\(entry 2\\)"):
        build_page_list([0x10000, 0x11000, 0], [0x5000])
    with pytest.raises(UnalignedAddress, match="list page 1 0x6008"):
        build_page_list(data_pages(512), [0x5000, 0x6008])
    with pytest.raises(PageListShapeMismatch, match="512 entries need 2 list page\\(s\\), got 1"):
        build_page_list(data_pages(512), [0x5000])
    with pytest.raises(PageListShapeMismatch, match="not distinct"):
        build_page_list(data_pages(512), [0x5000, 0x5000])
    with pytest.raises(EmptyPageList):
        build_page_list([], [])
    with pytest.raises(FieldOutOfRange, match="18446744073709551616"):
        build_page_list([1 << 64], [0x5000])


# -- Parser: good lists --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 510, 511, 512, 1022, 1023])
def test_read_crossing_list_pages(n: int) -> None:
    mem = FakeMemory()
    entries = data_pages(n)
    lists = [0x40000 + 0x5000 * k for k in range(list_pages_needed(n))]
    mem.store_list(lists, build_page_list(entries, lists))
    got = read_page_list(mem.read_page, make_buf_ptr(lists[0], 0), n * PAGE, max_entries=2048)
    assert got == PageList(tuple(entries), 0, n * PAGE, tuple(lists))
    assert mem.reads == lists
    assert got.buf_ptr == lists[0]


def test_read_with_offset_needs_one_more_page() -> None:
    mem = FakeMemory()
    entries = data_pages(512)
    lists = [0x40000, 0x50000]
    mem.store_list(lists, build_page_list(entries, lists))
    # 511 pages of data starting 0x10 into the first page: 512 entries
    got = read_page_list(mem.read_page, 0x40010, 511 * PAGE, max_entries=600)
    assert got.entries == tuple(entries) and got.offset == 0x10
    assert got.buf_ptr == 0x40010


def test_read_ignores_entries_and_pointer_beyond_need() -> None:
    # Linux writes a next pointer after a full list page; it must not be
    # followed when no more entries are needed, nor unused slots judged.
    mem = FakeMemory()
    entries = data_pages(511)
    mem.store(0x40000, build_page_list(entries, [0x40000], last_next=0xDEAD000)[0])
    got = read_page_list(mem.read_page, 0x40000, 511 * PAGE, max_entries=511)
    assert len(got.entries) == 511 and mem.reads == [0x40000]
    # only 3 of 511 entries needed: garbage in later slots is never looked at
    mem2 = FakeMemory()
    mem2.store(0x1000, raw_list_page([0x10000, 0x11000, 0x12000, 0x13001, 0], next_ptr=0x1001))
    got = read_page_list(mem2.read_page, 0x1000, 3 * PAGE, max_entries=8)
    assert got.entries == (0x10000, 0x11000, 0x12000)


# -- Parser: hostile lists ------------------------------------------------------------------------


def test_loop_between_two_list_pages() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page(data_pages(511), next_ptr=0x2000))
    mem.store(0x2000, raw_list_page(data_pages(511, 0x9000_0000), next_ptr=0x1000))
    with pytest.raises(PageListLoop, match="list page 0x1000 needed for entry 1022 was already visited") as ei:
        read_page_list(mem.read_page, 0x1000, 1500 * PAGE, max_entries=2000)
    assert ei.value.entry_index == 1022 and ei.value.address == 0x1000


def test_self_pointing_list_page() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page(data_pages(511), next_ptr=0x1000))
    with pytest.raises(PageListLoop, match="list page 0x1000 needed for entry 511") as ei:
        read_page_list(mem.read_page, 0x1000, 512 * PAGE, max_entries=1 << 20)
    assert ei.value.entry_index == 511
    assert mem.reads == [0x1000]  # never re-read


def test_unaligned_entry() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page([0x10000, 0x11000, 0x12800]))
    with pytest.raises(UnalignedAddress, match="page-list entry 0x12800 \\(entry 2\\) is not 4 KiB aligned") as ei:
        read_page_list(mem.read_page, 0x1000, 3 * PAGE, max_entries=8)
    assert ei.value.entry_index == 2 and ei.value.address == 0x12800


def test_zero_entry() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page([0x10000, 0]))
    with pytest.raises(NullAddress, match="page-list entry is address 0 \\(entry 1\\)") as ei:
        read_page_list(mem.read_page, 0x1000, 2 * PAGE, max_entries=8)
    assert ei.value.entry_index == 1


def test_next_pointer_needed_but_zero() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page(data_pages(511), next_ptr=0))
    with pytest.raises(NullAddress, match="next pointer of list page 0 is address 0 \\(entry 511\\)"):
        read_page_list(mem.read_page, 0x1000, 512 * PAGE, max_entries=1024)


def test_next_pointer_unaligned() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page(data_pages(511), next_ptr=0x2004))
    with pytest.raises(UnalignedAddress, match="next pointer of list page 0 0x2004 \\(entry 511\\)"):
        read_page_list(mem.read_page, 0x1000, 512 * PAGE, max_entries=1024)


def test_unaligned_entry_on_second_list_page() -> None:
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page(data_pages(511), next_ptr=0x2000))
    mem.store(0x2000, raw_list_page([0x7000_0000, 0x7000_0001]))
    with pytest.raises(UnalignedAddress, match="0x70000001 \\(entry 512\\)"):
        read_page_list(mem.read_page, 0x1000, 513 * PAGE, max_entries=1024)


def test_too_many_entries_refused_before_reading() -> None:
    mem = FakeMemory()
    with pytest.raises(PageListTooLong, match="needs 130 entries, more than the maximum of 129") as ei:
        read_page_list(mem.read_page, 0x1000, 129 * PAGE + 1, max_entries=129)
    assert (ei.value.needed, ei.value.max_entries) == (130, 129)
    assert mem.reads == []
    # a size near 2**64 is still just "too long", never an allocation
    with pytest.raises(PageListTooLong):
        read_page_list(mem.read_page, 0x1000, (1 << 64) - 1, max_entries=129)


def test_truncated_read() -> None:
    def short(addr: int) -> bytes:
        return bytes(4000)

    with pytest.raises(TruncatedPage, match="list page 0x1000 read as 4000 bytes, expected 4096 \\(entry 0\\)"):
        read_page_list(short, 0x1000, PAGE, max_entries=4)

    mem = FakeMemory()
    mem.store(0x1000, raw_list_page(data_pages(511), next_ptr=0x2000))

    def second_short(addr: int) -> bytes:
        return mem.read_page(addr) if addr == 0x1000 else bytes(4097)

    with pytest.raises(TruncatedPage, match="0x2000 read as 4097 bytes.*entry 511"):
        read_page_list(second_short, 0x1000, 600 * PAGE, max_entries=1024)


def test_read_page_errors_propagate() -> None:
    mem = FakeMemory()
    with pytest.raises(LookupError, match="no page at 0x3000"):
        read_page_list(mem.read_page, 0x3000, PAGE, max_entries=1)


def test_first_list_page_zero_and_empty() -> None:
    mem = FakeMemory()
    with pytest.raises(NullAddress, match="first list page is address 0"):
        read_page_list(mem.read_page, 0x0, PAGE, max_entries=1)
    with pytest.raises(EmptyPageList, match="size 0 at offset 0"):
        read_page_list(mem.read_page, 0x1000, 0, max_entries=1)
    assert mem.reads == []


def test_read_takes_a_copy_per_page() -> None:
    # The parser validates what read_page returned; a later change to memory
    # cannot alter the result.
    mem = FakeMemory()
    mem.store(0x1000, raw_list_page([0x10000]))
    got = read_page_list(mem.read_page, 0x1000, 10, max_entries=1)
    mem.store(0x1000, raw_list_page([0x20001]))
    assert got.entries == (0x10000,)


@given(
    st.lists(st.integers(1, (1 << 52) - 1).map(lambda f: f * PAGE), min_size=1, max_size=1100),
    st.integers(0, PAGE - 1),
    st.data(),
)
def test_build_read_round_trip(frames: list[int], offset: int, data: st.DataObject) -> None:
    n = len(frames)
    lists = data.draw(
        st.lists(st.integers(1, 1 << 20).map(lambda f: f * PAGE), min_size=list_pages_needed(n),
                 max_size=list_pages_needed(n), unique=True)
    )
    # the buffer must need exactly n pages: size in ((n-1)*4096 - offset, n*4096 - offset]
    size = data.draw(st.integers(max(1, (n - 1) * PAGE - offset + 1), n * PAGE - offset))
    mem = FakeMemory()
    mem.store_list(lists, build_page_list(frames, lists))
    got = read_page_list(mem.read_page, make_buf_ptr(lists[0], offset), size, max_entries=n)
    assert got == PageList(tuple(frames), offset, size, tuple(lists))
