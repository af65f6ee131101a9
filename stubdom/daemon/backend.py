"""One domain's backend: its teeif ring and event channel, served by one trio
task (docs/daemon.md, "Serving a domain").

The frontend (the platform's trap path) is hostile as far as this task is
concerned: a corrupted ring index tears down this domain's channel and
nothing else; its end-of-file means it died, and the domain stays until the
toolstack destroys it (a restarted frontend may connect again).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import trio

import ring
from stubdom.optee.smc import OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_RETURN_ENOTAVAIL

from .logs import GuestLog, event
from .stats import DomainStats

__all__ = ["DomainBackend", "BACKEND_FAILURE_STATUS"]

_U32 = 0xFFFFFFFF
_ZERO = (0,) * 8
# teeif_response.status when the backend itself failed on a request (a daemon
# bug caught at this boundary): the vCPU gets a defined error, registers 0.
BACKEND_FAILURE_STATUS = -errno.EIO


class DomainBackend:
    """The daemon's side of domain ``domid``: created by domain_create, ended
    by domain_destroy (``close()``). ``run`` is the serving task.

    ``serve_call(domid, vcpu, regs) -> (regs, refused_reason | None)`` is the
    daemon's policy + mediator step (synchronous: the stub domain's vCPU is
    inside the hypervisor for the whole gate hypercall).
    """

    def __init__(self, domid: int, directory: Path, ring_pages: int, *, hwdom: bool,
                 direct_mapped: bool, daemon, logger: logging.Logger, poll_window_ns: int) -> None:
        self.domid = domid
        self.directory = directory
        self.ring_path = directory / ring.RING_FILE
        self.evtchn_path = directory / ring.EVTCHN_FILE
        self.hwdom = hwdom
        self.direct_mapped = direct_mapped
        self._daemon = daemon
        self._logger = logger
        self._poll_ns = poll_window_ns
        self.stats = DomainStats()
        self.log = GuestLog(logger, domid)
        self.state = "created"  # created → connected → (peer-died | broken) → closed
        self.connections = 0
        directory.mkdir(mode=0o700, exist_ok=True)
        # a domain never inherits a stale ring (ring is O_EXCL): files left by
        # a daemon that died are ours to replace
        self.ring_path.unlink(missing_ok=True)
        self.ring = ring.BackRing.create(self.ring_path, ring_pages)
        try:
            self.listener = ring.EventChannelListener(self.evtchn_path, replace=True)
        except BaseException:
            self.ring.close()
            self.ring_path.unlink(missing_ok=True)
            raise
        self.ring_pages = ring_pages
        self.channel: ring.EventChannel | None = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    # -- the serving task ----------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                task_status.started()
                await self._serve_forever()
        finally:
            self._done.set()

    async def _serve_forever(self) -> None:
        nr = self.ring.size
        reqs = ring.request_buffer(nr)
        rsps = ring.response_buffer(nr)
        while True:
            await self.listener.wait_readable()
            self.channel = self.listener.accept(timeout=0)
            self.connections += 1
            self.state = "connected"
            event(self._logger, logging.INFO, "frontend_connected", domid=self.domid,
                  connection=self.connections)
            try:
                await self._serve_channel(reqs, rsps, nr)
            except ring.PeerDied:
                self.state = "peer-died"
                self.log.event(logging.WARNING, "frontend_died", connection=self.connections)
            except (ring.RingCorrupted, ring.RingError, OSError) as e:
                # RingCorrupted: a hostile frontend; anything else here is a
                # daemon bug. Either way only this domain's channel goes.
                self.state = "broken"
                name = "ring_corrupted" if isinstance(e, ring.RingCorrupted) else "backend_broken"
                self.log.event(logging.ERROR, name, detail=f"{type(e).__name__}: {e}")
                self._close_channel()
                self.listener.close()  # no reconnecting to a ring we cannot trust
                return
            finally:
                self._close_channel()

    async def _serve_channel(self, reqs, rsps, nr: int) -> None:
        chan = self.channel
        ring_ = self.ring
        while True:
            n = ring_.pop_raw(reqs, nr)
            if n:
                self.stats.in_flight += n
                for i in range(n):
                    self._serve_one(reqs[i], rsps[i])
                self.stats.in_flight -= n
                if ring_.push_raw(rsps, n):
                    chan.notify()
                # one batch per turn: other domains and the control socket run
                await trio.lowlevel.checkpoint()
                continue
            if ring_.poll(self._poll_ns):  # spins, then the final check
                continue
            await chan.wait_readable()
            chan.drain()  # PeerDied once the last notifications are drained

    def _serve_one(self, req, rsp) -> None:
        a = tuple(req.a)
        rsp.id = req.id
        rsp.flags = 0
        t0 = time.perf_counter_ns()
        try:
            regs, refused = self._daemon.serve_call(self, req.vcpu, a)
        except Exception as e:  # a daemon bug: the guest gets a defined error
            self.stats.record_failure(a[0])
            self.log.event(logging.ERROR, "backend_failure", function=f"{a[0]:#x}",
                           error=f"{type(e).__name__}: {e}")
            rsp.status = BACKEND_FAILURE_STATUS
            rsp.a = _ZERO
            return
        rsp.status = 0
        rsp.a = regs
        if refused is not None:
            self.stats.record_refusal(a[0], refused)
        else:
            self.stats.record(a[0], regs[0], time.perf_counter_ns() - t0)

    # -- teardown ------------------------------------------------------------

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    async def stop(self) -> None:
        """Stop serving (between batches: a call is never cut in half) and
        wait until the task has ended."""
        self._scope.cancel()
        await self._done.wait()

    def close(self) -> None:
        """Close the channel, the listener and the ring; remove the files."""
        self._close_channel()
        self.listener.close()
        self.ring.close()
        self.ring_path.unlink(missing_ok=True)
        try:
            os.rmdir(self.directory)
        except OSError as e:  # something else put a file there: leave it, say so
            event(self._logger, logging.WARNING, "domain_dir_not_removed", domid=self.domid,
                  dir=self.directory, error=e.strerror)
        self.state = "closed"

    def describe(self) -> dict:
        return {"domid": self.domid, "hwdom": self.hwdom, "direct_mapped": self.direct_mapped,
                "state": self.state, "dir": str(self.directory), "ring_pages": self.ring_pages,
                "connections": self.connections}


def refuse_while_draining(a0: int) -> tuple | None:
    """While the daemon drains, only RETURN_FROM_RPC (the continuation of an
    admitted call) goes on; anything else is answered ENOTAVAIL."""
    if a0 & _U32 == OPTEE_SMC_CALL_RETURN_FROM_RPC and not a0 >> 32:
        return None
    return (OPTEE_SMC_RETURN_ENOTAVAIL,) + (0,) * 7
