"""The guest driver against scripted secure worlds behind the real trap
interface: the exact probe sequence, the std-call loop's RPC handling,
ETHREAD_LIMIT retries, shared-memory registration and teardown."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Generator

import pytest

from stubdom.guest import (
    IN,
    INOUT,
    OUT,
    ApiRevisionMismatch,
    ApiUidMismatch,
    CapabilitiesMismatch,
    Context,
    MemoryStore,
    NoSharedMemory,
    OpteeDriver,
    PageAllocator,
    RegisteredMemref,
    StaticShmNotCached,
    StaticShmUnavailable,
    Supplicant,
    TeecError,
    TempMemref,
    Value,
)
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
    OPTEE_RPC_CMD_FS,
    OPTEE_RPC_CMD_GET_TIME,
    OPTEE_RPC_CMD_NOTIFICATION,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_CMD_SUSPEND,
    OPTEE_RPC_FS_CREATE,
    OPTEE_RPC_FS_OPEN,
    OPTEE_RPC_NOTIFICATION_SEND,
    OPTEE_RPC_NOTIFICATION_WAIT,
    OPTEE_RPC_SHM_TYPE_APPL,
    OPTEE_RPC_SHM_TYPE_KERNEL,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_RETURN_EBUSY,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_ETHREAD_LIMIT,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_RPC_ALLOC,
    OPTEE_SMC_RETURN_RPC_CMD,
    OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
    OPTEE_SMC_RETURN_RPC_FREE,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    TEE_ERROR_GENERIC,
    TEE_ERROR_TIMEOUT,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ERROR_COMMUNICATION,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_SHORT_BUFFER,
    TEEC_ORIGIN_COMMS,
    TEEC_ORIGIN_TRUSTED_APP,
    TEEC_SUCCESS,
    MsgArg,
    MsgParam,
    get_arg_size,
    read_page_list,
    reg_pair_to_u64,
    u64_to_reg_pair,
)
from stubdom.xen import PAGE_SIZE, Machine

UID = (OPTEE_MSG_UID_0, OPTEE_MSG_UID_1, OPTEE_MSG_UID_2, OPTEE_MSG_UID_3)
DYN_RPC_ARG = OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_MEMREF_NULL | OPTEE_SMC_SEC_CAP_RPC_ARG
DYN_ONLY = OPTEE_SMC_SEC_CAP_DYNAMIC_SHM | OPTEE_SMC_SEC_CAP_MEMREF_NULL
TA = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")
Z4 = (0, 0, 0, 0)


def regs(*a: int) -> tuple[int, ...]:
    return tuple(a) + (0,) * (8 - len(a))


@pytest.fixture
def machine(tmp_path):
    m = Machine.create(tmp_path / "machine", nr_frames=16384)
    yield m
    m.close()


@pytest.fixture
def domu(machine):
    return machine.create_domain(1, nr_pages=1024)


# -- a scripted fast-call trap: asserts the exact register sequence ------------------------
class ScriptedTrap:
    """Implements trap(vcpu, regs) -> regs; each step is (expected regs, reply)."""

    def __init__(self, steps: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        self.steps = list(steps)
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def __call__(self, vcpu: int, r: tuple[int, ...]) -> tuple[int, ...]:
        self.calls.append((vcpu, r))
        assert self.steps, f"unexpected SMC {r}"
        expect, reply = self.steps.pop(0)
        assert r == expect
        return reply


def probe_steps(caps: int, *, nr_vcpus: int = 1, rpc_count: int = 4, threads: int = 4, extra=()):
    return [
        (regs(OPTEE_SMC_CALLS_UID), regs(*UID)),
        (regs(OPTEE_SMC_CALL_GET_OS_REVISION), regs(4, 10, 0x1234ABCD)),
        (regs(OPTEE_SMC_CALLS_REVISION), regs(2, 0)),
        (regs(OPTEE_SMC_GET_THREAD_COUNT), regs(OPTEE_SMC_RETURN_OK, threads)),
        (regs(OPTEE_SMC_EXCHANGE_CAPABILITIES, 1 if nr_vcpus == 1 else 0), regs(0, caps, 0, rpc_count)),
        *extra,
    ]


def test_probe_dynamic_with_rpc_arg_exact_sequence(domu):
    trap = ScriptedTrap(
        probe_steps(DYN_RPC_ARG)
        + [
            (regs(OPTEE_SMC_DISABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_OK, 0xFFFF, 0x1234)),
            (regs(OPTEE_SMC_DISABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_ENOTAVAIL)),
        ]
    )
    drv = OpteeDriver(trap, domu)
    info = drv.probe()
    assert not trap.steps and all(v == 0 for v, _ in trap.calls)
    assert info.dynamic_shm and info.rpc_param_count == 4 and info.thread_count == 4
    assert info.os_revision == (4, 10, 0x1234ABCD) and info.static_shm is None
    assert drv.call_queue.thread_count == 4 and drv.notif.max_key == 255


def test_probe_without_rpc_arg_enables_the_shm_cache(domu):
    trap = ScriptedTrap(
        probe_steps(DYN_ONLY, nr_vcpus=2, threads=0)
        + [
            (regs(OPTEE_SMC_DISABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_ENOTAVAIL)),
            (regs(OPTEE_SMC_ENABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_OK)),
        ]
    )
    trap.steps[3] = (regs(OPTEE_SMC_GET_THREAD_COUNT), regs(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION))
    info = OpteeDriver(trap, domu, nr_vcpus=2).probe()
    assert not trap.steps
    assert info.rpc_param_count == 0 and info.thread_count == 0


def test_probe_reserved_shm_on_direct_mapped_hwdom(machine):
    hwdom = machine.create_domain(0, nr_pages=256, hwdom=True, direct_mapped=True)
    hwdom.map_static_shm()
    shm = machine.static_shm
    trap = ScriptedTrap(
        probe_steps(OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM, rpc_count=0)
        + [
            (regs(OPTEE_SMC_GET_SHM_CONFIG), regs(0, shm.base + 0x10, shm.size - 0x10, 1)),
            (regs(OPTEE_SMC_DISABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_ENOTAVAIL)),
            (regs(OPTEE_SMC_ENABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_EBUSY)),
            (regs(OPTEE_SMC_ENABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_OK)),
        ]
    )
    info = OpteeDriver(trap, hwdom).probe()
    assert not trap.steps
    # [roundup(start), rounddown(end)) as Linux's optee_config_shm_memremap
    assert info.static_shm == (shm.base + PAGE_SIZE, shm.base + shm.size)


@pytest.mark.parametrize(
    ("index", "reply", "error", "message"),
    [
        (0, regs(1, 2, 3, 4), ApiUidMismatch, "api uid mismatch"),
        (2, regs(3, 0), ApiRevisionMismatch, "0x3.0x0"),
        (2, regs(2, 0xFFFFFFFF), ApiRevisionMismatch, "0x2.0xffffffff"),
        (4, regs(OPTEE_SMC_RETURN_ENOTAVAIL), CapabilitiesMismatch, "a0 = 0x7"),
        (4, regs(0, OPTEE_SMC_SEC_CAP_MEMREF_NULL), NoSharedMemory, "sec caps 0x10"),
    ],
)
def test_probe_failures_stop_the_sequence(domu, index, reply, error, message):
    steps = probe_steps(DYN_RPC_ARG)[: index + 1]
    steps[index] = (steps[index][0], reply)
    trap = ScriptedTrap(steps)
    with pytest.raises(error, match=message):
        OpteeDriver(trap, domu).probe()
    assert not trap.steps and len(trap.calls) == index + 1


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (regs(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION), StaticShmUnavailable),
        (regs(0, 0x4200_0000, 0x200000, 0), StaticShmNotCached),
    ],
)
def test_probe_reserved_shm_failures(domu, config, error):
    trap = ScriptedTrap(
        probe_steps(OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM, rpc_count=0)
        + [(regs(OPTEE_SMC_GET_SHM_CONFIG), config)]
    )
    with pytest.raises(error):
        OpteeDriver(trap, domu).probe()
    assert not trap.steps


# -- a scripted secure world for yielding calls ------------------------------------------
Program = Callable[["Call"], Generator[tuple[int, int, int], tuple[int, ...], MsgArg]]


class Call:
    def __init__(self, tee: FakeOptee, msg: MsgArg, arg_ipa: int, rpc_arg_ipa: int | None) -> None:
        self.tee = tee
        self.msg = msg
        self.arg_ipa = arg_ipa
        self.rpc_arg_ipa = rpc_arg_ipa
        self.rpc_buf: tuple[int, int] | None = None  # (ipa, cookie) from RPC ALLOC
        self.resumes: list[tuple[int, ...]] = []

    def rpc(self, msg: MsgArg):
        """Issue an RPC CMD with ``msg``; returns the normal world's reply."""
        tee = self.tee
        if self.rpc_arg_ipa is not None:
            ipa, hi, lo = self.rpc_arg_ipa, 0, 0
        else:
            if self.rpc_buf is None:
                r = yield (OPTEE_SMC_RETURN_RPC_ALLOC, get_arg_size(4), 0)
                self.rpc_buf = (reg_pair_to_u64(r[1], r[2]), reg_pair_to_u64(r[4], r[5]))
                tee.alloc_replies.append(r)
            ipa, cookie = self.rpc_buf
            hi, lo = u64_to_reg_pair(cookie)
        tee.domain.write(ipa, msg.replace(ret=TEE_ERROR_GENERIC).pack())
        yield (OPTEE_SMC_RETURN_RPC_CMD, hi, lo)
        return MsgArg.unpack(tee.domain.read(ipa, msg.size))


