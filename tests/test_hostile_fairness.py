"""Fair service: one domain's heavy calls do not starve another's
(docs/daemon.md, "Fair service"; docs/security.md).

A hostile domain floods with INVOKEs naming as many 129-page temporary
memrefs as OP-TEE takes, each refused by OP-TEE in the end (no such
session) after the mediator translated and pinned all of them. An honest
domain issues fast calls one after another meanwhile. Its calls must keep
being answered *while* each heavy call is in the mediator: the heavy
call's translation is cut into steps, and between steps the honest
domain's next request goes first. Counted, not timed: how many honest
answers land inside each heavy call, from the two threads' own order of
events. Without the steps (or with the daemon serving a domain's whole
call at once) that is at most one or two.
"""

from __future__ import annotations

import fcntl
import sys
import threading
import time
import types
from contextlib import contextmanager

import pytest

from stubdom.hostile import PLACEMENTS, HostileGuest, destroy_all_and_check, make_platform
from stubdom.mediator import DomainLimits
from stubdom.optee import (
    OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_RETURN_OK,
    TEE_NUM_PARAMS,
    TEEC_ERROR_BAD_PARAMETERS,
    TEEC_ORIGIN_TEE,
    MsgArg,
    MsgParam,
)
from stubdom.platform import DomainSpec
from stubdom.xen import PAGE_SIZE
from stubdom.xen import lock as machine_lock

HEAVY_CALLS = 12
PAGES = 129  # the default max_pages_per_buffer
# Honest answers inside the median heavy call: a heavy call is ~30 steps
# here, and the honest domain gets one call per step or more; a daemon that
# serves a whole call at once lets one or two through, and at EL2 a vCPU
# thread that keeps the interpreter through its trap none (the honest one
# then runs only when CPython forces a switch, every 5 ms).
AT_LEAST = 4


@contextmanager
def no_forced_switching(placement: str, monkeypatch):
    """At EL2 both vCPUs are threads of this process: with CPython's forced
    switch (every 5 ms) out of the way, the honest one can run inside a
    heavy trap only where the mediator lets it — its step boundaries. (Under
    stubdom the mediator is in the daemon; the platform keeps its switching.)
    The machine lock's flock releases the interpreter too, on every pin;
    with one process on the machine it excludes no one, so here it is a
    no-op, and the step boundaries' own release is what the test sees."""
    old = sys.getswitchinterval()
    if placement == "el2":
        # longer than any heavy call could take on a loaded machine, so that
        # no forced switch can stand in for the step boundaries' release
        sys.setswitchinterval(60.0)
        monkeypatch.setattr(machine_lock, "fcntl", types.SimpleNamespace(
            flock=lambda fd, op: None, LOCK_EX=fcntl.LOCK_EX, LOCK_UN=fcntl.LOCK_UN))
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_an_honest_domain_is_served_inside_each_heavy_call(tmp_path, placement, monkeypatch):
    with make_platform(tmp_path, placement, limits=DomainLimits()) as p, no_forced_switching(placement, monkeypatch):
        p.create_domain(DomainSpec(1, nr_pages=4096))
        p.create_domain(DomainSpec(2, nr_pages=256))
        evil, honest = HostileGuest(p, 1), HostileGuest(p, 2)
        evil.negotiate()
        honest.negotiate()
        lists = [evil.page_list(evil.pages(PAGES)) for _ in range(TEE_NUM_PARAMS)]
        heavy: list[tuple[int, int]] = []
        answers: list[int] = []
        done = threading.Event()
        errors: list[BaseException] = []

        def flood() -> None:
            try:
                for _ in range(HEAVY_CALLS):
                    params = tuple(MsgParam.tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG, lst,
                                                 PAGES * PAGE_SIZE, evil.cookie()) for lst in lists)
                    t0 = time.monotonic_ns()
                    r, out, _ = evil.call(MsgArg(OPTEE_MSG_CMD_INVOKE_COMMAND, func=0, session=0x77,
                                                 params=params))
                    heavy.append((t0, time.monotonic_ns()))
                    # translated in full, then refused by OP-TEE (no such session)
                    assert r[0] == OPTEE_SMC_RETURN_OK
                    assert (out.ret, out.ret_origin) == (TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_TEE), out
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()

        revision = honest.smc(OPTEE_SMC_CALL_GET_OS_REVISION)

        def calls() -> None:
            try:
                while not done.is_set():
                    assert honest.smc(OPTEE_SMC_CALL_GET_OS_REVISION) == revision
                    answers.append(time.monotonic_ns())
                    time.sleep(0)  # back in its guest between traps: the other vCPU may run
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=calls), threading.Thread(target=flood)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        inside = sorted(sum(1 for a in answers if t0 < a < t1) for t0, t1 in heavy)
        assert inside[len(inside) // 2] >= AT_LEAST, inside  # the median heavy call
        if placement == "el2":
            # a trap that kept the interpreter from its first step to its
            # last shows as a heavy call with no honest answer inside
            assert inside[0] >= 1, inside
        if p.daemon is not None:
            stats = p.placement.toolstack.request("stats")
            assert stats["domains"]["1"]["yields"] >= HEAVY_CALLS * (TEE_NUM_PARAMS * PAGES // 16 - 1), stats
            assert stats["domains"]["2"]["yields"] == 0
        destroy_all_and_check(p)
