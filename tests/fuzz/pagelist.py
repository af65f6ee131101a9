"""Fuzz harness: ``read_page_list`` over guest-controlled page-list pages.

The input describes a tmem (buf_ptr, size, max_entries) and up to four
guest pages at fixed addresses; any other address is unmapped (the reader's
``read_page`` raises, as the mediator's does).  Property: a defined error
(``AbiError``, or the unmapped page's own error, propagated unchanged), or
a list whose entries are exactly the pages the size needs, each non-zero
and page aligned, read from distinct list pages, the first being buf_ptr's.

    python tests/fuzz/pagelist.py [-runs=N] [CORPUS_DIR ...]
"""

from __future__ import annotations

import contextlib
import struct
import sys

from _runner import Reader, main

from stubdom.optee import AbiError, build_page_list, make_buf_ptr, read_page_list
from stubdom.optee.pagelist import pages_needed, split_buf_ptr

NAME = "pagelist"
PAGE = 4096
BASE = 0x4000_0000  # the guest pages live at BASE, BASE + PAGE, ...
NPAGES = 4


class Unmapped(Exception):
    """No guest page at that address (the mediator's p2m lookup failing)."""


def one_input(data: bytes) -> None:
    r = Reader(data)
    sel = r.u8()
    # buf_ptr: one of the guest pages (low bits = offset) or a raw value
    raw = r.u64()
    buf_ptr = raw if sel & 1 else BASE + (raw % (NPAGES * PAGE))
    size = r.u32() if sel & 2 else r.u16()
    max_entries = r.u16() % 2048
    pages = {}
    for i in range(NPAGES):
        chunk = r.take(r.u16() % (PAGE + 1))
        # entries the fuzzer writes as small indices become guest addresses
        if sel & 4:
            words = [w for (w,) in struct.iter_unpack("<Q", chunk[: len(chunk) // 8 * 8])]
            chunk = b"".join(struct.pack("<Q", BASE + (w % 8) * PAGE + (w >> 61)) for w in words)
        pages[BASE + i * PAGE] = chunk.ljust(PAGE, b"\0")[:PAGE]
    reads = []

    def read_page(addr: int) -> bytes:
        reads.append(addr)
        if addr not in pages:
            raise Unmapped(hex(addr))
        return pages[addr]

    try:
        lst = read_page_list(read_page, buf_ptr, size, max_entries=max_entries)
    except (AbiError, Unmapped):
        return
    first, offset = split_buf_ptr(buf_ptr)
    assert len(lst.entries) == pages_needed(size, offset) <= max_entries
    assert all(e and not e % PAGE for e in lst.entries)
    assert lst.list_pages[0] == first and len(set(lst.list_pages)) == len(lst.list_pages)
    assert lst.offset == offset and lst.size == size and lst.buf_ptr == buf_ptr
    assert reads == list(lst.list_pages), "read a list page twice or one it did not need"


def seeds() -> list[bytes]:
    out = []
    for n, offset in ((1, 0), (3, 100), (511, 0), (600, 8)):
        lists = [BASE + i * PAGE for i in range(-(-n // 511))]
        entries = [BASE + 0x10_0000 + i * PAGE for i in range(n)]
        body = b"".join(struct.pack("<H", PAGE) + p for p in build_page_list(entries, lists))
        size = n * PAGE - offset
        out.append(bytes([2]) + struct.pack("<QIH", make_buf_ptr(lists[0], offset) - BASE, size, 1024) + body)
    return out


@contextlib.contextmanager
def target(workdir):
    yield one_input


if __name__ == "__main__":
    sys.exit(main(NAME, target, seeds, max_len=4 * (PAGE + 2) + 32))
