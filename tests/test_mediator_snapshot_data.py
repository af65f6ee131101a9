"""A domain's snapshot (stubdom/mediator/snapshot.py), taken the way the
daemon journals it — at rest, and with a call suspended in each RPC of a
Linux-like guest's storage, digest and session traffic: its counters are
what ``_count`` computes from the data it holds, its packed OP-TEE messages
are the calls' own, and a mediator restored from it snapshots the same
data again. ``context_to_data`` counts on the way and remembers packed
messages (it runs once per state-changing call in the daemon): these
check it against the definitions."""

from __future__ import annotations

import copy
import hashlib

import msgpack
import pytest

from daemon_support import write_config
from stubdom import workloads
from stubdom.config import load_config
from stubdom.guest import Context, MemoryStore, OpteeDriver, Supplicant
from stubdom.mediator import Mediator
from stubdom.mediator import snapshot as snapshot_mod
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec


def _check(platform: Platform, med: Mediator, snap) -> None:
    counted = copy.deepcopy(snap)
    snapshot_mod._count(counted)
    assert counted == snap  # the counters are those of the data
    ctx = med.context(snap["domid"])
    with ctx.lock:
        for tid, data in snap["suspended"]:
            call = ctx.suspended[tid]
            assert data["request"] == call.request.pack()
            assert data["rpc_request"] == (None if call.rpc_request is None else call.rpc_request.pack())
    # restored into a mediator of its own (no SMC, no pin), it says the same
    other = Mediator(platform.machine, platform.placement.port, profile=med.profile)
    other.restore(copy.deepcopy(snap))
    assert other.snapshot(snap["domid"]) == snap
    assert msgpack.packb(other.snapshot(snap["domid"])) == msgpack.packb(snap)


@pytest.mark.parametrize("profile", ["xen", "strict"])
def test_snapshots_count_what_they_hold_and_restore_to_themselves(tmp_path, profile):
    path = write_config(tmp_path, domains="domains:\n  - domid: 1\n    nr_pages: 1024\n    vcpus: 2\n")
    text = path.read_text().replace("placement: stubdom", f"placement: el2\n  profile: {profile}")
    path.write_text(text)
    config = load_config(path)
    platform = Platform.for_config(config)
    try:
        med = platform.placement.mediator
        dc = config.domain(1)
        domain = platform.create_domain(domain_spec(dc))
        taken = []

        class Snapping(Supplicant):
            def process(self, cmd, params):  # a call of the guest's is suspended in this RPC
                snap = med.snapshot(1)
                assert snap["suspended"]
                _check(platform, med, snap)
                taken.append(snap)
                return super().process(cmd, params)

        driver = OpteeDriver(platform.trap_entry(1), domain, nr_vcpus=dc.vcpus, seed=1,
                             supplicant=Snapping(MemoryStore()))
        driver.probe()
        _check(platform, med, med.snapshot(1))
        with Context(driver, vcpu=0) as ctx:
            workloads.increment(ctx, 3)
            _check(platform, med, med.snapshot(1))
            data = workloads.random_bytes(5 * 4096 + 77, 2)
            assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
            workloads.storage_round_trip(ctx, b"obj", workloads.random_bytes(6000, 1))
            _check(platform, med, med.snapshot(1))
        assert len(taken) > 10
        assert any(s["rpc_buffers"] or any(c["rpc_request"] for _t, c in s["suspended"]) for s in taken)
        driver.shutdown()
        platform.destroy_domain(1)
    finally:
        platform.close()


def test_a_packed_message_is_remembered_for_that_very_message_only():
    from stubdom.optee.msg import MsgArg

    a, b = MsgArg(cmd=0, session=1), MsgArg(cmd=0, session=2)
    assert snapshot_mod._arg(a) == a.pack()
    assert snapshot_mod._arg(a) is snapshot_mod._arg(a)  # remembered
    # another message at an address a freed one had: never the freed one's bytes
    snapshot_mod._PACKED[id(b)] = (a, a.pack())
    assert snapshot_mod._arg(b) == b.pack() != a.pack()
    assert snapshot_mod._arg(None) is None
