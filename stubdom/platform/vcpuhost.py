"""The platform's vCPU host: guests whose kernel runs in another process.

The platform's own guests run their kernel in vCPU threads of the platform
process.  A guest started by ``stubdom-teed guest-dev`` runs its kernel (the
OP-TEE driver and the TEE subsystem its processes use) in its own process,
and traps into this same platform through the vCPU host:

* It connects to ``<runtime_dir>/xen/vcpus`` (AF_UNIX SOCK_SEQPACKET) and asks
  for a domain: msgpack ``{"op": "create", "domid", "nr_pages", "vcpus"}``.
  The platform builds the domain as for any other guest (``Platform.
  create_domain``: memory, then the placement's domain_init, which under
  stubdom asks the daemon for the domain's ring), and answers
  ``{"ok": true, "domid", "vcpus", "machine", "placement"}`` with one
  socket per vCPU attached (SCM_RIGHTS).  ``{"ok": false, "error"}`` refuses.
* Each vCPU socket carries the vCPU's SMCs: 64 bytes (x0..x7, uint64_t host
  order) in, 64 bytes out.  A thread of the platform per vCPU takes each one
  through ``Platform.trap`` — the same trap path (vsmc routing, then the
  placement: the mediator in this process under el2, the teeif ring to
  stubdom-teed under stubdom) as the platform's own vCPU threads.
* The guest's memory is the domain's pages in the machine's RAM file; the
  guest maps the machine (``Machine.attach``) and reaches it by IPA through
  its ``Domain``, as the platform's guests do.
* ``{"op": "destroy"}`` on the first connection, or its end-of-file (the
  guest's process died), destroys the domain: its vCPU threads are stopped
  and joined, then ``Platform.destroy_domain`` releases every pin, sends
  VM_DESTROYED and frees the memory.

Only a process of this user (or root) is served: the socket is 0600 and
each connection's peer is checked (SO_PEERCRED) before anything is read.
Domains the configuration declares are the platform's own and cannot be
asked for.  Creation and destruction are serialised; the platform's main
thread creates its own domains before the host starts and destroys the rest
after it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from stubdom.rundir import SOCKET_MODE, PeerRefused, check_peer, ensure_runtime_dir, make_private_dir, sockaddr

from .errors import DomainCreationFailed, PlatformError
from .platform import DomainSpec, Platform

__all__ = ["VcpuHost", "vcpu_host_path", "MAX_REMOTE_VCPUS", "MIN_REMOTE_PAGES", "REGS"]

log = logging.getLogger("stubdom.platform.vcpuhost")

REGS = struct.Struct("=8Q")  # x0..x7 of one SMC, either direction
MAX_REMOTE_VCPUS = 8  # a guest-dev kernel needs a few; each is a platform thread
MIN_REMOTE_PAGES = 64  # room for the driver's argument pages and a few buffers
MAX_CONTROL_MESSAGE = 4096
_BACKLOG = 8


def vcpu_host_path(runtime_dir: str | os.PathLike[str]) -> Path:
    """``<runtime_dir>/xen/vcpus``: where guests in other processes attach."""
    return Path(runtime_dir) / "xen" / "vcpus"


@dataclass(eq=False)
class _Remote:
    """One remote guest: its control connection, vCPU sockets and threads."""

    domid: int
    control: socket.socket
    vcpus: list[socket.socket] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    per_vcpu: list[int] = field(default_factory=list)  # traps served, one counter per vCPU thread

    @property
    def traps(self) -> int:
        return sum(self.per_vcpu)


class VcpuHost:
    """Serves ``vcpu_host_path(runtime_dir)`` for ``platform`` until
    :meth:`close`.  ``reserved``: domids the platform keeps for itself."""

    def __init__(self, platform: Platform, runtime_dir: str | os.PathLike[str], *,
                 reserved: Iterable[int] = ()) -> None:
        self.platform = platform
        self.path = vcpu_host_path(runtime_dir)
        self.reserved = frozenset(reserved)
        self._lock = threading.Lock()  # serialises create / destroy
        self._remotes: dict[int, _Remote] = {}
        self._closed = False
        ensure_runtime_dir(runtime_dir)
        make_private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            # never born wider than SOCKET_MODE (the umask narrows it), then exactly that
            os.fchmod(self._listener.fileno(), SOCKET_MODE)
            with sockaddr(self.path) as addr:
                self._listener.bind(addr)
                os.chmod(addr, SOCKET_MODE)
            self._listener.listen(_BACKLOG)
        except BaseException:
            self._listener.close()
            raise
        self._accepter = threading.Thread(target=self._accept_loop, name="vcpuhost-accept", daemon=True)
        self._accepter.start()

    # -- serving ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve_guest, args=(conn,), name="vcpuhost-guest", daemon=True).start()

    def _serve_guest(self, conn: socket.socket) -> None:
        remote = None
        try:
            try:
                check_peer(conn, self.path, "guest kernel")  # before reading a byte
            except PeerRefused as e:
                log.warning("vCPU host: %s", e)
                return
            msg = conn.recv(MAX_CONTROL_MESSAGE)
            if not msg:
                return
            remote = self._create(conn, msg)
            if remote is None:
                return
            # the guest's lifetime: until it asks for destruction or goes away
            while True:
                msg = conn.recv(MAX_CONTROL_MESSAGE)
                if not msg:
                    log.info("d%d: the guest process went away; destroying the domain", remote.domid)
                    break
                try:
                    op = _decode(msg).get("op")
                except ValueError:
                    op = None
                if op == "destroy":
                    break
                log.warning("d%d: unknown control message %r", remote.domid, msg[:64])
            self._destroy(remote)
            with contextlib.suppress(OSError):
                conn.send(msgpack.packb({"ok": True, "destroyed": remote.domid, "traps": remote.traps}))
        except OSError as e:
            log.warning("vCPU host connection failed: %s", e)
            if remote is not None:
                self._destroy(remote)
        finally:
            conn.close()

    def _create(self, conn: socket.socket, msg: bytes) -> _Remote | None:
        try:
            spec = self._spec(_decode(msg))
            with self._lock:
                if self._closed:
                    raise PlatformError("the platform is stopping")
                if spec.domid in self._remotes or spec.domid in self.platform.domids():
                    raise PlatformError(f"d{spec.domid} exists")
                self.platform.create_domain(spec)
                remote = _Remote(spec.domid, conn, per_vcpu=[0] * spec.vcpus)
                ours = []
                try:
                    for _ in range(spec.vcpus):
                        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                        remote.vcpus.append(mine)
                        ours.append(theirs)
                    for index, sock in enumerate(remote.vcpus):
                        t = threading.Thread(target=self._vcpu, args=(remote, index, sock),
                                             name=f"d{spec.domid}-vcpu{index}", daemon=True)
                        remote.threads.append(t)
                        t.start()
                    self._remotes[spec.domid] = remote
                    answer = {"ok": True, "domid": spec.domid, "vcpus": spec.vcpus,
                              "machine": str(self.platform.machine.path), "placement": self.platform.placement.name}
                    socket.send_fds(conn, [msgpack.packb(answer)], [s.fileno() for s in ours])
                except BaseException:
                    self._remotes.pop(spec.domid, None)
                    self._stop_vcpus(remote)
                    self.platform.destroy_domain(spec.domid)
                    raise
                finally:
                    for s in ours:
                        s.close()
        except (PlatformError, DomainCreationFailed, ValueError, OSError) as e:
            log.warning("refused a remote guest: %s", e)
            with contextlib.suppress(OSError):
                conn.send(msgpack.packb({"ok": False, "error": str(e)}))
            return None
        log.info("d%d created for a guest kernel in another process (%d vCPUs)", spec.domid, spec.vcpus)
        return remote

    def _spec(self, req: dict) -> DomainSpec:
        if req.get("op") != "create":
            raise ValueError(f"expected a create request, got {req!r:.120}")
        domid, nr_pages, vcpus = (_int_field(req, name) for name in ("domid", "nr_pages", "vcpus"))
        if domid in self.reserved:
            raise ValueError(f"d{domid} is a domain the configuration declares; the platform runs it")
        if not 1 <= domid < 0x7FF0:
            raise ValueError(f"domid {domid} outside 1 .. 0x7fef (0 is the hardware domain)")
        if not 1 <= vcpus <= MAX_REMOTE_VCPUS:
            raise ValueError(f"vcpus {vcpus} outside 1 .. {MAX_REMOTE_VCPUS}")
        if not MIN_REMOTE_PAGES <= nr_pages <= self.platform.machine.free_frames:
            raise ValueError(f"nr_pages {nr_pages} outside {MIN_REMOTE_PAGES} .. "
                             f"{self.platform.machine.free_frames} (free frames)")
        return DomainSpec(domid=domid, nr_pages=nr_pages, vcpus=vcpus)

    def _vcpu(self, remote: _Remote, index: int, sock: socket.socket) -> None:
        """One vCPU's hypervisor side: each message is a trapped SMC.  A vCPU
        that stops (a malformed trap, a failed one) is shut down, so the
        guest sees end-of-file on it rather than waiting."""
        try:
            self._run_vcpu(remote, index, sock)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _run_vcpu(self, remote: _Remote, index: int, sock: socket.socket) -> None:
        while True:
            try:
                msg = sock.recv(REGS.size + 1)
            except OSError:
                return
            if not msg:
                return  # the guest is gone or the host is stopping it
            if len(msg) != REGS.size:
                log.warning("d%d vCPU %d: a trap of %d bytes, not %d: stopping the vCPU",
                            remote.domid, index, len(msg), REGS.size)
                return
            regs = REGS.unpack(msg)
            try:
                out = self.platform.trap(remote.domid, index, regs)
            except PlatformError as e:
                log.warning("d%d vCPU %d: trap failed: %s", remote.domid, index, e)
                return
            remote.per_vcpu[index] += 1
            try:
                sock.send(REGS.pack(*out))
            except OSError:
                return

    def _stop_vcpus(self, remote: _Remote) -> None:
        for sock in remote.vcpus:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # ends a vCPU thread's recv
        for t in remote.threads:
            if t is not threading.current_thread():
                t.join()
        for sock in remote.vcpus:
            sock.close()

    def _destroy(self, remote: _Remote) -> None:
        with self._lock:
            if self._remotes.get(remote.domid) is not remote:
                return
            del self._remotes[remote.domid]
            self._stop_vcpus(remote)
            self.platform.destroy_domain(remote.domid)
        log.info("d%d destroyed (%d traps served)", remote.domid, remote.traps)

    # -- life cycle -----------------------------------------------------------------------
    @property
    def domids(self) -> list[int]:
        with self._lock:
            return sorted(self._remotes)

    def close(self) -> None:
        """Stop accepting and destroy every remote guest's domain (their
        processes see their vCPU channels close)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            remotes = list(self._remotes.values())
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._accepter.join()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for remote in remotes:
            with contextlib.suppress(OSError):
                remote.control.shutdown(socket.SHUT_RDWR)
            self._destroy(remote)

    def __enter__(self) -> VcpuHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(msg: bytes) -> dict:
    try:
        out = msgpack.unpackb(msg, raw=False)
    except (msgpack.UnpackException, ValueError) as e:
        raise ValueError(f"malformed msgpack: {e}") from None
    if not isinstance(out, dict):
        raise ValueError(f"expected a map, got {out!r:.80}")
    return out


def _int_field(req: dict, name: str) -> int:
    """Field ``name`` of a create request, which must be an int."""
    value = req.get(name)
    if type(value) is not int:
        raise ValueError(f"{name} must be an int, got {value!r:.40}")
    return value
