"""The normal world's part for the TEE-model tests: a tiny driver and
supplicant that speak raw SMC registers to :class:`OpteeModel` and write
messages and page lists into a domain's frames with the machine API.

Imported by the other test_tee_* files; it holds no tests of its own beyond
a check that its page allocator pins what it hands out.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_LOGIN_PUBLIC,
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_LOAD_TA,
    OPTEE_RPC_CMD_NOTIFICATION,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_CMD_SUSPEND,
    OPTEE_RPC_FS_CLOSE,
    OPTEE_RPC_FS_CREATE,
    OPTEE_RPC_FS_OPEN,
    OPTEE_RPC_FS_READ,
    OPTEE_RPC_FS_REMOVE,
    OPTEE_RPC_FS_WRITE,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_RETURN_RPC_ALLOC,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_RPC_FREE,
    OPTEE_SMC_VM_CREATED,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_ORIGIN_COMMS,
    TEEC_SUCCESS,
    MsgArg,
    MsgParam,
    OpenSessionMeta,
    build_page_list,
    build_ta_image,
    get_arg_size,
    is_rpc_return,
    list_pages_needed,
    make_buf_ptr,
    value_words_to_uuid,
)
from stubdom.tee import IsolationOracle, OpteeModel, TeeConfig
from stubdom.tee.tas import builtin_tas
from stubdom.xen import PAGE_SIZE, Machine

U32 = 0xFFFFFFFF
NIL = __import__("uuid").UUID(int=0)
NR_FRAMES = 16384  # 64 MiB from 0x40000000: holds the static region at 0x42000000


def make_machine(tmp_path: Path) -> Machine:
    return Machine.create(tmp_path / "machine", nr_frames=NR_FRAMES)


def make_tee(machine: Machine, config: TeeConfig | None = None, *, require_pins: bool = True
             ) -> tuple[OpteeModel, IsolationOracle]:
    oracle = IsolationOracle(machine, require_pins=require_pins)
    return OpteeModel(machine, config or TeeConfig(), oracle), oracle


def regs(*values: int) -> tuple[int, ...]:
    return tuple(values) + (0,) * (8 - len(values))


def hi(v: int) -> int:
    return v >> 32


def lo(v: int) -> int:
    return v & U32


@dataclass
class Buffer:
    """Guest memory for the TEE: pages (machine addresses) and an offset."""

    pages: list[int]
    offset: int
    size: int
    cookie: int = 0
    list_pages: list[int] = field(default_factory=list)

    @property
    def pa(self) -> int:
        return self.pages[0] + self.offset

    @property
    def buf_ptr(self) -> int:
        return make_buf_ptr(self.list_pages[0], self.offset)


class NormalWorld:
    """One domain's OP-TEE driver + supplicant, reduced to what tests need."""

    def __init__(self, machine: Machine, tee: OpteeModel, domid: int, *, pin: bool = True) -> None:
        self.machine = machine
        self.tee = tee
        self.domid = domid
        self.client = domid + 1
        self.pin = pin
        dom = machine.domain(domid)
        self._free = deque(dom.ram_gfns())
        self._dom = dom
        self._next_cookie = 0x1000
        self.rpc_bufs: dict[int, int] = {}  # RPC ALLOC cookie -> machine address
        self.shm: dict[int, Buffer] = {}  # SHM_ALLOC / registered cookie -> buffer
        self.files: dict[str, bytearray] = {}
        self._fds: dict[int, str] = {}
        self.rpc_log: list[tuple] = []
        self.supplied_rpc_arg: int | None = None  # machine address of a CALL_WITH_RPC_ARG RPC arg
        self.notifications: list[tuple[int, int]] = []
        # tee-supplicant's TA directory: an image of every TA of the model
        self.ta_images = {u: build_ta_image(u, ta.name, size=8192) for u, ta in builtin_tas().items()}

    # -- memory ---------------------------------------------------------------

    def cookie(self) -> int:
        self._next_cookie += 0x10
        return 0xFFFF_8000_0000_0000 | self._next_cookie

    def alloc_page(self) -> int:
        gfn = self._free.popleft()
        ma = self._dom.translate(gfn * PAGE_SIZE, write=True)
        if self.pin:
            self.machine.get_page(ma // PAGE_SIZE, self.domid)
        self.machine.write_machine(ma, bytes(PAGE_SIZE))
        return ma

    def release_page(self, ma: int) -> None:
        if self.pin:
            self.machine.put_page(ma // PAGE_SIZE)

    def buffer(self, size: int, offset: int = 0, *, page_list: bool = True) -> Buffer:
        n = max(1, -(-(size + offset) // PAGE_SIZE))
        buf = Buffer([self.alloc_page() for _ in range(n)], offset, size)
        if page_list:
            buf.list_pages = [self.alloc_page() for _ in range(list_pages_needed(n))]
            for ma, data in zip(buf.list_pages, build_page_list(buf.pages, buf.list_pages)):
                self.write(ma, data)
        return buf

    def free_buffer(self, buf: Buffer) -> None:
        for ma in buf.pages + buf.list_pages:
            self.release_page(ma)

    def write(self, ma: int, data: bytes) -> None:
        self.machine.write_machine(ma, data)

    def read(self, ma: int, n: int) -> bytes:
        return self.machine.read_machine(ma, n)

    def write_buf(self, buf: Buffer, data: bytes, offs: int = 0) -> None:
        for i, b in enumerate(data):  # small buffers only in these tests
            pos = buf.offset + offs + i
            self.write(buf.pages[pos // PAGE_SIZE] + pos % PAGE_SIZE, bytes([b]))

    def write_buf_fast(self, buf: Buffer, data: bytes, offs: int = 0) -> None:
        pos, i = buf.offset + offs, 0
        while i < len(data):
            n = min(PAGE_SIZE - pos % PAGE_SIZE, len(data) - i)
            self.write(buf.pages[pos // PAGE_SIZE] + pos % PAGE_SIZE, data[i:i + n])
            pos, i = pos + n, i + n

    def read_buf(self, buf: Buffer, n: int, offs: int = 0) -> bytes:
        out, pos = bytearray(), buf.offset + offs
        while len(out) < n:
            k = min(PAGE_SIZE - pos % PAGE_SIZE, n - len(out))
            out += self.read(buf.pages[pos // PAGE_SIZE] + pos % PAGE_SIZE, k)
            pos += k
        return bytes(out)

    # -- SMCs -------------------------------------------------------------------

    def smc(self, *values: int) -> tuple[int, ...]:
        r = list(regs(*values))
        r[7] = self.client
        return self.tee.smc(tuple(r))

    def vm_created(self) -> int:
        return self.tee.smc(regs(OPTEE_SMC_VM_CREATED, self.client))[0]

    def run(self, *values: int, max_rpcs: int = 10_000) -> tuple[int, ...]:
        """Issue a yielding call and serve every RPC until it completes."""
        r = self.smc(*values)
        for _ in range(max_rpcs):
            if not is_rpc_return(r[0]):
                return r
            a1, a2, a4, a5 = self.serve_rpc(r)
            r = self.smc(OPTEE_SMC_CALL_RETURN_FROM_RPC, a1, a2, r[3], a4, a5)
        raise AssertionError("too many RPCs")

    def serve_rpc(self, r: tuple[int, ...]) -> tuple[int, int, int, int]:
        a0 = r[0]
        self.rpc_log.append((a0, r[1], r[2], r[3]))
        if a0 == OPTEE_SMC_RETURN_RPC_ALLOC:
            ma = self.alloc_page()
            c = self.cookie()
            self.rpc_bufs[c] = ma
            return hi(ma), lo(ma), hi(c), lo(c)
        if a0 == OPTEE_SMC_RETURN_RPC_FREE:
            self.release_page(self.rpc_bufs.pop((r[1] << 32) | r[2]))
            return 0, 0, 0, 0
        if a0 == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR:
            return 0, 0, 0, 0
        assert a0 == OPTEE_SMC_RETURN_RPC_CMD, hex(a0)
        cookie = (r[1] << 32) | r[2]
        ma = self.rpc_bufs[cookie] if cookie else self.supplied_rpc_arg
        assert ma is not None
        self.serve_cmd(ma)
        return 0, 0, 0, 0

    # -- the supplicant -------------------------------------------------------------

    def serve_cmd(self, ma: int) -> None:
        n = struct.unpack("<I", self.read(ma + 28, 4))[0]
        arg = MsgArg.unpack(self.read(ma, get_arg_size(n)))
        self.rpc_log.append(("cmd", arg.cmd, arg.ret))
        ret, params = self.supplicant(arg)
        self.write(ma, MsgArg(arg.cmd, arg.func, arg.session, arg.cancel_id, arg.pad, ret, TEEC_ORIGIN_COMMS,
                              tuple(params)).pack())

    def memref(self, p: MsgParam) -> tuple[Buffer, int]:
        t = p.attr & 0xFF
        if t in (OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
                 OPTEE_MSG_ATTR_TYPE_RMEM_INOUT):
            return self.shm[p.shm_ref], p.offs
        for buf in self.shm.values():  # TMEM: a PA inside one of ours
            if buf.pages[0] <= p.buf_ptr < buf.pages[0] + PAGE_SIZE:
                return buf, p.buf_ptr - buf.pa
        raise AssertionError(f"memref {p} unknown")

    def supplicant(self, arg: MsgArg) -> tuple[int, list[MsgParam]]:
        params = list(arg.params)
        if arg.cmd == OPTEE_RPC_CMD_SHM_ALLOC:
            assert params[0].attr == OPTEE_MSG_ATTR_TYPE_VALUE_INPUT
            size = params[0].b
            buf = self.buffer(size)
            buf.cookie = self.cookie()
            self.shm[buf.cookie] = buf
            params[0] = MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, buf.buf_ptr, size,
                                 buf.cookie)
            return TEEC_SUCCESS, params
        if arg.cmd == OPTEE_RPC_CMD_SHM_FREE:
            self.free_buffer(self.shm.pop(params[0].b))
            return TEEC_SUCCESS, params
        if arg.cmd == OPTEE_RPC_CMD_GET_TIME:
            now = time.time_ns()
            params[0] = params[0].replace(a=now // 10**9, b=now % 10**9)
            return TEEC_SUCCESS, params
        if arg.cmd in (OPTEE_RPC_CMD_SUSPEND,):
            return TEEC_SUCCESS, params
        if arg.cmd == OPTEE_RPC_CMD_NOTIFICATION:
            self.notifications.append((params[0].a, params[0].b))
            return TEEC_SUCCESS, params
        if arg.cmd == OPTEE_RPC_CMD_FS:
            return self.fs(params)
        if arg.cmd == OPTEE_RPC_CMD_LOAD_TA:
            return self.load_ta(params)
        return TEEC_ERROR_BAD_PARAMETERS, params

    def load_ta(self, params: list[MsgParam]) -> tuple[int, list[MsgParam]]:
        """tee-supplicant's load_ta: the size when there is no buffer, else the image."""
        image = self.ta_images.get(value_words_to_uuid(params[0].a, params[0].b))
        if image is None:
            return TEEC_ERROR_ITEM_NOT_FOUND, params
        room = params[1].size
        params[1] = params[1].replace(b=len(image))
        if not params[1].c:  # no buffer (shm_ref 0): the size query
            return TEEC_SUCCESS, params
        if len(image) > room:
            return TEEC_ERROR_SHORT_BUFFER, params
        buf, offs = self.memref(params[1])
        self.write_buf_fast(buf, image, offs)
        return TEEC_SUCCESS, params

    def fs(self, params: list[MsgParam]) -> tuple[int, list[MsgParam]]:
        op = params[0].a
        if op in (OPTEE_RPC_FS_OPEN, OPTEE_RPC_FS_CREATE, OPTEE_RPC_FS_REMOVE):
            buf, offs = self.memref(params[1])
            name = self.read_buf(buf, params[1].size, offs).split(b"\0")[0].decode()
            if op == OPTEE_RPC_FS_REMOVE:
                return (TEEC_SUCCESS if self.files.pop(name, None) is not None else TEEC_ERROR_ITEM_NOT_FOUND,
                        params)
            if op == OPTEE_RPC_FS_OPEN and name not in self.files:
                return TEEC_ERROR_ITEM_NOT_FOUND, params
            if op == OPTEE_RPC_FS_CREATE:
                self.files[name] = bytearray()
            fd = 3  # the lowest free descriptor, as open(2) gives
            while fd in self._fds:
                fd += 1
            self._fds[fd] = name
            params[2] = params[2].replace(a=fd)
            return TEEC_SUCCESS, params
        fd = params[0].b
        if op == OPTEE_RPC_FS_CLOSE:
            del self._fds[fd]
            return TEEC_SUCCESS, params
        data = self.files[self._fds[fd]]
        off = params[0].c
        buf, boffs = self.memref(params[1])
        if op == OPTEE_RPC_FS_WRITE:
            chunk = self.read_buf(buf, params[1].size, boffs)
            if off > len(data):  # pwrite past the end leaves a hole of zeros
                data.extend(bytes(off - len(data)))
            data[off:off + len(chunk)] = chunk
            return TEEC_SUCCESS, params
        if op == OPTEE_RPC_FS_READ:
            chunk = bytes(data[off:off + params[1].size])
            self.write_buf_fast(buf, chunk, boffs)
            params[1] = params[1].replace(b=len(chunk))
            return TEEC_SUCCESS, params
        return TEEC_ERROR_BAD_PARAMETERS, params

    # -- messages --------------------------------------------------------------------

    def arg_page(self, arg: MsgArg) -> int:
        ma = self.alloc_page()
        self.write(ma, arg.pack())
        return ma

    def read_arg(self, ma: int) -> MsgArg:
        n = struct.unpack("<I", self.read(ma + 28, 4))[0]
        return MsgArg.unpack(self.read(ma, get_arg_size(n)))

    def call_arg(self, arg: MsgArg, *, with_rpc_arg: bool = False) -> tuple[tuple[int, ...], MsgArg]:
        """CALL_WITH_ARG (or CALL_WITH_RPC_ARG) with ``arg`` in a fresh page."""
        from stubdom.optee import OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG

        ma = self.arg_page(arg)
        fid = OPTEE_SMC_CALL_WITH_ARG
        if with_rpc_arg:
            fid = OPTEE_SMC_CALL_WITH_RPC_ARG
            self.supplied_rpc_arg = ma + arg.size
        r = self.run(fid, hi(ma), lo(ma))
        self.supplied_rpc_arg = None
        return r, self.read_arg(ma)

    def open_session(self, ta_uuid, *ta_params: MsgParam, login: int = OPTEE_MSG_LOGIN_PUBLIC,
                     **kw) -> tuple[tuple[int, ...], MsgArg]:
        meta = OpenSessionMeta(ta_uuid, NIL, login).to_params()
        return self.call_arg(MsgArg(OPTEE_MSG_CMD_OPEN_SESSION, params=meta + ta_params), **kw)

    def invoke(self, session: int, func: int, *params: MsgParam, **kw) -> tuple[tuple[int, ...], MsgArg]:
        return self.call_arg(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=func, session=session, params=params),
                             **kw)

    def close_session(self, session: int) -> tuple[tuple[int, ...], MsgArg]:
        return self.call_arg(MsgArg(OPTEE_MSG_CMD_CLOSE_SESSION, session=session))

    def register(self, buf: Buffer) -> tuple[tuple[int, ...], MsgArg]:
        buf.cookie = buf.cookie or self.cookie()
        r = self.call_arg(MsgArg(OPTEE_MSG_CMD_REGISTER_SHM, params=(
            MsgParam(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG, buf.buf_ptr, buf.size,
                     buf.cookie),)))
        return r

    def unregister(self, cookie: int) -> tuple[tuple[int, ...], MsgArg]:
        return self.call_arg(MsgArg(OPTEE_MSG_CMD_UNREGISTER_SHM, params=(
            MsgParam(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, 0, cookie),)))


def value_inout(a: int = 0, b: int = 0) -> MsgParam:
    from stubdom.optee import OPTEE_MSG_ATTR_TYPE_VALUE_INOUT

    return MsgParam(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, a, b, 0)


def value_out() -> MsgParam:
    return MsgParam(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT)


def value_in(a: int = 0, b: int = 0, c: int = 0) -> MsgParam:
    return MsgParam(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, a, b, c)


def setup_guests(tmp_path: Path, *domids: int, config: TeeConfig | None = None, pin: bool = True,
                 nr_pages: int = 512):
    machine = make_machine(tmp_path)
    tee, oracle = make_tee(machine, config)
    worlds = []
    for domid in domids:
        machine.create_domain(domid, nr_pages=nr_pages)
        nw = NormalWorld(machine, tee, domid, pin=pin)
        assert nw.vm_created() == 0
        worlds.append(nw)
    return machine, tee, oracle, worlds
