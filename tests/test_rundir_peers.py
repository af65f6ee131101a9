"""Peers of another local user on the runtime directory's sockets
(docs/security.md, "Local users and the runtime directory"), played by a
real process running as uid 65534 against the real platform and daemon:

* the modes alone keep that user out (the issue's attack: rename the
  daemon's directory aside; connect to a socket);
* where a test takes the modes away, or hands that user a directory, the
  credentials (SO_PEERCRED) still refuse them: the toolstack, ``ctl`` and
  the platform command refuse another user's socket at the control path;
  the daemon closes on another user's control client; the gate refuses
  another user's stub domain; the daemon refuses another user's gate.

The stub-domain placement only: under el2 nothing listens.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import msgpack
import pytest

from daemon_support import Daemon, write_config
from faults_support import Stack
from other_user import OTHER_GID, OTHER_UID, finish
from stubdom.config import load_config
from stubdom.daemon import ControlClient, control_socket_path, ctl_main
from stubdom.platform import Platform, Toolstack, run_platform
from stubdom.public import DaemonRefused, gate_dir
from stubdom.public.control import encode
from stubdom.rundir import PeerRefused, ensure_runtime_dir

FORGED_HELLO = msgpack.packb({"seq": 1, "ok": True, "result": {"version": 1, "pid": 4242, "placement": "stubdom",
                                                               "runtime_dir": "/forged"}})

# Another user's stubdom-teed: listens at ./control, answers every read with
# the forged hello, reports how many bytes each connection sent it.
FORGED_DAEMON = """\
import socket, sys
answer = bytes.fromhex(sys.argv[1])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("control")
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    got = 0
    with c:
        while data := c.recv(4096):
            got += len(data)
            c.sendall(answer)
    print(f"received {got}", flush=True)
"""

# Another user's SMC gate: listens at ./evtchn until its stdin closes.
FORGED_GATE = """\
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind("evtchn")
s.listen(1)
print("ready", flush=True)
sys.stdin.read()
"""

# Another user's control client: sends the request given in hex to
# ./control, prints what came back before end-of-file.
CONTROL_CLIENT = """\
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("control")
try:
    s.sendall(bytes.fromhex(sys.argv[1]))
except BrokenPipeError:
    pass  # closed before we wrote: what matters is what comes back
got = b""
try:
    while data := s.recv(4096):
        got += data
except ConnectionResetError:
    pass  # closed with our request unread (Linux resets then): the same end
print(f"answered {len(got)} bytes")
"""

# Another user's stub domain: connects to the gate's ./evtchn and reports
# the first thing that happens: a welcome notification, or end-of-file.
GATE_CLIENT = """\
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("evtchn")
print("welcomed" if s.recv(16) else "closed")
"""

# Another user trying the attack on a runtime directory it did not
# make: rename the daemon's directory aside, connect to a socket.
ATTEMPTS = """\
import errno, os, socket, sys
def attempt(what, fn):
    try:
        fn()
    except OSError as e:
        print(what, errno.errorcode[e.errno])
    else:
        print(what, "done")
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if path.endswith("evtchn") else socket.SOCK_STREAM)
    attempt("connect " + path, lambda: s.connect(path))
