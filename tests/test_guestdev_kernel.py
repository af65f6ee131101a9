"""The guest kernel's TEE subsystem (stubdom.guest.teecore, supp, mm) driven
in-process over a real platform (el2: the real mediator and OP-TEE model):
the supplicant queue's semantics (meta ids, several receivers, answers out
of order, a requester that goes away, the supplicant's release), what the
ioctls write back, shm ids and references, pinning a process's pages, and
teardown.  The calls are made as the device server makes them: bytes of the
caller's memory in, patches out."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from stubdom.guest import Caller, OpteeDriver, TeeErrno, TeeSubsystem, UserMemory, UserRegion
from stubdom.guest.pages import PAGE_SIZE
from stubdom.guest.uapi import (
    BUF_DATA,
    INVOKE_ARG,
    OPEN_SESSION_ARG,
    PARAM,
    SHM_ALLOC_DATA,
    SHM_REGISTER_DATA,
    SUPP_RECV_ARG,
    SUPP_SEND_ARG,
    TEE_IOC_INVOKE,
    TEE_IOC_OPEN_SESSION,
    TEE_IOC_SHM_ALLOC,
    TEE_IOC_SHM_REGISTER,
    TEE_IOC_SUPPL_RECV,
    TEE_IOC_SUPPL_SEND,
    TEE_IOCTL_PARAM_ATTR_META,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT,
    TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT,
)
from stubdom.optee.rpc import (
    OPTEE_RPC_CMD_LOAD_TA,
    OPTEE_RPC_CMD_SHM_ALLOC,
    OPTEE_RPC_CMD_SHM_FREE,
    OPTEE_RPC_SHM_TYPE_APPL,
)
from stubdom.optee.teec import (
    TEEC_ERROR_COMMUNICATION,
    TEEC_ERROR_ITEM_NOT_FOUND,
    TEEC_ERROR_OUT_OF_MEMORY,
    TEEC_SUCCESS,
)
from stubdom.optee.uuid import value_words_to_uuid
from stubdom.platform import DomainSpec, Platform
from stubdom.platform.el2 import El2Placement
from stubdom.tee import TeeConfig
from stubdom.tee.tas import DIGEST_UUID, INCREMENT_UUID, STORAGE_UUID

DOMID = 5
ARG = 0x10000  # where a fake caller keeps an ioctl's argument
BUF = 0x20000  # and the buffer a buffer ioctl names
WAIT = 30.0  # a bound for conditions that a passing test meets at once


def _subsystem(tmp_path: Path, ree_tas: frozenset[str]):
    platform = Platform(tmp_path / "machine", nr_frames=16384, tee_config=TeeConfig(ree_tas=ree_tas),
                        placement=El2Placement)
    domain = platform.create_domain(DomainSpec(DOMID, 512, vcpus=2))
    driver = OpteeDriver(platform.trap_entry(DOMID), domain, nr_vcpus=2, seed=1)
    driver.probe()
    first = platform.machine.first_mfn
    sub = TeeSubsystem(driver, frame_of=lambda ipa: domain.lookup(ipa >> 12).mfn - first)
    sub.platform = platform  # for the tests' checks
    try:
        yield sub
    finally:
        sub.shutdown()
        platform.destroy_domain(DOMID)
        assert platform.machine.pinned_frames() == {}
        assert DOMID + 1 not in platform.tee.guest_ids()
        platform.close()
        assert platform.oracle.violations == []


@pytest.fixture
def tee(tmp_path: Path):
    """Early TAs: opening a session asks tee-supplicant nothing."""
    yield from _subsystem(tmp_path, frozenset())


@pytest.fixture
def ree_tee(tmp_path: Path):
    """REE-loaded TAs: each OPEN_SESSION first asks tee-supplicant for the
    image (OPTEE_RPC_CMD_LOAD_TA), without a lock between sessions
    (tee_ta_init_session loads a user TA after dropping tee_ta_mutex): the
    source of concurrent supplicant requests for the queue's tests."""
    yield from _subsystem(tmp_path, frozenset({"increment", "digest"}))


