"""A guest kernel that speaks raw OP-TEE SMCs and, when asked, does whatever
a malicious kernel can.

It has exactly the powers of a guest: it executes SMCs through its vCPUs'
trap entry (``platform.trap_entry(domid)``, the same entry the Linux-like
driver gets, under every placement) and it changes only its own memory
through its ``Domain`` (read/write, balloon_out, set_type, map_mmio).  It
never learns a machine address except by reading what the mediator gave it.

Honest behaviour is the default (it serves OP-TEE's RPCs like a minimal
Linux driver); every hostile trick is an explicit method or hook.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from stubdom.guest.tastore import model_ta_images
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_LOAD_TA,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RPC_FUNC_ALLOC,
    OPTEE_SMC_RPC_FUNC_CMD,
    OPTEE_SMC_RPC_FUNC_FOREIGN_INTR,
    OPTEE_SMC_RPC_FUNC_FREE,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_NOT_SUPPORTED,
    TEEC_ERROR_SHORT_BUFFER,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    build_page_list,
    get_arg_size,
    is_rpc_return,
    list_pages_needed,
    make_buf_ptr,
    rpc_func,
    value_words_to_uuid,
)
from stubdom.xen import PAGE_SHIFT, PAGE_SIZE, P2mType

from .errors import GuestOutOfPages, UnexpectedRpc

__all__ = ["HostileGuest", "Regs", "ShmAllocHook", "M32", "MMIO_GFN_BASE"]

Regs = tuple[int, int, int, int, int, int, int, int]
M32 = 0xFFFFFFFF
# Where the guest maps device frames: far above its RAM (GUEST_RAM0 ends at
# 0x1_0000_0000), inside a 48-bit IPA space.
MMIO_GFN_BASE = 0x10_0000
_MMIO_MFN_BASE = 0x0900_0  # UART-like device frames, outside machine RAM

# shm_alloc hook: (guest, SHM_ALLOC request) -> the param the guest replies
# with (None: answer honestly with a page list of fresh pages).
ShmAllocHook = Callable[["HostileGuest", MsgArg], "MsgParam | None"]


class HostileGuest:
    """One domain's kernel, writing its own messages.  Thread-safe enough for
    several vCPU threads: page and cookie allocation are locked."""

    def __init__(self, platform, domid: int, *, seed: int = 0) -> None:
        self.platform = platform
        self.domid = domid
        self.dom = platform.domain(domid)
        self._entry = platform.trap_entry(domid)
        self._lock = threading.Lock()
        gfns = list(self.dom.ram_gfns())
        random.Random(f"hostile:{domid}:{seed}").shuffle(gfns)
        self._free = gfns
        self._free_set = set(gfns)  # so a page given back twice is listed once
        self._mmio_free: list[int] = []  # device gfns unmapped again, reused first
        self._scopes = threading.local()  # per thread: the pages of the open scopes
        self._cookies = itertools.count(0x1000)
        self._mmio = itertools.count(MMIO_GFN_BASE)
        self.rpc_arg = False  # negotiated SEC_CAP_RPC_ARG (then the RPC arg trails the call's)
        self._rpc_param_count = 0
        self.rpc_pages: dict[int, int] = {}  # cookie -> IPA of an RPC argument buffer
        self.shm_allocs: dict[int, list[int]] = {}  # cookie -> pages given for SHM_ALLOC
        self._shm_lists: dict[int, list[int]] = {}  # cookie -> list pages describing them
        self.shm_frees: list[tuple[int, int]] = []  # (type, cookie) of every SHM_FREE asked
        self.rpc_cmds: list[int] = []  # RPC CMD commands served, in order
        self._current: dict[int, tuple[int, int]] = {}  # vcpu -> (arg IPA, RPC arg offset)
        self.shm_alloc_hook: ShmAllocHook | None = None
        # its tee-supplicant's TA directory: the model's TAs (LOAD_TA)
        self.ta_images = model_ta_images()

    # -- registers ----------------------------------------------------------------

    def smc(self, *regs: int, vcpu: int = 0) -> Regs:
        """Execute SMC with x0..x(n-1) = ``regs`` (the rest zero)."""
        return self._entry(vcpu, tuple(regs) + (0,) * (8 - len(regs)))

    def smc8(self, regs: Sequence[int], *, vcpu: int = 0) -> Regs:
        """Execute SMC with exactly these eight registers (a7 included)."""
        return self._entry(vcpu, tuple(regs))

    def negotiate(self, nsec_caps: int = 0) -> int:
        """EXCHANGE_CAPABILITIES; remembers whether RPC_ARG was granted."""
        r = self.smc(OPTEE_SMC_EXCHANGE_CAPABILITIES, nsec_caps)
        self.rpc_arg = r[0] == OPTEE_SMC_RETURN_OK and bool(r[1] & OPTEE_SMC_SEC_CAP_RPC_ARG) and r[3] > 0
        self._rpc_param_count = r[3] if self.rpc_arg else 0
        return r[1]

    # -- memory -------------------------------------------------------------------

    def page(self) -> int:
        """A fresh page of this guest's RAM (its IPA)."""
        with self._lock:
            if not self._free:
                raise GuestOutOfPages(self.domid)
            gfn = self._free.pop()
            self._free_set.discard(gfn)
        stack = getattr(self._scopes, "stack", None)
        if stack:
            stack[-1].append(gfn << PAGE_SHIFT)
        return gfn << PAGE_SHIFT

    def free_pages(self, ipas: Iterable[int]) -> None:
        """Give pages back to the guest's own allocator, so a loop can run
        forever: a ballooned-out page is populated again (a fresh frame, as
        after XENMEM_populate_physmap), a read-only one re-typed read-write,
        a device page unmapped (its gfn reused by :meth:`mmio_page`).  A page
        already free is ignored; pages the guest never owned are skipped."""
        for ipa in ipas:
            gfn = ipa >> PAGE_SHIFT
            entry = self.dom.lookup(gfn)
            if entry.type == P2mType.p2m_mmio_direct_dev:
                if gfn >= MMIO_GFN_BASE:
                    self.dom.unmap_mmio(gfn)
                    with self._lock:
                        self._mmio_free.append(gfn)
                continue
            with self._lock:
                if gfn in self._free_set:
                    continue
            if entry.type == P2mType.p2m_invalid:
                self.dom.populate(gfn)
            elif entry.type == P2mType.p2m_ram_ro:
                self.dom.set_type(gfn, P2mType.p2m_ram_rw)
            elif entry.type != P2mType.p2m_ram_rw:
                continue
            with self._lock:
                if gfn not in self._free_set:
                    self._free_set.add(gfn)
                    self._free.append(gfn)

    @contextmanager
    def scope(self, *, free: bool = True) -> Iterator[list[int]]:
        """Every page this thread takes inside the ``with`` (for its own
        messages or to answer OP-TEE's RPCs) is given back at the end: one
        loop iteration of an attack holds no page after it.  Scopes nest (a
        page belongs to the innermost); ``free=False`` only records them in
        the list it yields, for the caller to free later (an enclosing scope
        still gets them too: it stays responsible for them)."""
        stack = self._scopes.__dict__.setdefault("stack", [])
        taken: list[int] = []
        stack.append(taken)
        try:
            yield taken
        finally:
            stack.pop()
            if free:
                self.free_pages(taken)
            elif stack:
                stack[-1].extend(taken)

    @property
    def free_page_count(self) -> int:
        with self._lock:
            return len(self._free)

    def forget_history(self) -> None:
        """Drop the record of RPC commands and SHM_FREEs served (a long loop
        would otherwise grow it without bound)."""
        del self.rpc_cmds[:]
        del self.shm_frees[:]

    def pages(self, n: int) -> list[int]:
        return [self.page() for _ in range(n)]

    def cookie(self) -> int:
        with self._lock:
            return 0xC0DE_0000_0000 | (self.domid << 24) | next(self._cookies)

    def mmio_page(self) -> int:
        """Map a device frame (outside machine RAM) and return its IPA."""
        with self._lock:
            gfn = self._mmio_free.pop() if self._mmio_free else next(self._mmio)
        self.dom.map_mmio(gfn, _MMIO_MFN_BASE + (gfn - MMIO_GFN_BASE))
        return gfn << PAGE_SHIFT

    def readonly_page(self) -> int:
        """A page of its RAM re-typed p2m_ram_ro."""
        ipa = self.page()
        self.dom.set_type(ipa >> PAGE_SHIFT, P2mType.p2m_ram_ro)
        return ipa

    def unmapped_page(self) -> int:
        """A page given back to Xen (ballooned out): nothing at that IPA now."""
        ipa = self.page()
        self.dom.balloon_out(ipa >> PAGE_SHIFT)
        return ipa

    def balloon_out(self, ipa: int) -> int:
        """Give the page at ``ipa`` back to Xen; returns the frame it was."""
        return self.dom.balloon_out(ipa >> PAGE_SHIFT)

    def frame_of(self, ipa: int) -> int:
        """The machine frame behind one of its own IPAs (what an attacker
        learns from a side channel; used to name another guest's frames)."""
        return self.dom.lookup(ipa >> PAGE_SHIFT).mfn

    def write(self, ipa: int, data: bytes) -> None:
        self.dom.write(ipa, data)

    def write_arg(self, ipa: int, msg: MsgArg) -> None:
        self.dom.write(ipa, msg.pack())

    def read_arg(self, ipa: int) -> MsgArg:
        return MsgArg.unpack(self.dom.read(ipa, PAGE_SIZE - (ipa % PAGE_SIZE)))

    def page_list(self, pages: Sequence[int], offset: int = 0) -> int:
        """An honest page list of ``pages`` in fresh list pages: its buf_ptr."""
        lists = self.pages(list_pages_needed(len(pages)))
        for ipa, data in zip(lists, build_page_list(list(pages), lists), strict=True):
            self.dom.write(ipa, data)
        return make_buf_ptr(lists[0], offset)

    def raw_list_page(self, entries: Sequence[int], next_ptr: int = 0, at: int | None = None) -> int:
        """One list page with arbitrary content (511 entries, then the next
        pointer): loops, self-references and foreign addresses included."""
        ipa = self.page() if at is None else at
        words = list(entries)[:511] + [0] * (511 - min(511, len(entries))) + [next_ptr]
        self.dom.write(ipa, b"".join(w.to_bytes(8, "little") for w in words))
        return ipa

    # -- standard calls -----------------------------------------------------------

    def start(self, ipa: int, function: int = OPTEE_SMC_CALL_WITH_ARG, *, vcpu: int = 0) -> Regs:
        """First SMC of a standard call whose argument is at ``ipa``."""
        if function == OPTEE_SMC_CALL_WITH_RPC_ARG and self.rpc_arg:
            try:
                n = self.read_arg(ipa).num_params
                self._current[vcpu] = (ipa, get_arg_size(n))
            except Exception:  # a deliberately broken argument: no RPC arg to find
                self._current.pop(vcpu, None)
        return self.smc(function, ipa >> 32, ipa & M32, vcpu=vcpu)

    def start_regd(self, cookie: int, offset: int, arg_ipa: int | None = None, *,
                   vcpu: int = 0) -> Regs:
        """CALL_WITH_REGD_ARG naming registration ``cookie`` at ``offset``
        (``arg_ipa``: where that is in its memory, to find the RPC argument)."""
        if arg_ipa is not None and self.rpc_arg:
            try:
                self._current[vcpu] = (arg_ipa, get_arg_size(self.read_arg(arg_ipa).num_params))
            except Exception:
                self._current.pop(vcpu, None)
        return self.smc(OPTEE_SMC_CALL_WITH_REGD_ARG, cookie >> 32, cookie & M32, offset, vcpu=vcpu)

    def serve(self, r: Regs, *, vcpu: int = 0,
              stop: Callable[[Regs], bool] | None = None) -> Regs:
        """Serve OP-TEE's RPCs like a minimal driver until the call ends, or
        until ``stop(regs)`` says so (then those registers are returned)."""
        while is_rpc_return(r[0]):
            if stop is not None and stop(r):
                return r
            r = self.reply(r, vcpu=vcpu)
        return r

    def reply(self, r: Regs, *, vcpu: int = 0, cookie: int | None = None,
              alloc_ipa: int | None = None) -> Regs:
        """Answer one RPC honestly (an ALLOC with ``alloc_ipa``/``cookie``
        when given)."""
        f, tid = rpc_func(r[0]), r[3]
        if f == OPTEE_SMC_RPC_FUNC_ALLOC:
            ipa = self.page() if alloc_ipa is None else alloc_ipa
            c = self.cookie() if cookie is None else cookie
            self.rpc_pages.setdefault(c, ipa)
            return self.resume(tid, ipa >> 32, ipa & M32, c >> 32, c & M32, vcpu=vcpu)
        if f == OPTEE_SMC_RPC_FUNC_FREE:
            freed = self.rpc_pages.pop((r[1] << 32) | r[2], None)
            if freed is not None:  # OP-TEE is done with it: the driver frees it
                self.free_pages([freed])
            return self.resume(tid, vcpu=vcpu)
        if f == OPTEE_SMC_RPC_FUNC_FOREIGN_INTR:
            return self.resume(tid, vcpu=vcpu)
        if f == OPTEE_SMC_RPC_FUNC_CMD:
            ipa = self.rpc_arg_ipa(r, vcpu=vcpu)
            self.dom.write(ipa, self.answer_rpc_cmd(self.read_arg(ipa)).pack())
            return self.resume(tid, vcpu=vcpu)
        raise UnexpectedRpc(self.domid, r[0])

    def rpc_arg_ipa(self, r: Regs, *, vcpu: int = 0) -> int:
        """Where OP-TEE's RPC CMD request for this guest is."""
        cookie = (r[1] << 32) | r[2]
        if cookie in self.rpc_pages:
            return self.rpc_pages[cookie]
        if vcpu in self._current:
            ipa, off = self._current[vcpu]
            return ipa + off
        raise UnexpectedRpc(self.domid, r[0], f"RPC CMD names unknown buffer {cookie:#x}")

    def answer_rpc_cmd(self, req: MsgArg) -> MsgArg:
        """The guest's answer to an RPC CMD request."""
        self.rpc_cmds.append(req.cmd)
        if req.cmd == OPTEE_RPC_CMD_GET_TIME:
            return req.replace(ret=0, params=(req.params[0].replace(a=1234, b=5678),))
        if req.cmd == OPTEE_RPC_CMD_SHM_ALLOC:
            size = req.params[0].b
            param = self.shm_alloc_hook(self, req) if self.shm_alloc_hook else None
            if param is None:
                pages = self.pages(max(1, -(-size // PAGE_SIZE)))
                c = self.cookie()
                self.shm_allocs[c] = pages
                lists = self.pages(list_pages_needed(len(pages)))
                for ipa, data in zip(lists, build_page_list(pages, lists), strict=True):
                    self.dom.write(ipa, data)
                self._shm_lists[c] = lists
                buf_ptr = make_buf_ptr(lists[0], 0)
                param = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                      buf_ptr, size, c)
            return req.replace(ret=0, params=(param,))
        if req.cmd == OPTEE_RPC_CMD_SHM_FREE:
            self.shm_frees.append((req.params[0].a, req.params[0].b))
            freed = self.shm_allocs.pop(req.params[0].b, None)
            if freed is not None:  # the supplicant frees what it allocated
                self.free_pages(freed + self._shm_lists.pop(req.params[0].b, []))
            return req.replace(ret=0)
        if req.cmd == OPTEE_RPC_CMD_LOAD_TA and len(req.params) == 2:
            return self._load_ta(req)
        return req.replace(ret=TEEC_ERROR_NOT_SUPPORTED)

    def _load_ta(self, req: MsgArg) -> MsgArg:
        """tee-supplicant's load_ta: the image's size without a buffer, else
        the image, into the SHM_ALLOC buffer the memref names."""
        uuid_p, mem = req.params
        image = self.ta_images.get(value_words_to_uuid(uuid_p.a, uuid_p.b))
        if image is None:
            return req.replace(ret=TEEC_ERROR_ITEM_NOT_FOUND)
        out = (uuid_p, mem.replace(b=len(image)))
        if not mem.c:  # no buffer: the size query
            return req.replace(ret=0, params=out)
        pages = self.shm_allocs.get(mem.c)
        if pages is None or len(image) > mem.b or mem.a + len(image) > len(pages) * PAGE_SIZE:
            return req.replace(ret=TEEC_ERROR_SHORT_BUFFER, params=out)
        pos, left = mem.a, image
        while left:
            page, offs = divmod(pos, PAGE_SIZE)
            n = min(len(left), PAGE_SIZE - offs)
            self.dom.write(pages[page] + offs, left[:n])
            left, pos = left[n:], pos + n
        return req.replace(ret=0, params=out)

    def resume(self, tid: int, a1: int = 0, a2: int = 0, a4: int = 0, a5: int = 0, *,
               vcpu: int = 0) -> Regs:
        """RETURN_FROM_RPC naming OP-TEE thread ``tid`` (any thread, owned or not)."""
        return self.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, a1, a2, tid, a4, a5, vcpu=vcpu)

    def call(self, msg: MsgArg, *, function: int = OPTEE_SMC_CALL_WITH_ARG,
             vcpu: int = 0) -> tuple[Regs, MsgArg, int]:
        """A whole standard call: (final registers, argument read back, its IPA)."""
        ipa = self.page()
        self.write_arg(ipa, msg)
        r = self.serve(self.start(ipa, function, vcpu=vcpu), vcpu=vcpu)
        return r, self.read_arg(ipa), ipa

    def open_session(self, ta: uuid.UUID, login: int = OPTEE_MSG_LOGIN_PUBLIC) -> tuple[Regs, MsgArg]:
        meta = OpenSessionMeta(ta, uuid.UUID(int=0), login).to_params()
        r, out, _ = self.call(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta))
        return r, out

    def session(self, ta: uuid.UUID) -> int:
        """Open a session that must succeed; its id."""
        r, out = self.open_session(ta)
        if r[0] != OPTEE_SMC_RETURN_OK or out.ret:
            raise UnexpectedRpc(self.domid, r[0], f"OPEN_SESSION failed: ret {out.ret:#x}")
        return out.session

    def close_session(self, session: int) -> tuple[Regs, MsgArg]:
        r, out, _ = self.call(MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))
        return r, out

    def register(self, cookie: int, npages: int, *, buf_ptr: int | None = None,
                 size: int | None = None) -> tuple[Regs, MsgArg]:
        """REGISTER_SHM of ``npages`` fresh pages (or of a page list given)."""
        if buf_ptr is None:
            buf_ptr = self.page_list(self.pages(npages))
        param = MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, buf_ptr,
                              npages * PAGE_SIZE if size is None else size, cookie)
        r, out, _ = self.call(MsgArg(OPTEE_MSG_CMD_REGISTER_SHM, params=(param,)))
        return r, out

    def unregister(self, cookie: int) -> tuple[Regs, MsgArg]:
        r, out, _ = self.call(MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM, params=(
            MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, cookie),)))
        return r, out
