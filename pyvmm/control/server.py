"""ControlServer: the VMM's QMP-style control socket.

A unix stream socket served by one background thread: it accepts several
clients, greets each, keeps each in capabilities-negotiation mode until it
sends ``qmp_capabilities``, then runs its commands (commands.py) on the
ControlTarget, one at a time, replying in the order they came. Events the
target emits go to every client in command mode.

Invariants:
- Nothing a client sends can stop the server or touch another client: bad
  bytes, bad JSON, unknown commands and bad arguments get a QMP error reply
  and the connection stays usable; a client that goes away, even in the
  middle of a command, is dropped and the command's effect on the VM stands.
- ``emit`` never blocks on a client: each client has an output buffer of at
  most ``max_backlog`` bytes; a client that lets it overflow (it does not read)
  is disconnected.
- The socket file is created mode 0600 and removed by ``close()`` (only if it
  is still the one this server created). An existing live socket or a
  non-socket file at the path is refused, never replaced; a stale socket file
  (nothing listening) is replaced.
"""

import os
import selectors
import socket
import stat
import threading

from pyvmm import __version__
from pyvmm.control import qmp
from pyvmm.control.commands import run_command
from pyvmm.errors import ControlCommandError, ControlError

VERSION = tuple(int(part) for part in __version__.split("."))


class _Session:
    """One connected client: its socket, input lines, pending output, mode."""

    def __init__(self, sock, max_line):
        self.sock = sock
        self.lines = qmp.LineBuffer(max_line)
        self.out = bytearray()
        self.negotiated = False
        self.dead = None        # why it must be dropped, once it must