attempt("rename", lambda: os.rename("stubdom-teed", "aside"))
"""


def _refused(pid: int, role: str) -> str:
    return (f"refused the {role}: pid {pid} runs as uid {OTHER_UID} (nobody) (gid {OTHER_GID}); "
            f"only root may be the {role} here")


@pytest.fixture
def forged_daemon(tmp_path, other_user):
    """Another user's listener at the control path of a runtime directory
    that is ours: the test hands that user the daemon's directory (as if
    they had renamed it aside and made their own)."""
    rt = ensure_runtime_dir(tmp_path / "run")
    theirs = rt / "stubdom-teed"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_GID)
    proc = other_user.spawn(FORGED_DAEMON, FORGED_HELLO.hex(), cwd=theirs)
    try:
        assert proc.stdout.readline() == "ready\n", finish(proc)
        yield rt, proc
    finally:
        proc.kill()
        finish(proc)


# -- the modes alone ----------------------------------------------------------------------------


def test_another_user_can_neither_rename_the_daemons_directory_nor_reach_its_sockets(tmp_path, other_user):
    with Stack(tmp_path) as stack:
        stack.boot(1)
        rt = stack.config.mediator.runtime_dir
        out, err = finish(other_user.spawn(ATTEMPTS, "stubdom-teed/control", "xen/gate/evtchn", "dom1/evtchn", cwd=rt))
        assert out.splitlines() == ["connect stubdom-teed/control EACCES", "connect xen/gate/evtchn EACCES",
                                    "connect dom1/evtchn EACCES", "rename EACCES"], err
        with stack.ctl() as c:
            assert c.call("hello")["pid"] == stack.daemon.proc.pid


def test_a_domains_event_channel_refuses_another_user_by_its_own_mode(tmp_path, other_user):
    # the event channels have no credential check (docs/security.md says
    # why): with its directory opened, the socket's 0600 still keeps them out
    with Stack(tmp_path) as stack:
        stack.boot(1)
        dom1 = stack.config.mediator.runtime_dir / "dom1"
        os.chmod(dom1, 0o711)
        out, err = finish(other_user.spawn(ATTEMPTS, "evtchn", cwd=dom1))
        assert out.splitlines()[0] == "connect evtchn EACCES", err


# -- the control socket: the toolstack, ctl and the platform command refuse another user's daemon ---------


def test_toolstack_refuses_another_users_socket_at_the_control_path(forged_daemon):
    rt, forged = forged_daemon
    path = control_socket_path(rt)
    with Toolstack(path, timeout=30) as toolstack:
        with pytest.raises(DaemonRefused) as e:
            toolstack.hello()
        assert str(e.value) == f"stubdom-teed control socket {path}: {_refused(forged.pid, 'stubdom-teed')}"
        assert (e.value.path, e.value.pid, e.value.uid) == (str(path), forged.pid, OTHER_UID)
        with pytest.raises(DaemonRefused):  # waiting does not make someone else's listener ours
            toolstack.wait_ready(60)
    # nothing was sent to it, nothing it sent was read
    assert [forged.stdout.readline(), forged.stdout.readline()] == ["received 0\n"] * 2


def test_ctl_refuses_another_users_socket_at_the_control_path(forged_daemon):
    rt, forged = forged_daemon
    out, err = io.StringIO(), io.StringIO()
    assert ctl_main(["--socket", str(control_socket_path(rt)), "hello"], out=out, err=err) == 1
    refused = _refused(forged.pid, "stubdom-teed")
    assert (out.getvalue(), err.getvalue()) == ("", f"ctl: {control_socket_path(rt)}: {refused}\n")
    with pytest.raises(PeerRefused) as e:
        ControlClient(control_socket_path(rt), timeout=30)
    assert (e.value.pid, e.value.uid, e.value.role) == (forged.pid, OTHER_UID, "stubdom-teed")
    assert [forged.stdout.readline(), forged.stdout.readline()] == ["received 0\n"] * 2


def test_platform_command_refuses_another_users_daemon_and_creates_no_domain(tmp_path, forged_daemon):
    rt, forged = forged_daemon
    config = write_config(tmp_path)
    assert load_config(config).mediator.runtime_dir == rt
    out = io.StringIO()
    assert run_platform(str(config), log_level="warning", daemon_wait=60, out=out) == 1
    path = control_socket_path(rt)
    assert out.getvalue().splitlines()[-1] == (f"platform: stubdom-teed control socket {path}: "
                                               f"{_refused(forged.pid, 'stubdom-teed')}; not talking to it")
    assert "up:" not in out.getvalue()
    assert forged.stdout.readline() == "received 0\n"


# -- the control socket: the daemon refuses another user's client -------------------------------------------


def test_daemon_closes_on_another_users_control_client_before_reading_a_byte(tmp_path, other_user):
    with Stack(tmp_path) as stack:
        control = control_socket_path(stack.config.mediator.runtime_dir)
        # the test takes the modes away: only the credential check is left
        os.chmod(control.parent, 0o711)
        os.chmod(control, 0o666)
        client = other_user.spawn(CONTROL_CLIENT, encode({"op": "list", "seq": 1}).hex(), cwd=control.parent)
        out, err = finish(client)
        assert out == "answered 0 bytes\n", err
        line = next(ln for ln in stack.daemon.log().splitlines() if "event=control_peer_refused" in ln)
        assert line.split(" ", 2)[2] == (f"event=control_peer_refused connection=1 path={control} "
                                         f"pid={client.pid} uid={OTHER_UID} gid={OTHER_GID}")
        with stack.ctl() as c:  # its own user is still served
            assert c.call("hello")["pid"] == stack.daemon.proc.pid


# -- the SMC gate ---------------------------------------------------------------------------------------------


def test_gate_refuses_another_users_stub_domain_and_serves_ours(tmp_path, other_user, caplog):
    path = write_config(tmp_path)
    config = load_config(path)
    with Platform.for_config(config) as platform:
        gate = gate_dir(config.mediator.runtime_dir)
        os.chmod(gate, 0o711)  # the modes taken away: only the credential check is left
        os.chmod(gate / "evtchn", 0o666)
        intruder = other_user.spawn(GATE_CLIENT, cwd=gate)
        out, err = finish(intruder)
        assert out == "closed\n", err  # never welcomed
        st = platform.placement.gate.statistics()
        assert (st.refused_peers, st.connections) == (1, 0)
        assert f"{gate / 'evtchn'}: {_refused(intruder.pid, 'stub domain')}" in caplog.text
        daemon = Daemon(path, tmp_path)
        try:
            assert "listening on" in daemon.wait_listening(), daemon.log()
            st = platform.placement.gate.statistics()
            assert (st.refused_peers, st.connections) == (1, 1)
        finally:
            daemon.stop()


def test_daemon_refuses_another_users_gate(tmp_path, other_user):
    config = write_config(tmp_path)
    rt = ensure_runtime_dir(load_config(config).mediator.runtime_dir)
    (rt / "xen").mkdir(mode=0o700)
    theirs = rt / "xen" / "gate"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_GID)
    forged = other_user.spawn(FORGED_GATE, cwd=theirs)
    try:
        assert forged.stdout.readline() == "ready\n", finish(forged)
        proc = subprocess.run([sys.executable, "-P", "-m", "stubdom.daemon", "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
    finally:
        finish(forged)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"stubdom-teed: {theirs / 'evtchn'}: {_refused(forged.pid, 'SMC gate')}\n"
    assert sorted(p.name for p in rt.iterdir()) == ["xen"]  # no stubdom-teed/, no control socket
