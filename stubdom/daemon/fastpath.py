"""The calls the daemon answers in C (docs/daemon.md, "Answered in C").

OP-TEE's identity queries (CALLS_COUNT, CALLS_UID, CALLS_REVISION,
GET_OS_UUID, GET_OS_REVISION) need no judgment of the stub domain once
policy allows them: the mediator answers them alike for every domain,
touching no domain state (``Mediator.stateless_calls``). So they are given
to a :class:`ring.FastTable`, which answers them at the head of a domain's
ring in C, the SMC going through the gate as a GATE_OP_SMC hypercall like
any other, without the event loop, the policy engine or the statistics in
Python. Everything else — standard calls, RPC returns, every call that
changes state, and any of these that policy refuses — is the interpreter's,
and a ring's requests are always answered in order.

Per domain the table's ``allow`` mask is compiled from the policy view
(the domain enabled and the call's class allowed) and from the mediator
(the domain has a context that is not dying), and recompiled whenever
either changes: domain creation, recovery, reload, drain. A call the mask
does not allow, a sampled call (tracing on), and a call the gate refused
are left at the head for the interpreter, which answers them as it always
did (a refusal by policy is counted and logged there). What C answered is
added to the domain's statistics when they are read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import ring
from stubdom.trace import TRACE_ID_BIT, TRACER, TracedCall

from .logs import event

if TYPE_CHECKING:
    from stubdom.mediator import Mediator
    from stubdom.policy import PolicyEngine
    from stubdom.public.gate_client import GateClient

    from .gateport import GatePort

__all__ = ["FastPath"]


class FastPath:
    """The daemon's :class:`ring.FastTable` over its gate client, and the
    per-domain masks. Lives in the daemon's trio thread."""

    def __init__(self, gate: GateClient, port: GatePort, mediator: Mediator, policy: PolicyEngine,
                 logger: logging.Logger) -> None:
        calls = mediator.stateless_calls()
        rules = [ring.FastRule(f, answer=a) if isinstance(a, tuple) else ring.FastRule(f, keep=a)
                 for f, a in sorted(calls.items())]
        self.rules = tuple(rules)
        self._gate = gate
        self._port = port
        self._mediator = mediator
        self._policy = policy
        self._logger = logger
        # a sampled call (stubdom.trace): answered in C too, its stage times
        # recorded there and turned into spans here (_trace)
        self.table = gate.fast_table(rules, trace_bits=TRACE_ID_BIT if TRACER.on else 0)
        self._forwarded = 0  # the table's forwarded calls already added to the port's count
        self._reported = False  # the table turned itself off, and that was logged

    @property
    def enabled(self) -> bool:
        return self.table.enabled

    def stop(self) -> None:
        """Answer nothing in C from now on (the daemon drains)."""
        self.table.enabled = False

    def ring_state(self, domid: int) -> ring.FastRing:
        """A new domain's state in the table, its mask compiled."""
        state = self.table.ring(domid)
        self.compile(domid, state)
        return state

    def compile(self, domid: int, state: ring.FastRing) -> None:
        """The calls of ``domid`` C may answer: those its policy allows now,
        while the mediator serves it."""
        mask = 0
        if self._mediator.serves(domid):
            view = self._policy.snapshot(domid)
            for i, rule in enumerate(self.rules):
                if view.class_refusal(rule.function) is None:
                    mask |= 1 << i
        state.allow = mask

    def serve_pop(self, backing: ring.BackRing, state: ring.FastRing, buf, max_entries: int) -> tuple[int, int]:
        """Answer what C may at the head of ``backing``, then pop the rest
        into ``buf``, in one call into C: (answered in C, popped)."""
        with self._gate.lend(self.table) as table:
            if table is None:
                return 0, backing.pop_raw(buf, max_entries)
            out = table.serve_pop(backing, state, buf, max_entries)
        if out[0]:
            self._after()
        return out

    def spin(self, spin_set: ring.BackSpinSet, spin_ns: int) -> tuple[list[int], list[int], bool]:
        """``spin_set.spin_serving`` with the table lent: (ready slots,
        slots answered in C, whether the table was lent: then a ready ring's
        head is one C leaves to its owner)."""
        with self._gate.lend(self.table) as table:
            ready, served = spin_set.spin_serving(spin_ns, table)
        if served:
            self._after()
        return ready, served, table is not None and table.enabled

    def _after(self) -> None:
        """Count what the table forwarded as the port's SMCs; say once if it
        turned itself off (its gate ring failed or timed out: the
        interpreter's own hypercalls meet that failure and handle it)."""
        if TRACER.on:
            for t in self.table.take_traces():
                _trace(t)
        st = self.table.statistics()
        self._port.smc_calls += st.forwarded - self._forwarded
        self._forwarded = st.forwarded
        if not self._reported and not self.table.enabled and st.failures:
            self._reported = True
            event(self._logger, logging.WARNING, "fast_path_off", error=st.last_error,
                  detail="the gate failed under a call answered in C; every call goes through the "
                         "interpreter from now on")

    def statistics(self) -> dict:
        st = self.table.statistics()
        return {"enabled": self.table.enabled, "forwarded": st.forwarded, "failures": st.failures,
                "last_error": st.last_error}


def _trace(t: ring.FastTrace) -> None:
    """A sampled call answered in C, as the interpreter's path traces one:
    the same span names (docs/performance.md, "Tracing a call"), so that the
    table and the pictures read the same; "serve" says where it ran."""
    call = TracedCall(("teeif", t.target, t.id), args={"domid": t.target, "id": f"{t.id:#x}"})
    TRACER.span(call, "ring pop", "daemon", t.peek_start, t.peek_end, {"batch": 1, "in": "C"})
    TRACER.flow(call, "f", f"teeif/d{t.target}/{t.id:x}/req", "teeif request", t.peek_start + 1)
    TRACER.span(call, "serve", "daemon", t.peek_end, t.push_end, {"fn": f"{t.function:#x}", "in": "C"})
    if t.fwd_start:
        TRACER.span(call, "gate hypercall", "daemon", t.fwd_start, t.fwd_popped,
                    {"fn": f"{t.function:#x}", "in": "C"})
        TRACER.span(call, "gate push", "daemon", t.fwd_start, t.fwd_pushed, {"gate_id": f"{t.fwd_id:#x}"})
        TRACER.flow(call, "s", f"gate/{t.fwd_id:x}/req", "gate request", t.fwd_pushed - 1)
        TRACER.span(call, "gate wait", "daemon", t.fwd_pushed, t.fwd_popped)
        TRACER.flow(call, "f", f"gate/{t.fwd_id:x}/rsp", "gate response", t.fwd_popped - 1)
    TRACER.span(call, "reply push", "daemon", t.push_start, t.push_end, {"batch": 1})
    TRACER.flow(call, "s", f"teeif/d{t.target}/{t.id:x}/rsp", "teeif response", t.push_end - 1)
