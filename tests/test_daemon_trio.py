"""The daemon driven from trio: a real stubdom-teed process started with
trio's process API, its control socket spoken with trio streams, the guests'
vCPUs run as worker threads under one nursery, SIGTERM and the exit awaited
with deadlines. The platform (machine, TEE, SMC gate) lives in this process.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from functools import partial

import msgpack
import pytest
import trio

from daemon_support import write_config
from stubdom import workloads
from stubdom.config import load_config
from stubdom.daemon import control_socket_path
from stubdom.guest import Context, MemoryStore, OpteeDriver, Supplicant, TeecError
from stubdom.optee.teec import TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_COMMS
from stubdom.platform import Platform
from stubdom.platform.platform import domain_spec

DEADLINE = 60  # seconds: a loaded CI box; never a latency assertion


async def control(path, op: str, **args) -> dict:
    """One request on a fresh trio connection to the control socket."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(msgpack.packb({"op": op, "seq": 1, **args}))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = await stream.receive_some(65536)
            assert data, f"daemon closed the connection during {op}"
            unpacker.feed(data)
            for answer in unpacker:
                assert answer["seq"] == 1
                return answer


async def wait_listening(proc: trio.Process) -> str:
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some(4096)
        assert chunk, "the daemon exited before it listened"
        buf += chunk
    return buf.decode()


def workload(driver: OpteeDriver, vcpu: int, seed: int, *, digest_allowed: bool) -> None:
    with Context(driver, vcpu=vcpu) as ctx:
        workloads.increment(ctx, seed)
        data = workloads.random_bytes(3 * 4096 + 77, seed)
        if digest_allowed:
            assert workloads.digest_temp(ctx, data) == hashlib.sha256(data).digest()
        else:  # the policy's ta_deny, decided in the daemon's mediator
            with pytest.raises(TeecError) as e:
                workloads.digest_temp(ctx, data)
            assert (e.value.ret, e.value.origin) == (TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_COMMS)
        workloads.storage_round_trip(ctx, b"o%d" % seed, workloads.random_bytes(6000, seed))
        workloads.wait_preempted(ctx)


async def test_three_domains_through_a_daemon_driven_from_trio(tmp_path):
    path = write_config(tmp_path)
    config = load_config(path)
    platform = Platform.for_config(config)
    sock = control_socket_path(config.mediator.runtime_dir)
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=log)
    try:
        with trio.fail_after(DEADLINE):
            assert "listening on" in await wait_listening(proc)
            hello = await control(sock, "hello")
            assert hello["ok"] and hello["result"]["pid"] == proc.pid

            drivers = {}
            for domid in (0, 1, 2):
                dc = config.domain(domid)
                domain = await trio.to_thread.run_sync(platform.create_domain, domain_spec(dc))
                drivers[domid] = OpteeDriver(platform.trap_entry(domid), domain, nr_vcpus=dc.vcpus,
                                             seed=domid, supplicant=Supplicant(MemoryStore()))
                await trio.to_thread.run_sync(drivers[domid].probe)

            async with trio.open_nursery() as vcpus:
                for domid, driver in drivers.items():
                    for v in range(driver.nr_vcpus):
                        vcpus.start_soon(partial(trio.to_thread.run_sync, partial(
                            workload, driver, v, 10 * domid + v, digest_allowed=domid != 2)))

            stats = await control(sock, "stats")
            assert stats["ok"]
            for domid in ("0", "1", "2"):
                s = stats["result"]["domains"][domid]
                assert s["errors"] == 0 and s["in_flight"] == 0 and sum(s["calls"].values()) > 0
            assert stats["result"]["domains"]["2"]["refusals"] == {"ta_denied": 2}  # one per vCPU

            for domid, driver in drivers.items():
                await trio.to_thread.run_sync(driver.shutdown)
                await trio.to_thread.run_sync(platform.destroy_domain, domid)
                assert platform.machine.pinned_frames(domid) == {}
            assert (await control(sock, "list"))["result"]["domains"] == []

            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        assert not sock.exists()  # the daemon removed its files
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        platform.close()
    platform.oracle.assert_clean()
