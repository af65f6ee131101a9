"""Normal-world memory as the secure world sees it: OP-TEE's ``struct mobj``.

Two kinds matter on the SMC ABI (``core/include/mm/mobj.h``):

* ``STATIC``: a contiguous range inside the reserved (static) shared-memory
  carve-out, ``mobj_shm_alloc`` / ``param_mem_from_mobj``; memrefs into it
  travel as TMEM with a physical address.
* ``REG``: a list of 4 KiB pages plus the buffer's offset in the first one,
  ``mobj_reg_shm`` / ``mobj_mapped_shm`` (REGISTER_SHM, NONCONTIG params,
  dynamic RPC allocations); memrefs into it travel as RMEM with the cookie.
  Its size is ``pages * 4096 - page_offset``: the whole of the last page,
  exactly as ``mobj_reg_shm_alloc`` computes it.

Every byte is read or written through the isolation oracle, at the moment
the secure world touches it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from stubdom.xen.constants import PAGE_SIZE

__all__ = ["MobjKind", "Mobj", "NsAccess"]


class MobjKind(Enum):
    STATIC = "static"  # CORE_MEM_NSEC_SHM
    REG = "reg"  # CORE_MEM_REG_SHM


@dataclass(eq=False)
class Mobj:
    """A buffer of non-secure memory.  ``pages`` holds one machine address
    for STATIC (the start of the range) and the page list for REG."""

    kind: MobjKind
    pages: tuple[int, ...]
    page_offset: int
    size: int
    cookie: int
    # References held by in-flight calls (REGD_ARG, RMEM params): while > 0
    # the registration cannot be released.
    users: int = field(default=0)
    # mobj_reg_shm_release_by_cookie has dropped the registration's reference
    # (struct mobj_reg_shm .releasing): a second UNREGISTER_SHM is refused.
    releasing: bool = field(default=False)
    # The last reference is gone while releasing (.release_frees): the
    # unregistering thread may free it.
    release_frees: bool = field(default=False)

    @classmethod
    def static(cls, pa: int, size: int, cookie: int = 0) -> Mobj:
        return cls(MobjKind.STATIC, (pa,), 0, size, cookie)

    @classmethod
    def reg(cls, pages: tuple[int, ...], page_offset: int, cookie: int) -> Mobj:
        return cls(MobjKind.REG, pages, page_offset, len(pages) * PAGE_SIZE - page_offset, cookie)

    def contains(self, offs: int, length: int) -> bool:
        return 0 <= offs and offs + length <= self.size

    def pa(self, offs: int) -> int:
        """mobj_get_pa: the machine address of byte ``offs``."""
        if self.kind is MobjKind.STATIC:
            return self.pages[0] + offs
        pos = self.page_offset + offs
        return self.pages[pos // PAGE_SIZE] + pos % PAGE_SIZE

    def spans(self, offs: int, length: int) -> list[tuple[int, int]]:
        """(machine address, length) runs covering [offs, offs + length)."""
        if not self.contains(offs, length):
            raise ValueError(f"[{offs}, +{length}) is outside a {self.size}-byte mobj")
        if self.kind is MobjKind.STATIC:
            return [(self.pages[0] + offs, length)] if length else []
        out: list[tuple[int, int]] = []
        pos = self.page_offset + offs
        left = length
        while left:
            in_page = pos % PAGE_SIZE
            n = min(left, PAGE_SIZE - in_page)
            out.append((self.pages[pos // PAGE_SIZE] + in_page, n))
            pos += n
            left -= n
        return out


Reader = Callable[[int, int, str], bytes]
Writer = Callable[[int, bytes, str], None]


@dataclass(frozen=True)
class NsAccess:
    """How one thread touches normal-world memory (through the oracle)."""

    read_ma: Reader
    write_ma: Writer

    def read(self, mobj: Mobj, offs: int, length: int, what: str) -> bytes:
        return b"".join(self.read_ma(ma, n, what) for ma, n in mobj.spans(offs, length))

    def write(self, mobj: Mobj, offs: int, data: bytes, what: str) -> None:
        pos = 0
        for ma, n in mobj.spans(offs, len(data)):
            self.write_ma(ma, data[pos:pos + n], what)
            pos += n


class NsMemoryMap:
    """What OP-TEE knows about non-secure memory: where NS DDR is (the
    machine's RAM) and where the reserved shared-memory carve-out is.  Its
    methods are the address checks of ``core/mm/core_mmu.c`` (core_pbuf_is),
    ``core/arch/arm/kernel/thread_optee_smc.c`` (rpc_shm_mobj_alloc) and
    ``core/kernel/msg_param.c`` (msg_param_mobj_from_noncontig)."""

    def __init__(self, *, ram_base: int, ram_end: int, static_base: int | None,
                 static_size: int, dynamic_shm: bool, max_pages: int) -> None:
        self.ram_base = ram_base
        self.ram_end = ram_end
        self.static_base = static_base
        self.static_size = static_size
        self.dynamic_shm = dynamic_shm
        self.max_pages = max_pages

    @property
    def has_static(self) -> bool:
        return self.static_base is not None

    def in_static(self, pa: int, size: int) -> bool:
        """core_pbuf_is(CORE_MEM_NSEC_SHM, pa, size)."""
        if self.static_base is None:
            return False
        return self.static_base <= pa and pa + size <= self.static_base + self.static_size

    def is_ns_ram(self, pa: int, size: int) -> bool:
        """core_pbuf_is(CORE_MEM_NON_SEC, pa, size): inside NS DDR."""
        return self.ram_base <= pa and pa + size <= self.ram_end

    def static_param_mem(self, pa: int, size: int) -> tuple[Mobj, int] | None:
        """param_mem_from_mobj on the carve-out: [pa, pa + max(size, 1)) inside it."""
        if self.static_base is None or not self.in_static(pa, max(size, 1)):
            return None
        return Mobj.static(self.static_base, self.static_size), pa - self.static_base

    def rpc_shm_mobj_alloc(self, pa: int, size: int, cookie: int) -> Mobj | None:
        """A contiguous buffer handed over by the normal world (RPC ALLOC,
        SHM_ALLOC replied with plain TMEM_OUTPUT)."""
        if self.in_static(pa, size):
            return Mobj.static(pa, size, cookie)
        if self.dynamic_shm and not pa % PAGE_SIZE and size <= PAGE_SIZE and self.is_ns_ram(pa, PAGE_SIZE):
            return Mobj.reg((pa,), 0, cookie)
        return None

    def mobj_from_noncontig(self, read_page: Callable[[int], bytes], buf_ptr: int, size: int,
                            cookie: int) -> Mobj | None:
        """msg_param_mobj_from_noncontig: read the page list and build a REG mobj,
        or None for anything OP-TEE would refuse."""
        from stubdom.optee.errors import BadPageList
        from stubdom.optee.pagelist import read_page_list

        if not self.dynamic_shm:
            return None

        def read_list_page(addr: int) -> bytes:
            if not self.is_ns_ram(addr, PAGE_SIZE):
                raise _NotNsRam(addr)
            return read_page(addr)

        try:
            plist = read_page_list(read_list_page, buf_ptr, size, max_entries=self.max_pages)
        except (BadPageList, _NotNsRam):
            return None
        if not all(self.is_ns_ram(p, PAGE_SIZE) for p in plist.entries):
            return None
        return Mobj.reg(plist.entries, plist.offset, cookie)


class _NotNsRam(Exception):
    """A page-list page outside NS DDR: mobj_mapped_shm_alloc fails."""
