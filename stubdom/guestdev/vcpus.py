"""The guest's side of the platform's vCPU host (stubdom/platform/vcpuhost.py):
asking the platform for a domain, and the vCPUs the guest kernel traps on.

A system call of one of the guest's processes runs in a thread of the guest
kernel; when the OP-TEE driver executes an SMC, that thread takes whichever
vCPU is free for the one instruction (:meth:`VcpuPool.trap`), as a Linux task
runs on any CPU and may move between CPUs while it sleeps between the SMCs of
one call.  At most ``nr_vcpus`` SMCs are in flight at once; an SMC is never
split across vCPUs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from stubdom.platform.vcpuhost import MAX_CONTROL_MESSAGE, REGS, vcpu_host_path
from stubdom.rundir import PeerRefused, check_peer, sockaddr

from .errors import PlatformGone, PlatformRefused, PlatformUnavailable

__all__ = ["VcpuPool", "PlatformLease", "attach_domain"]

@dataclass
class PlatformLease:
    """A domain the platform made for this process: destroyed when the lease
    is returned (:meth:`release`) or this process dies."""

    domid: int
    machine: Path
    placement: str
    control: socket.socket
    vcpus: list[socket.socket]

    def release(self) -> dict:
        """Ask the platform to destroy the domain; its answer (or {} if it had
        gone already)."""
        with contextlib.suppress(OSError):
            self.control.send(msgpack.packb({"op": "destroy"}))
            self.control.settimeout(120)
            msg = self.control.recv(MAX_CONTROL_MESSAGE)
            if msg:
                return msgpack.unpackb(msg, raw=False)
        return {}

    def close(self) -> None:
        for s in (*self.vcpus, self.control):
            s.close()


def _connect(sock: socket.socket, path: Path) -> None:
    with sockaddr(path) as addr:  # past sun_path too
        sock.connect(addr)


def attach_domain(runtime_dir: str | os.PathLike[str], domid: int, *, nr_pages: int, vcpus: int,
                  wait: float) -> PlatformLease:
    """Ask the platform of ``runtime_dir`` for domain ``domid``, waiting up
    to ``wait`` seconds for it to listen."""
    path = vcpu_host_path(runtime_dir)
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            _connect(sock, path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() >= deadline:
                raise PlatformUnavailable(str(path), e.strerror or str(e)) from None
            time.sleep(0.1)
        except OSError as e:
            sock.close()
            raise PlatformUnavailable(str(path), e.strerror or str(e)) from None
    try:
        try:
            check_peer(sock, path, "platform")  # a listener of another user is not our platform
        except PeerRefused as e:
            raise PlatformUnavailable(str(path), str(e)) from None
        sock.send(msgpack.packb({"op": "create", "domid": domid, "nr_pages": nr_pages, "vcpus": vcpus}))
        sock.settimeout(max(wait, 60.0))
        msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL_MESSAGE, vcpus)
        sock.settimeout(None)
        if not msg:
            raise PlatformRefused(domid, "the platform closed the connection")
        answer = msgpack.unpackb(msg, raw=False)
        if not isinstance(answer, dict) or not answer.get("ok"):
            for fd in fds:
                os.close(fd)
            raise PlatformRefused(domid, str(answer.get("error") if isinstance(answer, dict) else answer))
        if len(fds) != vcpus:
            for fd in fds:
                os.close(fd)
            raise PlatformRefused(domid, f"{len(fds)} vCPU channels for {vcpus} vCPUs")
        socks = [socket.socket(fileno=fd) for fd in fds]
        return PlatformLease(domid, Path(answer["machine"]), str(answer.get("placement")), sock, socks)
    except BaseException:
        sock.close()
        raise


class VcpuPool:
    """The guest's vCPUs: a trap entry for the OP-TEE driver (``trap(vcpu,
    regs)``; the index it names is ignored, any free vCPU takes the SMC)."""

    def __init__(self, domid: int, channels: Sequence[socket.socket]) -> None:
        if not channels:
            raise ValueError("a guest needs at least one vCPU")
        self.domid = domid
        self._channels = list(channels)
        self._free = list(range(len(channels)))
        self._cond = threading.Condition()
        self.traps = [0] * len(channels)
        self._gone = False

    @property
    def nr_vcpus(self) -> int:
        return len(self._channels)

    def trap(self, _vcpu: int, regs: Sequence[int]) -> tuple[int, ...]:
        with self._cond:
            while not self._free and not self._gone:
                self._cond.wait()
            if self._gone:
                raise PlatformGone(self.domid, -1)
            index = self._free.pop()
        try:
            chan = self._channels[index]
            try:
                chan.send(REGS.pack(*regs))
                msg = chan.recv(REGS.size + 1)
            except OSError:
                msg = b""
            if len(msg) != REGS.size:
                with self._cond:
                    self._gone = True
                    self._cond.notify_all()
                raise PlatformGone(self.domid, index)
            self.traps[index] += 1
            return REGS.unpack(msg)
        finally:
            with self._cond:
                self._free.append(index)
                self._cond.notify()
