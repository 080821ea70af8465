"""The QMP wire format: how control messages look as bytes, both directions.

Follows QEMU's docs/interop/qmp-spec.rst ("QEMU Machine Protocol Specification"):

- the server greets with ``{"QMP": {"version": {...}, "capabilities": [...]}}``;
- a request is ``{"execute": NAME, "arguments": {...}, "id": ANY}``, where
  ``arguments`` and ``id`` are optional and no other member is allowed;
- a reply is ``{"return": VALUE}`` or ``{"error": {"class": C, "desc": D}}``,
  carrying the request's ``id`` when the request could be read far enough to
  have one;
- an event is ``{"event": NAME, "data": {...}, "timestamp": {"seconds": S,
  "microseconds": US}}`` (``data`` optional);
- the server writes ASCII (non-ASCII escaped), each message ending in CRLF.

Deviations, on purpose: messages are line-delimited (one JSON object per line;
QEMU's streaming parser also takes objects split over lines), QEMU's
single-quoted string extension is not accepted, and NaN/Infinity (not JSON)
are refused.

Invariants: every function here is pure (no sockets); a malformed input raises
ControlCommandError with class GenericError and says what was wrong, and
nothing in here can be made to raise anything else by hostile bytes.
"""

import json
import time
from dataclasses import dataclass

from pyvmm.errors import ControlCommandError

# Error classes (qemu qapi/error.json, ErrorClass); pyvmm uses these two.
GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"

CAPABILITIES_COMMAND = "qmp_capabilities"
REQUEST_MEMBERS = frozenset(("execute", "arguments", "id"))

# A line with more bytes than this is refused without being parsed.
MAX_REQUEST_LINE = 64 * 1024

OVERLONG = object()
"""What LineBuffer.feed yields in place of a line longer than its limit."""


@dataclass(frozen=True)
class Request:
    """One well-formed command request."""

    command: str
    arguments: dict


class LineBuffer:
    """Splits a byte stream into lines (``\\n``-terminated, a trailing ``\\r``
    dropped), never holding more than ``max_line`` bytes of one line.

    A longer line is reported once as OVERLONG and its remaining bytes are
    skipped up to the next newline, so the stream stays usable after it.
    """

    def __init__(self, max_line):
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data):
        """Add received bytes; return the lines they complete (bytes or OVERLONG)."""
        self._buf += data
        out = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    if not self._skipping:
                        out.append(OVERLONG)
                        self._skipping = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if self._skipping:
                self._skipping = False
            elif len(line) > self.max_line:
                out.append(OVERLONG)
            else:
                out.append(line[:-1] if line.endswith(b"\r") else line)


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def decode_json(line):
    """The JSON value of one input line (bytes); ControlCommandError if it is not JSON."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ControlCommandError(GENERIC_ERROR, f"JSON parse error, byte {line[e.start]:#04x} at offset "
                                                 f"{e.start} is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ControlCommandError(GENERIC_ERROR, f"JSON parse error, {e.msg} at column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise ControlCommandError(GENERIC_ERROR, f"JSON parse error, {e}") from None


def reply_id(obj):
    """The members a reply to ``obj`` must carry: ``{"id": ...}`` or nothing."""
    if isinstance(obj, dict) and "id" in obj:
        return {"id": obj["id"]}
    return {}


def check_request(obj):
    """The Request in a decoded input value; ControlCommandError (GenericError) if it is not one."""
    if not isinstance(obj, dict):
        raise ControlCommandError(GENERIC_ERROR, "QMP input must be a JSON object")
    for member in obj:
        if member not in REQUEST_MEMBERS:
            raise ControlCommandError(GENERIC_ERROR, f"QMP input member {member!r} is unexpected")
    if "execute" not in obj:
        raise ControlCommandError(GENERIC_ERROR, "QMP input lacks member 'execute'")
    command = obj["execute"]
    if not isinstance(command, str):
        raise ControlCommandError(GENERIC_ERROR, "QMP input member 'execute' must be a string")
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ControlCommandError(GENERIC_ERROR, "QMP input member 'arguments' must be an object", command)
    return Request(command, arguments)


def encode(message):
    """The bytes of one outgoing message: ASCII JSON and CRLF.

    Raises TypeError/ValueError if ``message`` holds something JSON cannot carry.
    """
    return (json.dumps(message, ensure_ascii=True, allow_nan=False) + "\r\n").encode("ascii")


def greeting(version, capabilities=()):
    """The greeting message; ``version`` is a (major, minor, micro) tuple of pyvmm."""
    major, minor, micro = version
    return {"QMP": {"version": {"pyvmm": {"major": major, "minor": minor, "micro": micro},
                                "package": f"pyvmm {major}.{minor}.{micro}"},
                    "capabilities": list(capabilities)}}


def return_reply(value, ident):
    """A success reply; ``None`` (a command without data) becomes ``{}``."""
    return {"return": {} if value is None else value, **ident}


def error_reply(err, ident):
    """An error reply for a ControlCommandError."""
    return {"error": {"class": err.error_class, "desc": err.desc}, **ident}


def event(name, data=None, now_ns=None):
    """An event message stamped with ``now_ns`` (ns since the epoch, default: the host clock)."""
    seconds, ns = divmod(time.time_ns() if now_ns is None else now_ns, 1_000_000_000)
    message = {"event": name, "timestamp": {"seconds": seconds, "microseconds": ns // 1000}}
    if data is not None:
        message["data"] = data
    return message


def decode_message(line):
    """A message from the server (client side): a JSON object, or ControlCommandError."""
    obj = decode_json(line)
    if not isinstance(obj, dict):
        raise ControlCommandError(GENERIC_ERROR, f"server message is not a JSON object: {line[:80]!r}")
    return obj
