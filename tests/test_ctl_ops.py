"""`stubdom-teed ctl` against a real daemon (issue 15, items 9-11): it finds
the socket from the configuration's runtime_dir alone, resolves a relative
reload path where it was typed, shows a domain's policy (what applies now,
what at its next creation) and a dump whose names say what they count,
with cookies in hex; a reload is logged as what changed per domain, and the
file a later SIGHUP reloads is the one last loaded.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import yaml

from daemon_support import boot, client, running_stack, write_config
from stubdom.daemon import ctl_main
from stubdom.public import ControlBadRequest


@pytest.fixture
def stack(tmp_path):
    """(config path, Config, Platform, Daemon): platform first, then the daemon."""
    yield from running_stack(tmp_path)

HANG_GUARD_S = 60.0  # a log line that never comes: only a wedged daemon reaches this


def _wait_log(daemon, text: str, count: int = 1) -> str:
    deadline = time.monotonic() + HANG_GUARD_S
    while (log := daemon.log()).count(text) < count:
        assert time.monotonic() < deadline, log
        time.sleep(0.02)
    return log


def test_ctl_config_needs_only_the_runtime_dir(stack, tmp_path, capsys):
    path, config, platform, daemon = stack
    edited = tmp_path / "edited.yaml"  # the same file, mid-edit: a typo elsewhere
    edited.write_text(path.read_text().replace("  threads: 4\n", "  threads: four\n  bogus: 1\n"))
    assert ctl_main(["--config", str(edited), "hello"]) == 0
    assert f"pid: {daemon.proc.pid}\n" in capsys.readouterr().out


def test_reload_path_is_resolved_by_ctl_and_sighup_reloads_the_file_last_loaded(stack, tmp_path, capsys,
                                                                                monkeypatch):
    path, config, platform, daemon = stack
    boot(platform, config, 1)
    other = tmp_path / "sub" / "other.yaml"
    other.parent.mkdir()
    text = path.read_text().replace("  - domid: 1\n    nr_pages: 1024\n    vcpus: 2\n",
                                    "  - domid: 1\n    nr_pages: 1024\n    vcpus: 2\n"
                                    "    rate: {calls_per_second: 10, burst: 5}\n"
                                    "    limits: {calls_in_flight: 2}\n")
    assert text != path.read_text()
    other.write_text(text)
    monkeypatch.chdir(other.parent)
    assert ctl_main(["--config", str(path), "reload", "other.yaml"]) == 0  # relative: ctl's directory
    answer = yaml.safe_load(capsys.readouterr().out)
    assert answer["path"] == str(other) and answer["generation"] == 1
    assert answer["changes"] == {"d1": [
        "rate: unlimited -> 10/s, burst 5",
        "limits.calls_in_flight: 64 -> 2 (at its next domain_create; the running domain keeps its own)"]}
    log = _wait_log(daemon, "event=reloaded")
    assert ('event=policy_changed domid=1 served=True changes="rate: unlimited -> 10/s, burst 5; '
            'limits.calls_in_flight: 64 -> 2 (at its next domain_create; the running domain keeps its own)"'
            ) in log, log
    # the protocol itself refuses a relative path: whose directory would it be?
    with client(config) as c:
        try:
            c.call("reload", path="other.yaml")
        except ControlBadRequest as e:
            assert "path must be absolute, got 'other.yaml'" in e.message
        else:
            raise AssertionError("a relative reload path was accepted")
    # SIGHUP reloads the file loaded last (docs/daemon.md and control-protocol.md say so)
    daemon.proc.send_signal(signal.SIGHUP)
    log = _wait_log(daemon, "event=reloaded", 2)
    assert re.findall(r"event=reloaded path=(\S+)", log) == [str(other), str(other)], log


def test_policy_shows_what_applies_now_and_at_the_next_creation(stack, tmp_path, capsys):
    path, config, platform, daemon = stack
    boot(platform, config, 1)
    sock = str(config.mediator.runtime_dir / "stubdom-teed" / "control")
    tighter = tmp_path / "tighter.yaml"
    tighter.write_text(path.read_text().replace("  - domid: 1\n    nr_pages: 1024\n    vcpus: 2\n",
                                                "  - domid: 1\n    nr_pages: 1024\n    vcpus: 2\n"
                                                "    deny_classes: [shm_config]\n"
                                                "    limits: {calls_in_flight: 2, total_pages: 512}\n"))
    assert ctl_main(["--socket", sock, "reload", str(tighter)]) == 0
    capsys.readouterr()
    assert ctl_main(["--socket", sock, "policy", "1"]) == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert got["domid"] == 1 and got["served"] is True and got["declared"] is True
    assert got["config"] == str(tighter) and got["generation"] == 1
    assert got["applies_now"]["deny_classes"] == ["shm_config"]  # a reload's classes apply at once
    running = got["limits"]["running"]
    assert running["profile"] == config.mediator.profile
    assert running["calls_in_flight"] == 64 and running["total_pages"] == 16384  # as created
    assert running["calls_in_flight_enforced"] == 4  # capped by OP-TEE's 4 threads per guest
    nxt = got["limits"]["next_domain_create"]
    assert nxt["calls_in_flight"] == 2 and nxt["total_pages"] == 512  # the reload's, for the next creation
    assert ctl_main(["--socket", sock, "policy", "9"]) == 0  # not served, not declared: defaults
    got = yaml.safe_load(capsys.readouterr().out)
    assert got["served"] is False and got["declared"] is False and got["limits"]["running"] is None


def test_dump_names_say_what_they_count_and_cookies_are_hex(stack, capsys):
    path, config, platform, daemon = stack
    from stubdom.guest import Context

    driver = boot(platform, config, 1)
    sock = str(config.mediator.runtime_dir / "stubdom-teed" / "control")
    with Context(driver) as ctx:
        shm = ctx.register_memory(8192)  # one registered buffer, held while we look
        try:
            with client(config) as c:
                raw = c.call("dump", domid=1)
            assert ctl_main(["--socket", sock, "dump", "1"]) == 0
            view = yaml.safe_load(capsys.readouterr().out)
        finally:
            shm.release()
    assert view["limits_at_creation"]["calls_in_flight"] == raw["limits"]["max_calls"] == 64
    assert view["enforced"]["calls_in_flight_capped_by_tee_threads"] == raw["max_calls"] == 4
    held = view["held_now"]
    assert held["buffer_pages_pinned_of_total_pages"] == raw["pinned_pages"]
    assert held["machine_frames_pinned_all_kinds"] == raw["nr_pinned_frames"] >= raw["pinned_pages"]
    assert held["shadow_pages_of_the_mediator"] == raw["shadow_pages"]
    cookies = [b["cookie"] for b in raw["shm_buffers"]]
    assert cookies and [b["cookie"] for b in view["shm_buffers"]] == [f"{c:#x}" for c in cookies]
    assert "limits" not in view and "max_calls" not in view  # the mediator's names stay on the wire


def test_ctl_reads_no_config_key_but_runtime_dir(tmp_path, capsys):
    """Without a daemon: a file whose runtime_dir is fine but everything
    else is wrong gets ctl as far as the socket (exit 1: nobody there),
    and one whose runtime_dir is wrong stops it with the loader's line."""
    good = write_config(tmp_path, name="x.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text(good.read_text().replace("placement: stubdom", "placement: nowhere"))
    assert ctl_main(["--config", str(broken), "hello"]) == 1
    assert "cannot talk to the daemon at" in capsys.readouterr().err
    broken.write_text("mediator:\n  runtime_dir: [1]\n")
    assert ctl_main(["--config", str(broken), "hello"]) == 2
    assert capsys.readouterr().err == f"{broken}:2: mediator.runtime_dir: expected a path (string), got a list\n"
    assert os.path.exists(good)
