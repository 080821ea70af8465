"""The live-migration session: what a pre-copy source and a receiver say to each other.

Responsibility: the conversation on top of the record stream (docs/migration-stream.md,
section "Live migration session"), shared by ``precopy`` (source) and ``receiver``:

- source -> destination: one stream (version 3): ``migration/begin`` (RAM size, page
  size, the VM's config), MEMORY records of round 1, a ``migration/round`` marker,
  further rounds each closed by a marker, the last one flagged ``final`` (sent while
  the source is paused), ``migration/devices`` (the paused VM's device state), END.
- destination -> source: one stream (version 3) holding one ``migration/result``
  record (``ok``, ``error``, the receiver's counts) and END, written after the
  destination has taken the VM (``ok`` true) or refused it.

The control messages are DEVICE records whose names start with ``migration/`` and
whose blob is one state value (a map); a new record type would need a new stream
version, which older readers (and saved files) do not know.

Invariants: every control value is checked (it is a map, its keys have the types
named here) before it is used, and a bad one raises MigrationStreamError naming the
record; ``PROTOCOL`` grows when the meaning of a control message changes, and a
receiver refuses a newer one.
"""

import socket

from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate.stream import DeviceRecord, decode_value, encode_value, read_stream, write_stream

PROTOCOL = 4                     # the session protocol described above (2: "pv" in the config, PV state;
                                 # 3: "disks" in a PV guest's device map; 4: "vifs" there too)
BEGIN = "migration/begin"        # {"protocol", "page_size", "page_count", "config"}
ROUND = "migration/round"        # {"round", "pages", "final"}
DEVICES = "migration/devices"    # {"devices"}: the map SourceVm.save_devices() returned
RESULT = "migration/result"      # {"ok", "error", "pages", "rounds"}
PREFIX = "migration/"


def control(name, **fields):
    """A control message as a stream record."""
    return DeviceRecord(name, bytes(encode_value(fields)))


def control_fields(record, where, expect):
    """The fields of a control record, checked: ``expect`` maps each required key to
    the type(s) its value must have (bool is not accepted where int is asked)."""
    try:
        fields = decode_value(record.blob)
    except MigrationStreamError as e:
        raise MigrationStreamError(f"{where}: {record.name} control record: {e}") from None
    if not isinstance(fields, dict):
        raise MigrationStreamError(f"{where}: {record.name} control record holds a "
                                   f"{type(fields).__name__}, expected a map")
    for key, kind in expect.items():
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = fields.get(key)
        if key not in fields or not any((type(value) is bool) == (k is bool) and isinstance(value, k)
                                        for k in kinds):
            raise MigrationStreamError(f"{where}: {record.name} control record: field {key!r} is "
                                       f"{value!r}, expected {_kind_name(kinds)}")
    return fields


def _kind_name(kinds):
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def parse_address(where):
    """(host, port) from "HOST:PORT", "[v6addr]:PORT" or a (host, port) pair."""
    if isinstance(where, tuple) and len(where) == 2:
        host, port = where
    elif isinstance(where, str) and ":" in where:
        host, _, port = where.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    else:
        raise MigrationError(f"migration address {where!r}: expected HOST:PORT")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise MigrationError(f"migration address {where!r}: port {port!r} is not a number") from None
    if not 0 <= port <= 65535 or not host:
        raise MigrationError(f"migration address {where!r}: expected HOST:PORT with a port 0..65535")
    return host, port


def peer_name(sock):
    """The other end of a connected socket as text ("HOST:PORT", or a Unix path)."""
    try:
        peer = sock.getpeername()
    except OSError as e:
        raise MigrationError(f"migration socket is not connected: {e}") from None
    return "%s:%s" % peer[:2] if isinstance(peer, tuple) else (peer or "a local socket")


def tune(sock, timeout):
    """Small control records go out at once (no Nagle delay) and a silent peer is an
    error after ``timeout`` seconds (None: wait for ever)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)


def send_result(sock, ok, error=None, pages=0, rounds=0):
    """Write the destination's answer (a whole stream) to the source."""
    write_stream(sock, [control(RESULT, ok=ok, error=error, pages=pages, rounds=rounds)])


def read_result(sock, peer):
    """The destination's answer: a map with ``ok`` (bool) and ``error`` (str or None)."""
    where = f"migration result from {peer}"
    records = read_stream(sock, where)
    if len(records) != 1 or not isinstance(records[0], DeviceRecord) or records[0].name != RESULT:
        names = [getattr(r, "name", type(r).__name__) for r in records]
        raise MigrationStreamError(f"{where}: expected one {RESULT} record, got {names}")
    return control_fields(records[0], where, {"ok": bool, "error": (str, type(None)),
                                              "pages": int, "rounds": int})
