"""What the mediator asks of whoever hosts it, call by call (a Protocol, as
Xen's mediator framework has its ops table): policy on an OPEN_SESSION,
decided on the mediator's own validated copy, and a last word before a
standard call reaches OP-TEE (the stub-domain daemon journals it there).

A placement passes its hooks with each call (``Mediator.call_steps(...,
hooks=...)``), so what they decide with — the policy view the call arrived
under, whether its journal record could be written — belongs to that call
alone; or once, to the constructor, for every call (EL2)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from .context import StdCall

__all__ = ["CallHooks", "OpenSessionFilter", "BeforeStdCall", "FunctionHooks", "NO_HOOKS"]

# open_session_filter(domid, ta_uuid, login) -> None (allow) or (ret, ret_origin)
OpenSessionFilter = Callable[[int, uuid.UUID, int], "tuple[int, int] | None"]
# before_std_call(domid, call) -> bool (False refuses: ENOTAVAIL, nothing reaches the TEE)
BeforeStdCall = Callable[[int, StdCall], bool]


class CallHooks(Protocol):
    # True: OPEN_SESSIONs are judged by open_session, and one whose meta
    # params do not parse is refused by the mediator (with a policy in
    # place no malformed request may slip past it); False: passed to OP-TEE.
    filters_open_session: bool

    def open_session(self, domid: int, ta_uuid: uuid.UUID, login: int) -> tuple[int, int] | None:
        """None lets an OPEN_SESSION through; (ret, ret_origin) refuses it
        without reaching the TEE (ret a TEEC error, never 0). Called with no
        mediator lock held, on the mediator's own copy of the meta params."""
        ...

    def before_std_call(self, domid: int, call: StdCall) -> bool:
        """The call is validated, translated and in its shadow page, about to
        reach the TEE; False refuses it (ENOTAVAIL, nothing reaches the TEE)."""
        ...


class FunctionHooks:
    """CallHooks from two optional functions (None: allow everything)."""

    def __init__(self, open_session: OpenSessionFilter | None = None,
                 before_std_call: BeforeStdCall | None = None) -> None:
        self._open_session = open_session
        self._before = before_std_call
        self.filters_open_session = open_session is not None

    def open_session(self, domid: int, ta_uuid: uuid.UUID, login: int) -> tuple[int, int] | None:
        return None if self._open_session is None else self._open_session(domid, ta_uuid, login)

    def before_std_call(self, domid: int, call: StdCall) -> bool:
        return True if self._before is None else self._before(domid, call)


NO_HOOKS = FunctionHooks()
