"""Peers for the control tests: a fake VM behind the control socket, and a raw
line-level QMP connection that sends bytes exactly as given."""

import json
import socket
import threading
import time

from pyvmm.errors import PyvmmError


class FakeVm:
    """A ControlTarget with a VM's state rules: pause only when running, resume
    only when paused, nothing after shutdown; save writes its state as JSON;
    migrate runs rounds in a thread and fails for the host "unreachable"."""

    def __init__(self):
        self.state = "running"
        self.exits = 0
        self.started = time.monotonic()
        self.server = None
        self.migration = {"status": "none"}
        self.save_delay = 0.0
        self.calls = []
        self._migrator = None

    def _emit(self, name, data=None):
        self.server.emit(name, data)

    def _live(self, what):
        if self.state == "shutdown":
            raise PyvmmError(f"cannot {what}: the VM has shut down")

    def status(self):
        self.calls.append("status")
        self.exits += 1
        return {"status": self.state, "exits": self.exits, "uptime": time.monotonic() - self.started}

    def _switch(self, what, to, event):
        self.calls.append(what)
        self._live(what)
        if self.state == to:
            raise PyvmmError(f"VM is already {to}")
        self.state = to
        self._emit(event)

    def pause(self):
        self._switch("pause", "paused", "STOP")

    def resume(self):
        self._switch("resume", "running", "RESUME")

    def save(self, path):
        self.calls.append(("save", path))
        self._live("save")
        time.sleep(self.save_delay)
        body = json.dumps({"state": self.state, "exits": self.exits})
        try:
            with open(path, "w") as f:
                f.write(body)
        except OSError as e:
            raise PyvmmError(f"{path}: cannot write the VM state: {e.strerror}") from None
        return {"bytes": len(body)}

    def migrate(self, host, port):
        self.calls.append(("migrate", host, port))
        self._live("migrate")
        if self.migration["status"] in ("setup", "active"):
            raise PyvmmError("a migration is already running")
        self.migration = {"status": "setup"}
        self._emit("MIGRATION", dict(self.migration))
        self._migrator = threading.Thread(target=self._migrate, args=(host,), daemon=True)
        self._migrator.start()

    def _migrate(self, host):
        for rnd in range(1, 4):
            time.sleep(0.005)
            if host == "unreachable":
                self.migration = {"status": "failed", "error": f"cannot connect to {host}"}
                self._emit("MIGRATION", dict(self.migration))
                return
            self.migration = {"status": "active", "round": rnd, "transferred": rnd * 4096}
            self._emit("MIGRATION", dict(self.migration))
        self.state = "shutdown"
        self.migration = {"status": "completed", "transferred": 3 * 4096, "downtime-ms": 2.5}
        self._emit("MIGRATION", dict(self.migration))

    def info_migrate(self):
        self.calls.append("info_migrate")
        return dict(self.migration)

    def quit(self):
        self.calls.append("quit")
        self.state = "shutdown"
        self._emit("SHUTDOWN", {"reason": "host-qmp-quit"})


class RawConn:
    """A client that sends bytes as given and reads the server's lines as JSON."""

    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.greeting = self.recv()

    def send(self, data):
        self.sock.sendall(data)

    def recv(self):
        line = self.file.readline()
        assert line.endswith(b"\r\n"), f"server line {line!r} does not end in CRLF"
        line.decode("ascii")
        return json.loads(line)

    def ask(self, data):
        """Send one line; the first message back that is not an event."""
        self.send(data + b"\n")
        while True:
            message = self.recv()
            if "event" not in message:
                return message

    def negotiate(self):
        assert self.ask(b'{"execute": "qmp_capabilities"}') == {"return": {}}

    def close(self):
        self.file.close()
        self.sock.close()