class FakeOptee:
    """Fast calls of a dynamic-shm OP-TEE, and yielding calls run as generator
    'threads' that yield RPCs.  REGISTER/UNREGISTER_SHM decode the guest's page
    lists; OPEN/CLOSE are trivial; INVOKE runs ``self.program``."""

    def __init__(self, domain, *, caps: int = DYN_RPC_ARG, threads: int = 0, max_threads: int = 8) -> None:
        self.domain = domain
        self.caps = caps
        self.threads = threads
        self.max_threads = max_threads
        self.lock = threading.RLock()
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.suspended: dict[int, tuple[Generator, Call]] = {}
        self.running: set[int] = set()
        self.registered: dict[int, tuple[tuple[int, ...], int, int]] = {}  # cookie -> (pages, offset, size)
        self.program: Program | None = None
        self.cache_enabled = False
        self.cache: list[int] = []
        self.alloc_replies: list[tuple[int, ...]] = []
        self.messages: list[MsgArg] = []

    # fast calls
    def __call__(self, vcpu: int, r: tuple[int, ...]) -> tuple[int, ...]:
        assert len(r) == 8 and r[6] == r[7] == 0  # a guest never stamps a client ID
        with self.lock:
            self.calls.append((vcpu, r))
        a0 = r[0]
        if a0 == OPTEE_SMC_CALLS_UID:
            return regs(*UID)
        if a0 == OPTEE_SMC_CALL_GET_OS_REVISION:
            return regs(4, 10)
        if a0 == OPTEE_SMC_CALLS_REVISION:
            return regs(2, 0)
        if a0 == OPTEE_SMC_GET_THREAD_COUNT:
            return regs(0, self.threads) if self.threads else regs(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)
        if a0 == OPTEE_SMC_EXCHANGE_CAPABILITIES:
            return regs(0, self.caps, 0, 4)
        if a0 == OPTEE_SMC_ENABLE_SHM_CACHE:
            self.cache_enabled = True
            return regs(0)
        if a0 == OPTEE_SMC_DISABLE_SHM_CACHE:
            self.cache_enabled = False
            if self.cache:
                return regs(0, *u64_to_reg_pair(self.cache.pop()))
            return regs(OPTEE_SMC_RETURN_ENOTAVAIL)
        if a0 in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_RPC_ARG, OPTEE_SMC_CALL_WITH_REGD_ARG):
            return self._start(r)
        if a0 == OPTEE_SMC_CALL_RETURN_FROM_RPC:
            with self.lock:
                gen, call = self.suspended.pop(r[3])
            call.resumes.append(r)
            return self._run(r[3], gen, call, r)
        return regs(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)

    def _ipa_in_registered(self, cookie: int, offs: int) -> int:
        pages, start, _ = self.registered[cookie]
        pos = start + offs
        return pages[pos // PAGE_SIZE] + pos % PAGE_SIZE

    def _start(self, r: tuple[int, ...]) -> tuple[int, ...]:
        with self.lock:
            if len(self.running) >= self.max_threads:
                return (OPTEE_SMC_RETURN_ETHREAD_LIMIT,) + r[1:]
            t = min(set(range(self.max_threads)) - self.running)
            self.running.add(t)
        if r[0] == OPTEE_SMC_CALL_WITH_REGD_ARG:
            arg_ipa = self._ipa_in_registered(reg_pair_to_u64(r[1], r[2]), r[3])
        else:
            arg_ipa = reg_pair_to_u64(r[1], r[2])
            assert arg_ipa % PAGE_SIZE == 0  # OP-TEE maps exactly one page for a dynamic-shm arg
        n = MsgArg.unpack(self.domain.read(arg_ipa, 32) + bytes(4096))
        msg = MsgArg.unpack(self.domain.read(arg_ipa, get_arg_size(n.num_params)))
        self.messages.append(msg)
        rpc_ipa = arg_ipa + msg.size if r[0] != OPTEE_SMC_CALL_WITH_ARG else None
        call = Call(self, msg, arg_ipa, rpc_ipa)
        return self._run(t, self._body(call), call, None)

    def _run(self, t: int, gen, call: Call, send) -> tuple[int, ...]:
        try:
            func, a1, a2 = gen.send(send) if send is not None else next(gen)
        except StopIteration:
            with self.lock:
                self.running.discard(t)
            return regs(OPTEE_SMC_RETURN_OK)
        with self.lock:
            self.suspended[t] = (gen, call)
        return regs(func, a1, a2, t)

    def _body(self, call: Call):
        msg = call.msg
        if msg.cmd == OPTEE_MSG_CMD_REGISTER_SHM:
            p = msg.params[0]
            assert p.attr == OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG
            pl = read_page_list(lambda a: self.domain.read(a, PAGE_SIZE), p.a, p.b, max_entries=1 << 16)
            self.registered[p.c] = (pl.entries, pl.offset, p.b)
            result = msg.replace(ret=TEEC_SUCCESS)
        elif msg.cmd == OPTEE_MSG_CMD_UNREGISTER_SHM:
            assert msg.params[0].attr == OPTEE_MSG_ATTR_TYPE_RMEM_INPUT
            ok = self.registered.pop(msg.params[0].c, None) is not None
            result = msg.replace(ret=TEEC_SUCCESS if ok else TEEC_ERROR_BAD_PARAMETERS)
        elif msg.cmd == OPTEE_MSG_CMD_OPEN_SESSION:
            result = msg.replace(session=0x55, ret=TEEC_SUCCESS, ret_origin=3)
        elif msg.cmd == OPTEE_MSG_CMD_CLOSE_SESSION:
            result = msg.replace(ret=TEEC_SUCCESS, ret_origin=3)
        else:
            assert msg.cmd == OPTEE_MSG_CMD_INVOKE_COMMAND and self.program is not None
            result = yield from self.program(call)
        if call.rpc_buf is not None:
            if self.cache_enabled:
                self.cache.append(call.rpc_buf[1])
            else:
                yield (OPTEE_SMC_RETURN_RPC_FREE, *u64_to_reg_pair(call.rpc_buf[1]))
        self.domain.write(call.arg_ipa, result.pack())

    def read_tmem(self, p: MsgParam) -> bytes:
        """The bytes of a tmem/rmem param as OP-TEE would map them."""
        if p.attr & 0xFF in (5, 6, 7):
            pages, start, _ = self.registered[p.c]
            data = b"".join(self.domain.read(e, PAGE_SIZE) for e in pages)
            return data[start + p.a : start + p.a + p.b]
        if p.attr & OPTEE_MSG_ATTR_NONCONTIG:
            pl = read_page_list(lambda a: self.domain.read(a, PAGE_SIZE), p.a, p.b, max_entries=1 << 16)
            data = b"".join(self.domain.read(e, PAGE_SIZE) for e in pl.entries)
            return data[pl.offset : pl.offset + p.b]
        return self.domain.read(p.a, p.b)


def make_driver(domu, tee: FakeOptee, **kw) -> OpteeDriver:
    drv = OpteeDriver(tee, domu, allocator=PageAllocator.for_domain(domu, seed=11), **kw)
    drv.probe()
    return drv


@pytest.fixture(params=["rpc_arg", "call_with_arg"])
def tee(request, domu):
    return FakeOptee(domu, caps=DYN_RPC_ARG if request.param == "rpc_arg" else DYN_ONLY)


def open_session(drv: OpteeDriver):
    ctx = Context(drv)
    return ctx, ctx.open_session(TA)


def test_register_shm_uses_the_guests_page_list(domu, tee):
    drv = make_driver(domu, tee)
    ctx = Context(drv)
    mem = ctx.allocate_shared_memory(3 * PAGE_SIZE + 5)
    (pages, offset, size) = tee.registered[mem.shm.cookie]
    assert list(pages) == list(mem.shm.pages) and offset == 0 and size == 3 * PAGE_SIZE + 5
    assert mem.shm.cookie > 0xFFFFFFFF  # a 64-bit cookie, split over two registers
    mem.release()
    assert mem.shm.cookie not in tee.registered
    ctx.close()
    drv.shutdown()
    assert drv.pages.allocated_count == 0


def test_calls_use_the_function_the_capabilities_allow(domu, tee):
    drv = make_driver(domu, tee)
    _, session = open_session(drv)
    yielding = [r for _, r in tee.calls if r[0] >> 24 == 0x32 and r[0] != OPTEE_SMC_CALL_RETURN_FROM_RPC]
    if tee.caps & OPTEE_SMC_SEC_CAP_RPC_ARG:
        # REGISTER_SHM of the arg-cache page on a private page, then REGD_ARG
        assert [r[0] for r in yielding] == [OPTEE_SMC_CALL_WITH_RPC_ARG, OPTEE_SMC_CALL_WITH_REGD_ARG]
        assert yielding[1][3] == 0  # first slot of the arg page
    else:
        assert [r[0] for r in yielding] == [OPTEE_SMC_CALL_WITH_ARG]
        assert reg_pair_to_u64(yielding[0][1], yielding[0][2]) % PAGE_SIZE == 0
    session.close()
    drv.shutdown()
    assert drv.pages.allocated_count == 0


def program_value_increment(call: Call):
    p = call.msg.params[0]
    assert p.attr == OPTEE_MSG_ATTR_TYPE_VALUE_INOUT
    return call.msg.replace(params=(p.replace(a=p.a + 1),), ret=TEEC_SUCCESS, ret_origin=4)
    yield  # pragma: no cover - a generator without RPCs


def test_invoke_with_value_and_no_rpc(domu, tee):
    drv = make_driver(domu, tee)
    tee.program = program_value_increment
    _, session = open_session(drv)
    out = session.invoke(0, [Value(41, 7, INOUT)])
    assert out == [Value(42, 7, INOUT)]


def test_rpc_alloc_cmd_free_without_rpc_arg(domu):
    tee = FakeOptee(domu, caps=DYN_ONLY)
    drv = make_driver(domu, tee, clock_ns=lambda: 1_700_000_000_123_456_789)
    times = []

    def program(call: Call):
        reply = yield from call.rpc(
            MsgArg(OPTEE_RPC_CMD_GET_TIME, params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),))
        )
        times.append(reply)
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    _, session = open_session(drv)
    tee.cache_enabled = False  # make OP-TEE free the RPC arg at the end of the call
    before = drv.pages.allocated_count
    session.invoke(1)
    (reply,) = times
    assert reply.ret == TEEC_SUCCESS and (reply.params[0].a, reply.params[0].b) == (1_700_000_000, 123_456_789)
    (alloc,) = tee.alloc_replies
    ipa = reg_pair_to_u64(alloc[1], alloc[2])
    assert ipa % PAGE_SIZE == 0 and drv.pages.owns(ipa)
    cookie = reg_pair_to_u64(alloc[4], alloc[5])
    resumes = [r for _, r in tee.calls if r[0] == OPTEE_SMC_CALL_RETURN_FROM_RPC]
    # the CMD and FREE resumes echo a3 and still carry ALLOC's a4/a5, as Linux does
    assert len(resumes) == 3 and all(r[3] == resumes[0][3] for r in resumes)
    assert all(reg_pair_to_u64(r[4], r[5]) == cookie for r in resumes)
    assert drv.pages.allocated_count == before  # the RPC page was freed again
    assert drv.stats["rpc_alloc"] == 1 and drv.stats["rpc_free"] == 1


