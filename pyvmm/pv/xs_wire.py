"""The xenstore wire protocol (xen/include/public/io/xs_wire.h).

Responsibility: everything a xenstore client and server must agree on byte for
byte: the message types ``XS_*``, the ``xsd_sockmsg`` header and its payload
conventions (NUL-terminated strings), the errno names of ``xsd_errors``, the size
limits, and the ``xenstore_domain_interface`` page with its two byte rings
(requests to the server, replies and watch events to the client). ``XsRingPage``
moves bytes through those rings for either side; it knows nothing of the store.

Invariants:
- Ring indices run free (uint32) and are masked with ``MASK_XENSTORE_IDX``.
- Both indices of a ring are read once (a snapshot) per transfer and validated:
  a producer more than ``XENSTORE_RING_SIZE`` ahead of the consumer raises RingError
  and nothing is copied or moved.
- A header whose ``len`` exceeds ``XENSTORE_PAYLOAD_MAX`` is refused by
  ``decode_header`` with RingError (the protocol has no way to resynchronise).
"""

import enum
import errno
import struct

from pyvmm.errors import RingError
from pyvmm.pv.cstruct import Array, Struct, u8, u32

__all__ = ["XsType", "XSD_ERRORS", "XSD_SOCKMSG", "XENSTORE_DOMAIN_INTERFACE", "XsRingPage",
           "encode_message", "decode_header", "split_strings", "join_strings", "LAYOUTS"]


class XsType(enum.IntEnum):
    """``enum xsd_sockmsg_type`` (XS_DEBUG is XS_CONTROL; 20, XS_RESTRICT, was removed)."""

    XS_CONTROL = 0
    XS_DIRECTORY = 1
    XS_READ = 2
    XS_GET_PERMS = 3
    XS_WATCH = 4
    XS_UNWATCH = 5
    XS_TRANSACTION_START = 6
    XS_TRANSACTION_END = 7
    XS_INTRODUCE = 8
    XS_RELEASE = 9
    XS_GET_DOMAIN_PATH = 10
    XS_WRITE = 11
    XS_MKDIR = 12
    XS_RM = 13
    XS_SET_PERMS = 14
    XS_WATCH_EVENT = 15
    XS_ERROR = 16
    XS_IS_DOMAIN_INTRODUCED = 17
    XS_RESUME = 18
    XS_SET_TARGET = 19
    XS_RESET_WATCHES = 21
    XS_DIRECTORY_PART = 22


XS_DEBUG = XsType.XS_CONTROL
XS_TYPE_COUNT = 23
XS_INVALID = 0xFFFF

XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"

# ``xsd_errors[]`` in header order: errors travel as these names, the numbers are
# the host's (Linux) errno values.
XSD_ERRORS = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
              "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")
XSD_ERRNO = {name: getattr(errno, name) for name in XSD_ERRORS}

# enum xs_watch_type: index of the path and the token in an XS_WATCH_EVENT payload.
XS_WATCH_PATH = 0
XS_WATCH_TOKEN = 1

# struct xsd_sockmsg
XSD_SOCKMSG = Struct("xsd_sockmsg", [("type", u32), ("req_id", u32), ("tx_id", u32), ("len", u32)])
_HEADER = struct.Struct("<IIII")
HEADER_SIZE = XSD_SOCKMSG.size

XENSTORE_RING_SIZE = 1024
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3

# struct xenstore_domain_interface (``char`` rings: same layout as uint8_t)
XENSTORE_DOMAIN_INTERFACE = Struct("xenstore_domain_interface", [
    ("req", Array(u8, XENSTORE_RING_SIZE)), ("rsp", Array(u8, XENSTORE_RING_SIZE)),
    ("req_cons", u32), ("req_prod", u32), ("rsp_cons", u32), ("rsp_prod", u32),
    ("server_features", u32), ("connection", u32), ("error", u32)])

LAYOUTS = [("struct xsd_sockmsg", XSD_SOCKMSG),
           ("struct xenstore_domain_interface", XENSTORE_DOMAIN_INTERFACE)]

_IDX_MASK = 0xFFFFFFFF
_U32 = struct.Struct("<I")


def mask_xenstore_idx(idx):
    """``MASK_XENSTORE_IDX``."""
    return idx & (XENSTORE_RING_SIZE - 1)


