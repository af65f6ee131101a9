"""A minimal stubdom-teed for the placement's tests: the real control-socket
framing (msgpack), real per-domain rings and event channels, the real
mediator core reaching the TEE through the real SMC gate (GateClient). Only
what the trap path needs; the real daemon is stubdom.daemon.

Backend modes, per domain (``MiniDaemon.mode[domid]``):
  "serve"   answer every request through the mediator;
  "gather"  answer nothing until ``gather`` requests are pending, then all
            of them in one push (proves several vCPUs were in flight);
  "silent"  take requests, answer none;
  "status"  answer every request with status -EIO;
  "die"     close the event channel and the listener on the first
            request, answer nothing (the daemon process died).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import threading
from pathlib import Path

import msgpack

from ring import EVTCHN_FILE, RING_FILE, BackRing, EventChannelListener, PeerDied, Response
from stubdom.mediator import Mediator
from stubdom.optee.smc import OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED
from stubdom.public import GATE_OP_HYP, GATE_OP_SMC, GateClient, control_socket_path
from stubdom.xen import Machine


class GatePort:
    """TeePort over the SMC gate (what the daemon's GatePort does)."""

    def __init__(self, client: GateClient) -> None:
        self.client = client

    def call(self, domid, regs):
        status, out = self.client.call(GATE_OP_SMC, domid, regs)
        if status:
            raise RuntimeError(f"gate refused SMC for d{domid}: {status}")
        return out

    def hyp_call(self, regs):
        domid = regs[1] - 1 if regs[0] in (OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED) else 0
        status, out = self.client.call(GATE_OP_HYP, domid, regs)
        if status:
            raise RuntimeError(f"gate refused HYP {regs[0]:#x}: {status}")
        return out


class _Backend(threading.Thread):
    def __init__(self, daemon: MiniDaemon, domid: int) -> None:
        super().__init__(name=f"backend-d{domid}", daemon=True)
        self.d = daemon
        self.domid = domid
        self.dir = daemon.runtime / f"dom{domid}"
        self.dir.mkdir()
        self.ring = BackRing.create(self.dir / RING_FILE)
        self.listener = EventChannelListener(self.dir / EVTCHN_FILE)
        self.stop = False
        self.chan = None
        self.held: list = []

    def run(self) -> None:
        while self.chan is None:
            if self.stop:
                return
            try:
                self.chan = self.listener.accept(timeout=0.02)
            except TimeoutError:
                pass
        try:
            while not self.stop:
                reqs = self.ring.pop_batch()
                if reqs:
                    self.handle(reqs)
                    continue
                if self.ring.final_check():
                    continue
                self.chan.wait(0.02)
        except PeerDied:
            pass

    def handle(self, reqs) -> None:
        mode = self.d.mode.get(self.domid, "serve")
        if mode == "die":  # as the process dying would: both sockets go
            # the listener first: a frontend seeing the channel's EOF must not
            # find a listener left to reconnect to (a dead process has none)
            self.listener.close()
            self.chan.close()
            self.stop = True
            return
        if mode == "silent":
            self.held += reqs
            return
        self.held += reqs
        if mode == "gather" and len(self.held) < self.d.gather:
            return
        rsps = []
        for req in self.held:
            if mode == "status":
                rsps.append(Response(req.id, -errno.EIO, 0, (0,) * 8))
            else:
                rsps.append(Response(req.id, 0, 0, self.d.mediator.handle_call(self.domid, req.vcpu, req.a)))
        self.held = []
        self.d.batches.append(len(rsps))
        if self.ring.push_batch(rsps):
            self.chan.notify()

    def close(self) -> None:
        self.stop = True
        self.join()
        if self.chan is not None:
            self.chan.close()
        self.listener.close()
        self.ring.close()
        shutil.rmtree(self.dir)


class MiniDaemon:
    """Start it after the platform (the gate must exist); close it after."""

    def __init__(self, runtime: Path, *, gather: int = 1) -> None:
        self.runtime = Path(runtime)
        self.machine = Machine.attach(self.runtime / "machine")
        self.gate = GateClient(self.runtime, timeout=10.0)
        self.mediator = Mediator(self.machine, GatePort(self.gate))
        self.mode: dict[int, str] = {}
        self.gather = gather
        self.batches: list[int] = []
        self.backends: dict[int, _Backend] = {}
        self.refuse: dict[str, tuple[int, str]] = {}  # op -> (code, name) to answer with
        self.answer_override: dict[str, dict] = {}  # op -> result to answer instead
        path = control_socket_path(self.runtime)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.path = path
        self.thread = threading.Thread(target=self._serve, name="mini-control", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn, contextlib.suppress(OSError):  # the client may hang up first
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                unpacker.feed(data)
                for req in unpacker:
                    conn.sendall(msgpack.packb(self._answer(req)))

    def _answer(self, req: dict) -> dict:
        op, seq = req["op"], req["seq"]
        if op in self.refuse:
            code, name = self.refuse[op]
            return {"seq": seq, "ok": False, "error": {"code": code, "name": name, "message": "refused by test"}}
        try:
            result = getattr(self, "op_" + op)(req)
        except Exception as e:
            return {"seq": seq, "ok": False, "error": {"code": 9, "name": "INTERNAL", "message": repr(e)}}
        return {"seq": seq, "ok": True, "result": self.answer_override.get(op, result)}

    def op_hello(self, req) -> dict:
        return {"version": 1, "pid": os.getpid(), "placement": "stubdom", "runtime_dir": str(self.runtime)}

    def op_domain_create(self, req) -> dict:
        domid = req["domid"]
        self.mediator.domain_init(domid)
        backend = self.backends[domid] = _Backend(self, domid)
        backend.start()
        return {"domid": domid, "dir": str(backend.dir), "ring": str(backend.dir / RING_FILE),
                "evtchn": str(backend.dir / EVTCHN_FILE), "ring_pages": 1}

    def op_domain_destroy(self, req) -> dict:
        domid = req["domid"]
        if domid not in self.backends:
            raise KeyError(domid)
        self.backends.pop(domid).close()
        while not self.mediator.relinquish_resources(domid):
            pass
        self.mediator.domain_teardown(domid)
        return {"domid": domid}

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        for backend in self.backends.values():
            backend.close()
        self.gate.close()
        self.machine.close()
