"""The client side of the control socket: ControlClient and ``pyvmm ctl``.

ControlClient speaks QMP (qmp.py) to a ControlServer (or to QEMU: only the
wire format is assumed): it reads the greeting, negotiates capabilities,
executes commands matched to their replies by ``id``, and keeps events that
arrive meanwhile for ``wait_event``.

``ctl_main(argv)`` is ``pyvmm ctl SOCKET COMMAND``; exit status 0 when the
command succeeded, 1 when the VMM refused it (or a migration failed), 2 for
bad arguments or a control socket that cannot be used.
"""

import argparse
import itertools
import json
import os
import socket
import sys
import time

from pyvmm.control import qmp
from pyvmm.control.commands import MIGRATION_DONE, parse_host_port
from pyvmm.errors import ControlCommandError, ControlError

# Server lines can be long (a status with many members); refuse absurd ones.
MAX_REPLY_LINE = 16 << 20


class ControlClient:
    """A connection to a control socket at ``path``; ``timeout`` (seconds)
    bounds every wait for the server except ``wait_event(timeout=None)``."""

    def __init__(self, path, timeout=10.0):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except FileNotFoundError:
            self._sock.close()
            raise ControlError(f"{self.path}: no control socket here (is the VM running with "
                               f"--control {self.path}?)") from None
        except ConnectionRefusedError:
            self._sock.close()
            raise ControlError(f"{self.path}: nothing is listening (a stale socket of a VMM that is gone?)") from None
        except OSError as e:
            self._sock.close()
            raise ControlError(f"{self.path}: cannot connect: {e.strerror or e}") from None
        self._lines = qmp.LineBuffer(MAX_REPLY_LINE)
        self._pending = []        # complete lines not yet decoded
        self._events = []         # events received while waiting for replies
        self._ids = itertools.count(1)
        first = self._read(self._deadline(timeout))
        if "QMP" not in first:
            self.close()
            raise ControlError(f"{self.path}: the server did not greet with QMP: {first!r:.200}")
        self.greeting = first["QMP"]

    def negotiate(self):
        """Leave capabilities-negotiation mode (no capabilities enabled)."""
        self.execute(qmp.CAPABILITIES_COMMAND)

    def execute(self, command, arguments=None):
        """Run ``command``; its return value, or ControlCommandError with the server's class and desc."""
        ident = next(self._ids)
        request = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(qmp.encode(request))
        except OSError as e:
            raise ControlError(f"{self.path}: sending {command} failed: {e.strerror or e}") from None
        deadline = self._deadline(self.timeout)
        while True:
            message = self._read(deadline)
            if "event" in message:
                self._events.append(message)
            elif message.get("id") == ident or ("id" not in message and "error" in message):
                if "error" in message:
                    err = message["error"]
                    raise ControlCommandError(err.get("class", "?"), err.get("desc", "?"), command)
                if "return" not in message:
                    raise ControlError(f"{self.path}: reply to {command} has neither return nor error: "
                                       f"{message!r:.200}")
                return message["return"]
            # a reply with another id is not ours: QMP says drop it

    def wait_event(self, name=None, timeout=None):
        """The next event (named ``name``, if given; others are discarded while waiting).

        ``timeout`` in seconds, None to wait until one comes or the connection ends.
        """
        deadline = self._deadline(timeout)
        while True:
            while self._events:
                message = self._events.pop(0)
                if name is None or message.get("event") == name:
                    return message
            message = self._read(deadline)
            if "event" in message:
                self._events.append(message)

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _deadline(timeout):
        return None if timeout is None else time.monotonic() + timeout

    def _read(self, deadline):
        """The next message from the server (a dict), waiting until ``deadline`` (None: forever)."""
        while not self._pending:
            if deadline is None:
                self._sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlError(f"{self.path}: no answer from the VMM in time")
                self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                raise ControlError(f"{self.path}: connection lost: {e.strerror or e}") from None
            if not data:
                raise ControlError(f"{self.path}: the VMM closed the control connection")
            for line in self._lines.feed(data):
                if line is qmp.OVERLONG:
                    raise ControlError(f"{self.path}: server sent a line over {MAX_REPLY_LINE} bytes")
                if line.strip():
                    self._pending.append(line)
        line = self._pending.pop(0)
        try:
            return qmp.decode_message(line)
        except ControlCommandError as e:
            raise ControlError(f"{self.path}: the server does not speak QMP: {e.desc}") from None


