"""The commands of the control socket and the ControlTarget they act on.

Each command has a QMP name (QEMU's name where the meaning is the same:
``query-status``, ``stop``, ``cont``, ``migrate``, ``query-migrate``, ``quit``;
pyvmm's own ``save``), the arguments it takes with their types, and the
ControlTarget method it calls:

    query-status                      -> target.status()
    stop                              -> target.pause()
    cont                              -> target.resume()
    save {"file": PATH}               -> target.save(PATH)
    migrate {"uri": "tcp:HOST:PORT"}  -> target.migrate(HOST, PORT)
    query-migrate                     -> target.info_migrate()
    quit                              -> target.quit()

Invariants: arguments are checked completely (unknown, missing, wrongly typed,
out of range) before the target is called, so a refused request has no side
effect; whatever the target raises becomes a ControlCommandError, never an
exception that could take the server (and the VMM) down.
"""

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

from pyvmm.control.qmp import COMMAND_NOT_FOUND, GENERIC_ERROR
from pyvmm.errors import ControlCommandError, PyvmmError

VM_STATES = ("running", "paused", "shutdown")
MIGRATION_DONE = ("completed", "failed", "cancelled")
EVENTS = ("STOP", "RESUME", "SHUTDOWN", "MIGRATION")

_log = logging.getLogger("pyvmm.control")


class ControlTarget(Protocol):
    """What the control socket drives: the VM (Machine-side adapter).

    The server calls these from its own thread, one call at a time; each must
    return quickly (``migrate`` starts its work in the background). To refuse,
    raise a PyvmmError whose message says why (e.g. "VM is already paused"):
    the client gets it as a GenericError. The target reports state changes by
    calling ``ControlServer.emit(event, data)`` from any thread:

    - ``STOP`` when the vCPU stops on request, ``RESUME`` when it runs again;
    - ``SHUTDOWN`` with ``{"reason": ...}`` when the guest powers off or quits;
    - ``MIGRATION`` with ``{"status": "setup" | "active" | "completed" |
      "failed" | "cancelled", ...}`` plus progress (e.g. ``"round"``,
      ``"transferred"`` bytes, ``"remaining"`` pages, ``"downtime-ms"``) and
      ``"error"`` (a message) when failed. ``completed``, ``failed`` and
      ``cancelled`` are final: exactly one of them ends each migration.
    """

    def status(self) -> dict:
        """``{"status": "running" | "paused" | "shutdown", "exits": int,
        "uptime": seconds}``; more members are passed through."""

    def pause(self) -> None:
        """Stop the vCPU at the next exit and emit STOP."""

    def resume(self) -> None:
        """Let a paused vCPU run again and emit RESUME."""

    def save(self, path: str) -> dict | None:
        """Write the VM's state to ``path`` (an absolute path on the VMM's host)
        and return what it wrote (e.g. ``{"bytes": n}``) or None."""

    def migrate(self, host: str, port: int) -> None:
        """Start a live migration to ``host:port`` in the background."""

    def info_migrate(self) -> dict:
        """The current or last migration: ``{"status": ...}`` (``"none"`` if
        there was none) with the same progress members as MIGRATION events."""

    def quit(self) -> None:
        """Stop the VM and begin shutting the VMM down (emit SHUTDOWN)."""


@dataclass(frozen=True)
class Command:
    name: str
    params: dict                 # argument name -> checker(command, name, value) -> value
    call: Callable               # (target, **checked arguments) -> return value


def parse_host_port(text, what):
    """``(host, port)`` from ``HOST:PORT`` or ``[IPV6]:PORT``; ValueError naming ``what`` if malformed."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what} {text!r} is not HOST:PORT with a port 1-65535")
    return host, int(port)


def _text(command, name, value):
    if not isinstance(value, str) or not value or "\0" in value:
        raise ControlCommandError(GENERIC_ERROR, f"Parameter {name!r} expects a non-empty string "
                                                 f"without NUL, got {value!r:.80}", command)
    return value


def _tcp_uri(command, name, value):
    scheme, _, rest = _text(command, name, value).partition(":")
    try:
        if scheme != "tcp":
            raise ValueError(f"uri {value!r} must start with 'tcp:'")
        return parse_host_port(rest, "uri address")
    except ValueError as e:
        raise ControlCommandError(GENERIC_ERROR, f"Parameter {name!r}: {e}", command) from None


def _status(target):
    st = target.status()
    if not isinstance(st, dict) or st.get("status") not in VM_STATES:
        raise PyvmmError(f"target status {st!r:.200} lacks a 'status' in {VM_STATES}")
    return {**st, "running": st["status"] == "running"}


def _dict_or_none(value, what):
    if value is not None and not isinstance(value, dict):
        raise PyvmmError(f"target {what} returned {type(value).__name__}, not a dict")
    return value


COMMANDS = {c.name: c for c in (
    Command("query-status", {}, _status),
    Command("stop", {}, lambda t: t.pause()),
    Command("cont", {}, lambda t: t.resume()),
    Command("save", {"file": _text}, lambda t, file: _dict_or_none(t.save(file), "save")),
    Command("migrate", {"uri": _tcp_uri}, lambda t, uri: t.migrate(*uri)),
    Command("query-migrate", {}, lambda t: _dict_or_none(t.info_migrate(), "info_migrate")),
    Command("quit", {}, lambda t: t.quit()),
)}


def check_arguments(command, arguments):
    """The keyword arguments for ``command``'s call; ControlCommandError if they are wrong."""
    spec = command.params
    for name in arguments:
        if name not in spec:
            raise ControlCommandError(GENERIC_ERROR, f"Parameter {name!r} is unexpected", command.name)
    for name in spec:
        if name not in arguments:
            raise ControlCommandError(GENERIC_ERROR, f"Parameter {name!r} is missing", command.name)
    return {name: check(command.name, name, arguments[name]) for name, check in spec.items()}


def run_command(target, name, arguments):
    """Run command ``name`` on ``target``; its return value (None for none).

    Raises ControlCommandError only: CommandNotFound for an unknown name,
    GenericError for bad arguments or a target that refused or failed.
    """
    command = COMMANDS.get(name)
    if command is None:
        raise ControlCommandError(COMMAND_NOT_FOUND, f"The command {name} has not been found", name)
    kwargs = check_arguments(command, arguments)
    try:
        return command.call(target, **kwargs)
    except ControlCommandError:
        raise
    except PyvmmError as e:
        raise ControlCommandError(GENERIC_ERROR, str(e), name) from None
    except Exception as e:      # a bug in the target must not take the VMM down with it
        _log.exception("control command %s failed inside the target", name)
        raise ControlCommandError(GENERIC_ERROR, f"internal error: {type(e).__name__}: {e}", name) from None
