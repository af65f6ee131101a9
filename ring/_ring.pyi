"""Types of the compiled module ``ring._ring``: cffi's out-of-line API
module built by cffi_build/build_ring.py from cffi_build/teeif.h.

Written by hand from teeif.h; tests/test_ring_stub.py checks that it names
exactly the constants and functions the built module has. Arguments that
are C pointers or arrays are cffi cdata objects (``CData``): cffi checks
their C type at the call, so their static type says no more than that.
"""

from typing import Final, Protocol

from _cffi_backend import FFI

CData = FFI.CData

ffi: FFI

# What Python reads of the ring ends' private C state (teeif.h), as cffi
# shows a `struct ... *` cdata: its fields by name. These classes exist for
# the type checker only; at run time the objects are cdata.

class CStats(Protocol):
    """``struct teeif_stats``."""

    pushes: int
    pops: int
    batches: int
    notify_sent: int
    notify_suppressed: int
    final_checks: int
    sleeps: int
    poll_hits: int

class CRingEnd(Protocol):
    """What ``struct teeif_front_ring`` and ``struct teeif_back_ring`` share."""

    nr_ents: int
    ring_pages: int
    sring: CData
    stats: CStats
    bad_prod: int
    truncated: int
    fault_off: int

class CFrontRing(CRingEnd, Protocol):
    """``struct teeif_front_ring *``."""

    req_prod_pvt: int
    rsp_cons: int

class CBackRing(CRingEnd, Protocol):
    """``struct teeif_back_ring *``."""

    rsp_prod_pvt: int
    req_cons: int

