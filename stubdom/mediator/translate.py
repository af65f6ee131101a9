"""Turning guest buffers into something OP-TEE may touch: translate every
IPA (p2m_ram_rw only), pin the frame on the domain's behalf, and build the
machine-address page list in mediator-owned pages.  All or nothing: on any
refusal nothing stays pinned and nothing is accounted."""

from __future__ import annotations

import struct

from stubdom.optee.errors import AbiError, PageListTooLong
from stubdom.optee.pagelist import build_page_list, iter_page_list, list_pages_needed, make_buf_ptr
from stubdom.optee.teec import TEEC_ERROR_BAD_PARAMETERS, TEEC_ERROR_BAD_STATE, TEEC_ERROR_OUT_OF_MEMORY
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, Domain, Machine, MachineError, P2mType

from .context import DomainContext, ShadowPage, ShmBuffer, ShmKind
from .limits import TRANSLATE_STEP
from .steps import Steps, drive

__all__ = ["Refusal", "translate_noncontig", "translate_noncontig_steps", "translate_page",
           "release_buffer", "buffer_buf_ptr", "free_list_pages"]

_PAGE_MASK = PAGE_SIZE - 1
_SLOTS = struct.Struct(f"<{PAGE_SIZE // 8}Q")  # one list page: 511 entries and the next pointer


class Refusal(Exception):
    """A guest buffer the mediator will not hand to OP-TEE; ``ret`` is the
    TEEC code the guest (or OP-TEE, for RPC replies) is given."""

    def __init__(self, ret: int, reason: str) -> None:
        super().__init__(reason)
        self.ret = ret
        self.reason = reason


def _reserve(ctx: DomainContext, pages: int) -> None:
    """Account one more buffer of ``pages`` pages, or refuse (limits)."""
    lim = ctx.limits
    if pages > lim.max_pages_per_buffer:
        raise Refusal(TEEC_ERROR_OUT_OF_MEMORY,
                      f"buffer of {pages} pages exceeds max_pages_per_buffer {lim.max_pages_per_buffer}")
    with ctx.lock:
        if ctx.nr_buffers >= lim.max_shm_buffers:
            raise Refusal(TEEC_ERROR_OUT_OF_MEMORY, f"{ctx.nr_buffers} buffers pinned already "
                          f"(max_shm_buffers {lim.max_shm_buffers})")
        counted = ctx.counted_pages()
        if counted + pages > lim.max_total_pages:
            raise Refusal(TEEC_ERROR_OUT_OF_MEMORY, f"{counted} + {pages} pages exceed "
                          f"max_total_pages {lim.max_total_pages}")
        ctx.nr_buffers += 1
        ctx.pinned_pages += pages


def _unreserve(ctx: DomainContext, pages: int) -> None:
    with ctx.lock:
        ctx.nr_buffers -= 1
        ctx.pinned_pages -= pages


def _frame_of(domain: Domain, ipa: int) -> int:
    """The frame behind a page-aligned guest IPA the TEE may write: p2m_ram_rw
    only, never machine address 0."""
    try:
        entry = domain.lookup(ipa >> PAGE_SHIFT)
    except MachineError as e:
        raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"IPA {ipa:#x}: {e}") from None
    if entry.type != P2mType.p2m_ram_rw:
        raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"IPA {ipa:#x} is {entry.type.name}, not p2m_ram_rw")
    if entry.mfn == 0:
        raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"IPA {ipa:#x} is backed by machine address 0")
    return entry.mfn


def _translate_and_pin(machine: Machine, domain: Domain, ctx: DomainContext, ipas: list[int]) -> Steps[list[int]]:
    """Translate and pin ``ipas`` in steps of TRANSLATE_STEP pages, yielding
    between steps (a stub domain serves other domains there). Before each
    step after the first the domain is re-checked (a teardown begun on
    another CPU stops the work); the pages were accounted against the limits
    before the first step, so no step can overcommit. On any refusal — or
    the caller abandoning the generator — every step taken is undone: all or
    nothing."""
    mfns: list[int] = []
    try:
        for start in range(0, len(ipas), TRANSLATE_STEP):
            if start:
                yield
                if ctx.dying:
                    raise Refusal(TEEC_ERROR_BAD_STATE, "domain is being destroyed")
            step = [_frame_of(domain, ipa) for ipa in ipas[start:start + TRANSLATE_STEP]]
            try:
                machine.get_pages(step, ctx.domid)
            except MachineError as e:
                raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"cannot pin guest frames: {e}") from None
            mfns.extend(step)
    except BaseException:
        if mfns:
            machine.put_pages(mfns)
        raise
    return mfns


