"""stubdom-teed as a real process: startup errors, the control socket, and
guests running the TA workload through it (docs/daemon.md).

Each test boots a platform in this process (machine, OP-TEE model, SMC gate,
the stubdom placement's trap path) and starts ``python -P -m stubdom.daemon``
beside it, as a user would run the two programs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import trio
import yaml

from daemon_support import boot, client, running_stack, write_config
from stubdom import workloads
from stubdom.daemon import ErrorCode, control_socket_path, ctl_main
from stubdom.guest import Context
from stubdom.public.control import MAX_MESSAGE, encode


@pytest.fixture
def stack(tmp_path):
    """(config path, Config, Platform, Daemon): platform first, then the daemon."""
    yield from running_stack(tmp_path)


# -- startup -------------------------------------------------------------------------------


def test_missing_gate_is_one_clear_line_and_exit_1(tmp_path):
    path = write_config(tmp_path)
    proc = subprocess.run([sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    gate = tmp_path / "run" / "xen" / "gate" / "evtchn"
    assert proc.stderr == (f"stubdom-teed: no SMC gate at {gate} (no such socket); start the platform "
                           f"first with `stubdom-teed platform --config {path}`\n")
    assert not (tmp_path / "run" / "stubdom-teed").exists()


@pytest.mark.parametrize("body, problem", [
    ("mediator:\n  ring_pages: 0\n", "xen.yaml:2: mediator.ring_pages:"),
    ("mediator:\n  polling: 3\n", "xen.yaml:2: mediator.polling: unknown key"),
    ("domains:\n  - domid: 1\n  - domid: 1\n", "xen.yaml:3: domains[1].domid:"),
    ("defaults:\n  ta_allow: [not-a-uuid]\n", "xen.yaml:2: defaults.ta_allow"),
    ("platform:\n  nr_frames: lots\n", "xen.yaml:2: platform.nr_frames:"),
])
def test_bad_config_exits_2_naming_file_line_and_key(tmp_path, body, problem):
    path = tmp_path / "xen.yaml"
    path.write_text(f"mediator:\n  runtime_dir: {tmp_path / 'run'}\n" if "mediator" not in body else "")
    path.write_text(body if "mediator" in body else body + f"mediator:\n  runtime_dir: {tmp_path / 'run'}\n")
    proc = subprocess.run([sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith(f"{tmp_path}/{problem}") for line in lines), proc.stderr
    assert lines[-1].endswith("problem(s) in the configuration; nothing started")
    assert not (tmp_path / "run").exists()


def test_second_daemon_on_the_same_runtime_dir_refuses(stack, tmp_path):
    path, config, platform, daemon = stack
    # the gate serves one stub domain at a time: the newcomer names the one it serves
    proc = subprocess.run([sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    gate = config.mediator.runtime_dir / "xen" / "gate" / "evtchn"
    assert proc.stderr == (f"stubdom-teed: another stubdom-teed (pid {daemon.proc.pid}) is serving the SMC gate "
                           f"at {gate}; stop it first (kill -TERM {daemon.proc.pid})\n"), proc.stderr
    with client(config) as c:  # the first one is untouched
        assert c.call("hello")["pid"] == daemon.proc.pid


# -- the control socket ---------------------------------------------------------------------


def test_hello_list_stats_on_an_idle_daemon(stack):
    _, config, _, daemon = stack
    with client(config) as c:
        assert c.call("hello") == {"version": 1, "pid": daemon.proc.pid, "placement": "stubdom",
                                   "runtime_dir": str(config.mediator.runtime_dir)}
        assert c.call("list") == {"domains": [], "draining": False}
        stats = c.call("stats")
        assert stats["domains"] == {}
        assert stats["gate"]["hyp_calls"] == 3  # the probe: CALLS_UID, GET_THREAD_COUNT, EXCHANGE_CAPABILITIES
        assert stats["gate"]["failures"] == 0


def test_errors_keep_the_connection(stack):
    _, config, platform, _ = stack
    with client(config) as c:
        r = c.request("frobnicate")
        assert r == {"seq": 1, "ok": False, "error": {"code": 2, "name": "UNKNOWN_OP",
                                                        "message": "unknown op 'frobnicate'"}}
        r = c.request("domain_create", domid="1")
        assert r["error"]["code"] == ErrorCode.BAD_REQUEST
        assert r["error"]["message"] == "domain_create: domid must be an int in [0, 32751], got '1'"
        r = c.request("domain_create", domid=9)
        assert r["error"]["name"] == "NO_SUCH_DOMAIN"
        r = c.request("stats", domid=9)
        assert r["error"]["name"] == "NO_SUCH_DOMAIN"
        r = c.request("dump", domid=9)
        assert r["error"]["name"] == "NO_SUCH_DOMAIN"
        r = c.request("domain_destroy", domid=9)
        assert r["error"]["name"] == "NO_SUCH_DOMAIN"
        # a disabled policy refuses the domain before anything reaches the TEE
        platform.machine.create_domain(3, nr_pages=256)
        platform.placement.gate.assign(3)
        r = c.request("domain_create", domid=3)
        assert r["error"] == {"code": 6, "name": "POLICY_REFUSED", "message": "d3: its policy is disabled"}
        # a domain the toolstack did not give this stub domain: the gate says -EPERM
        platform.machine.create_domain(5, nr_pages=256)
        r = c.request("domain_create", domid=5)
        assert r["error"]["name"] == "TEE_REFUSED"
        assert "VM_CREATED" in r["error"]["message"] and "status -1" in r["error"]["message"]
        assert c.call("hello")["version"] == 1  # still the same connection
        assert c.call("list")["domains"] == []


@pytest.mark.parametrize("junk, message", [
    (b"\xc1", "malformed msgpack"),
    (msgpack.packb([1, 2]), "a request must be a map, got list"),
    (msgpack.packb({"op": "hello"}), "a request needs an int 'seq', got None"),
    (msgpack.packb({"op": "hello", "seq": 1, "pad": b"x" * MAX_MESSAGE}), "larger than 65536"),
])
async def test_bad_message_closes_only_that_connection(stack, junk, message):
    _, config, _, _ = stack
    path = control_socket_path(config.mediator.runtime_dir)
    bystander = await trio.open_unix_socket(str(path))
    culprit = await trio.open_unix_socket(str(path))
    with trio.fail_after(20):
        await bystander.send_all(encode({"op": "hello", "seq": 1})[:5])  # half a request
        await culprit.send_all(junk)
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = await culprit.receive_some(4096)
            if not data:
                break
            unpacker.feed(data)
        (answer,) = list(unpacker)
        assert answer["ok"] is False and answer["error"]["code"] == ErrorCode.BAD_REQUEST
        assert message in answer["error"]["message"]
        await bystander.send_all(encode({"op": "hello", "seq": 1})[5:])
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(await bystander.receive_some(4096))
        assert next(unpacker)["result"]["version"] == 1
    await culprit.aclose()
    await bystander.aclose()


def test_ctl(stack, capsys):
    path, config, platform, daemon = stack
    assert ctl_main(["--config", str(path), "hello"]) == 0
    out = capsys.readouterr().out
    assert f"pid: {daemon.proc.pid}\n" in out and "placement: stubdom\n" in out
    boot(platform, config, 1)
    sock = str(control_socket_path(config.mediator.runtime_dir))
    assert ctl_main(["--socket", sock, "list"]) == 0
    assert "- domid: 1\n" in capsys.readouterr().out
    assert ctl_main(["--socket", sock, "stats", "1"]) == 0
    assert "OPTEE_SMC_CALLS_UID".removeprefix("OPTEE_SMC_") in capsys.readouterr().out
    assert ctl_main(["--socket", sock, "dump", "1"]) == 0
    assert "calls_in_flight: 0\n" in capsys.readouterr().out
    assert ctl_main(["--socket", sock, "dump", "7"]) == 1
    assert capsys.readouterr().err == "ctl: dump: NO_SUCH_DOMAIN (3): d7 is not served by this daemon\n"
    assert ctl_main(["--socket", str(path.parent / "nowhere"), "hello"]) == 1
    assert "cannot talk to the daemon" in capsys.readouterr().err


def test_domain_lifecycle_files_and_pins(stack):
    _, config, platform, _ = stack
    run = config.mediator.runtime_dir
    driver = boot(platform, config, 1)
    assert sorted(p.name for p in (run / "dom1").iterdir()) == ["evtchn", "ring"]
    with client(config) as c:
        (d,) = c.call("list")["domains"]
        assert d["domid"] == 1 and d["hwdom"] is False and d["direct_mapped"] is False
        assert d["state"] == "connected" and d["in_flight"] == 0
        r = c.request("domain_create", domid=1)
        assert r["error"]["name"] == "DOMAIN_EXISTS"
        with Context(driver) as ctx:
            assert workloads.increment(ctx, 1) == 2
            data = workloads.random_bytes(3 * 4096 + 5, 1)
            assert workloads.digest_registered(ctx, data) == workloads.digest_temp(ctx, data)
        s = c.call("stats", domid=1)["domains"]["1"]
        std = ("CALL_WITH_ARG", "CALL_WITH_RPC_ARG", "CALL_WITH_REGD_ARG")
        assert s["calls"]["CALLS_UID"] == 1 and sum(s["calls"].get(k, 0) for k in std) >= 6
        assert s["errors"] == 0 and s["refusals"] == {}, s
        assert set(s["latency_us"]) == {"p50", "p90", "p99", "max"}
        driver.shutdown()
        platform.destroy_domain(1)
        assert not (run / "dom1").exists()
        assert c.call("list")["domains"] == []
        assert platform.machine.pinned_frames(1) == {}



def test_hostile_frontend_corrupting_its_ring_loses_only_its_channel(stack):
    """req_prod pushed past a ring's worth: that domain's channel is torn
    down, the daemon and the other domains go on, destroy still works."""
    import mmap
    import struct

    import ring

    _, config, platform, daemon = stack
    good = boot(platform, config, 1)
    platform.machine.create_domain(2, nr_pages=256)
    platform.placement.gate.assign(2)
    with client(config) as c:
        made = c.call("domain_create", domid=2)
        chan = ring.connect(made["evtchn"])
        with open(made["ring"], "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            (rsp_prod,) = struct.unpack_from("<I", m, 8)
            struct.pack_into("<I", m, 0, (rsp_prod + 33) & 0xFFFFFFFF)  # 33 > 32 entries
        chan.notify()
        with pytest.raises(ring.PeerDied):  # the daemon hangs up on us
            for _ in range(200):
                chan.wait(0.1)
        chan.close()
        states = {d["domid"]: d["state"] for d in c.call("list")["domains"]}
        assert states == {1: "connected", 2: "broken"}
        with Context(good) as ctx:
            assert workloads.increment(ctx, 8) == 9
        assert c.call("domain_destroy", domid=2) == {"domid": 2}
        assert not (config.mediator.runtime_dir / "dom2").exists()
    assert "event=ring_corrupted domid=2" in daemon.log()


def test_exports():
    import stubdom.daemon as d

    for name in ("run_daemon", "ctl_main", "GatePort", "ControlClient", "ErrorCode", "ControlError",
                 "Daemon", "DomainBackend", "control_socket_path", "MAX_MESSAGE"):
        assert hasattr(d, name), name


def test_ctl_shutdown_drains_and_removes_the_daemons_files(stack, capsys):
    _, config, platform, daemon = stack
    run = config.mediator.runtime_dir
    boot(platform, config, 0)
    sock = str(control_socket_path(run))
    assert ctl_main(["--socket", sock, "shutdown"]) == 0
    drain_s = config.mediator.drain_timeout_ms / 1000
    assert capsys.readouterr().out == (  # what happened, not the answer's map (issue 15, item 12)
        f"stubdom-teed pid {daemon.proc.pid} is shutting down: 0 call(s) in flight finish first (at most "
        f"{drain_s:g} s), then it destroys 1 domain(s) (d0), removes its files and exits\n")
    assert daemon.proc.wait(30) == 0
    log = daemon.log()
    assert "event=shutdown_requested via=control" in log and "event=domain_destroyed domid=0" in log
    assert not (run / "stubdom-teed").exists() and not (run / "dom0").exists()
    assert platform.machine.pinned_frames(0) == {}


def _documented_ctl_commands() -> list[list[str]]:
    """Every `stubdom-teed ctl --config <file> ...` command line of README.md,
    as argv after the config (comments cut)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = []
    for m in re.finditer(r"^stubdom-teed ctl --config \S+ ([^#\n]+)", readme, re.MULTILINE):
        found.append(m.group(1).split())
    return found