# --- pyvmm ctl ---------------------------------------------------------------

def _flatten(value, prefix=""):
    """``key: value`` lines for a (nested) JSON value."""
    if isinstance(value, dict):
        if not value and prefix:
            return [f"{prefix}: (none)"]
        lines = []
        for key, item in value.items():
            lines += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return lines
    if isinstance(value, float):
        value = f"{value:.3f}"
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, list):
        value = ", ".join(map(str, value))
    return [f"{prefix}: {value}" if prefix else str(value)]


def _parser():
    p = argparse.ArgumentParser(prog="pyvmm ctl", description="control a running VM through its --control socket")
    p.add_argument("socket", help="the control socket (pyvmm boot --control SOCKET)")
    p.add_argument("--json", action="store_true", help="print the replies and events as JSON lines")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    sub = p.add_subparsers(dest="action", required=True, metavar="COMMAND")
    sub.add_parser("status", help="run state, exits, uptime")
    sub.add_parser("pause", help="stop the vCPU")
    sub.add_parser("resume", help="let a paused vCPU run again")
    save = sub.add_parser("save", help="write the VM state to FILE (on the VMM's host)")
    save.add_argument("file")
    migrate = sub.add_parser("migrate", help="live-migrate to a receiving pyvmm at HOST:PORT")
    migrate.add_argument("dest", metavar="HOST:PORT")
    migrate.add_argument("--detach", action="store_true", help="return once started; do not wait for the end")
    sub.add_parser("info-migrate", help="state and progress of the current or last migration")
    sub.add_parser("quit", help="stop the VM and the VMM")
    return p


def _request(args):
    """(QMP command, arguments, what to print on success) for the parsed ``args``."""
    if args.action == "save":
        path = os.path.abspath(args.file)       # the VMM may run in another directory
        return "save", {"file": path}, f"saved to {path}"
    if args.action == "migrate":
        host, port = parse_host_port(args.dest, "destination")
        dest = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return "migrate", {"uri": f"tcp:{dest}"}, f"migration to {dest} started"
    simple = {"status": ("query-status", None), "pause": ("stop", "paused"), "resume": ("cont", "resumed"),
              "info-migrate": ("query-migrate", None), "quit": ("quit", "VM shutting down")}
    command, done = simple[args.action]
    return command, None, done


def _show(value, done, as_json, out):
    if as_json:
        print(json.dumps(value), file=out)
    elif done is not None:
        print(done, file=out)
        if value:
            print("\n".join(_flatten(value)), file=out)
    else:
        print("\n".join(_flatten(value)), file=out)


def _follow_migration(client, as_json, out):
    """Print MIGRATION events until the final one; True if it completed."""
    while True:
        message = client.wait_event("MIGRATION")
        data = message.get("data", {})
        status = data.get("status")
        if as_json:
            print(json.dumps(message), file=out)
        else:
            rest = {key: value for key, value in data.items() if key != "status"}
            print(f"migration {status}" + "".join(f", {line}" for line in _flatten(rest)), file=out)
        if status in MIGRATION_DONE:
            return status == "completed"


def ctl_main(argv, out=None, err=None):
    """``pyvmm ctl``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        command, arguments, done = _request(args)
    except ValueError as e:
        print(f"pyvmm ctl: {e}", file=err)
        return 2
    try:
        with ControlClient(args.socket, timeout=args.timeout) as client:
            client.negotiate()
            value = client.execute(command, arguments)
            _show(value, done, args.json, out)
            if command == "migrate" and not args.detach:
                return 0 if _follow_migration(client, args.json, out) else 1
    except ControlCommandError as e:
        print(f"pyvmm ctl: {args.socket}: {e.command or command} refused: {e.error_class}: {e.desc}", file=err)
        return 1
    except ControlError as e:
        print(f"pyvmm ctl: {e}", file=err)
        return 2
    except KeyboardInterrupt:
        print("pyvmm ctl: interrupted", file=err)
        return 130
    return 0