def translate_noncontig(machine: Machine, domain: Domain, ctx: DomainContext, kind: ShmKind, buf_ptr: int,
                        size: int, cookie: int) -> ShmBuffer:
    """:func:`translate_noncontig_steps` at once."""
    return drive(translate_noncontig_steps(machine, domain, ctx, kind, buf_ptr, size, cookie))


def translate_noncontig_steps(machine: Machine, domain: Domain, ctx: DomainContext, kind: ShmKind, buf_ptr: int,
                              size: int, cookie: int) -> Steps[ShmBuffer]:
    """A NONCONTIG tmem (guest page list at ``buf_ptr``): pinned pages plus a
    translated list in shadow pages. Yields between list pages and between
    pinning steps; closing it mid-way releases what it took."""

    def read_page(ipa: int) -> bytes:
        try:
            data = domain.read(ipa, PAGE_SIZE)
        except MachineError as e:
            raise Refusal(TEEC_ERROR_BAD_PARAMETERS, f"page list at {ipa:#x}: {e}") from None
        if ctx.profile.page_list_offsets_ignored:
            # Xen reads every slot as a guest frame number (gaddr_to_gfn):
            # the low 12 bits of entries and next pointers are dropped
            data = _SLOTS.pack(*(slot & ~_PAGE_MASK for slot in _SLOTS.unpack(data)))
        return data

    try:
        plist = yield from iter_page_list(read_page, buf_ptr, size,
                                          max_entries=ctx.limits.max_pages_per_buffer)
    except AbiError as e:
        ret = TEEC_ERROR_OUT_OF_MEMORY if isinstance(e, PageListTooLong) else TEEC_ERROR_BAD_PARAMETERS
        raise Refusal(ret, f"page list {buf_ptr:#x} size {size:#x}: {e}") from None
    ipas = list(plist.entries)
    _reserve(ctx, len(ipas))
    try:
        mfns = yield from _translate_and_pin(machine, domain, ctx, ipas)
    except BaseException:
        _unreserve(ctx, len(ipas))
        raise
    buf = ShmBuffer(kind, cookie, ipas, mfns, plist.offset, size)
    try:
        with ctx.lock:
            buf.list_pages = [ctx.pool.take() for _ in range(list_pages_needed(len(mfns)))]
        pages = build_page_list([m << PAGE_SHIFT for m in mfns], [p.maddr for p in buf.list_pages])
        for page, data in zip(buf.list_pages, pages, strict=True):
            machine.write_machine(page.maddr, data)
    except BaseException:
        release_buffer(machine, ctx, buf)
        raise
    return buf


def translate_page(machine: Machine, domain: Domain, ctx: DomainContext, kind: ShmKind, ipa: int, size: int,
                   cookie: int) -> ShmBuffer:
    """A contiguous buffer that fits one page (an SHM_ALLOC reply as one
    page by address: TMEM_OUTPUT without NONCONTIG, what a driver sends for
    shared memory that is not dynamic): pin that page; OP-TEE gets its
    machine address."""
    offset = ipa & _PAGE_MASK
    if size == 0 or offset + size > PAGE_SIZE:
        raise Refusal(TEEC_ERROR_BAD_PARAMETERS,
                      f"contiguous buffer {ipa:#x}+{size:#x} does not fit one page")
    _reserve(ctx, 1)
    try:
        (mfn,) = drive(_translate_and_pin(machine, domain, ctx, [ipa & ~_PAGE_MASK]))
    except BaseException:
        _unreserve(ctx, 1)
        raise
    return ShmBuffer(kind, cookie, [ipa & ~_PAGE_MASK], [mfn], offset, size)


def buffer_buf_ptr(buf: ShmBuffer) -> int:
    """What OP-TEE gets in tmem.buf_ptr for a translated buffer."""
    if buf.list_pages:
        return make_buf_ptr(buf.list_pages[0].maddr, buf.offset)
    return (buf.mfns[0] << PAGE_SHIFT) | buf.offset


def free_list_pages(ctx: DomainContext, pages: list[ShadowPage]) -> None:
    with ctx.lock:
        for page in pages:
            ctx.pool.give(page)
    pages.clear()


def release_buffer(machine: Machine, ctx: DomainContext, buf: ShmBuffer) -> None:
    """Unpin a buffer's pages, return its list pages, drop its accounting."""
    free_list_pages(ctx, buf.list_pages)
    if buf.static:
        with ctx.lock:
            ctx.nr_buffers -= 1
        return
    if buf.mfns:
        machine.put_pages(buf.mfns)
    _unreserve(ctx, len(buf.mfns))
    buf.mfns = []