def test_shm_cache_cookies_are_freed_at_shutdown(domu):
    tee = FakeOptee(domu, caps=DYN_ONLY)
    drv = make_driver(domu, tee)

    def program(call: Call):
        yield from call.rpc(MsgArg(OPTEE_RPC_CMD_GET_TIME, params=(MsgParam.value(2),)))
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    ctx, session = open_session(drv)
    session.invoke(1)
    assert len(tee.cache) == 1 and drv.stats["rpc_free"] == 0  # kept by OP-TEE's cache
    ctx.close()
    drv.shutdown()
    assert tee.cache == [] and drv.pages.allocated_count == 0 and drv.live_shms == []


@pytest.mark.parametrize(("kind", "size"), [(OPTEE_RPC_SHM_TYPE_KERNEL, 100),
                                            (OPTEE_RPC_SHM_TYPE_KERNEL, 3 * PAGE_SIZE),
                                            (OPTEE_RPC_SHM_TYPE_APPL, 5000)])
def test_rpc_shm_alloc_and_free(domu, tee, kind, size):
    """handle_rpc_func_cmd_shm_alloc: a buffer with pages, whatever its type
    and size (a single page too), is answered with a page list."""
    drv = make_driver(domu, tee, supplicant=Supplicant())
    seen = []

    def program(call: Call):
        reply = yield from call.rpc(
            MsgArg(
                OPTEE_RPC_CMD_SHM_ALLOC,
                params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, kind, size, 8), MsgParam.none()),
            )
        )
        seen.append(reply)
        p = reply.params[0]
        tee.domain.write(p.a if not p.attr & OPTEE_MSG_ATTR_NONCONTIG else read_page_list(
            lambda a: tee.domain.read(a, PAGE_SIZE), p.a, p.b, max_entries=64).entries[0], b"secure")
        free = yield from call.rpc(
            MsgArg(OPTEE_RPC_CMD_SHM_FREE, params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, kind, p.c),))
        )
        seen.append(free)
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    _, session = open_session(drv)
    before = drv.pages.allocated_count
    session.invoke(2)
    alloc, free = seen
    p = alloc.params[0]
    assert alloc.ret == TEEC_SUCCESS and alloc.ret_origin == TEEC_ORIGIN_COMMS
    assert p.b == size and alloc.params[1].attr == OPTEE_MSG_ATTR_TYPE_NONE
    assert p.attr == OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG
    pl = read_page_list(lambda a: domu.read(a, PAGE_SIZE), p.a, p.b, max_entries=64)
    assert len(pl.entries) == -(-size // PAGE_SIZE) and all(drv.pages.owns(e) for e in pl.entries)
    assert free.ret == TEEC_SUCCESS
    # buffer and page list are back; only an RPC arg page kept by OP-TEE's shm cache remains
    assert drv.pages.allocated_count == before + len(tee.cache)


def test_rpc_shm_alloc_bad_requests(domu, tee):
    drv = make_driver(domu, tee)
    seen = []

    def program(call: Call):
        for params in (
            (MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 1, 64),),  # attr must be VALUE_INPUT exactly
            (MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 2, 64),),  # GLOBAL is not served
            (MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 1, 64), MsgParam.value(1)),
            (MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 1, 1 << 40),),  # too big: OUT_OF_MEMORY
            (MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 0, 64),),  # APPL without a supplicant
        ):
            seen.append((yield from call.rpc(MsgArg(OPTEE_RPC_CMD_SHM_ALLOC, params=params))).ret)
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    _, session = open_session(drv)
    session.invoke(3)
    assert seen == [TEEC_ERROR_BAD_PARAMETERS] * 3 + [0xFFFF000C, 0xFFFF000C]


