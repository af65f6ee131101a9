"""A frontend killed with requests in flight and restarted at once is woken
for its answers (issue 12, part 5; docs/protocol.md, "Restarts").

The frontend is tests/c/teeif_scripted_frontend.c, written only against
Xen's io/ring.h: it sleeps on the event channel after io/ring.h's final
check and bounds its own wait (exit 3: never woken). The daemon is a real
stubdom-teed process. To catch the daemon at the interleavings that lost the
wake-up, one SMC is held inside the secure world (the daemon then sits in
the SMC gate in the middle of a batch) while the test kills and restarts the
frontend; nothing is timed. Another test does the same without holding
anything, many times over, as a restart would happen; the last one meets
the dead channel in the middle of a batch answered in shares.

On the code before the fix, the two held interleavings fail every time (the
new frontend exits 3) and the repeated hot restart fails within its first
few rounds.
"""

from __future__ import annotations

import logging

import pytest
import trio

import ring
from frontends_support import OS_REVISION, DaemonStack, ScriptedFrontend, build_scripted_frontend
from stubdom.daemon.backend import DomainBackend
from stubdom.optee.smc import OPTEE_MSG_UID_0, OPTEE_SMC_CALL_GET_OS_REVISION, OPTEE_SMC_CALLS_UID

DOMID = 1
CLIENT = DOMID + 1  # OP-TEE client ID: the gate stamps domid + 1 in a7
BURST = 16  # two frontends' bursts fit in the 32-slot ring together
# The predecessor and the newcomer call different functions (both forwarded
# to OP-TEE), so that a hold catches exactly one of them.
OLD = f"{BURST} {OPTEE_SMC_CALLS_UID:#x} {OPTEE_MSG_UID_0:#x}"
NEW = f"{BURST} {OPTEE_SMC_CALL_GET_OS_REVISION:#x} {OS_REVISION[0]:#x}"
HOT_RESTARTS = 150


@pytest.fixture
def stack(tmp_path):
    s = DaemonStack(tmp_path)
    try:
        yield s
    finally:
        status = s.close()
    assert status == 0, s.log()


@pytest.fixture
def exe(tmp_path):
    return build_scripted_frontend(tmp_path)


def start(exe, domdir, tag: int, *, connect: bool = True) -> ScriptedFrontend:
    f = ScriptedFrontend(exe, domdir, tag)
    f.do("attach", "attached")
    if connect:
        f.do("connect", "connected")
    return f


def finish(stack, f: ScriptedFrontend) -> None:
    """One more round trip on the new channel, then a clean exit and a
    clean domain teardown; the daemon served the domain throughout."""
    f.do(f"burst {NEW}", "pushed")
    f.do("collect", "answered")
    assert f.finish() == 0
    assert stack.alive(), stack.log()
    stack.destroy_c_domain(DOMID)


def test_new_frontend_served_in_the_old_channels_batch_is_woken(stack, exe):
    """The issue's reproduction: the daemon takes the newcomer's requests in
    the batch loop of the dead frontend's channel, sends their notification
    to the dead socket, then accepts the newcomer, which sleeps on them."""
    domdir = stack.create_c_domain(DOMID)
    a = start(exe, domdir, 1)
    a.do(f"burst {OLD}", "pushed 1")
    a.do("collect", "answered 1")
    held_a = stack.tee.hold(CLIENT, OPTEE_SMC_CALLS_UID)
    a.do(f"burst {OLD}", "pushed 2")  # A does not look for the answers: rsp_event stays behind
    held_a.wait_entered()  # the daemon serves A's burst on A's channel
    a.kill()
    b = start(exe, domdir, 2)
    b.do(f"burst {NEW}", "pushed 1")
    held_b = stack.tee.hold(CLIENT, OPTEE_SMC_CALL_GET_OS_REVISION)
    held_a.release()  # A's answers go out without a notification (A asked for none) ...
    held_b.wait_entered()  # ... and B's requests are taken in the same loop, on A's channel
    b.send("collect")
    b.expect("sleeping")  # B consumed A's answers, armed rsp_event, and sleeps
    held_b.release()  # B's answers: notified to A's dead socket; then B is accepted
    assert b.expect("answered 1") == f"answered 1 dropped {BURST}"
    log = stack.log()
    assert "event=frontend_died domid=1 connection=1" in log, log
    assert "event=frontend_connected domid=1 connection=2" in log, log
    finish(stack, b)


def test_answers_to_a_dead_frontend_wake_the_one_that_replaced_it(stack, exe):
    """The newcomer sleeps before the daemon answers its predecessor's
    requests: that notification goes to the dead socket; the newcomer's own
    answers cross no event index, so nothing else would ever wake it."""
    domdir = stack.create_c_domain(DOMID)
    a = start(exe, domdir, 1)
    a.do(f"burst {OLD}", "pushed 1")
    a.do("collect", "answered 1")
    held = stack.tee.hold(CLIENT, OPTEE_SMC_CALLS_UID)
    a.do(f"burst {OLD}", "pushed 2")
    a.do("collect", "sleeping")
    held.wait_entered()
    a.kill()  # with its burst in flight, asleep on it
    b = start(exe, domdir, 2)
    b.do(f"burst {NEW}", "pushed 1")
    b.do("collect", "sleeping")  # rsp_event armed for the first of A's answers
    held.release()
    assert b.expect("answered 1") == f"answered 1 dropped {BURST}"
    finish(stack, b)