def caller(pid: int = 100, **kw) -> Caller:
    return Caller(pid=pid, uid=kw.pop("uid", 1000), gid=kw.pop("gid", 1000), **kw)


def call(tee, ctx, cmd: int, arg: bytes, buf: bytes | None = None, who: Caller | None = None,
         writable: bool = True):
    """One ioctl as a process's library sends it; returns (result, arg, buf)
    with the kernel's writes applied."""
    regions = [UserRegion(ARG, arg if buf is None else BUF_DATA.pack(BUF, len(buf)), True)]
    if buf is not None:
        regions.append(UserRegion(BUF, buf, writable))
    user = UserMemory(regions)
    result = tee.ioctl(ctx, cmd, ARG, user, who or caller())
    out = {ARG: bytearray(regions[0].data)}
    if buf is not None:
        out[BUF] = bytearray(buf)
    for addr, data in user.patches:
        base = BUF if addr >= BUF else ARG
        out[base][addr - base : addr - base + len(data)] = data
    return result, bytes(out[ARG]), bytes(out.get(BUF, b""))


def open_session(tee, ctx, ta, who=None) -> int:
    arg = OPEN_SESSION_ARG.pack(ta.bytes, bytes(16), 0, 0, 0, 0, 0, 0)
    _, _, buf = call(tee, ctx, TEE_IOC_OPEN_SESSION, b"", arg, who)
    _, _, session, ret, _, _ = OPEN_SESSION_ARG.unpack(buf)[2:]
    assert ret == TEEC_SUCCESS
    return session


def invoke_buf(session: int, func: int, *params: tuple[int, int, int, int]) -> bytes:
    return INVOKE_ARG.pack(func, session, 0, 0, 0, len(params)) + b"".join(PARAM.pack(*p) for p in params)


def shm_alloc(tee, ctx, size: int):
    result, arg, _ = call(tee, ctx, TEE_IOC_SHM_ALLOC, SHM_ALLOC_DATA.pack(size, 0, 0))
    return result.shm, SHM_ALLOC_DATA.unpack(arg)


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


# -- the supplicant queue (optee/supp.c) -----------------------------------------------------

class Client(threading.Thread):
    """A client process invoking the storage TA (its first RPC is an
    SHM_ALLOC for tee-supplicant) in its own thread."""

    def __init__(self, tee, ctx, session: int, pid: int) -> None:
        super().__init__()
        self.tee, self.ctx, self.session = tee, ctx, session
        self.who = caller(pid)
        self.ret = None

    def run(self) -> None:
        oid, data = b"object", b"x" * 10
        shm, _ = shm_alloc(self.tee, self.ctx, 4096)
        buf = invoke_buf(self.session, 0, (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, 0, len(oid), shm.id),
                         (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, 100, len(data), shm.id))
        try:
            _, _, out = call(self.tee, self.ctx, TEE_IOC_INVOKE, b"", buf, self.who)
            self.ret = INVOKE_ARG.unpack(out[: INVOKE_ARG.size])[3]
        finally:
            self.tee.shm_put(shm)


def recv(tee, supp, slots: int = 2, meta: bool = True, who=None):
    params = [PARAM.pack(TEE_IOCTL_PARAM_ATTR_META if meta and i == 0 else 0, 0, 0, 0) for i in range(slots)]
    buf = SUPP_RECV_ARG.pack(0, slots) + b"".join(params)
    _, _, out = call(tee, supp, TEE_IOC_SUPPL_RECV, b"", buf, who)
    func, n = SUPP_RECV_ARG.unpack(out[:8])
    return func, [PARAM.unpack_from(out, 8 + 32 * i) for i in range(n)]


def send(tee, supp, ret: int, params) -> None:
    buf = SUPP_SEND_ARG.pack(ret, len(params)) + b"".join(PARAM.pack(*p) for p in params)
    call(tee, supp, TEE_IOC_SUPPL_SEND, b"", buf)