def test_notification_wait_send_and_timeout(domu, tee):
    drv = make_driver(domu, tee)
    results = []

    def program(call: Call):
        a = call.msg.params[0].a
        for value in ((OPTEE_RPC_NOTIFICATION_SEND, 5, 0), (OPTEE_RPC_NOTIFICATION_WAIT, 5, 0),
                      (OPTEE_RPC_NOTIFICATION_WAIT, 6, a), (OPTEE_RPC_NOTIFICATION_WAIT, 300, 0), (9, 1, 0)):
            msg = MsgArg(OPTEE_RPC_CMD_NOTIFICATION, params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, *value),))
            results.append((yield from call.rpc(msg)).ret)
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    _, session = open_session(drv)
    session.invoke(4, [Value(1, 0, IN)])  # key 6 waits 1 ms and nobody sends it
    # SEND before WAIT is remembered; a timeout is TEE_ERROR_TIMEOUT; key > 255 and bad op are refused
    assert results == [TEEC_SUCCESS, TEEC_SUCCESS, TEE_ERROR_TIMEOUT, TEEC_ERROR_BAD_PARAMETERS,
                       TEEC_ERROR_BAD_PARAMETERS]


def test_notification_wakes_a_waiter_on_another_vcpu(domu):
    tee = FakeOptee(domu)
    drv = make_driver(domu, tee, nr_vcpus=2)
    waiting = threading.Event()

    def program(call: Call):
        op, key = call.msg.params[0].a, call.msg.params[0].b
        msg = MsgArg(OPTEE_RPC_CMD_NOTIFICATION, params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, op, key),))
        if op == OPTEE_RPC_NOTIFICATION_WAIT:
            waiting.set()
        reply = yield from call.rpc(msg)
        return call.msg.replace(ret=reply.ret)

    tee.program = program
    ctx = Context(drv)
    s0 = ctx.open_session(TA, vcpu=0)
    s1 = ctx.open_session(TA, vcpu=1)
    waiter = threading.Thread(target=s0.invoke, args=(5, [Value(OPTEE_RPC_NOTIFICATION_WAIT, 9, IN)]))
    waiter.start()
    assert waiting.wait(10)
    while 9 not in drv.notif.waiters():
        threading.Event().wait(0.001)
    s1.invoke(5, [Value(OPTEE_RPC_NOTIFICATION_SEND, 9, IN)])
    waiter.join(10)
    assert not waiter.is_alive()
    assert {v for v, r in tee.calls if r[0] == OPTEE_SMC_CALL_RETURN_FROM_RPC} == {0, 1}


