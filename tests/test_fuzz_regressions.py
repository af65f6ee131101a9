"""What the fuzz harnesses found, kept as tests against the real code
(docs/fuzzing.md).

Found by the control_wire harness and fixed: a framing error quoting a seq or
op of ~64 KiB made an error answer over MAX_MESSAGE; encoding it raised
outside any handler and the whole daemon exited. Error messages now quote
peer values cut short and are bounded (stubdom/daemon/wire.py).

Found by the mediator_args and rpc_cmd harnesses in the long campaign (and
by the soak at the same time): each input's domain lifetime left two
descriptors open (a destroyed incarnation's p2m mapping kept for ever), so
after ~42 000 inputs create_domain failed with EMFILE. Fixed in
stubdom/xen (a mapping holds one descriptor, released with the last
reference to a destroyed incarnation)."""

from __future__ import annotations

import gc
import importlib
import os
import random
import socket
from pathlib import Path

import msgpack
import pytest

from stubdom.daemon import control_socket_path
from stubdom.hostile import make_platform
from stubdom.public.control import MAX_MESSAGE

# A request within the 64 KiB limit whose seq (or op) is a string so long
# that the BAD_REQUEST answer quoting it is over the limit.
LONG_SEQ = msgpack.packb({"op": "hello", "seq": "y" * 65500}, use_bin_type=True)
LONG_OP = msgpack.packb({"seq": 1, "op": b"y" * 65500}, use_bin_type=True)


@pytest.fixture
def platform(tmp_path):
    with make_platform(tmp_path, "stubdom") as p:
        yield p


def test_the_inputs_are_within_the_limit():
    assert len(LONG_SEQ) <= MAX_MESSAGE and len(LONG_OP) <= MAX_MESSAGE


@pytest.mark.parametrize("message", [LONG_SEQ, LONG_OP], ids=["seq", "op"])
def test_a_framing_error_quoting_a_huge_value_does_not_kill_the_daemon(platform, message):
    platform.check_daemon_alive()
    path = control_socket_path(platform.placement.runtime_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(message)
        unpacker = msgpack.Unpacker(raw=False)
        answer = None
        while answer is None:
            data = s.recv(4096)
            if not data:
                break
            unpacker.feed(data)
            answer = next(unpacker, None)
    assert answer is not None and answer["ok"] is False and answer["error"]["name"] == "BAD_REQUEST"
    assert len(msgpack.packb(answer)) <= MAX_MESSAGE
    platform.check_daemon_alive()  # the daemon and its other connections go on
    assert platform.placement.toolstack.hello()["version"] == 1


@pytest.mark.parametrize("name", ["mediator_args", "rpc_cmd"])
def test_many_inputs_do_not_exhaust_descriptors(tmp_path, monkeypatch, name):
    """Hundreds of inputs, each a domain lifetime on the harness's real el2
    platform: the process's open descriptors stay flat (before the fix they
    grew by two per input in each machine handle)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "fuzz"))
    h = importlib.import_module(name)
    rng = random.Random(name)
    seeds = h.seeds()
    with h.target(tmp_path) as one:
        for data in seeds:  # warm up: every lazily opened file is open
            one(data)
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            one(rng.choice(seeds))
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= before + 2