def storage_clients(tee, n: int) -> tuple[object, list[Client]]:
    """``n`` clients of one context, each with its own session (OP-TEE
    parks a second call on a busy session)."""
    ctx = tee.open("tee0")
    clients = [Client(tee, ctx, open_session(tee, ctx, STORAGE_UUID), 200 + i) for i in range(n)]
    return ctx, clients


class Loader(threading.Thread):
    """A client process opening a session to an REE-loaded TA in its own
    thread: OP-TEE's first RPC is OPTEE_RPC_CMD_LOAD_TA (the size query:
    the UUID and a NULL output memref) for tee-supplicant. Storage clients
    cannot make concurrent requests: OP-TEE's REE FS takes ree_fs_mutex
    before its first RPC, so a second one waits in OP-TEE."""

    def __init__(self, tee, ctx, ta, pid: int) -> None:
        super().__init__()
        self.tee, self.ctx, self.ta = tee, ctx, ta
        self.who = caller(pid)
        self.ret = None

    def run(self) -> None:
        arg = OPEN_SESSION_ARG.pack(self.ta.bytes, bytes(16), 0, 0, 0, 0, 0, 0)
        _, _, buf = call(self.tee, self.ctx, TEE_IOC_OPEN_SESSION, b"", arg, self.who)
        self.ret = OPEN_SESSION_ARG.unpack(buf)[5]


def loaders(tee, n: int) -> tuple[object, list[Loader]]:
    ctx = tee.open("tee0")
    return ctx, [Loader(tee, ctx, (INCREMENT_UUID, DIGEST_UUID)[i % 2], 200 + i) for i in range(n)]


NO_SHM = (1 << 64) - 1  # tee_core.c params_to_supp: a NULL memref's shm id


def test_supplicant_requests_by_meta_id_answered_out_of_order(ree_tee) -> None:
    tee = ree_tee
    supp = tee.open("teepriv0")
    ctxs = [tee.open("tee0") for _ in range(2)]
    clients = [Loader(tee, c, ta, 200 + i) for i, (c, ta) in enumerate(zip(ctxs, (INCREMENT_UUID, DIGEST_UUID)))]
    for c in clients:
        c.start()
    got = [recv(tee, supp, slots=3), recv(tee, supp, slots=3)]
    for func, params in got:
        assert func == OPTEE_RPC_CMD_LOAD_TA
        meta, value, memref = params
        assert meta[0] == TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT | TEE_IOCTL_PARAM_ATTR_META
        assert value[0] == TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT
        assert memref == (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, 0, 0, NO_SHM)  # the size query
    asked = {value_words_to_uuid(p[1][1], p[1][2]) for _, p in got}
    assert asked == {INCREMENT_UUID, DIGEST_UUID}
    assert sorted(p[0][1] for _, p in got) == [1, 2]  # ids from 1
    for _, params in reversed(got):  # the second first
        send(tee, supp, TEEC_ERROR_ITEM_NOT_FOUND, params)
    for c in clients:
        c.join(WAIT)
        assert c.ret == TEEC_ERROR_ITEM_NOT_FOUND  # no such TA in the REE
    assert tee.supp.statistics() == {"queued": 0, "pending": 0, "supplicant": 1}
    assert tee.platform.tee.partition_stats(DOMID + 1).sessions == 0
    tee.close(supp)
    for c in ctxs:
        tee.close(c)