def _claim_path(path):
    """Make room for a socket at ``path``: remove a stale socket file, refuse anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path}: exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)         # stale: left by a VMM that is gone
        return
    except OSError as e:
        raise ControlError(f"{path}: cannot check the existing socket: {e.strerror}") from None
    finally:
        probe.close()
    raise ControlError(f"{path}: another process is already listening on this control socket")


def _listen(path, backlog):
    _claim_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)   # before listen(): nobody can connect earlier
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ControlError(f"{path}: cannot listen for control connections: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


class ControlServer:
    """Serves the control protocol for ``target`` on the unix socket ``path``.

    Listening starts in the constructor (ControlError if the path cannot be
    used); ``close()`` (or leaving a ``with`` block) stops it.
    """

    def __init__(self, path, target, *, max_clients=16, max_line=qmp.MAX_REQUEST_LINE,
                 max_backlog=1 << 20, flush_timeout=0.5):
        self.path = os.fspath(path)
        self.max_clients = max_clients
        self.max_line = max_line
        self.max_backlog = max_backlog
        self.flush_timeout = flush_timeout
        self._target = target
        self._greeting = qmp.encode(qmp.greeting(VERSION))
        self._listener = _listen(self.path, max_clients)
        self._inode = os.stat(self.path).st_ino
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()        # guards _sessions' out/negotiated/dead and _closing
        self._sessions = {}                  # socket -> _Session (touched by the server thread only)
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=f"pyvmm-control:{self.path}", daemon=True)
        self._thread.start()

    # --- the API the VMM uses -------------------------------------------

    def emit(self, name, data=None):
        """Send event ``name`` (with ``data``, a dict) to every client in command mode.

        Callable from any thread; never blocks on a client. Does nothing once
        the server is closed.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"event name must be a non-empty string, not {name!r}")
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"event {name} data must be a dict, not {type(data).__name__}")
        message = qmp.encode(qmp.event(name, data))
        with self._lock:
            if self._closing:
                return
            for session in list(self._sessions.values()):
                if session.negotiated:
                    self._queue(session, message)
        self._wake()

    @property
    def client_count(self):
        """How many clients are connected now."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.dead is None)

    def close(self):
        """Stop serving: flush what clients are owed (up to ``flush_timeout``),
        disconnect them and remove the socket file. Idempotent; callable from
        any thread, including from inside a target command."""
        with self._lock:
            self._closing = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the server thread ------------------------------------------------

    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass                # a wake-up is already pending, or we are closed

    def _queue(self, session, data):
        """Append to a client's output (caller holds the lock); drop a client that does not read."""
        if session.dead is not None:
            return
        if len(session.out) + len(data) > self.max_backlog:
            session.dead = f"more than {self.max_backlog} bytes of output unread"
            return
        session.out += data

    def _serve(self):
        try:
            while True:
                with self._lock:
                    if self._closing:
                        break
                    sessions = list(self._sessions.values())
                for session in sessions:
                    self._update_interest(session)
                for key, mask in self._sel.select():
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._service(self._sessions[key.fileobj], mask)
        finally:
            self._shut_down()

    def _update_interest(self, session):
        if session.dead is not None:
            self._drop(session)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.out else 0)
        if self._sel.get_key(session.sock).events != events:
            self._sel.modify(session.sock, events)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self):
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        if len(self._sessions) >= self.max_clients:
            refusal = qmp.error_reply(ControlCommandError(
                qmp.GENERIC_ERROR, f"too many control clients (at most {self.max_clients})"), {})
            try:
                sock.setblocking(False)
                sock.send(qmp.encode(refusal))
            except OSError:
                pass
            sock.close()
            return
        sock.setblocking(False)
        session = _Session(sock, self.max_line)
        session.out += self._greeting
        with self._lock:
            self._sessions[sock] = session
        self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _service(self, session, mask):
        if mask & selectors.EVENT_READ:
            try:
                data = session.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as e:
                session.dead = f"read failed: {e.strerror}"
                return
            if data == b"":
                session.dead = "client closed the connection"
                return
            for line in session.lines.feed(data or b""):
                self._handle_line(session, line)
        self._flush(session)

    def _flush(self, session):
        with self._lock:
            if not session.out or session.dead is not None:
                return
            try:
                sent = session.sock.send(session.out)
            except BlockingIOError:
                return
            except OSError as e:
                session.dead = f"write failed: {e.strerror}"
                return
            del session.out[:sent]

    def _handle_line(self, session, line):
        """Answer one input line."""
        if line is qmp.OVERLONG:
            self._reply(session, qmp.error_reply(ControlCommandError(
                qmp.GENERIC_ERROR, f"input line longer than {self.max_line} bytes ignored"), {}))
            return
        if not line.strip():
            return
        try:
            obj = qmp.decode_json(line)
        except ControlCommandError as e:
            self._reply(session, qmp.error_reply(e, {}))
            return
        ident = qmp.reply_id(obj)
        try:
            request = qmp.check_request(obj)
            if not session.negotiated:
                self._negotiate(session, request, ident)
                return
            if request.command == qmp.CAPABILITIES_COMMAND:
                raise ControlCommandError(qmp.COMMAND_NOT_FOUND,
                                          "Capabilities negotiation is already complete, command ignored")
            value = run_command(self._target, request.command, request.arguments)
            try:
                reply = qmp.encode(qmp.return_reply(value, ident))
            except (TypeError, ValueError) as e:
                raise ControlCommandError(qmp.GENERIC_ERROR, f"internal error: the result of {request.command} "
                                                             f"is not JSON: {e}") from None
        except ControlCommandError as e:
            self._reply(session, qmp.error_reply(e, ident))
            return
        with self._lock:
            self._queue(session, reply)

    def _negotiate(self, session, request, ident):
        """Capabilities-negotiation mode: only ``qmp_capabilities`` is accepted."""
        if request.command != qmp.CAPABILITIES_COMMAND:
            raise ControlCommandError(qmp.COMMAND_NOT_FOUND, "Expecting capabilities negotiation with "
                                                             f"'qmp_capabilities' before command '{request.command}'")
        for name in request.arguments:
            if name != "enable":
                raise ControlCommandError(qmp.GENERIC_ERROR, f"Parameter {name!r} is unexpected")
        enable = request.arguments.get("enable", [])
        if not isinstance(enable, list):
            raise ControlCommandError(qmp.GENERIC_ERROR, "Parameter 'enable' expects a list of capabilities")
        if enable:
            raise ControlCommandError(qmp.GENERIC_ERROR, f"Capability {enable[0]!r:.80} is not offered "
                                                         "(this server offers none)")
        with self._lock:        # the reply goes out before any event
            session.negotiated = True
            self._queue(session, qmp.encode(qmp.return_reply({}, ident)))

    def _reply(self, session, message):
        with self._lock:
            self._queue(session, qmp.encode(message))

    def _drop(self, session):
        with self._lock:
            self._sessions.pop(session.sock, None)
        try:
            self._sel.unregister(session.sock)
        except (KeyError, ValueError):
            pass
        session.sock.close()

    def _shut_down(self):
        """Flush each client for at most ``flush_timeout``, close everything, remove the socket file."""
        with self._lock:
            self._closing = True
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.dead is None and session.out:
                try:
                    session.sock.settimeout(self.flush_timeout)
                    session.sock.sendall(session.out)
                except OSError:
                    pass
            self._drop(session)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass                # already gone, or replaced by someone else's file: leave it
