"""RingPoller: one spin over every idle domain ring of the daemon. Owners of
rings that get requests are woken, nobody re-arms an event index while work
keeps coming (so frontends need not notify), the window's end final-checks
every parked ring, and cancelled owners or spinners hand over cleanly."""

import trio

import ring
from stubdom.daemon.backend import RingPoller


def req(i):
    return ring.Request(i, 0, 0, (i,) * 8)


def rings(tmp_path, n):
    backs = [ring.BackRing.create(tmp_path / f"r{i}") for i in range(n)]
    fronts = [ring.FrontRing.attach(tmp_path / f"r{i}") for i in range(n)]
    return fronts, backs


async def owner(poller, back, log, i):
    """A backend's loop, minus the channel: records what it was told."""
    while True:
        got = back.pop_batch()
        if got:
            log.append((i, [r.id for r in got]))
            back.push_batch([ring.Response(r.id, 0, 0, r.a) for r in got])
            await trio.lowlevel.checkpoint()
            continue
        if await poller.wait_for_requests(back):
            continue
        log.append((i, "sleep"))
        return


async def wait_for(pred):
    while not pred():
        await trio.sleep(0)


async def test_requests_on_any_ring_wake_their_owner_without_notifications(tmp_path):
    fronts, backs = rings(tmp_path, 4)
    poller = RingPoller(10 * 10**9)  # a window that never ends during the test
    log = []
    async with trio.open_nursery() as n:
        for i, b in enumerate(backs):
            n.start_soon(owner, poller, b, log, i)
        await wait_for(lambda: poller.spins > 0)
        notified = []
        for k in (2, 0, 3, 2, 1):
            notified.append(fronts[k].push(req(k)))
            await wait_for(lambda: fronts[k].unconsumed())
            fronts[k].pop_batch()
        # first entry of a fresh ring (event index at start + 1): notified; later ones never
        assert notified == [True, True, True, False, True]
        assert [e for e in log if e[1] != "sleep"] == [(2, [2]), (0, [0]), (3, [3]), (2, [2]), (1, [1])]
        assert poller.windows_over == 0
        n.cancel_scope.cancel()


async def test_window_end_final_checks_every_parked_ring(tmp_path):
    fronts, backs = rings(tmp_path, 3)
    poller = RingPoller(100_000)
    log = []
    async with trio.open_nursery() as n:
        for i, b in enumerate(backs):
            n.start_soon(owner, poller, b, log, i)
    assert sorted(log) == [(0, "sleep"), (1, "sleep"), (2, "sleep")]
    assert poller.windows_over == 1
    for f, b in zip(fronts, backs):
        assert b.statistics().sleeps == 1
        assert f.push(req(0)) is True  # req_event armed: this one must be notified


async def test_zero_window_is_the_final_check_alone(tmp_path):
    fronts, backs = rings(tmp_path, 1)
    poller = RingPoller(0)
    assert await poller.wait_for_requests(backs[0]) is False
    fronts[0].push(req(1))
    assert await poller.wait_for_requests(backs[0]) is True
    assert poller.spins == 0


async def test_cancelled_spinner_hands_over_and_forgotten_rings_are_not_watched(tmp_path):
    fronts, backs = rings(tmp_path, 3)
    poller = RingPoller(10 * 10**9)
    log = []
    async with trio.open_nursery() as n:
        scopes = []
        for i, b in enumerate(backs):
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(i=i, b=b, scope=scope):
                with scope:
                    await owner(poller, b, log, i)
                poller.forget(b)

            n.start_soon(run)
        await wait_for(lambda: poller.spins > 0)
        for scope in scopes[:2]:  # whoever spins among 0 and 1 is cancelled
            scope.cancel()
        await trio.sleep(0.01)
        fronts[2].push(req(7))
        await wait_for(lambda: fronts[2].unconsumed())
        assert log == [(2, [7])]
        assert len(poller._slots) == 1
        n.cancel_scope.cancel()
    poller.forget(backs[2])
    assert len(poller._slots) == 0
