"""A frontend of someone else's, through the documented route alone
(issue 15, item 5; docs/protocol.md, "A frontend of your own"):
`stubdom-teed platform --external 5` creates domain 5 in the daemon and
prints its ring and event channel; the C program of
tests/c/teeif_scripted_frontend.c — written against Xen's io/ring.h and
docs/protocol.md only — attaches there and gets OP-TEE's answers. When the
daemon is stopped and started again, the platform creates the domain again
and prints the paths again; a new frontend attaches to the new files.

Real processes throughout: the platform and the daemon as the installed
command, the C frontend as a process; only the printed paths connect them.
"""

from __future__ import annotations

import re
import signal

from frontends_support import ScriptedFrontend, build_scripted_frontend
from process_support import Proc, command, config_file, left_in
from stubdom.optee.smc import OPTEE_MSG_UID_0, OPTEE_SMC_CALL_GET_OS_REVISION, OPTEE_SMC_CALLS_UID

DOMID = 5  # not one of configs/xen.yaml's domains: the platform gives it one vCPU and a little RAM
OS_MAJOR = 4  # configs/xen.yaml: os_revision major


def external_line(proc: Proc, after: int = 0) -> tuple[int, dict[str, str]]:
    """The platform's line for the external domain: (offset past it, paths)."""
    end = proc.wait_for(f"platform: d{DOMID} external: ", after=after)
    line = proc.out()[end:].split("\n", 1)[0]
    m = re.fullmatch(r"ring (\S+) event channel (\S+) ring_pages (\d+); attach your frontend \(docs/protocol.md\)",
                     line)
    assert m, line
    return end, {"ring": m.group(1), "evtchn": m.group(2), "ring_pages": m.group(3)}


def round_trips(exe, paths: dict[str, str], tag: int) -> None:
    """Attach to what the platform printed and make OP-TEE calls: a batch of
    GET_OS_REVISION, then CALLS_UID (both forwarded to OP-TEE by the daemon)."""
    ring, evtchn = paths["ring"], paths["evtchn"]
    domdir = ring.rpartition("/")[0]
    assert evtchn == f"{domdir}/evtchn" and ring == f"{domdir}/ring"
    f = ScriptedFrontend(exe, domdir, tag)
    try:
        f.do("attach", "attached nr_ents=32")
        f.do("connect", "connected")
        # "pushed k" / "answered k": the k-th burst pushed, every response of it
        # checked (status 0, a0 as given) by the C program itself
        f.do(f"burst 4 {OPTEE_SMC_CALL_GET_OS_REVISION:#x} {OS_MAJOR:#x}", "pushed 1")
        assert f.do("collect", "answered ") == "answered 1 dropped 0"
        f.do(f"burst 1 {OPTEE_SMC_CALLS_UID:#x} {OPTEE_MSG_UID_0:#x}", "pushed 2")
        assert f.do("collect", "answered ") == "answered 2 dropped 0"
        assert f.finish() == 0
    finally:
        if f.proc.poll() is None:
            f.kill()


def test_a_c_frontend_attaches_through_platform_external_alone(tmp_path):
    exe = build_scripted_frontend(tmp_path)
    cfg = config_file(tmp_path)
    platform = Proc(command("platform", "--config", str(cfg), "--external", str(DOMID), "--interval", "0.2"),
                    tmp_path, "platform")
    daemons: list[Proc] = []
    try:
        platform.wait_for("platform: waiting up to")
        daemons.append(Proc(command("--config", str(cfg)), tmp_path, "daemon1"))
        mark, paths = external_line(platform)
        assert paths["ring"] == str(tmp_path / "rt" / f"dom{DOMID}" / "ring")
        round_trips(exe, paths, 1)
        # the platform's own guests go on beside it
        platform.wait_for("d2 ok 4 workloads", after=mark)

        # the daemon stopped and started again: the domain is created again, the paths printed again
        daemons[0].signal(signal.SIGTERM)
        assert daemons[0].wait() == 0, daemons[0].describe()
        daemons.append(Proc(command("--config", str(cfg)), tmp_path, "daemon2"))
        _, again = external_line(platform, after=mark)
        assert again == paths  # the same place, new files
        round_trips(exe, again, 2)

        platform.signal(signal.SIGTERM)
        assert platform.wait() == 0, platform.describe()
        assert daemons[1].wait() == 0, daemons[1].describe()
        assert left_in(tmp_path / "rt") == []
        # the daemon served d5 like any domain: created, then destroyed with the platform
        assert f"event=domain_created domid={DOMID} " in daemons[1].err()
        assert f"event=domain_destroyed domid={DOMID} " in daemons[1].err()
    finally:
        for proc in (platform, *daemons):
            proc.stop()


def test_external_needs_placement_stubdom(tmp_path):
    from process_support import run

    cfg = config_file(tmp_path)
    cfg.write_text(cfg.read_text().replace("placement: stubdom", "placement: el2"))
    got = run("platform", "--config", str(cfg), "--external", "5")
    assert got.returncode == 2
    assert got.stderr == ("platform: --external 5: a frontend of your own needs placement stubdom (this "
                          "configuration's is el2)\n")
    assert left_in(tmp_path / "rt") == []
