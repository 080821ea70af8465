"""ControlServer against a fake VM: what a client sees, and what it cannot break."""

import json
import os
import socket
import stat
import threading
import time

import pytest

from pyvmm.control.server import ControlServer
from pyvmm.errors import ControlError

from tests.control.peers import FakeVm, RawConn


def error_of(message):
    return message["error"]["class"], message["error"]["desc"]


def test_greeting_offers_no_capabilities(vm_server, sock_path):
    c = RawConn(sock_path)
    assert c.greeting["QMP"]["capabilities"] == []
    assert c.greeting["QMP"]["version"]["package"].startswith("pyvmm ")
    c.close()


def test_commands_refused_until_capabilities_negotiated(vm_server, sock_path):
    vm, _ = vm_server
    c = RawConn(sock_path)
    reply = c.ask(b'{"execute": "stop", "id": 1}')
    assert reply["id"] == 1
    assert error_of(reply) == ("CommandNotFound",
                               "Expecting capabilities negotiation with 'qmp_capabilities' before command 'stop'")
    assert vm.state == "running" and "pause" not in vm.calls
    assert c.ask(b'{"execute": "qmp_capabilities", "id": "neg"}') == {"return": {}, "id": "neg"}
    again = c.ask(b'{"execute": "qmp_capabilities"}')
    assert error_of(again)[0] == "CommandNotFound"
    assert c.ask(b'{"execute": "stop", "id": 2}') == {"return": {}, "id": 2}
    assert vm.state == "paused"
    c.close()


