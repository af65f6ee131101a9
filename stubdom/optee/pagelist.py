"""Non-contiguous buffer page lists (OPTEE_MSG_ATTR_NONCONTIG).

Format (optee_msg.h comment on OPTEE_MSG_ATTR_NONCONTIG; OP-TEE
``core/kernel/msg_param.c``; Linux ``optee_fill_pages_list``):

* A chain of 4 KiB list pages, each 512 little-endian u64 slots: slots 0..510
  hold the physical addresses of 511 buffer pages (4 KiB aligned), slot 511
  the address of the next list page.
* ``tmem.buf_ptr`` = address of the first list page | offset of the buffer's
  first byte within its first page (low 12 bits); ``tmem.size`` = buffer bytes.
* The buffer spans ceil((size + offset) / 4096) pages.  The reader takes
  exactly that many entries and follows slot 511 only when it needs another
  entry: Linux writes a next pointer after every full list page, even when no
  list page follows, so a trailing pointer must never be dereferenced.

:func:`read_page_list` parses a list from hostile memory through a callback
returning a private copy of one page, so nothing it validated can change
under it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from .errors import (
    EmptyPageList,
    FieldOutOfRange,
    NullAddress,
    PageListLoop,
    PageListShapeMismatch,
    PageListTooLong,
    TruncatedPage,
    UnalignedAddress,
)
from .msg import OPTEE_MSG_NONCONTIG_PAGE_SIZE

__all__ = [
    "PAGE_SIZE",
    "PAGE_MASK",
    "ENTRY_SIZE",
    "ENTRIES_PER_LIST_PAGE",
    "NEXT_POINTER_SLOT",
    "NEXT_POINTER_OFFSET",
    "PageList",
    "pages_needed",
    "list_pages_needed",
    "split_buf_ptr",
    "make_buf_ptr",
    "build_page_list",
    "read_page_list",
    "iter_page_list",
]

PAGE_SIZE = OPTEE_MSG_NONCONTIG_PAGE_SIZE  # 4096, whatever the NS page size
PAGE_MASK = PAGE_SIZE - 1
ENTRY_SIZE = 8  # one u64 slot
ENTRIES_PER_LIST_PAGE = PAGE_SIZE // ENTRY_SIZE - 1  # 511
NEXT_POINTER_SLOT = ENTRIES_PER_LIST_PAGE  # slot 511
NEXT_POINTER_OFFSET = NEXT_POINTER_SLOT * ENTRY_SIZE  # byte 4088

_U64 = (1 << 64) - 1
_LIST_PAGE = struct.Struct(f"<{PAGE_SIZE // ENTRY_SIZE}Q")


@dataclass(frozen=True, slots=True)
class PageList:
    """A parsed page list: the buffer's pages in order, where the buffer starts
    in the first one, its size, and the list pages that were read."""

    entries: tuple[int, ...]
    offset: int
    size: int
    list_pages: tuple[int, ...]

    @property
    def buf_ptr(self) -> int:
        """The tmem.buf_ptr this list was read from."""
        return self.list_pages[0] | self.offset


def _u64(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise FieldOutOfRange(name, value, 64)


def pages_needed(size: int, offset: int) -> int:
    """Number of 4 KiB pages a buffer of ``size`` bytes starting ``offset``
    bytes into its first page touches: ceil((size + offset) / 4096)."""
    _u64("buffer size", size)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= PAGE_MASK:
        raise FieldOutOfRange("page offset", offset, 12)
    return (size + offset + PAGE_MASK) // PAGE_SIZE


def list_pages_needed(n_entries: int) -> int:
    """Number of list pages holding ``n_entries`` entries: ceil(n / 511)."""
    _u64("entry count", n_entries)
    return (n_entries + ENTRIES_PER_LIST_PAGE - 1) // ENTRIES_PER_LIST_PAGE


def split_buf_ptr(buf_ptr: int) -> tuple[int, int]:
    """(first list page address, offset of the buffer in its first page)."""
    _u64("buf_ptr", buf_ptr)
    return buf_ptr & ~PAGE_MASK, buf_ptr & PAGE_MASK


def make_buf_ptr(list_addr: int, offset: int) -> int:
    """The tmem.buf_ptr for a list at ``list_addr`` and a buffer offset."""
    _u64("list page address", list_addr)
    if list_addr & PAGE_MASK:
        raise UnalignedAddress("list page address", list_addr)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= PAGE_MASK:
        raise FieldOutOfRange("page offset", offset, 12)
    return list_addr | offset


def _check_page_addr(what: str, addr: int, index: int) -> None:
    _u64(what, addr)
    if addr == 0:
        raise NullAddress(what, entry_index=index)
    if addr & PAGE_MASK:
        raise UnalignedAddress(what, addr, entry_index=index)


def build_page_list(
    page_addrs: Sequence[int],
    list_page_addrs: Sequence[int],
    *,
    last_next: int = 0,
) -> list[bytes]:
    """Lay out ``page_addrs`` as list pages to be stored at ``list_page_addrs``.

    Returns one 4096-byte ``bytes`` per list page; slot 511 of each points to
    the next list page.  Slot 511 of the last one holds ``last_next`` (0 by
    default; pass an address to mimic Linux's dangling pointer after a full
    page).  Every address must be non-zero and 4 KiB aligned, the list pages
    distinct, and exactly list_pages_needed(len(page_addrs)) of them given.
    """
    n = len(page_addrs)
    if n == 0:
        raise EmptyPageList("a page list needs at least one entry")
    for i, addr in enumerate(page_addrs):
        _check_page_addr("page-list entry", addr, i)
    need = list_pages_needed(n)
    if len(list_page_addrs) != need:
        raise PageListShapeMismatch(
            f"{n} entries need {need} list page(s), got {len(list_page_addrs)} address(es)"
        )
    for k, addr in enumerate(list_page_addrs):
        _check_page_addr(f"list page {k}", addr, k * ENTRIES_PER_LIST_PAGE)
    if len(set(list_page_addrs)) != need:
        raise PageListShapeMismatch(f"list page addresses are not distinct: {list(map(hex, list_page_addrs))}")
    _u64("last next pointer", last_next)

    pages: list[bytes] = []
    for k in range(need):
        chunk = list(page_addrs[k * ENTRIES_PER_LIST_PAGE : (k + 1) * ENTRIES_PER_LIST_PAGE])
        chunk.extend([0] * (ENTRIES_PER_LIST_PAGE - len(chunk)))
        nxt = list_page_addrs[k + 1] if k + 1 < need else last_next
        pages.append(_LIST_PAGE.pack(*chunk, nxt))
    return pages


def read_page_list(
    read_page: Callable[[int], bytes],
    buf_ptr: int,
    size: int,
    *,
    max_entries: int,
) -> PageList:
    """Parse the page list of a NONCONTIG tmem (``buf_ptr``, ``size``): all
    of :func:`iter_page_list` at once (see there)."""
    steps = iter_page_list(read_page, buf_ptr, size, max_entries=max_entries)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            pages: PageList = done.value
            return pages


def iter_page_list(
    read_page: Callable[[int], bytes],
    buf_ptr: int,
    size: int,
    *,
    max_entries: int,
) -> Generator[None, None, PageList]:
    """Parse the page list of a NONCONTIG tmem (``buf_ptr``, ``size``),
    yielding after each list page but the last (a caller serving others may
    switch there) and returning the PageList.

    ``read_page(addr)`` must return a private copy of the 4096 bytes at
    ``addr`` or raise (its exception propagates unchanged).  Exactly
    pages_needed(size, offset) entries are read; next pointers are followed
    only when another entry is needed.  Raises:

    * EmptyPageList when size + offset is 0;
    * PageListTooLong when more than ``max_entries`` entries are needed
      (before reading anything);
    * NullAddress / UnalignedAddress for a zero or unaligned first list page,
      entry or needed next pointer;
    * PageListLoop when a needed next pointer names a list page already read;
    * TruncatedPage when ``read_page`` returns other than 4096 bytes.
    """
    if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0:
        raise FieldOutOfRange("max_entries", max_entries, 64)
    list_addr, offset = split_buf_ptr(buf_ptr)
    n = pages_needed(size, offset)
    if n == 0:
        raise EmptyPageList(f"page list for size {size} at offset {offset} describes no page")
    if n > max_entries:
        raise PageListTooLong(n, max_entries)
    if list_addr == 0:
        raise NullAddress("first list page", entry_index=0)

    visited: set[int] = set()
    list_pages: list[int] = []

    def load(addr: int, index: int) -> tuple[int, ...]:
        data = read_page(addr)
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != PAGE_SIZE:
            length = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else -1
            raise TruncatedPage(addr, length, entry_index=index)
        visited.add(addr)
        list_pages.append(addr)
        return _LIST_PAGE.unpack(data)

    slots = load(list_addr, 0)
    entries: list[int] = []
    for i in range(n):
        slot = i % ENTRIES_PER_LIST_PAGE
        if slot == 0 and i:
            nxt = slots[NEXT_POINTER_SLOT]
            what = f"next pointer of list page {len(list_pages) - 1}"
            if nxt == 0:
                raise NullAddress(what, entry_index=i)
            if nxt & PAGE_MASK:
                raise UnalignedAddress(what, nxt, entry_index=i)
            if nxt in visited:
                raise PageListLoop(nxt, entry_index=i)
            yield
            slots = load(nxt, i)
        entry = slots[slot]
        if entry == 0:
            raise NullAddress("page-list entry", entry_index=i)
        if entry & PAGE_MASK:
            raise UnalignedAddress("page-list entry", entry, entry_index=i)
        entries.append(entry)
    return PageList(tuple(entries), offset, size, tuple(list_pages))
