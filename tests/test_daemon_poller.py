"""RingPoller: one spin over every idle domain ring of the daemon, one sleep
for all of their channels. Owners of rings that get requests are woken,
nobody re-arms an event index while work keeps coming (so frontends need not
notify), the window's end arms every parked ring and sleeps on their
channels, a notification wakes exactly its owner, end-of-file is raised in
the owner, and cancelled owners or spinners hand over cleanly."""

import pytest
import trio

import ring
from stubdom.daemon.backend import RingPoller


def req(i):
    return ring.Request(i, 0, 0, (i,) * 8)


@pytest.fixture
def domains(tmp_path):
    """domains(n): n (front, back, frontend channel, backend channel), all
    closed at the end."""
    made = []

    def make(n):
        out = []
        for i in range(n):
            back = ring.BackRing.create(tmp_path / f"r{i}")
            front = ring.FrontRing.attach(tmp_path / f"r{i}")
            fchan, bchan = ring.EventChannel.pair()
            out.append((front, back, fchan, bchan))
        made.extend(out)
        return out

    yield make
    for objs in made:
        for o in objs:
            o.close()


async def owner(poller, back, chan, log, i):
    """A backend's loop: pop, answer, park."""
    while True:
        got = back.pop_batch()
        if got:
            log.append((i, [r.id for r in got]))
            back.push_batch([ring.Response(r.id, 0, 0, r.a) for r in got])
            await trio.lowlevel.checkpoint()
            continue
        await poller.wait_for_requests(back, chan)


async def wait_for(pred):
    while not pred():
        await trio.sleep(0)


async def answered(front):
    await wait_for(lambda: front.unconsumed())
    return front.pop_batch()


async def test_requests_on_any_ring_wake_their_owner_without_notifications(domains):
    doms = domains(4)
    poller = RingPoller(10 * 10**9)  # a window that never ends during the test
    log = []
    async with trio.open_nursery() as n:
        for i, (_, b, _, c) in enumerate(doms):
            n.start_soon(owner, poller, b, c, log, i)
        await wait_for(lambda: poller.spins > 0)
        notified = []
        for k in (2, 0, 3, 2, 1):
            notified.append(doms[k][0].push(req(k)))
            await answered(doms[k][0])
        assert log == [(2, [2]), (0, [0]), (3, [3]), (2, [2]), (1, [1])]
        # first entry of a fresh ring (event index at start + 1): notified; later ones never
        assert notified == [True, True, True, False, True]
        assert poller.windows_over == 0
        n.cancel_scope.cancel()


async def test_window_end_arms_every_ring_and_a_notification_wakes_its_owner(domains):
    doms = domains(3)
    poller = RingPoller(100_000)
    log = []
    async with trio.open_nursery() as n:
        for i, (_, b, _, c) in enumerate(doms):
            n.start_soon(owner, poller, b, c, log, i)
        await wait_for(lambda: poller.asleep and poller.parked == 3)
        for _, b, _, _ in doms:
            assert b.statistics().sleeps >= 1  # final check done, req_event armed
        front, _, fchan, _ = doms[1]
        assert front.push(req(5)) is True  # armed: this one must be notified
        fchan.notify()
        assert [r.id for r in await answered(front)] == [5]
        assert log == [(1, [5])]
        n.cancel_scope.cancel()


async def test_end_of_file_during_the_sleep_is_raised_in_its_owner(domains):
    doms = domains(2)
    poller = RingPoller(100_000)
    died = []

    async def run(i, b, c):
        try:
            await owner(poller, b, c, [], i)
        except ring.PeerDied:
            died.append(i)
            poller.forget(b)

    async with trio.open_nursery() as n:
        for i, (_, b, _, c) in enumerate(doms):
            n.start_soon(run, i, b, c)
        await wait_for(lambda: poller.asleep and poller.parked == 2)
        doms[0][2].close()  # the frontend of domain 0 dies
        await wait_for(lambda: died)
        assert died == [0]
        # the other domain is still served
        doms[1][0].push(req(9))
        doms[1][2].notify()
        assert [r.id for r in await answered(doms[1][0])] == [9]
        n.cancel_scope.cancel()


async def test_cancelled_spinner_hands_over_and_forgotten_rings_are_not_watched(domains):
    doms = domains(3)
    poller = RingPoller(10 * 10**9)
    log = []
    async with trio.open_nursery() as n:
        scopes = []
        for i, (_, b, _, c) in enumerate(doms):
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(i=i, b=b, c=c, scope=scope):
                with scope:
                    await owner(poller, b, c, log, i)
                poller.forget(b)

            n.start_soon(run)
        await wait_for(lambda: poller.spins > 0)
        for scope in scopes[:2]:  # whoever spins among 0 and 1 is cancelled
            scope.cancel()
        await trio.sleep(0.01)
        doms[2][0].push(req(7))
        assert [r.id for r in await answered(doms[2][0])] == [7]
        assert log == [(2, [7])]
        assert poller.watched == 1
        n.cancel_scope.cancel()
    poller.forget(doms[2][1])
    assert poller.watched == 0
