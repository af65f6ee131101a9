"""The guest kernel's device server: the system calls of the guest's
processes, forwarded by their LD_PRELOAD library (preload/teedev_preload.c)
over the device socket (preload/teedev_wire.h), run against the guest
kernel's TEE subsystem (:class:`stubdom.guest.TeeSubsystem`).

One trio task per connection reads its requests; each request runs in a
thread of the guest kernel (a system call may block: in the secure world, on
tee-supplicant, in SUPPL_RECV), bounded by a limiter per device so that
clients waiting for tee-supplicant can never keep tee-supplicant's own calls
from running.  While a call runs, its task watches the caller's reply socket:
its end-of-file means the process died, which ends the call's killable and
interruptible waits (``TeeSubsystem.kill``).  A connection's end-of-file is
the file's last close: the server waits for the calls still running on it,
then releases the context, the buffer or the process's memory behind it.

Closing is asynchronous here, synchronous in Linux (the last fput releases
before close(2) returns).  So before an ioctl runs, the files of its context
whose peer has already hung up finish their release, and before an open of
/dev/teepriv0 the supplicant's do (:meth:`DeviceServer._settle`): a process
that closed a buffer and then names its id finds it gone, and a supplicant
restarted right after the old one exited opens the device instead of getting
EBUSY, as in Linux.  Only those: a release may need the secure world, whose
threads may all wait for the supplicant, so nothing else waits for one.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import logging
import os
import select
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from stubdom.guest.errors import GuestError, TeeErrno
from stubdom.guest.mm import UserMm
from stubdom.guest.pages import PAGE_SIZE
from stubdom.guest.teecore import TeeContext, TeeSubsystem
from stubdom.guest.teeshm import TeeShm
from stubdom.guest.uapi import TEE_IOC_SUPPL_RECV
from stubdom.guest.usermem import Caller, UserMemory, UserRegion
from stubdom.rundir import SOCKET_MODE, PeerRefused, check_peer, sockaddr

from .errors import WireError
from .wire import (
    REQ,
    RSP,
    TEEDEV_MAGIC,
    TEEDEV_MAX_MSG,
    TEEDEV_OP_ADOPT,
    TEEDEV_OP_BACK,
    TEEDEV_OP_IOCTL,
    TEEDEV_OP_MM_HELLO,
    TEEDEV_OP_MMAP,
    TEEDEV_OP_OPEN,
    TEEDEV_OP_STATS,
    TEEDEV_OP_UNBACK,
    TEEDEV_OP_UNMAP,
    TEEDEV_WIRE_VERSION,
    Request,
    build_response,
    parse_request,
)

__all__ = ["DeviceServer", "ServerStatistics", "query_statistics", "MAX_CLIENT_THREADS",
           "MAX_SUPPLICANT_RECV_THREADS", "MAX_SUPPLICANT_THREADS",
           "MAX_CALLS_PER_CONNECTION"]

log = logging.getLogger("stubdom.guestdev.server")

# Guest-kernel threads, in three pools so that no kind of call can keep
# another from running: calls on /dev/tee0 (each blocked call holds one, e.g.
# while its RPC waits for tee-supplicant), tee-supplicant's SUPPL_RECVs (one
# waits per idle supplicant thread), and its other calls (SUPPL_SEND, its
# buffers), which the clients' RPCs wait for.
MAX_CLIENT_THREADS = 128
MAX_SUPPLICANT_RECV_THREADS = 256
MAX_SUPPLICANT_THREADS = 32
# Requests of one connection in flight at once; past it the server stops
# reading that connection until one ends (back-pressure, not an error).
MAX_CALLS_PER_CONNECTION = 256
_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
_MAX_FDS = 1  # every request carries exactly its reply socket


@dataclass
class ServerStatistics:
    """Counters of the device server (served with TEEDEV_OP_STATS)."""

    connections: dict[str, int] = field(default_factory=lambda: {"device": 0, "shm": 0, "mm": 0})
    calls: int = 0
    errors: int = 0
    callers_gone: int = 0
    protocol_errors: int = 0


def _groups(pid: int) -> frozenset[int]:
    """The supplementary groups of ``pid`` (in_egroup_p's list)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


@dataclass(eq=False)
class _File:
    """A connection that stands for a file (device, shm) or a process's mm,
    until its release is done; ``ctx`` is the context it belongs to."""

    sock: trio.socket.SocketType
    ctx: TeeContext | None
    released: trio.Event = field(default_factory=trio.Event)


class DeviceServer:
    """Serves ``path`` for ``kernel`` until cancelled.  ``ram_path`` is the
    machine's RAM file, whose descriptor goes to a process with each mapping
    of guest pages."""

    def __init__(self, kernel: TeeSubsystem, path: Path, ram_path: Path, *,
                 extra_statistics: Callable[[], dict] | None = None) -> None:
        self.kernel = kernel
        self._extra = extra_statistics
        self.path = Path(path)
        self._ram_fd = os.open(ram_path, os.O_RDWR | os.O_CLOEXEC)
        self._limiters = {"client": trio.CapacityLimiter(MAX_CLIENT_THREADS),
                          "recv": trio.CapacityLimiter(MAX_SUPPLICANT_RECV_THREADS),
                          "supplicant": trio.CapacityLimiter(MAX_SUPPLICANT_THREADS)}
        self._callers: set[Caller] = set()
        self._files: set[_File] = set()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.stats = ServerStatistics()

    # -- serving --------------------------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.fchmod(listener.fileno(), SOCKET_MODE)  # never born wider, then exactly that
            with sockaddr(self.path) as addr:
                await listener.bind(addr)
                os.chmod(addr, SOCKET_MODE)
            listener.listen(64)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    while True:
                        conn, _ = await listener.accept()
                        nursery.start_soon(self._connection, conn)
                finally:
                    listener.close()
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    self._stop_calls()
        finally:
            listener.close()
            os.close(self._ram_fd)

    def _stop_calls(self) -> None:
        """The guest is going down: every caller is as good as killed."""
        self._stopping = True
        for caller in list(self._callers):
            self.kernel.kill(caller)
        self.kernel.supp.release()

    async def _recv(self, sock) -> tuple[bytes, list[int]] | None:
        """One message and the descriptors it carried; None at end-of-file."""
        msg, anc, flags, _ = await sock.recvmsg(TEEDEV_MAX_MSG + 1, socket.CMSG_SPACE(4 * (_MAX_FDS + 4)))
        fds: list[int] = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
                fds.extend(arr)
        if not msg and not fds:
            return None
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            raise WireError(f"message or descriptors truncated (flags {flags:#x})")
        return msg, fds

    async def _connection(self, conn) -> None:
        """A fresh connection: its first request says what it is."""
        with conn:
            try:
                check_peer(conn, self.path, "guest process")  # before reading a byte
            except PeerRefused as e:
                log.warning("%s", e)
                return
            try:
                got = await self._recv(conn)
                if got is None:
                    return  # a probe (the library learning the server's pid)
                msg, fds = got
                req, reply = self._take(msg, fds)
            except WireError as e:
                self.stats.protocol_errors += 1
                log.warning("dropping a connection: %s", e)
                return
            target: TeeContext | UserMm | None = None
            with reply:
                if req.op == TEEDEV_OP_OPEN:
                    target = await self._open(req, reply)
                    if target is not None:
                        self.stats.connections["device"] += 1
                elif req.op == TEEDEV_OP_MM_HELLO:
                    pid = _UCRED.unpack(reply.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[0]
                    target = self.kernel.mms.create(pid)
                    self.stats.connections["mm"] += 1
                    await self._send(reply, build_response(0, token=target.token))
                elif req.op == TEEDEV_OP_STATS:
                    await self._settle(lambda f: True)
                    await self._send(reply, build_response(0, data=json.dumps(self.statistics()).encode()))
                else:
                    await self._send(reply, build_response(-errno.EINVAL))
            if target is not None:
                await self._serve_calls(conn, target)

    def _take(self, msg: bytes, fds: list[int]):
        """A request and its reply socket (a trio socket); anything else is a
        protocol error."""
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise WireError(f"a request carries {len(fds)} descriptors, not its one reply socket")
        try:
            reply = socket.socket(fileno=fds[0])
        except OSError as e:
            os.close(fds[0])
            raise WireError(f"the reply descriptor is not a socket: {e.strerror}") from None
        try:
            if reply.family != socket.AF_UNIX or reply.type != socket.SOCK_SEQPACKET:
                raise WireError("the reply descriptor is not an AF_UNIX SOCK_SEQPACKET socket")
            req = parse_request(msg)
        except BaseException:
            reply.close()
            raise
        return req, trio.socket.from_stdlib_socket(reply)

    async def _settle(self, which: Callable[[_File], bool]) -> None:
        """Wait for the release of the files ``which`` picks whose peer has
        hung up."""
        files = [f for f in self._files if which(f)]
        if not files:
            return
        poller = select.poll()
        for f in files:
            poller.register(f.sock.fileno(), select.POLLHUP)
        hung = {fd for fd, ev in poller.poll(0) if ev & (select.POLLHUP | select.POLLNVAL)}
        for f in files:
            if f.sock.fileno() in hung or f.sock.fileno() == -1:
                await f.released.wait()

    async def _open(self, req: Request, reply) -> TeeContext | None:
        name = req.payload.split(b"\0", 1)[0].decode("ascii", "replace")
        dev = self.kernel.devices.get(name)
        if dev is not None and dev.privileged:
            await self._settle(lambda f: f.ctx is not None and f.ctx.dev is dev)
        try:
            if self._stopping:
                raise TeeErrno(errno.ENXIO, "the guest is shutting down")
            ctx = self.kernel.open(name)
        except TeeErrno as e:
            await self._send(reply, build_response(-e.errno))
            return None
        await self._send(reply, build_response(0))
        return ctx

    async def _serve_calls(self, conn, target: TeeContext | TeeShm | UserMm) -> None:
        """Requests on an open file (device or shm) or a process's mm, until
        its last copy is closed; then release what it was."""
        slots = trio.Semaphore(MAX_CALLS_PER_CONNECTION)
        ctx = target if isinstance(target, TeeContext) else target.ctx if isinstance(target, TeeShm) else None
        record = _File(conn, ctx)
        self._files.add(record)
        try:
            async with trio.open_nursery() as calls:
                while True:
                    await slots.acquire()
                    try:
                        got = await self._recv(conn)
                    except WireError as e:
                        self.stats.protocol_errors += 1
                        log.warning("closing a connection: %s", e)
                        got = None
                    except OSError:
                        got = None
                    if got is None:
                        slots.release()
                        break
                    calls.start_soon(self._call, target, got, slots, record)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._release(target)
                finally:
                    self._files.discard(record)
                    record.released.set()

    async def _release(self, target: TeeContext | TeeShm | UserMm) -> None:
        if isinstance(target, TeeContext):
            await trio.to_thread.run_sync(self.kernel.close, target)
        elif isinstance(target, TeeShm):
            await trio.to_thread.run_sync(self.kernel.shm_put, target)
        else:
            for tshm in self.kernel.mms.release(target):
                await trio.to_thread.run_sync(self.kernel.shm_put, tshm)

    async def _call(self, target, got: tuple[bytes, list[int]], slots: trio.Semaphore, record: _File) -> None:
        new_sock = None
        try:
            try:
                req, reply = self._take(*got)
            except WireError as e:
                self.stats.protocol_errors += 1
                log.warning("dropping a request: %s", e)
                return
            with reply:
                pid, uid, gid = _UCRED.unpack(reply.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
                mm = self.kernel.mms.lookup(req.token) if any(req.token) else None
                caller = Caller(pid=pid, uid=uid, gid=gid, groups=_groups(pid), mm=mm)
                if isinstance(target, TeeContext):
                    await self._settle(lambda f: f.ctx is target and f is not record)
                self._callers.add(caller)
                self.stats.calls += 1
                pool = "client"
                if isinstance(target, TeeContext) and target.dev.privileged:
                    pool = "recv" if req.op == TEEDEV_OP_IOCTL and req.cmd == TEE_IOC_SUPPL_RECV else "supplicant"
                try:
                    async with trio.open_nursery() as watch:
                        watch.start_soon(self._watch, reply, caller)
                        rsp, tshm, send_ram = await trio.to_thread.run_sync(
                            self._dispatch, target, req, caller, limiter=self._limiters[pool])
                        watch.cancel_scope.cancel()
                finally:
                    self._callers.discard(caller)
                fds = [self._ram_fd] if send_ram else []
                if tshm is not None:
                    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                    new_sock = theirs
                    fds.append(theirs.fileno())
                    assert self._nursery is not None
                    self._nursery.start_soon(self._shm_file, trio.socket.from_stdlib_socket(mine), tshm)
                await self._send(reply, rsp, fds)
        finally:
            if new_sock is not None:
                new_sock.close()  # the process has its copy (or died: the shm file's EOF releases it)
            slots.release()

    async def _shm_file(self, sock, tshm: TeeShm) -> None:
        self.stats.connections["shm"] += 1
        with sock:
            await self._serve_calls(sock, tshm)

    async def _watch(self, reply, caller: Caller) -> None:
        """The caller never writes to its reply socket: readable means gone."""
        await trio.lowlevel.wait_readable(reply)
        self.stats.callers_gone += 1
        self.kernel.kill(caller)

    async def _send(self, sock, data: bytes, fds: Sequence[int] = ()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        try:
            await sock.sendmsg([data], anc, socket.MSG_NOSIGNAL)
        except OSError as e:
            log.debug("reply not delivered (%s): the caller is gone", e.strerror)

    # -- the calls (in a guest-kernel thread) ------------------------------------------------
    def _dispatch(self, target, req: Request, caller: Caller) -> tuple[bytes, TeeShm | None, bool]:
        """Run one request; returns (response, new shm to give a descriptor, RAM fd too?)."""
        try:
            if isinstance(target, TeeContext):
                return self._device_call(target, req, caller)
            if isinstance(target, TeeShm):
                return self._shm_call(target, req, caller)
            return self._mm_call(target, req)
        except TeeErrno as e:
            self.stats.errors += 1
            log.debug("pid %d: %s", caller.pid, e)
            return build_response(-e.errno), None, False
        except WireError as e:
            self.stats.protocol_errors += 1
            log.warning("pid %d: %s", caller.pid, e)
            return build_response(-errno.EINVAL), None, False
        except GuestError as e:
            # the guest kernel itself failed (e.g. the platform is gone): EIO
            self.stats.errors += 1
            log.error("pid %d: %s failed: %s", caller.pid, _op_name(req.op), e)
            return build_response(-errno.EIO), None, False

    def _device_call(self, ctx: TeeContext, req: Request, caller: Caller) -> tuple[bytes, TeeShm | None, bool]:
        if req.op == TEEDEV_OP_IOCTL:
            user = UserMemory(UserRegion(a, d, w) for a, d, w in req.regions)
            result = self.kernel.ioctl(ctx, req.cmd, req.arg, user, caller)
            return build_response(result.ret, patches=user.patches), result.shm, False
        if req.op == TEEDEV_OP_MMAP:
            raise TeeErrno(errno.ENODEV, f"/dev/{ctx.dev.name} cannot be mapped")
        raise WireError(f"{_op_name(req.op)} on a device file")

    def _shm_call(self, tshm: TeeShm, req: Request, caller: Caller) -> tuple[bytes, TeeShm | None, bool]:
        if req.op == TEEDEV_OP_IOCTL:
            raise TeeErrno(errno.ENOTTY, f"ioctl {req.cmd:#x} on a tee_shm file")
        if req.op != TEEDEV_OP_MMAP:
            raise WireError(f"{_op_name(req.op)} on a shared-memory file")
        if caller.mm is None:
            raise TeeErrno(errno.EINVAL, "mmap of a tee_shm without the process's mm (library bug)")
        npages = -(-req.len // PAGE_SIZE)
        frames = self.kernel.mmap_frames(tshm, req.arg, npages)
        self.kernel.shm_get(tshm)
        try:
            handle = self.kernel.mms.add_map(caller.mm, tshm)
        except BaseException:
            self.kernel.shm_put(tshm)
            raise
        return build_response(0, data=_u64s(frames), handle=handle), None, True

    def _mm_call(self, mm: UserMm, req: Request) -> tuple[bytes, TeeShm | None, bool]:
        mms = self.kernel.mms
        if req.op == TEEDEV_OP_BACK:
            ipas = mms.back(mm, req.u64s())
            return build_response(0, data=_u64s(self.kernel.frame_of(i) for i in ipas)), None, True
        if req.op == TEEDEV_OP_UNBACK:
            return build_response(mms.unback(mm, req.u64s())), None, False
        if req.op == TEEDEV_OP_UNMAP:
            for handle in req.u64s():
                tshm = mms.drop_map(mm, handle)
                if tshm is not None:
                    self.kernel.shm_put(tshm)
            return build_response(0), None, False
        if req.op == TEEDEV_OP_ADOPT:
            handles = []
            for handle in req.u64s():
                tshm = mms.find_map(handle)
                if tshm is None:
                    raise TeeErrno(errno.ENOENT, f"no mapping {handle:#x} to inherit")
                self.kernel.shm_get(tshm)
                try:
                    handles.append(mms.add_map(mm, tshm))
                except BaseException:
                    self.kernel.shm_put(tshm)
                    raise
            return build_response(0, data=_u64s(handles)), None, False
        raise WireError(f"{_op_name(req.op)} on a process's mm")

    def statistics(self) -> dict:
        out = self.kernel.statistics()
        s = self.stats
        out["server"] = {"connections": dict(s.connections), "calls": s.calls, "errors": s.errors,
                         "callers_gone": s.callers_gone, "protocol_errors": s.protocol_errors,
                         "in_flight": len(self._callers)}
        if self._extra is not None:
            out.update(self._extra())
        return out


def query_statistics(path: str | os.PathLike[str], *, timeout: float = 60.0) -> dict:
    """The statistics of the device server at ``path`` (TEEDEV_OP_STATS), once
    every file whose process has closed it is released."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(timeout)
        mine.settimeout(timeout)
        with sockaddr(Path(path)) as addr:
            conn.connect(addr)
        conn.sendmsg([REQ.pack(TEEDEV_MAGIC, TEEDEV_WIRE_VERSION, TEEDEV_OP_STATS, 0, 0, 0, bytes(16), 0, 0)],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]).tobytes())])
        theirs.close()
        msg = mine.recv(TEEDEV_MAX_MSG)
    finally:
        for s in (conn, mine, theirs):
            s.close()
    if len(msg) < RSP.size:
        raise WireError(f"statistics answer of {len(msg)} bytes")
    _magic, ret, _np, ndata, *_ = RSP.unpack_from(msg)
    if ret < 0:
        raise WireError(f"statistics refused: errno {-ret}")
    return json.loads(msg[RSP.size : RSP.size + ndata])


def _u64s(values) -> bytes:
    vals = list(values)
    return struct.pack(f"={len(vals)}Q", *vals)


_OP_NAMES = {TEEDEV_OP_OPEN: "OPEN", TEEDEV_OP_IOCTL: "IOCTL", TEEDEV_OP_MMAP: "MMAP",
             TEEDEV_OP_MM_HELLO: "MM_HELLO", TEEDEV_OP_BACK: "BACK", TEEDEV_OP_UNBACK: "UNBACK",
             TEEDEV_OP_UNMAP: "UNMAP", TEEDEV_OP_ADOPT: "ADOPT", TEEDEV_OP_STATS: "STATS"}


def _op_name(op: int) -> str:
    return _OP_NAMES.get(op, f"op {op}")
