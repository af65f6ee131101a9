"""Errors of the hostile-guest library (its own misuse, never the
mediator's verdicts: those are return codes the tests assert on)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HostileError", "GuestOutOfPages", "UnexpectedRpc", "HonestLoadFailed", "DaemonDied",
           "AttackOutcomeWrong"]


class HostileError(Exception):
    """Base of every error in :mod:`stubdom.hostile`."""


class GuestOutOfPages(HostileError):
    """The guest handed out every page of its RAM; create it with more."""

    def __init__(self, domid: int) -> None:
        self.domid = domid
        super().__init__(f"d{domid}: no free guest page left")


class UnexpectedRpc(HostileError):
    """The guest got registers it has no honest answer for (an RPC function
    it does not know, or an RPC CMD naming a buffer it never gave)."""

    def __init__(self, domid: int, a0: int, detail: str = "") -> None:
        self.domid = domid
        self.a0 = a0
        super().__init__(f"d{domid}: unexpected a0={a0:#x}" + (f": {detail}" if detail else ""))


class HonestLoadFailed(HostileError):
    """A call of the honest domain running beside an attack failed."""

    def __init__(self, domid: int, errors: list[BaseException]) -> None:
        self.domid = domid
        self.errors = errors
        super().__init__(f"d{domid}: {len(errors)} honest call(s) failed, first: {errors[0]!r}")


class DaemonDied(HostileError):
    """The stubdom-teed process under test exited (invariant 8: no guest
    behaviour may bring it down)."""

    def __init__(self, returncode: int, log_path) -> None:
        self.returncode = returncode
        self.log_path = log_path
        try:
            tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-10:])
        except OSError:
            tail = ""
        super().__init__(f"stubdom-teed exited with status {returncode}; last lines of {log_path}:\n{tail}")


class AttackOutcomeWrong(HostileError):
    """One iteration of a looped attack (:mod:`stubdom.hostile.attacks`) got
    an answer other than the defined outcome of its docs/security.md row:
    a mediator bug (or a broken platform), never the attacker's fault."""

    def __init__(self, attack: str, what: str, got: object) -> None:
        self.attack = attack
        self.what = what
        self.got = got
        super().__init__(f"attack {attack}: {what}: got {got!r}")
