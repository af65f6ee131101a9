"""Event channels modelled on sockets: notify, drain-on-wake coalescing,
end-of-file as peer death (in-process and across a real process death),
the listener's socket file, trio readiness, no leaked descriptors."""

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest
import trio
import trio.testing

from ring import EventChannel, EventChannelListener, PeerDied, RingClosed, connect

HANG_GUARD = 60.0  # seconds: a stuck test, not a timing assertion


@pytest.fixture
def chan_pair():
    a, b = EventChannel.pair()
    yield a, b
    a.close()
    b.close()


def test_notify_then_drain(chan_pair):
    a, b = chan_pair
    assert b.drain() == 0
    assert a.notify() is True
    assert b.drain() == 1
    assert b.drain() == 0


def test_notifications_coalesce_on_drain(chan_pair):
    a, b = chan_pair
    for _ in range(5):
        a.notify()
    assert b.drain() == 5
    st = b.statistics()
    assert (st.received, st.wakeups) == (5, 1)


def test_a_full_channel_coalesces_without_blocking(chan_pair):
    a, b = chan_pair
    sent = 0
    while a.notify():  # never blocks: a full buffer means "already pending"
        sent += 1
        assert sent < 1_000_000
    assert a.notify() is False
    assert a.statistics().coalesced == 2 and a.statistics().sent == sent
    assert b.drain() == sent


def test_wait_returns_zero_on_timeout_and_the_count_when_notified(chan_pair):
    a, b = chan_pair
    assert b.wait(timeout=0) == 0
    a.notify()
    a.notify()
    assert b.wait(timeout=HANG_GUARD) == 2


def test_peer_close_is_eof_after_pending_notifications(chan_pair):
    a, b = chan_pair
    a.notify()
    a.close()
    assert b.drain() == 1  # what was sent before the end still counts
    with pytest.raises(PeerDied, match="end-of-file on the event channel"):
        b.drain()
    with pytest.raises(PeerDied):
        b.wait(timeout=HANG_GUARD)
    with pytest.raises(PeerDied):
        b.notify()


def test_close_is_idempotent_and_final(chan_pair):
    a, _ = chan_pair
    a.close()
    a.close()
    assert a.closed
    for call in (a.notify, a.drain, a.fileno):
        with pytest.raises(RingClosed, match="event channel is closed"):
            call()


def test_listen_connect_accept(tmp_path):
    path = tmp_path / "dom3" / "evtchn"
    path.parent.mkdir()
    with EventChannelListener(path) as listener:
        front = connect(path)
        with front, listener.accept(timeout=HANG_GUARD) as back:
            front.notify()
            assert back.wait(timeout=HANG_GUARD) == 1
            back.notify()
            assert front.wait(timeout=HANG_GUARD) == 1
        assert path.exists()
    assert not path.exists()  # the listener removes its socket file


def test_accept_times_out(tmp_path):
    with EventChannelListener(tmp_path / "evtchn") as listener:
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.01)


def test_paths_longer_than_sun_path_work(tmp_path):
    d = tmp_path / ("x" * 60) / ("y" * 60)
    d.mkdir(parents=True)
    path = d / "evtchn"
    assert len(os.fsencode(path)) > 108
    with EventChannelListener(path) as listener, connect(path) as front, \
            listener.accept(timeout=HANG_GUARD) as back:
        front.notify()
        assert back.wait(timeout=HANG_GUARD) == 1
    assert not path.exists()


def test_existing_socket_file_is_replaced_only_when_asked(tmp_path):
    path = tmp_path / "evtchn"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
        dead.bind(str(path))  # a daemon that died without removing its socket
    with pytest.raises(OSError) as e:
        EventChannelListener(path)
    assert e.value.errno == errno.EADDRINUSE
    with EventChannelListener(path, replace=True) as new, connect(path), \
            new.accept(timeout=HANG_GUARD):
        pass


def test_connect_to_nobody(tmp_path):
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "evtchn")


async def test_trio_waits_on_the_descriptor(chan_pair):
    a, b = chan_pair
    woken = []

    async def sleeper():
        await b.wait_readable()
        woken.append(b.drain())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        a.notify()
    assert woken == [1]


async def test_trio_listener_readiness(tmp_path):
    with EventChannelListener(tmp_path / "evtchn") as listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: connect(tmp_path / "evtchn").close())
            await listener.wait_readable()
        with listener.accept(timeout=HANG_GUARD) as ch:
            with pytest.raises(PeerDied):
                ch.wait(timeout=HANG_GUARD)


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-P", "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, text=True)


FRONTEND_PROCESS = """
import sys, time
from ring import connect
ch = connect(sys.argv[1])
ch.notify()
print("up", flush=True)
time.sleep(3600)
"""

BACKEND_PROCESS = """
import sys, time
from ring import EventChannelListener
lst = EventChannelListener(sys.argv[1])
print("up", flush=True)
ch = lst.accept()
time.sleep(3600)
"""


def test_frontend_process_death_is_eof_for_the_backend(tmp_path):
    with EventChannelListener(tmp_path / "evtchn") as listener:
        proc = _spawn(FRONTEND_PROCESS, tmp_path / "evtchn")
        try:
            with listener.accept(timeout=HANG_GUARD) as back:
                assert proc.stdout.readline() == "up\n"
                assert back.wait(timeout=HANG_GUARD) == 1
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                with pytest.raises(PeerDied):
                    back.wait(timeout=HANG_GUARD)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def test_backend_process_death_is_eof_for_the_frontend(tmp_path):
    proc = _spawn(BACKEND_PROCESS, tmp_path / "evtchn")
    try:
        assert proc.stdout.readline() == "up\n"
        with connect(tmp_path / "evtchn") as front:
            front.notify()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            with pytest.raises(PeerDied):
                front.wait(timeout=HANG_GUARD)
            with pytest.raises(PeerDied):
                front.notify()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_no_descriptor_leaks(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        path = tmp_path / f"e{i}"
        with EventChannelListener(path) as listener:
            front = connect(path)
            back = listener.accept(timeout=HANG_GUARD)
            front.notify()
            back.drain()
            front.close()
            back.close()
            back.close()
        a, b = EventChannel.pair()
        a.close()
        b.close()
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "nobody")
    assert len(os.listdir("/proc/self/fd")) == before