def test_suspend_and_foreign_interrupt(domu, tee):
    slept = []
    drv = make_driver(domu, tee, sleep=slept.append)
    rets = []

    def program(call: Call):
        yield (OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, 0, 0)
        msg = MsgArg(OPTEE_RPC_CMD_SUSPEND, params=(MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 250),))
        rets.append((yield from call.rpc(msg)).ret)
        yield (0xFFFF0009, 0, 0)  # an unknown RPC func is ignored and resumed
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    _, session = open_session(drv)
    session.invoke(6)
    assert slept == [0.25] and rets == [TEEC_SUCCESS] and drv.stats["foreign_intr"] == 1


def test_fs_rpc_reaches_the_supplicant(domu, tee):
    store = MemoryStore()
    store.files["obj/1"] = b"hello"
    drv = make_driver(domu, tee, supplicant=Supplicant(store))
    seen = []

    def program(call: Call):
        # an APPL buffer for the file name, as OP-TEE's REE FS does
        alloc = yield from call.rpc(MsgArg(OPTEE_RPC_CMD_SHM_ALLOC,
                                           params=(MsgParam.value(1, OPTEE_RPC_SHM_TYPE_APPL, 64),)))
        buf = alloc.params[0]
        pl = read_page_list(lambda a: tee.domain.read(a, PAGE_SIZE), buf.a, buf.b, max_entries=4)
        for name, op in ((b"obj/1\0", OPTEE_RPC_FS_OPEN), (b"nope\0", OPTEE_RPC_FS_OPEN),
                         (b"obj/2\0", OPTEE_RPC_FS_CREATE)):
            tee.domain.write(pl.entries[0], name)
            msg = MsgArg(
                OPTEE_RPC_CMD_FS,
                params=(
                    MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, op),
                    MsgParam.rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 0, len(name), buf.c),
                    MsgParam.value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
                ),
            )
            reply = yield from call.rpc(msg)
            seen.append((reply.ret, reply.ret_origin, reply.params[2].a))
        yield from call.rpc(MsgArg(OPTEE_RPC_CMD_SHM_FREE, params=(MsgParam.value(1, OPTEE_RPC_SHM_TYPE_APPL, buf.c),)))
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    _, session = open_session(drv)
    session.invoke(7)
    assert seen == [(TEEC_SUCCESS, TEEC_ORIGIN_COMMS, 3), (TEEC_ERROR_ITEM_NOT_FOUND, TEEC_ORIGIN_COMMS, 0),
                    (TEEC_SUCCESS, TEEC_ORIGIN_COMMS, 4)]
    assert store.files["obj/2"] == b"" and drv.supplicant.open_fds == {3, 4}


