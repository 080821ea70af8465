"""ControlClient and ``pyvmm ctl`` against a ControlServer on a fake VM."""

import io
import json
import os
import socket
import threading

import pytest

from pyvmm.control.client import ControlClient, ctl_main
from pyvmm.errors import ControlCommandError, ControlError


def ctl(sock_path, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = ctl_main([sock_path, *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_client_executes_and_keeps_events_for_wait_event(vm_server, sock_path):
    vm, _ = vm_server
    with ControlClient(sock_path) as c:
        assert c.greeting["capabilities"] == []
        c.negotiate()
        assert c.execute("stop") == {}
        assert c.execute("query-status")["status"] == "paused"
        assert c.wait_event("STOP", timeout=2)["event"] == "STOP"     # arrived during execute
        with pytest.raises(ControlCommandError) as e:
            c.execute("stop")
        assert (e.value.error_class, e.value.desc, e.value.command) == ("GenericError", "VM is already paused", "stop")
        with pytest.raises(ControlError, match="no answer from the VMM in time"):
            c.wait_event("RESUME", timeout=0.05)


def test_client_refused_before_negotiation(vm_server, sock_path):
    with ControlClient(sock_path) as c:
        with pytest.raises(ControlCommandError) as e:
            c.execute("query-status")
        assert e.value.error_class == "CommandNotFound"


def test_status_readable(vm_server, sock_path):
    code, out, err = ctl(sock_path, "status")
    assert code == 0 and err == ""
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["status"] == "running" and lines["running"] == "yes" and lines["exits"] == "1"
    assert float(lines["uptime"]) >= 0


def test_pause_resume_and_refusal_exit_codes(vm_server, sock_path):
    vm, _ = vm_server
    assert ctl(sock_path, "pause") == (0, "paused\n", "")
    assert vm.state == "paused"
    code, out, err = ctl(sock_path, "pause")
    assert (code, out) == (1, "")
    assert err == f"pyvmm ctl: {sock_path}: stop refused: GenericError: VM is already paused\n"
    assert ctl(sock_path, "resume") == (0, "resumed\n", "")
    assert vm.state == "running"


def test_save_sends_an_absolute_path(vm_server, sock_path, tmp_path, monkeypatch):
    vm, _ = vm_server
    monkeypatch.chdir(tmp_path)
    code, out, _ = ctl(sock_path, "save", "vm.state")
    path = str(tmp_path / "vm.state")
    assert code == 0
    assert out.splitlines()[0] == f"saved to {path}"
    assert vm.calls[-1] == ("save", path)
    assert json.loads(open(path).read())["state"] == "running"


def test_json_output(vm_server, sock_path):
    code, out, _ = ctl(sock_path, "--json", "status")
    assert code == 0 and json.loads(out)["status"] == "running"
    code, out, _ = ctl(sock_path, "--json", "info-migrate")
    assert json.loads(out) == {"status": "none"}


def test_migrate_waits_for_the_end_and_prints_progress(vm_server, sock_path):
    vm, _ = vm_server
    code, out, err = ctl(sock_path, "migrate", "127.0.0.1:4444")
    assert (code, err) == (0, "")
    assert vm.calls[-1] == ("migrate", "127.0.0.1", 4444)
    assert out.splitlines() == [
        "migration to 127.0.0.1:4444 started",
        "migration setup",
        "migration active, round: 1, transferred: 4096",
        "migration active, round: 2, transferred: 8192",
        "migration active, round: 3, transferred: 12288",
        "migration completed, transferred: 12288, downtime-ms: 2.500",
    ]
    assert ctl(sock_path, "info-migrate")[1].startswith("status: completed\n")


def test_migrate_failure_exit_status_and_json_events(vm_server, sock_path):
    code, out, _ = ctl(sock_path, "--json", "migrate", "unreachable:1")
    assert code == 1
    events = [json.loads(line) for line in out.splitlines()[1:]]
    assert [e["data"]["status"] for e in events][-1] == "failed"
    assert events[-1]["data"]["error"] == "cannot connect to unreachable"


def test_migrate_detach_returns_at_once_with_ipv6(vm_server, sock_path):
    vm, _ = vm_server
    code, out, _ = ctl(sock_path, "migrate", "--detach", "[::1]:4444")
    assert (code, out) == (0, "migration to [::1]:4444 started\n")
    assert vm.calls[-1] == ("migrate", "::1", 4444)


def test_quit(vm_server, sock_path):
    vm, _ = vm_server
    assert ctl(sock_path, "quit") == (0, "VM shutting down\n", "")
    assert vm.state == "shutdown"
    code, _, err = ctl(sock_path, "pause")
    assert code == 1 and "cannot pause: the VM has shut down" in err


@pytest.mark.parametrize("argv, says", [
    (["migrate", "nohost"], "destination 'nohost' is not HOST:PORT"),
    (["migrate", "h:99999"], "port 1-65535"),
    (["frobnicate"], "invalid choice"),
    (["save"], "required: file"),
])
def test_bad_arguments_exit_2(vm_server, sock_path, argv, says, capsys):
    vm, _ = vm_server
    code, _, err = ctl(sock_path, *argv)
    assert code == 2
    assert says in err + capsys.readouterr().err
    assert vm.calls == []


def test_missing_socket_and_nothing_listening(tmp_path):
    path = str(tmp_path / "none.sock")
    code, out, err = ctl(path, "status")
    assert (code, out) == (2, "")
    assert err == f"pyvmm ctl: {path}: no control socket here (is the VM running with --control {path}?)\n"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    code, _, err = ctl(path, "status")
    assert code == 2 and "nothing is listening" in err


def serve_once(path, lines):
    """A fake server that sends ``lines`` to the first client and closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        for line in lines:
            conn.sendall(line)
        conn.recv(4096)
        conn.close()
        listener.close()

    threading.Thread(target=run, daemon=True).start()


@pytest.mark.parametrize("lines, says", [
    ([b"SSH-2.0-OpenSSH_9.2\r\n"], "does not speak QMP"),
    ([b'{"hello": 1}\r\n'], "did not greet with QMP"),
    ([b'{"QMP": {"capabilities": []}}\r\n'], "closed the control connection"),
    ([], "no answer from the VMM in time"),
])
def test_not_a_qmp_server(sock_path, lines, says):
    serve_once(sock_path, lines)
    code, _, err = ctl(sock_path, "--timeout", "0.2", "status")
    assert code == 2 and says in err
    os.unlink(sock_path)
