"""The control protocol's client (stubdom.public.ControlClient) and the
toolstack and ``ctl`` on it, against a scripted server speaking msgpack over
a real AF_UNIX stream socket."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from pathlib import Path

import msgpack
import pytest

from stubdom.daemon.ctl import ctl_main
from stubdom.platform import Toolstack
from stubdom.public import (
    ControlBadRequest,
    ControlClient,
    ControlConfigInvalid,
    ControlDomainExists,
    ControlError,
    ControlInternal,
    ControlNoSuchDomain,
    ControlPolicyRefused,
    ControlProtocolError,
    ControlShuttingDown,
    ControlSocketError,
    ControlTeeRefused,
    ControlUnknownOp,
    DaemonRefused,
    DaemonUnavailable,
    ErrorCode,
    ProtocolError,
    control_socket_path,
)
from stubdom.rundir import PeerRefused


class Server:
    """Answers each request with ``reply(request)``: a dict to send, bytes to
    send raw, or None to hang up."""

    def __init__(self, path: Path, reply) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.reply = reply
        self.requests: list[dict] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn, contextlib.suppress(OSError):  # the client may hang up first
            while data := conn.recv(4096):
                unpacker.feed(data)
                for req in unpacker:
                    self.requests.append(req)
                    answer = self.reply(req)
                    if answer is None:
                        return
                    conn.sendall(answer if isinstance(answer, bytes) else msgpack.packb(answer))

    def close(self) -> None:
        self.sock.close()


def ok(req, result=None):
    return {"seq": req["seq"], "ok": True, "result": result if result is not None else {"op": req["op"]}}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return control_socket_path(tmp_path)


def serve(path, reply):
    return Server(path, reply)


def test_control_path_is_under_stubdom_teed(tmp_path: Path) -> None:
    assert control_socket_path(tmp_path) == tmp_path / "stubdom-teed" / "control"


def test_requests_carry_op_seq_and_arguments(path: Path) -> None:
    server = serve(path, lambda r: ok(r, {"domid": r.get("domid")}))
    with Toolstack(path) as ts:
        assert ts.domain_create(3) == {"domid": 3}
        assert ts.domain_destroy(3) == {"domid": 3}
        ts.stats()
        ts.stats(2)
    assert server.requests == [{"op": "domain_create", "seq": 1, "domid": 3},
                               {"op": "domain_destroy", "seq": 2, "domid": 3},
                               {"op": "stats", "seq": 3}, {"op": "stats", "seq": 4, "domid": 2}]
    assert server.connections == 1
    server.close()


@pytest.mark.parametrize("code, cls", [
    (1, ControlBadRequest), (2, ControlUnknownOp), (3, ControlNoSuchDomain), (4, ControlDomainExists),
    (5, ControlTeeRefused), (6, ControlPolicyRefused), (7, ControlConfigInvalid), (8, ControlShuttingDown),
    (9, ControlInternal), (42, ControlError)])
def test_each_error_code_is_its_exception(path: Path, code: int, cls) -> None:
    server = serve(path, lambda r: {"seq": r["seq"], "ok": False,
                                    "error": {"code": code, "name": "NAME", "message": "why"}})
    with Toolstack(path) as ts, pytest.raises(ControlError) as e:
        ts.domain_create(1)
    assert type(e.value) is cls
    assert (e.value.code, e.value.name, e.value.message) == (code, "NAME", "why")
    assert str(e.value) == f"domain_create: NAME ({code}): why"
    server.close()


def test_no_daemon_is_daemon_unavailable(path: Path) -> None:
    with Toolstack(path) as ts, pytest.raises(DaemonUnavailable, match="no such socket: is stubdom-teed running"):
        ts.hello()


def test_wrong_seq_is_a_protocol_error_and_the_connection_is_dropped(path: Path) -> None:
    server = serve(path, lambda r: {"seq": r["seq"] + 1, "ok": True, "result": {}})
    ts = Toolstack(path)
    with pytest.raises(ControlProtocolError, match=r"hello \(seq 1\) answered with"):
        ts.hello()
    with pytest.raises(ControlProtocolError):
        ts.hello()
    assert server.connections == 2
    ts.close()
    server.close()


def test_malformed_and_oversized_answers_are_protocol_errors(path: Path) -> None:
    answers = iter([b"\xc1", msgpack.packb({"seq": 2, "ok": True, "result": {"x": "y" * 70_000}})])
    server = serve(path, lambda r: next(answers))
    ts = Toolstack(path)
    with pytest.raises(ControlProtocolError, match="malformed msgpack"):
        ts.hello()
    with pytest.raises(ControlProtocolError, match="larger than 65536 bytes"):
        ts.hello()
    ts.close()
    server.close()


def test_daemon_hanging_up_is_unavailable_and_the_next_request_reconnects(path: Path) -> None:
    first = [True]

    def reply(r):
        if first[0]:
            first[0] = False
            return None
        return ok(r)

    server = serve(path, reply)
    ts = Toolstack(path)
    with pytest.raises(DaemonUnavailable, match="closed the connection"):
        ts.hello()
    assert ts.hello() == {"op": "hello"}
    assert server.connections == 2
    ts.close()
    server.close()


def test_silent_daemon_is_unavailable_within_the_timeout(path: Path) -> None:
    release = threading.Event()
    server = serve(path, lambda r: release.wait() and ok(r))
    with Toolstack(path, timeout=0.1) as ts, pytest.raises(DaemonUnavailable, match="hello: no answer within 0.1 s"):
        ts.hello()
    release.set()
    server.close()


def test_wait_ready_retries_until_the_daemon_listens(path: Path) -> None:
    ts = Toolstack(path)
    with pytest.raises(DaemonUnavailable):
        ts.wait_ready(0.05, interval=0.01)
    server = serve(path, ok)
    assert ts.wait_ready(5.0) == {"op": "hello"}
    ts.close()
    server.close()


# -- the one client the toolstack and ctl share (stubdom.public.ControlClient) ------------------


def test_control_client_connects_at_once_unless_told_not_to(path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="no such socket: is stubdom-teed running") as e:
        ControlClient(path, timeout=5)
    assert e.value.strerror == "No such file or directory"
    lazy = ControlClient(path, timeout=5, connect=False)  # nothing to connect to yet: fine
    server = serve(path, ok)
    assert lazy.call("hello") == {"op": "hello"}
    lazy.close()
    server.close()


def test_control_client_request_returns_the_whole_answer_and_call_raises_its_code(path: Path) -> None:
    error = {"code": 3, "name": "NO_SUCH_DOMAIN", "message": "d7 is not served by this daemon"}
    server = serve(path, lambda r: {"seq": r["seq"], "ok": False, "error": error})
    with ControlClient(path, timeout=5) as client:
        assert client.request("dump", domid=7) == {"seq": 1, "ok": False, "error": error}
        with pytest.raises(ControlNoSuchDomain) as e:
            client.call("dump", domid=7)
    assert str(e.value) == "dump: NO_SUCH_DOMAIN (3): d7 is not served by this daemon"
    assert (e.value.op, e.value.code, e.value.name) == ("dump", ErrorCode.NO_SUCH_DOMAIN, "NO_SUCH_DOMAIN")
    server.close()


def test_ctl_says_it_cannot_talk_to_the_daemon_in_the_systems_words(path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert ctl_main(["--socket", str(path), "hello"], out=out, err=err) == 1
    assert err.getvalue() == f"ctl: cannot talk to the daemon at {path}: No such file or directory; is it running?\n"


def test_ctl_reports_an_answer_that_is_not_a_response(path: Path) -> None:
    server = serve(path, lambda r: {"seq": r["seq"] + 1, "ok": True, "result": {}})
    out, err = io.StringIO(), io.StringIO()
    assert ctl_main(["--socket", str(path), "list"], out=out, err=err) == 1
    assert err.getvalue() == (f"ctl: stubdom-teed control socket {path}: bad response: list (seq 1) answered with "
                              f"{{'seq': 2, 'ok': True, 'result': {{}}}}\n")
    assert out.getvalue() == ""
    server.close()


def test_the_daemons_and_the_clients_control_errors_are_one_class():
    # the daemon raises ControlError(code, message); a client the subclass of an answer's code
    served = ControlError(ErrorCode.DOMAIN_EXISTS, "d1 is served already")
    assert (served.code, served.name, served.op, str(served)) == (
        ErrorCode.DOMAIN_EXISTS, "DOMAIN_EXISTS", None, "DOMAIN_EXISTS: d1 is served already")
    answered = ControlError.for_answer("domain_create", 4, "DOMAIN_EXISTS", "d1 is served already")
    assert type(answered) is ControlDomainExists and isinstance(answered, ControlError)
    assert isinstance(ProtocolError("malformed msgpack"), ControlBadRequest)
    assert issubclass(DaemonRefused, DaemonUnavailable) and issubclass(DaemonRefused, PeerRefused)
    assert all(issubclass(c, ControlSocketError) for c in (ControlError, ControlProtocolError, DaemonUnavailable))