def test_temp_and_registered_memrefs(domu, tee):
    drv = make_driver(domu, tee)
    data = bytes(i * 7 % 251 for i in range(512 * 1024))

    def program(call: Call):
        src, dst = call.msg.params
        # on dynamic shm every memref is registered memory (optee_to_msg_param)
        assert src.attr in (OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT + 2)  # IN, INOUT
        assert dst.attr == OPTEE_MSG_ATTR_TYPE_RMEM_INPUT + 1  # RMEM_OUTPUT
        got = tee.read_tmem(src)
        assert got == data
        assert dst.b == 64
        digest = bytes(reversed(got[:64]))
        for i, byte in enumerate(digest):  # through the registered pages
            tee.domain.write(tee._ipa_in_registered(dst.c, dst.a + i), bytes([byte]))
        return call.msg.replace(params=(src, dst.replace(b=32)), ret=TEEC_SUCCESS)
        yield  # pragma: no cover

    tee.program = program
    ctx, session = open_session(drv)
    out = session.invoke(8, [TempMemref(data, IN), TempMemref(size=64, direction=OUT)])
    assert out[1].size == 32 and out[1].data == bytes(reversed(data[:64]))[:32]
    mem = ctx.allocate_shared_memory(len(data))
    mem.write(0, data)
    res = ctx.allocate_shared_memory(4096)
    out = session.invoke(8, [RegisteredMemref(mem), RegisteredMemref(res, 100, 64, OUT)])
    assert out[1].size == 32 and res.read(100, 64) == bytes(reversed(data[:64]))
    ctx.close()
    drv.shutdown()
    assert drv.pages.allocated_count == 0