def encode_message(msg_type, req_id, tx_id, payload=b""):
    """One message: the 16-byte ``xsd_sockmsg`` header followed by ``payload``."""
    payload = bytes(payload)
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise RingError(f"xenstore message type {int(msg_type)}: payload of {len(payload)} bytes "
                        f"exceeds XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
    return _HEADER.pack(int(msg_type), req_id & _IDX_MASK, tx_id & _IDX_MASK, len(payload)) + payload


def decode_header(data):
    """(type, req_id, tx_id, len) of the header at the start of ``data``; checks ``len``."""
    msg_type, req_id, tx_id, length = _HEADER.unpack_from(data, 0)
    if length > XENSTORE_PAYLOAD_MAX:
        raise RingError(f"xenstore message type {msg_type} req_id {req_id}: len {length} exceeds "
                        f"XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
    return msg_type, req_id, tx_id, length


def join_strings(*strings):
    """Payload of NUL-terminated strings (``str`` is UTF-8 encoded)."""
    return b"".join((s.encode() if isinstance(s, str) else bytes(s)) + b"\0" for s in strings)


def split_strings(payload):
    """The NUL-terminated strings of a payload; a missing final NUL ends the last one too."""
    payload = bytes(payload)
    if not payload:
        return []
    parts = payload.split(b"\0")
    if payload.endswith(b"\0"):
        parts.pop()
    return parts


class XsRingPage:
    """A ``xenstore_domain_interface`` page seen through a writable buffer.

    ``server_*`` methods are the xenstore daemon's side (consume ``req``, produce
    ``rsp``), ``client_*`` the guest's side. Every transfer snapshots both indices.
    """

    _OFF = {name: XENSTORE_DOMAIN_INTERFACE.offsetof(name) for name in
            ("req", "rsp", "req_cons", "req_prod", "rsp_cons", "rsp_prod",
             "server_features", "connection", "error")}

    def __init__(self, shared):
        view = memoryview(shared).cast("B")
        if view.readonly or len(view) < XENSTORE_DOMAIN_INTERFACE.size:
            raise RingError(f"xenstore ring page must be writable and hold "
                            f"{XENSTORE_DOMAIN_INTERFACE.size} bytes (got {len(view)}, "
                            f"readonly={view.readonly})")
        self.view = view[:XENSTORE_DOMAIN_INTERFACE.size]

    def get(self, name):
        return _U32.unpack_from(self.view, self._OFF[name])[0]

    def set(self, name, value):
        _U32.pack_into(self.view, self._OFF[name], value & _IDX_MASK)

    def reset(self, features=XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR):
        """Empty both rings and advertise ``features``; connection CONNECTED, no error."""
        for name in ("req_cons", "req_prod", "rsp_cons", "rsp_prod", "error"):
            self.set(name, 0)
        self.set("server_features", features)
        self.set("connection", XENSTORE_CONNECTED)

    def _snapshot(self, ring):
        cons, prod = self.get(ring + "_cons"), self.get(ring + "_prod")
        used = (prod - cons) & _IDX_MASK
        if used > XENSTORE_RING_SIZE:
            raise RingError(f"xenstore {ring} ring: producer {prod:#x} is {used:#x} bytes ahead "
                            f"of consumer {cons:#x}; the ring holds {XENSTORE_RING_SIZE}")
        return cons, prod, used

    def _read(self, ring, limit):
        cons, _, used = self._snapshot(ring)
        count = min(used, limit)
        base = self._OFF[ring]
        start = mask_xenstore_idx(cons)
        first = min(count, XENSTORE_RING_SIZE - start)
        data = bytes(self.view[base + start:base + start + first]) + \
            bytes(self.view[base:base + count - first])
        self.set(ring + "_cons", cons + count)
        return data

    def _write(self, ring, data):
        _, prod, used = self._snapshot(ring)
        count = min(len(data), XENSTORE_RING_SIZE - used)
        base = self._OFF[ring]
        start = mask_xenstore_idx(prod)
        first = min(count, XENSTORE_RING_SIZE - start)
        self.view[base + start:base + start + first] = data[:first]
        self.view[base:base + count - first] = data[first:count]
        self.set(ring + "_prod", prod + count)
        return count

    def readable(self, ring):
        """Bytes waiting in ``ring`` ("req" or "rsp"), validated."""
        return self._snapshot(ring)[2]

    def server_read(self, limit=XENSTORE_RING_SIZE):
        """Take up to ``limit`` request bytes."""
        return self._read("req", limit)

    def server_write(self, data):
        """Put as much of ``data`` as fits into the reply ring; returns the count written."""
        return self._write("rsp", bytes(data))

    def client_write(self, data):
        """Put as much of ``data`` as fits into the request ring; returns the count written."""
        return self._write("req", bytes(data))

    def client_read(self, limit=XENSTORE_RING_SIZE):
        """Take up to ``limit`` reply bytes."""
        return self._read("rsp", limit)
