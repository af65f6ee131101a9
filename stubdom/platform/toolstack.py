"""The toolstack: the platform's side of stubdom-teed's control protocol
(docs/control-protocol.md), the operations the placement needs, by name.

It talks through the protocol's one client
(stubdom.public.control_client.ControlClient), connected on first use so
that the platform can start before the daemon, and raises what that client
raises: ``DaemonUnavailable`` (``DaemonRefused`` for another user's
listener), ``ControlProtocolError``, and the ``ControlError`` subclass of an
error answer's code — all ``ControlSocketError`` (stubdom.public.errors).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from stubdom.public.control_client import ControlClient
from stubdom.public.errors import DaemonRefused, DaemonUnavailable

__all__ = ["Toolstack"]


class Toolstack:
    """A connection to the daemon's control socket at ``path``, opened on
    first use and re-opened after the daemon closed it. ``timeout`` bounds
    connecting and each answer, in seconds."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self._client = ControlClient(path, timeout=timeout, connect=False)
        self.path = self._client.path
        self.timeout = timeout

    # -- operations (the contract's ops) ------------------------------------------

    def hello(self) -> dict:
        return self.request("hello")

    def domain_create(self, domid: int) -> dict:
        """The daemon maps the domain, applies its policy, sends VM_CREATED
        through the gate and creates the ring and event channel: returns
        ``{"domid", "dir", "ring", "evtchn", "ring_pages"}``."""
        return self.request("domain_create", domid=domid)

    def domain_destroy(self, domid: int) -> dict:
        return self.request("domain_destroy", domid=domid)

    def list(self) -> dict:
        return self.request("list")

    def stats(self, domid: int | None = None) -> dict:
        return self.request("stats") if domid is None else self.request("stats", domid=domid)

    def request(self, op: str, **args: Any) -> dict:
        """Send one request and return its ``result`` map."""
        return self._client.call(op, **args)

    # -- transport -------------------------------------------------------------------

    def wait_ready(self, timeout: float, *, interval: float = 0.05,
                   stop: threading.Event | None = None) -> dict | None:
        """Retry ``hello`` until the daemon answers or ``timeout`` seconds
        pass (then the last DaemonUnavailable is raised). ``stop`` set
        (a signal, the platform closing) ends the wait at once: None."""
        deadline = time.monotonic() + timeout
        while True:
            if stop is not None and stop.is_set():
                return None
            try:
                return self.hello()
            except DaemonRefused:
                raise  # someone else's listener: waiting will not make it ours
            except DaemonUnavailable:
                if time.monotonic() >= deadline:
                    raise
                if stop is not None:
                    stop.wait(interval)
                else:
                    time.sleep(interval)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Toolstack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
