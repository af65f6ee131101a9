"""Another vCPU of the attacker rewriting memory while the mediator works."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stubdom.xen import Domain

__all__ = ["Scribbler"]


class Scribbler:
    """A thread that keeps rewriting guest memory, alternating between
    ``versions`` of what is at ``ipa``, until stopped: the guest's second
    vCPU racing the mediator's reads.  Use as a context manager.  ``writes``
    counts completed rewrites, so a test can check the race really ran."""

    def __init__(self, dom: Domain, ipa: int, versions: Sequence[bytes]) -> None:
        if len(versions) < 2:
            raise ValueError(f"a race needs at least two versions, got {len(versions)}")
        self._dom = dom
        self._ipa = ipa
        self._versions = list(versions)
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scribbler@{ipa:#x}", daemon=True)
        self.writes = 0
        self.error: BaseException | None = None  # why it stopped early (e.g. the page went away)

    def _run(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                self._dom.write(self._ipa, self._versions[i % len(self._versions)])
                self.writes += 1
                i += 1
                if i == 2:
                    self._running.set()
        except BaseException as e:  # the guest's page changed under it: stop racing
            self.error = e
        finally:
            self._running.set()

    def __enter__(self) -> Scribbler:
        self._thread.start()
        self._running.wait()  # the race is on before the caller's first SMC
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