def test_enabling_a_capability_not_offered_is_refused(vm_server, sock_path):
    c = RawConn(sock_path)
    reply = c.ask(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
    assert error_of(reply) == ("GenericError", "Capability 'oob' is not offered (this server offers none)")
    assert error_of(c.ask(b'{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}'))[0] == "GenericError"
    c.negotiate()               # still in negotiation mode after the refusals
    c.close()


def test_pause_resume_status_and_their_events(vm_server, conn):
    vm, _ = vm_server
    st = conn.ask(b'{"execute": "query-status"}')["return"]
    assert st["status"] == "running" and st["running"] is True and st["exits"] == 1
    assert st["uptime"] >= 0
    conn.send(b'{"execute": "stop", "id": 1}\n')
    event = conn.recv()
    assert event["event"] == "STOP" and set(event["timestamp"]) == {"seconds", "microseconds"}
    assert abs(event["timestamp"]["seconds"] - time.time()) < 60
    assert conn.recv() == {"return": {}, "id": 1}
    assert conn.ask(b'{"execute": "query-status"}')["return"]["running"] is False
    refused = conn.ask(b'{"execute": "stop", "id": 2}')
    assert refused == {"error": {"class": "GenericError", "desc": "VM is already paused"}, "id": 2}
    conn.send(b'{"execute": "cont"}\n')
    assert conn.recv()["event"] == "RESUME"
    assert conn.recv() == {"return": {}}
    assert vm.state == "running"


def test_save_writes_the_file_and_returns_what_the_target_says(vm_server, conn, tmp_path):
    path = str(tmp_path / "vm.state")
    reply = conn.ask(json.dumps({"execute": "save", "arguments": {"file": path}}).encode())
    with open(path) as f:
        saved = json.load(f)
    assert reply == {"return": {"bytes": len(json.dumps(saved))}}
    bad = conn.ask(json.dumps({"execute": "save", "arguments": {"file": str(tmp_path / "no" / "x")}}).encode())
    assert error_of(bad)[0] == "GenericError" and "cannot write the VM state" in error_of(bad)[1]


@pytest.mark.parametrize("request_, desc", [
    ({"execute": "save"}, "Parameter 'file' is missing"),
    ({"execute": "save", "arguments": {"file": 5}}, "Parameter 'file' expects a non-empty string"),
    ({"execute": "save", "arguments": {"file": ""}}, "Parameter 'file' expects a non-empty string"),
    ({"execute": "save", "arguments": {"file": "a\u0000b"}}, "without NUL"),
    ({"execute": "save", "arguments": {"file": "/x", "gz": True}}, "Parameter 'gz' is unexpected"),
    ({"execute": "stop", "arguments": {"now": 1}}, "Parameter 'now' is unexpected"),
    ({"execute": "migrate", "arguments": {"uri": "exec:cat"}}, "must start with 'tcp:'"),
    ({"execute": "migrate", "arguments": {"uri": "tcp:host"}}, "not HOST:PORT"),
    ({"execute": "migrate", "arguments": {"uri": "tcp:host:0"}}, "port 1-65535"),
    ({"execute": "migrate", "arguments": {"uri": "tcp:host:65536"}}, "port 1-65535"),
    ({"execute": "migrate", "arguments": {"uri": "tcp::4444"}}, "not HOST:PORT"),
])
def test_bad_arguments_are_refused_before_any_effect(vm_server, conn, request_, desc):
    vm, _ = vm_server
    before = list(vm.calls)
    reply = conn.ask(json.dumps({**request_, "id": 9}).encode())
    assert reply["id"] == 9 and reply["error"]["class"] == "GenericError"
    assert desc in reply["error"]["desc"]
    assert vm.calls == before
    assert conn.ask(b'{"execute": "query-status"}')["return"]["status"] == "running"


def test_unknown_command(conn):
    reply = conn.ask(b'{"execute": "device_add", "id": {"seq": 4}}')
    assert reply == {"error": {"class": "CommandNotFound", "desc": "The command device_add has not been found"},
                     "id": {"seq": 4}}


def test_migration_progress_and_completion_as_events(vm_server, conn):
    vm, _ = vm_server
    conn.send(b'{"execute": "migrate", "arguments": {"uri": "tcp:[::1]:4444"}, "id": "m"}\n')
    statuses = []
    while not statuses or statuses[-1]["status"] not in ("completed", "failed"):
        message = conn.recv()
        if "event" not in message:
            assert message == {"return": {}, "id": "m"}
            continue
        assert message["event"] == "MIGRATION"
        statuses.append(message["data"])
    assert vm.calls[-1] == ("migrate", "::1", 4444)
    assert [s["status"] for s in statuses] == ["setup", "active", "active", "active", "completed"]
    assert [s["round"] for s in statuses[1:4]] == [1, 2, 3]
    assert conn.ask(b'{"execute": "query-migrate"}')["return"]["status"] == "completed"


def test_migration_failure_is_an_event_with_the_error(conn):
    conn.ask(b'{"execute": "migrate", "arguments": {"uri": "tcp:unreachable:1"}}')
    last = None
    while last is None or last["status"] not in ("completed", "failed"):
        last = conn.recv()["data"]
    assert last == {"status": "failed", "error": "cannot connect to unreachable"}
    assert conn.ask(b'{"execute": "query-migrate"}')["return"]["status"] == "failed"


def test_two_clients_both_get_events_only_after_negotiating(vm_server, connect):
    vm, server = vm_server
    a = connect()
    b = connect()
    late = connect(negotiate=False)
    assert server.client_count == 3
    a.send(b'{"execute": "stop"}\n')
    assert a.recv()["event"] == "STOP" and a.recv() == {"return": {}}
    assert b.recv()["event"] == "STOP"
    assert b.ask(b'{"execute": "query-status"}')["return"]["status"] == "paused"
    late.negotiate()             # the STOP before negotiation was not delivered to it
    server.emit("MIGRATION", {"status": "none"})
    assert late.recv()["event"] == "MIGRATION"
    assert a.recv()["event"] == "MIGRATION" and b.recv()["event"] == "MIGRATION"


@pytest.mark.parametrize("garbage", [
    b"\xff\xfe\x00garbage",
    b'{"execute": }',
    b"[" * 50000,
    b'{"execute": "stop", "id": NaN}',
    b'"just a string"',
    b"\x01\x02\x03",
    b'{"execute": "quit"' + b" " * 10,
    b'{"id": ' + b"9" * 5000 + b"}",
])
def test_hostile_lines_get_generic_errors_and_the_connection_stays_usable(vm_server, conn, garbage):
    vm, _ = vm_server
    reply = conn.ask(garbage)
    assert reply["error"]["class"] == "GenericError" and "id" not in reply
    assert vm.state == "running" and vm.calls == []
    assert conn.ask(b'{"execute": "query-status", "id": 1}')["id"] == 1


def test_overlong_line_is_refused_once_and_skipped(vm_server, conn):
    vm, server = vm_server
    conn.send(b'{"execute": "stop", "x": "' + b"a" * (server.max_line + 10) + b'"}\n')
    reply = conn.recv()
    assert error_of(reply) == ("GenericError", f"input line longer than {server.max_line} bytes ignored")
    assert vm.state == "running"
    assert conn.ask(b'{"execute": "query-status"}')["return"]["status"] == "running"


def test_blank_lines_are_ignored_and_several_commands_in_one_write_answer_in_order(conn):
    conn.send(b'\r\n   \n{"execute": "query-status", "id": 1}\n{"execute": "query-migrate", "id": 2}\n')
    assert conn.recv()["id"] == 1
    assert conn.recv() == {"return": {"status": "none"}, "id": 2}


def test_client_leaving_mid_line_or_mid_command_does_not_disturb_others(vm_server, sock_path, connect, tmp_path):
    vm, server = vm_server
    other = connect()
    half = connect()
    half.send(b'{"execute": "sto')                  # never finished
    half.close()
    vm.save_delay = 0.2
    leaver = connect()
    path = str(tmp_path / "saved")
    leaver.send(json.dumps({"execute": "save", "arguments": {"file": path}}).encode() + b"\n")
    time.sleep(0.05)                                # the save is under way
    leaver.sock.shutdown(socket.SHUT_RDWR)
    leaver.close()
    st = other.ask(b'{"execute": "query-status"}')["return"]
    assert st["status"] == "running"
    assert os.path.exists(path)                      # the command the leaver started did finish
    deadline = time.monotonic() + 2
    while server.client_count != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.client_count == 1


def test_a_client_that_never_reads_is_dropped_and_emit_never_blocks(vm_server, connect):
    vm, server = vm_server
    server.max_backlog = 512 * 1024
    deaf = connect()
    reader = connect()
    got = []

    def read_all():
        while len(got) < 20000:
            got.append(reader.recv()["data"]["round"])

    reading = threading.Thread(target=read_all)
    reading.start()
    slowest = 0.0
    for i in range(20000):                            # ~2 MB of events: more than the deaf one can hold
        t0 = time.monotonic()
        server.emit("MIGRATION", {"status": "active", "round": i, "pad": "x" * 40})
        slowest = max(slowest, time.monotonic() - t0)
        while len(got) < i - 1000 and reading.is_alive():   # the reader lags <= ~110 KB
            time.sleep(0.001)
    reading.join(10)
    assert slowest < 0.5                              # emit never waited for the deaf client
    assert got == list(range(20000))                  # the reader missed nothing
    deadline = time.monotonic() + 2
    while server.client_count != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.client_count == 1                  # the deaf one went
    deaf.file.read()                                 # what fitted in its socket, then EOF (no timeout)


def test_too_many_clients_get_an_error_and_the_rest_keep_working(vm_server, sock_path):
    vm, server = vm_server
    server.max_clients = 2
    first, second = RawConn(sock_path), RawConn(sock_path)
    third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    third.settimeout(5)
    third.connect(sock_path)
    refusal = json.loads(third.makefile("rb").readline())
    assert error_of(refusal) == ("GenericError", "too many control clients (at most 2)")
    assert third.recv(10) == b""
    third.close()
    first.negotiate()
    assert first.ask(b'{"execute": "query-status"}')["return"]["status"] == "running"
    first.close()
    second.close()


class BrokenVm(FakeVm):
    def status(self):
        raise KeyError("vcpu0")

    def info_migrate(self):
        return {"status": "active", "started": object()}

    def save(self, path):
        return "written"


def test_a_target_bug_becomes_a_generic_error_and_the_server_survives(sock_path, caplog):
    vm = BrokenVm()
    with ControlServer(sock_path, vm) as server:
        vm.server = server
        c = RawConn(sock_path)
        c.negotiate()
        assert error_of(c.ask(b'{"execute": "query-status"}')) == ("GenericError", "internal error: KeyError: 'vcpu0'")
        assert "query-status" in caplog.text
        desc = error_of(c.ask(b'{"execute": "query-migrate"}'))[1]
        assert desc.startswith("internal error: the result of query-migrate is not JSON")
        desc = error_of(c.ask(b'{"execute": "save", "arguments": {"file": "/tmp/x"}}'))[1]
        assert desc == "target save returned str, not a dict"
        assert c.ask(b'{"execute": "stop"}') == {"return": {}}
        c.close()


def test_quit_replies_then_the_vmm_closes_the_server_from_inside_the_command(sock_path):
    class QuittingVm(FakeVm):
        def quit(self):
            super().quit()
            self.server.close()          # the VMM shutting down, on the server thread

    vm = QuittingVm()
    server = ControlServer(sock_path, vm)
    vm.server = server
    c = RawConn(sock_path)
    c.negotiate()
    c.send(b'{"execute": "quit", "id": "q"}\n')
    assert c.recv()["event"] == "SHUTDOWN"
    assert c.recv() == {"return": {}, "id": "q"}
    assert c.file.readline() == b""
    server.close()                                   # idempotent
    assert not os.path.exists(sock_path)
    c.close()


def test_socket_file_is_private_and_removed_on_close(sock_path):
    server = ControlServer(sock_path, FakeVm())
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    server.close()
    assert not os.path.exists(sock_path)
    server.emit("STOP")                              # after close: nothing to send to, no error


def test_path_in_use_or_not_a_socket_is_refused(vm_server, sock_path, tmp_path):
    with pytest.raises(ControlError, match="already listening"):
        ControlServer(sock_path, FakeVm())
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(str(plain), FakeVm())
    assert plain.read_text() == "keep me"
    with pytest.raises(ControlError, match="cannot listen"):
        ControlServer(str(tmp_path / "missing-dir" / "s"), FakeVm())


def test_stale_socket_from_a_dead_vmm_is_replaced(sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()                                    # file left behind, nobody listening
    with ControlServer(sock_path, FakeVm()) as server:
        server._target.server = server
        assert RawConn(sock_path).greeting["QMP"]["capabilities"] == []


def test_emit_checks_its_arguments(vm_server):
    _, server = vm_server
    with pytest.raises(ValueError, match="non-empty string"):
        server.emit("")
    with pytest.raises(ValueError, match="data must be a dict"):
        server.emit("STOP", [1])


def test_events_from_many_threads_arrive_whole(vm_server, conn):
    _, server = vm_server

    def burst(tag):
        for i in range(200):
            server.emit("MIGRATION", {"status": "active", "thread": tag, "round": i})

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = {t: [] for t in range(4)}
    for _ in range(800):
        data = conn.recv()["data"]
        seen[data["thread"]].append(data["round"])
    assert all(rounds == list(range(200)) for rounds in seen.values())