def test_supplicant_without_meta_serves_one_request_at_a_time(ree_tee) -> None:
    tee = ree_tee
    supp = tee.open("teepriv0")
    ctx, clients = loaders(tee, 2)
    for c in clients:
        c.start()
    wait_for(lambda: tee.supp.statistics()["queued"] == 2, "two requests queued")
    func, params = recv(tee, supp, slots=2, meta=False)
    assert func == OPTEE_RPC_CMD_LOAD_TA and len(params) == 2
    with pytest.raises(TeeErrno) as e:
        recv(tee, supp, slots=2, meta=False)  # the first is still unanswered
    assert e.value.errno == errno.EINVAL
    send(tee, supp, TEEC_ERROR_ITEM_NOT_FOUND, params)
    _, params = recv(tee, supp, slots=2, meta=False)
    send(tee, supp, TEEC_ERROR_ITEM_NOT_FOUND, params)
    for c in clients:
        c.join(WAIT)
        assert c.ret == TEEC_ERROR_ITEM_NOT_FOUND
    tee.close(supp)
    tee.close(ctx)


def test_requester_gone_while_queued_or_held(ree_tee) -> None:
    tee = ree_tee
    supp = tee.open("teepriv0")
    ctx, (queued, held) = loaders(tee, 2)
    held.start()
    _, held_params = recv(tee, supp, slots=3)  # the supplicant has it
    queued.start()
    wait_for(lambda: tee.supp.statistics()["queued"] == 1, "a second request queued")
    tee.kill(queued.who)  # gone before the supplicant saw it: just dropped
    queued.join(WAIT)
    assert queued.ret == TEEC_ERROR_COMMUNICATION  # the driver's answer to OP-TEE's LOAD_TA, returned
    assert tee.supp.statistics()["queued"] == 0
    tee.kill(held.who)  # gone while the supplicant works on it
    held.join(WAIT)
    assert held.ret == TEEC_ERROR_COMMUNICATION
    with pytest.raises(TeeErrno) as e:
        send(tee, supp, TEEC_SUCCESS, held_params)
    assert e.value.errno == errno.EBADF  # INVALID_REQ_PTR
    with pytest.raises(TeeErrno) as e:
        send(tee, supp, TEEC_SUCCESS, held_params)
    assert e.value.errno == errno.ENOENT  # and the id is free again
    assert tee.platform.tee.partition_stats(DOMID + 1).sessions == 0
    tee.close(supp)
    tee.close(ctx)


def test_supplicant_release_fails_every_request(ree_tee) -> None:
    tee = ree_tee
    supp = tee.open("teepriv0")
    ctx, clients = loaders(tee, 2)
    clients[0].start()
    recv(tee, supp, slots=3)  # taken, never answered
    clients[1].start()
    wait_for(lambda: tee.supp.statistics()["queued"] == 1, "a second request queued")
    with pytest.raises(TeeErrno) as e:
        tee.open("teepriv0")
    assert e.value.errno == errno.EBUSY
    tee.close(supp)  # the supplicant's last close: optee_supp_release
    for c in clients:
        c.join(WAIT)
        assert c.ret == TEEC_ERROR_COMMUNICATION
    assert tee.supp.statistics() == {"queued": 0, "pending": 0, "supplicant": 0}
    tee.close(tee.open("teepriv0"))  # free again
    tee.close(ctx)


def test_waiting_supplicant_is_interrupted_when_gone(tee) -> None:
    supp = tee.open("teepriv0")
    who = caller(300)
    errors = []

    def waiting() -> None:
        try:
            recv(tee, supp, who=who)
        except TeeErrno as e:
            errors.append(e.errno)

    t = threading.Thread(target=waiting)
    t.start()
    wait_for(lambda: t.is_alive(), "the receiver runs")
    tee.kill(who)
    t.join(WAIT)
    assert errors == [512]  # -ERESTARTSYS
    tee.close(supp)


# -- ioctls ----------------------------------------------------------------------------------