def test_requests_pushed_before_connecting_are_served_once_accepted(stack, exe):
    """A frontend may push before it connects (it cannot notify yet): the
    daemon, which saw its predecessor's end-of-file and waits for a new
    connection, looks at the ring as soon as it accepts one."""
    domdir = stack.create_c_domain(DOMID)
    a = start(exe, domdir, 1)
    a.do(f"burst {OLD}", "pushed 1")
    a.do("collect", "answered 1")
    a.kill()
    stack.wait_state(DOMID, "peer-died")  # the daemon handled A's end-of-file
    b = start(exe, domdir, 2, connect=False)
    b.do(f"burst {NEW}", "pushed 1")
    b.do("connect", "connected")
    assert b.do("collect", "answered 1") == "answered 1 dropped 0"
    finish(stack, b)


def test_hot_restarts_mid_burst_never_lose_a_wake_up(stack, exe):
    """Kill the frontend as soon as it has pushed a burst and start the next
    one at once (already running, waiting for its cue), many times: every
    newcomer gets its first burst answered. Each round starts a fresh
    process, so the interleavings vary as a real restart's would."""
    domdir = stack.create_c_domain(DOMID)
    running = start(exe, domdir, 1)
    running.send(f"auto {OLD}")
    running.expect("answered 1")
    standby = ScriptedFrontend(exe, domdir, 2)
    for tag in range(2, HOT_RESTARTS + 2):
        running.expect("pushed")  # a burst in flight
        running.kill()
        standby.send("attach")  # the restart: no exec, no delay
        standby.send("connect")
        standby.send(f"auto {NEW if tag % 2 else OLD}")
        standby.expect("answered 1")  # exits 3 instead if never woken
        running, standby = standby, ScriptedFrontend(exe, domdir, tag + 1)
    running.kill()
    standby.kill()
    (listed,) = stack.toolstack.list()["domains"]
    assert listed["connections"] == HOT_RESTARTS + 1, listed
    assert stack.alive(), stack.log()
    stack.destroy_c_domain(DOMID)


# -- a dead channel met in the middle of a batch ----------------------------------------------------

class _Answering:
    """What DomainBackend asks of the daemon to serve a batch: each request
    answered (a0 + 1), and the fair-share bookkeeping (nothing to keep).
    Each call also makes another task ready to run, as another domain's
    request would: the backend then pushes the batch's answers in shares."""

    class fair:
        @staticmethod
        def answered(domid: int) -> None:
            pass

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None

    async def serve_call(self, backend, vcpu: int, regs: tuple):
        self.nursery.start_soon(trio.lowlevel.checkpoint)  # runnable until the backend yields
        return (regs[0] + 1,) + (0,) * 7, None


async def test_a_dead_channel_met_mid_batch_costs_no_answer(tmp_path):
    """The daemon pushes a batch's answers in shares, each with its notify
    decision, when other domains are ready to run; the first notification
    finds the frontend dead. The rest of the batch, already taken off the
    ring, is answered all the same (some could be a restarted frontend's),
    and the next frontend is served on a ring with nothing owed. The real
    DomainBackend on its real ring and listener."""
    daemon = _Answering()
    backend = DomainBackend(1, tmp_path / "dom1", 1, hwdom=False, direct_mapped=False, daemon=daemon,
                            logger=logging.getLogger("t.reconnect.batch"), poll_window_ns=0)
    try:
        # a frontend pushes 8 requests, sleeps on them and dies before it is accepted
        with ring.FrontRing.attach(backend.ring_path) as front:
            chan = await trio.to_thread.run_sync(ring.EventChannel.connect, backend.evtchn_path)
            front.push_batch([ring.Request(i, 0, 0, (i,) + (0,) * 7) for i in range(8)])
            assert front.final_check() is False  # rsp_event armed: the first answer notifies
            chan.close()
        async with trio.open_nursery() as nursery:
            daemon.nursery = nursery
            await nursery.start(backend.run)
            while backend.state != "peer-died":
                await trio.sleep(0)
            assert backend.ring.owed == 0  # every request taken was answered ...
            assert backend.ring.statistics().batches == 1 + 8  # ... in shares: one pop, eight pushes
            idx = backend.ring.shared_indices()
            assert idx.req_prod == idx.rsp_prod == 8
            with ring.FrontRing.attach(backend.ring_path) as front:
                chan = await trio.to_thread.run_sync(ring.EventChannel.connect, backend.evtchn_path)
                if front.push(ring.Request(99, 0, 0, (41,) + (0,) * 7)):
                    chan.notify()
                while not front.unconsumed():
                    await trio.sleep(0)
                assert front.pop() == ring.Response(99, 0, 0, (42,) + (0,) * 7)
                chan.close()
            nursery.cancel_scope.cancel()
    finally:
        backend.close()