class _Lib:
    # teeif.h: the ABI version, layout facts and return codes
    TEEIF_ABI_VERSION: Final[int]
    TEEIF_PAGE_SIZE: Final[int]
    TEEIF_RING_HDR_SIZE: Final[int]
    TEEIF_ENTRY_SIZE: Final[int]
    TEEIF_MAX_RING_PAGES: Final[int]
    TEEIF_FAULT_UNKNOWN: Final[int]
    TEEIF_EFULL: Final[int]
    TEEIF_ECORRUPT: Final[int]
    TEEIF_ENOREQ: Final[int]
    TEEIF_EPEER: Final[int]
    TEEIF_ESIZE: Final[int]
    TEEIF_EMISMATCH: Final[int]
    TEEIF_ETRUNC: Final[int]
    TEEIF_ETIMEOUT: Final[int]
    TEEIF_CALL_WAITING: Final[int]
    TEEIF_CALL_ANSWERED: Final[int]
    TEEIF_CALL_OTHER: Final[int]
    TEEIF_CALL_FAILED: Final[int]
    TEEIF_CALL_NOTIFY_FAILED: Final[int]
    TEEIF_NOTIFY_NONE: Final[int]
    TEEIF_NOTIFY_SENT: Final[int]
    TEEIF_NOTIFY_PENDING: Final[int]
    TEEIF_FAST_MAX_RULES: Final[int]
    TEEIF_FAST_LATENCIES: Final[int]
    TEEIF_FAST_TRACES: Final[int]
    # the SMC gate's hypercall path
    TEEIF_GATE_OP_SMC: Final[int]
    TEEIF_GATE_OP_HYP: Final[int]
    TEEIF_GATE_EPERM: Final[int]
    TEEIF_GATE_EINVAL: Final[int]
    TEEIF_GATE_HYP_CLIENT_ID: Final[int]
    TEEIF_GATE_DOMID_FIRST_RESERVED: Final[int]
    TEEIF_GATE_OWNER_SHIFT: Final[int]
    TEEIF_GATE_OWNER_MASK: Final[int]
    TEEIF_GATE_OWNER_FIRST: Final[int]
    TEEIF_GATE_OWNER_LAST: Final[int]
    TEEIF_GATE_MAX_CALLS: Final[int]
    TEEIF_GATE_IDLE: Final[int]
    TEEIF_GATE_ADMIT: Final[int]
    TEEIF_GATE_REFUSE: Final[int]
    TEEIF_GATE_UNASSIGNED: Final[int]
    TEEIF_GATE_WATCHED: Final[int]
    TEEIF_GATE_WATCHED_BIT: Final[int]

    # the shared ring
    def teeif_ring_entries(self, ring_pages: int, /) -> int: ...
    def teeif_ring_map(
        self, path: bytes, ring_pages: int, create: int, start: int, out_sring: CData, out_pages: CData, /
    ) -> int: ...
    def teeif_ring_unmap(self, sring: CData, ring_pages: int, /) -> int: ...
    def teeif_ring_indices(self, sring: CData, ring_pages: int, out: CData, /) -> int: ...
    def teeif_front_attach(self, f: CFrontRing, s: CData, ring_pages: int, /) -> int: ...
    def teeif_back_attach(self, b: CBackRing, s: CData, ring_pages: int, /) -> int: ...

    # the front
    def teeif_front_free_requests(self, f: CFrontRing, /) -> int: ...
    def teeif_front_push_requests(self, f: CFrontRing, reqs: CData, n: int, notify: CData, /) -> int: ...
    def teeif_front_pop_responses(self, f: CFrontRing, out: CData, max: int, /) -> int: ...
    def teeif_front_unconsumed(self, f: CFrontRing, /) -> int: ...
    def teeif_front_final_check(self, f: CFrontRing, /) -> int: ...
    def teeif_front_poll(self, f: CFrontRing, spin_ns: int, /) -> int: ...
    def teeif_front_spin(self, f: CFrontRing, spin_ns: int, /) -> int: ...
    def teeif_front_await(self, f: CFrontRing, id: int, spin_ns: int, out: CData, times: CData, /) -> int: ...
    def teeif_front_call(
        self, f: CFrontRing, req: CData, spin_ns: int, evtchn_fd: int, out: CData, notify: CData, times: CData, /
    ) -> int: ...

    # the back
    def teeif_back_pop_requests(self, b: CBackRing, out: CData, max: int, /) -> int: ...
    def teeif_back_peek_request(self, b: CBackRing, out: CData, /) -> int: ...
    def teeif_back_skip_requests(self, b: CBackRing, n: int, /) -> int: ...
    def teeif_back_push_responses(self, b: CBackRing, rsps: CData, n: int, notify: CData, /) -> int: ...
    def teeif_back_unconsumed(self, b: CBackRing, /) -> int: ...
    def teeif_back_recheck_notify(self, b: CBackRing, /) -> int: ...
    def teeif_back_final_check(self, b: CBackRing, /) -> int: ...
    def teeif_back_poll(self, b: CBackRing, spin_ns: int, /) -> int: ...
    def teeif_back_spin(self, b: CBackRing, spin_ns: int, /) -> int: ...
    def teeif_back_spin_any(self, rings: CData, n: int, spin_ns: int, ready: CData, /) -> int: ...

    # answers given in C
    def teeif_fast_forward(self, t: CData, target: int, flags: int, a: CData, out: CData, /) -> int: ...
    def teeif_fast_serve(self, t: CData, b: CBackRing, r: CData, /) -> int: ...
    def teeif_fast_serve_pop(
        self, t: CData, b: CBackRing, r: CData, out: CData, max: int, answered: CData, /
    ) -> int: ...
    def teeif_fast_spin_any(
        self, t: CData, rings: CData, fast: CData, n: int, spin_ns: int, ready: CData, served: CData,
        nserved: CData, /
    ) -> int: ...

    # the SMC gate's hypercall path
    def teeif_gate_new(self, policy: CData, /) -> CData: ...
    def teeif_gate_free(self, g: CData, /) -> None: ...
    def teeif_gate_assign(self, g: CData, domid: int, assigned: int, /) -> int: ...
    def teeif_gate_in_tee(self, g: CData, domid: int, /) -> int: ...
    def teeif_gate_judge(self, g: CData, req: CData, status: CData, /) -> int: ...
    def teeif_gate_release(self, g: CData, /) -> int: ...
    def teeif_gate_watch(self, g: CData, delta: int, /) -> int: ...
    def teeif_gate_next(
        self, g: CData, b: CBackRing, spin_ns: int, fd: int, wake_fd: int, out: CData, status: CData,
        times: CData, /
    ) -> int: ...
    def teeif_gate_answer(self, g: CData, b: CBackRing, fd: int, id: int, status: int, a: CData, /) -> int: ...
    def teeif_gate_answer_next(
        self, g: CData, b: CBackRing, fd: int, id: int, status: int, a: CData, spin_ns: int, wake_fd: int,
        out: CData, out_status: CData, times: CData, /
    ) -> int: ...
    def teeif_gate_counters(self, g: CData, out: CData, /) -> None: ...

    # the event channel
    def teeif_evtchn_notify(self, fd: int, /) -> int: ...
    def teeif_evtchn_drain(self, fd: int, /) -> int: ...
    def teeif_evtchn_wait(self, fd: int, timeout_ns: int, /) -> int: ...

    # the transport floor
    def teeif_floor_front_run(
        self, f: CFrontRing, fd: int, rounds: int, batch: int, spin_ns: int, samples_ns: CData, /
    ) -> int: ...
    def teeif_floor_back_run(self, b: CBackRing, fd: int, entries: int, spin_ns: int, /) -> int: ...

    # the machine probes
    def teeif_probe_syscall_ns(self, n: int, /) -> int: ...
    def teeif_probe_yield_ns(self, n: int, /) -> int: ...
    def teeif_probe_turn_run(self, rounds: int, samples_ns: CData, /) -> int: ...

lib: _Lib