def test_invoke_writes_back_only_what_linux_writes(tee) -> None:
    ctx = tee.open("tee0")
    session = open_session(tee, ctx, INCREMENT_UUID)
    buf = invoke_buf(session, 0, (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT, 41, 2, 3))
    user = UserMemory([UserRegion(ARG, BUF_DATA.pack(BUF, len(buf)), True), UserRegion(BUF, buf, True)])
    tee.ioctl(ctx, TEE_IOC_INVOKE, ARG, user, caller())
    # ret, ret_origin, then a, b, c of the one output value: put_user by put_user
    assert [(a - BUF, len(d)) for a, d in user.patches] == [(12, 4), (16, 4), (32, 8), (40, 8), (48, 8)]
    assert user.patches[2][1] == (42).to_bytes(8, "little")
    # an input value is not written back at all
    digest = open_session(tee, ctx, DIGEST_UUID)
    shm, _ = shm_alloc(tee, ctx, 4096)
    buf = invoke_buf(digest, 0, (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, 0, 10, shm.id),
                     (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, 64, 32, shm.id),
                     (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, 7, 7, 7))
    user = UserMemory([UserRegion(ARG, BUF_DATA.pack(BUF, len(buf)), True), UserRegion(BUF, buf, True)])
    tee.ioctl(ctx, TEE_IOC_INVOKE, ARG, user, caller())
    assert [(a - BUF, len(d)) for a, d in user.patches] == [(12, 4), (16, 4), (24 + 32 + 16, 8)]
    tee.shm_put(shm)
    tee.close(ctx)
    assert tee.platform.tee.partition_stats(DOMID + 1).sessions == 0  # released with the context


def test_open_session_not_written_back_is_closed_again(tee) -> None:
    ctx = tee.open("tee0")
    arg = OPEN_SESSION_ARG.pack(INCREMENT_UUID.bytes, bytes(16), 0, 0, 0, 0, 0, 0)
    with pytest.raises(TeeErrno) as e:
        call(tee, ctx, TEE_IOC_OPEN_SESSION, b"", arg, writable=False)
    assert e.value.errno == errno.EFAULT
    assert tee.platform.tee.partition_stats(DOMID + 1).sessions == 0
    assert tee.statistics()["sessions"] == 0
    tee.close(ctx)


def test_shm_ids_are_per_context_and_reused(tee) -> None:
    ctx, other = tee.open("tee0"), tee.open("tee0")
    a, (size, _, id_a) = shm_alloc(tee, ctx, 1)
    b, (_, _, id_b) = shm_alloc(tee, ctx, 4096)
    assert (size, id_a, id_b) == (PAGE_SIZE, 1, 2)
    c, (_, _, id_c) = shm_alloc(tee, other, 4096)
    assert id_c == 3  # one table per device
    session = open_session(tee, ctx, DIGEST_UUID)

    def digest(shm_id: int):
        buf = invoke_buf(session, 0, (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, 0, 1, shm_id),
                         (TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, 0, 32, id_b))
        return call(tee, ctx, TEE_IOC_INVOKE, b"", buf)

    with pytest.raises(TeeErrno) as e:
        digest(id_c)
    assert e.value.errno == errno.EINVAL  # another context's
    digest((1 << 32) | id_a)  # tee_shm_get_from_id takes an int: the high bits are gone
    tee.shm_put(a)
    with pytest.raises(TeeErrno):
        digest(id_a)
    again, (_, _, id_again) = shm_alloc(tee, ctx, 4096)
    assert id_again == 1  # idr_alloc: the lowest free id
    for s in (again, b, c):
        tee.shm_put(s)
    tee.close(ctx)
    tee.close(other)


def test_context_outlives_its_file_while_a_buffer_holds_it(tee) -> None:
    ctx = tee.open("tee0")
    open_session(tee, ctx, INCREMENT_UUID)
    shm, _ = shm_alloc(tee, ctx, 4096)
    tee.close(ctx)  # the device file's last close
    assert tee.platform.tee.partition_stats(DOMID + 1).sessions == 1  # teedev_ctx_get in the shm
    tee.shm_put(shm)
    assert tee.platform.tee.partition_stats(DOMID + 1).sessions == 0
    assert tee.statistics()["contexts"] == 0