def test_short_buffer_and_ta_errors_raise_teec_error(domu, tee):
    drv = make_driver(domu, tee)

    def program(call: Call):
        (p,) = call.msg.params
        assert p.a == 0 and p.b == 0  # size 0 goes as a NULL memref
        return call.msg.replace(params=(p.replace(b=1234),), ret=TEEC_ERROR_SHORT_BUFFER,
                                ret_origin=TEEC_ORIGIN_TRUSTED_APP)
        yield  # pragma: no cover

    tee.program = program
    _, session = open_session(drv)
    with pytest.raises(TeecError, match="TEEC_ERROR_SHORT_BUFFER .* from TEEC_ORIGIN_TRUSTED_APP") as e:
        session.invoke(9, [TempMemref(size=0, direction=OUT)])
    assert e.value.ret == TEEC_ERROR_SHORT_BUFFER and e.value.outputs[0].size == 1234


def test_a_failed_smc_is_a_communication_error(domu, tee):
    drv = make_driver(domu, tee)
    _, session = open_session(drv)
    real = tee.__call__

    def broken(vcpu, r):
        if r[0] in (OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_REGD_ARG):
            return regs(5)  # EBADCMD
        return real(vcpu, r)

    drv._trap = broken
    with pytest.raises(TeecError) as e:
        session.invoke(1)
    assert (e.value.ret, e.value.origin) == (TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS)