def test_readme_ctl_commands_work_against_a_running_daemon(stack):
    """README's ctl lines, run as the installed command (`python -m stubdom
    ctl` is `stubdom-teed ctl`), with the test's configuration file."""
    path, config, platform, daemon = stack
    commands = _documented_ctl_commands()
    assert ["list"] in commands and ["stats", "1"] in commands, commands
    boot(platform, config, 1)
    for argv in commands:
        proc = subprocess.run([sys.executable, "-P", "-m", "stubdom", "ctl", "--config", str(path), *argv],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", (argv, proc.stderr)
        answer = yaml.safe_load(proc.stdout)
        if argv == ["list"]:
            assert [d["domid"] for d in answer["domains"]] == [1] and answer["draining"] is False
        elif argv == ["stats", "1"]:
            assert list(answer["domains"]) == ["1"]
            assert answer["domains"]["1"]["calls"]["CALLS_UID"] == 1  # the driver's probe
            assert set(answer["gate"]) >= {"smc_calls", "hyp_calls", "failures"}


def test_ctl_create_reload_destroy(stack, capsys, tmp_path):
    """The ctl commands the toolstack's operations map to, and reload."""
    path, config, platform, daemon = stack
    sock = str(control_socket_path(config.mediator.runtime_dir))
    platform.machine.create_domain(2, nr_pages=256)
    platform.placement.gate.assign(2)
    assert ctl_main(["--config", str(path), "domain-create", "2"]) == 0
    made = yaml.safe_load(capsys.readouterr().out)
    assert made["ring"] == str(config.mediator.runtime_dir / "dom2" / "ring")
    assert ctl_main(["--socket", sock, "reload"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"reloaded": True, "path": str(path), "generation": 1,
                                                       "changes": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("mediator:\n  ring_pages: 0\n")
    assert ctl_main(["--socket", sock, "reload", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"ctl: reload: CONFIG_INVALID (7): {bad}:2: mediator.ring_pages:")
    assert ctl_main(["--socket", sock, "domain-destroy", "2"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"domid": 2}
    platform.placement.gate.unassign(2)
    platform.machine.destroy_domain(2)
    assert ctl_main(["--socket", sock, "domain-destroy", "2"]) == 1
    assert "NO_SUCH_DOMAIN (3)" in capsys.readouterr().err