def test_registering_needs_the_process_pages_in_the_guest(tee) -> None:
    ctx = tee.open("tee0")
    mm = tee.mms.create(400)
    who = caller(400, mm=mm)
    before = tee.driver.pages.allocated_count
    tee.mms.back(mm, [0x7000, 0x8000])

    def register(addr: int, length: int):
        return call(tee, ctx, TEE_IOC_SHM_REGISTER, SHM_REGISTER_DATA.pack(addr, length, 0, 0), who=who)

    result, arg, _ = register(0x7000 + 10, 6000)
    assert SHM_REGISTER_DATA.unpack(arg)[1:] == (6000, 0, 1) and result.shm is not None
    for addr, length, want in ((0x5000, 10, errno.EFAULT), (0x8000, 8000, errno.ENOMEM), (0x7000, 0, errno.EINVAL),
                               (1 << 47, 10, errno.EFAULT)):
        with pytest.raises(TeeErrno) as e:
            register(addr, length)
        assert e.value.errno == want, (hex(addr), length)
    # the process unmaps its pages while OP-TEE still has them: they stay
    # allocated until the registration ends
    tee.mms.unback(mm, [0x7000, 0x8000])
    assert tee.mms.statistics()["orphan_pages"] == 2
    tee.shm_put(result.shm)
    assert tee.driver.pages.allocated_count == before
    tee.mms.release(mm)
    tee.close(ctx)


def test_shutdown_releases_what_processes_left(tee) -> None:
    ctx = tee.open("tee0")
    open_session(tee, ctx, INCREMENT_UUID)
    shm_alloc(tee, ctx, 3 * 4096)
    supp = tee.open("teepriv0")
    shm_alloc(tee, supp, 4096)
    assert tee.statistics()["shm"] == {"tee0": 1, "teepriv0": 1}
    # the fixture's teardown shuts down and checks nothing is left pinned


def test_supplicant_shm_alloc_buffer_is_registered_and_refused_in_an_rpc_reply(tee) -> None:
    """TEE_IOC_SHM_ALLOC on teepriv0 registers the buffer with OP-TEE, as
    Linux's pool does for every non-private buffer; offering it as the answer
    to OP-TEE's SHM_ALLOC then names a cookie the mediator already tracks as a
    registration, which it refuses (as Xen's allocate_optee_shm_buf does):
    the TA gets no buffer, and the mediator hands the buffer back to the guest
    with an RPC SHM_FREE, which reaches the supplicant. tee-supplicant
    registers its own memory instead whenever the device has REG_MEM."""
    supp = tee.open("teepriv0")
    ctx, (client,) = storage_clients(tee, 1)
    registered = tee.platform.tee.partition_stats(DOMID + 1).registered_shm
    shm, (_, _, shm_id) = shm_alloc(tee, supp, 4096)
    assert tee.platform.tee.partition_stats(DOMID + 1).registered_shm == registered + 1
    client.start()
    _, (meta, value) = recv(tee, supp)
    send(tee, supp, TEEC_SUCCESS, [meta, value[:3] + (shm_id,)])
    func, (meta, value) = recv(tee, supp)
    assert func == OPTEE_RPC_CMD_SHM_FREE and value[:3] == (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT,
                                                            OPTEE_RPC_SHM_TYPE_APPL, shm_id)
    tee.shm_put(shm)  # the supplicant closes its descriptor
    send(tee, supp, TEEC_SUCCESS, [meta, value])
    # OP-TEE could not open dirf.db: ree_fs_open_primitive removes a file it
    # has no hash for, which asks for the FS buffer again
    func, (meta, value) = recv(tee, supp)
    assert func == OPTEE_RPC_CMD_SHM_ALLOC
    send(tee, supp, TEEC_ERROR_OUT_OF_MEMORY, [meta, value])
    client.join(WAIT)
    assert client.ret == TEEC_ERROR_OUT_OF_MEMORY
    assert tee.platform.tee.partition_stats(DOMID + 1).registered_shm == registered
    tee.close(supp)
    tee.close(ctx)