# -- ETHREAD_LIMIT and the call queue ---------------------------------------------------
def test_ethread_limit_waits_and_reissues_the_same_registers(domu):
    tee = FakeOptee(domu, caps=DYN_RPC_ARG, max_threads=1)  # no GET_THREAD_COUNT: queue unbounded
    drv = make_driver(domu, tee, nr_vcpus=2)
    ctx = Context(drv)
    s0 = ctx.open_session(TA, vcpu=0)
    s1 = ctx.open_session(TA, vcpu=1)
    refused = threading.Event()
    real_start = tee._start

    def start(r):
        res = real_start(r)
        if res[0] == OPTEE_SMC_RETURN_ETHREAD_LIMIT:
            refused.set()
        return res

    tee._start = start

    def program(call: Call):
        if call.msg.func == 1:  # the first call holds the only thread until the second is refused
            yield (OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, 0, 0)
            assert refused.wait(10)
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    first = threading.Thread(target=s0.invoke, args=(1,))
    first.start()
    while not tee.running:
        threading.Event().wait(0.001)
    s1.invoke(2)
    first.join(10)
    on_vcpu1 = [r for v, r in tee.calls if v == 1 and r[0] == OPTEE_SMC_CALL_WITH_REGD_ARG]
    assert len(on_vcpu1) == 3  # open session, refused invoke, identical retry
    assert on_vcpu1[1] == on_vcpu1[2]
    assert drv.call_queue.ethread_limit_waits == 1


def test_known_thread_count_bounds_calls_in_flight(domu):
    tee = FakeOptee(domu, caps=DYN_RPC_ARG, threads=1, max_threads=1)
    drv = make_driver(domu, tee, nr_vcpus=4)
    ctx = Context(drv)
    sessions = [ctx.open_session(TA, vcpu=v) for v in range(4)]

    def program(call: Call):
        yield (OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, 0, 0)
        return call.msg.replace(ret=TEEC_SUCCESS)

    tee.program = program
    workers = [threading.Thread(target=s.invoke, args=(3,)) for s in sessions]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert drv.call_queue.ethread_limit_waits == 0 and drv.call_queue.in_flight == 0


def test_shm_cache_busy_with_nothing_in_flight_is_an_error(domu):
    from stubdom.guest import ShmCacheBusy

    busy = (regs(OPTEE_SMC_DISABLE_SHM_CACHE), regs(OPTEE_SMC_RETURN_EBUSY))
    trap = ScriptedTrap(probe_steps(DYN_RPC_ARG) + [busy, busy])
    with pytest.raises(ShmCacheBusy, match="0xb200000a still answers 0x2 after 2 tries"):
        OpteeDriver(trap, domu, shm_cache_busy_tries=2).probe()
    assert not trap.steps


def test_package_exports_resolve():
    import stubdom.guest as guest

    missing = [name for name in guest.__all__ if not hasattr(guest, name)]
    assert missing == [] and len(set(guest.__all__)) == len(guest.__all__)
