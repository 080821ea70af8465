"""Xen shared request/response rings (xen/include/public/io/ring.h) over one shared page.

Responsibility: the io/ring.h protocol between a frontend and a backend that share
one page: the shared header (req_prod, req_event, rsp_prod, rsp_event, pvt, __pad),
the ring of request/response entries after it, the number of entries as
``__RING_SIZE`` computes it, and each end's private indices and macros
(``BackRing``: req_cons/rsp_prod_pvt; ``FrontRing``: req_prod_pvt/rsp_cons). It is
generic over the request and response layouts (``RingLayout`` as
``DEFINE_RING_TYPES`` instantiates them for blkif, netif ...).

Invariants:
- Indices are ``RING_IDX`` (uint32) and run free; they wrap modulo 2**32 and are
  masked with ``size - 1`` only to find a slot (``size`` is a power of two).
- Every shared index the peer writes is read once into a local (a snapshot),
  validated, and only the snapshot is used: a hostile peer may change the page at
  any time. A producer index that claims more entries than can exist
  (``RING_REQUEST_PROD_OVERFLOW`` / ``RING_RESPONSE_PROD_OVERFLOW``) raises RingError
  before anything is consumed, and this end's private state stays as it was.
- Entries are copied out of the page before use (``RING_COPY_REQUEST``): the
  caller gets a dict that the peer can no longer change.
- Notifications follow ring.h exactly: a push notifies iff the peer's event index
  lies in (old producer, new producer]; a final check re-arms the event index at
  consumer + 1 and looks once more.
"""

import struct

from pyvmm.errors import RingError
from pyvmm.pv.cstruct import Array, Struct, Union, u8, u32

__all__ = ["RING_IDX", "SRING_PVT", "SRING_HEADER", "RingLayout", "rd32", "FrontRing", "BackRing",
           "init_shared_ring", "LAYOUTS"]

RING_IDX = u32            # io/ring.h: typedef unsigned int RING_IDX;
_IDX_MASK = 0xFFFFFFFF
_U32 = struct.Struct("<I")

# io/ring.h, DEFINE_RING_TYPES: the anonymous union ``pvt`` of struct __name##_sring.
SRING_PVT = Union("sring_pvt", [
    ("netif", Struct("sring_pvt_netif", [("smartpoll_active", u8)])),
    ("tapif_user", Struct("sring_pvt_tapif_user", [("msg", u8)])),
    ("pvt_pad", Array(u8, 4)),
])

# io/ring.h, struct __name##_sring without its variable-length ``ring[]``.
SRING_HEADER = Struct("sring_header", [
    ("req_prod", RING_IDX), ("req_event", RING_IDX),
    ("rsp_prod", RING_IDX), ("rsp_event", RING_IDX),
    ("pvt", SRING_PVT),
    ("__pad", Array(u8, 44)),
])

_REQ_PROD = SRING_HEADER.offsetof("req_prod")
_REQ_EVENT = SRING_HEADER.offsetof("req_event")
_RSP_PROD = SRING_HEADER.offsetof("rsp_prod")
_RSP_EVENT = SRING_HEADER.offsetof("rsp_event")


def rd32(x):
    """``__RD32``: round a 32-bit unsigned value down to a power of two (0 stays 0)."""
    x &= _IDX_MASK
    return 1 << (x.bit_length() - 1) if x else 0


class RingLayout:
    """What ``DEFINE_RING_TYPES(name, req_t, rsp_t)`` declares, as cstruct objects.

    ``entry`` is ``union name_sring_entry``; ``sring`` is ``struct name_sring`` with
    its one-element ``ring[1]``, so ``sring.size`` equals C's ``sizeof(name_sring_t)``.
    """

    def __init__(self, name, request, response):
        self.name = name
        self.request = request
        self.response = response
        self.entry = Union(f"{name}_sring_entry", [("req", request), ("rsp", response)])
        self.sring = Struct(f"{name}_sring", SRING_HEADER.members + [("ring", Array(self.entry, 1))])
        self.ring_offset = self.sring.offsetof("ring")

    def ring_size(self, page_bytes=4096):
        """``__CONST_RING_SIZE(name, page_bytes)``: entries that fit, rounded down to 2**k."""
        if page_bytes < self.ring_offset + self.entry.size:
            raise RingError(f"{self.name} ring: {page_bytes} bytes hold no entry of "
                            f"{self.entry.size} bytes after the {self.ring_offset}-byte header")
        return rd32((page_bytes - self.ring_offset) // self.entry.size)

    def layouts(self):
        """(typedef name, aggregate) pairs for printing and the gcc check."""
        return [(f"union {self.name}_sring_entry", self.entry), (f"{self.name}_sring_t", self.sring)]


# ring.h declares no type by itself: its instantiations (blkif_sring_t, netif_tx_sring_t ...)
# are listed in the LAYOUTS of blkif.py and netif.py, which the gcc test checks.
LAYOUTS = []


def _writable_view(shared, page_bytes):
    view = memoryview(shared).cast("B")
    if view.readonly:
        raise RingError("shared ring page is read-only; both ends write indices into it")
    if len(view) < page_bytes:
        raise RingError(f"shared ring page has {len(view)} bytes, the ring needs {page_bytes}")
    return view[:page_bytes]


def init_shared_ring(shared, start=0):
    """``SHARED_RING_INIT``: producers at ``start``, events at ``start + 1``, pads zeroed.

    ring.h always starts at 0; a non-zero ``start`` places a fresh ring close to the
    2**32 wrap (tests, and resuming a ring whose indices are already running).
    """
    view = memoryview(shared).cast("B")
    start &= _IDX_MASK
    SRING_HEADER.pack_into(view, 0, {
        "req_prod": start, "req_event": (start + 1) & _IDX_MASK,
        "rsp_prod": start, "rsp_event": (start + 1) & _IDX_MASK,
        "pvt": {"pvt_pad": b""}, "__pad": b""})


class _RingEnd:
    """State and helpers shared by both ends: the page, the layout and ``nr_ents``."""

    def __init__(self, shared, layout, page_bytes, start):
        self.layout = layout
        self.page_bytes = page_bytes
        self.view = _writable_view(shared, page_bytes)
        self.size = layout.ring_size(page_bytes)     # RING_SIZE(_r) = nr_ents
        self._start = start & _IDX_MASK

    def _get(self, offset):
        return _U32.unpack_from(self.view, offset)[0]

    def _set(self, offset, value):
        _U32.pack_into(self.view, offset, value & _IDX_MASK)

    def _slot(self, idx):
        return self.layout.ring_offset + (idx & (self.size - 1)) * self.layout.entry.size

    def _write_entry(self, idx, layout, fields):
        """Zero the slot of ``idx`` and pack ``fields`` into it with ``layout``."""
        slot = self._slot(idx)
        self.view[slot:slot + self.layout.entry.size] = bytes(self.layout.entry.size)
        layout.pack_into(self.view, slot, fields)

    def _read_entries(self, idx, count, layout):
        """Copies of ``count`` entries from ``idx`` on, unpacked with ``layout``."""
        return [layout.unpack_from(self.view, self._slot(idx + i)) for i in range(count)]

    def _push(self, prod_off, event_off, new):
        """``RING_PUSH_*_AND_CHECK_NOTIFY``: publish ``new``, notify iff event in (old, new]."""
        old = self._get(prod_off)
        self._set(prod_off, new)
        event = self._get(event_off)
        return ((new - event) & _IDX_MASK) < ((new - old) & _IDX_MASK)


class BackRing(_RingEnd):
    """The backend's end: consumes requests, produces responses (``BACK_RING_ATTACH``)."""

    def __init__(self, shared, layout, page_bytes=4096, start=0):
        super().__init__(shared, layout, page_bytes, start)
        self.rsp_prod_pvt = self._start
        self.req_cons = self._start

    def unconsumed_requests(self):
        """``RING_HAS_UNCONSUMED_REQUESTS`` on one validated snapshot of ``req_prod``."""
        prod = self._get(_REQ_PROD)
        ahead = (prod - self.rsp_prod_pvt) & _IDX_MASK
        if ahead > self.size:                              # RING_REQUEST_PROD_OVERFLOW
            raise RingError(f"{self.layout.name} ring: request producer {prod:#x} is {ahead:#x} "
                            f"entries past rsp_prod_pvt {self.rsp_prod_pvt:#x}, but the ring "
                            f"holds {self.size} (producer too far ahead)")
        if ((self.req_cons - self.rsp_prod_pvt) & _IDX_MASK) > ahead:
            raise RingError(f"{self.layout.name} ring: request producer {prod:#x} moved back "
                            f"behind req_cons {self.req_cons:#x}")
        req = (prod - self.req_cons) & _IDX_MASK
        rsp = self.size - ((self.req_cons - self.rsp_prod_pvt) & _IDX_MASK)
        return min(req, rsp)

    def take_requests(self, limit=None):
        """Copy out and consume the requests available now, oldest first.

        Raises RingError (and consumes nothing) if ``req_prod`` is further ahead than
        the ring can hold. Stops at ``RING_REQUEST_CONS_OVERFLOW`` (no free response
        slot) and after ``limit`` requests.
        """
        count = self.unconsumed_requests()
        if limit is not None:
            count = min(count, limit)
        out = self._read_entries(self.req_cons, count, self.layout.request)
        self.req_cons = (self.req_cons + count) & _IDX_MASK
        return out

    def request_cons_overflow(self, cons=None):
        """``RING_REQUEST_CONS_OVERFLOW``: would consuming at ``cons`` leave no response slot?"""
        cons = self.req_cons if cons is None else cons
        return ((cons - self.rsp_prod_pvt) & _IDX_MASK) >= self.size

    def put_response(self, **fields):
        """Write one response at ``rsp_prod_pvt`` (not yet visible to the frontend)."""
        if self.rsp_prod_pvt == self.req_cons:
            raise RingError(f"{self.layout.name} ring: response without an outstanding request "
                            f"(rsp_prod_pvt == req_cons == {self.req_cons:#x})")
        self._write_entry(self.rsp_prod_pvt, self.layout.response, fields)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & _IDX_MASK

    def push_responses(self):
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: True if the frontend must be notified."""
        return self._push(_RSP_PROD, _RSP_EVENT, self.rsp_prod_pvt)

    def final_check_for_requests(self):
        """``RING_FINAL_CHECK_FOR_REQUESTS``: arm ``req_event`` and report pending work."""
        if self.unconsumed_requests():
            return True
        self._set(_REQ_EVENT, self.req_cons + 1)
        return bool(self.unconsumed_requests())


class FrontRing(_RingEnd):
    """The frontend's end: produces requests, consumes responses (``FRONT_RING_ATTACH``).

    ``init=True`` also does ``SHARED_RING_INIT`` (``XEN_FRONT_RING_INIT``).
    """

    def __init__(self, shared, layout, page_bytes=4096, start=0, init=True):
        super().__init__(shared, layout, page_bytes, start)
        if init:
            init_shared_ring(self.view, self._start)
        self.req_prod_pvt = self._start
        self.rsp_cons = self._start

    def free_requests(self):
        """``RING_FREE_REQUESTS``."""
        return self.size - ((self.req_prod_pvt - self.rsp_cons) & _IDX_MASK)

    def full(self):
        return self.free_requests() == 0

    def put_request(self, **fields):
        """Write one request at ``req_prod_pvt`` (not yet visible to the backend)."""
        if self.full():
            raise RingError(f"{self.layout.name} ring: full ({self.size} requests outstanding)")
        self._write_entry(self.req_prod_pvt, self.layout.request, fields)
        self.req_prod_pvt = (self.req_prod_pvt + 1) & _IDX_MASK

    def push_requests(self):
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: True if the backend must be notified."""
        return self._push(_REQ_PROD, _REQ_EVENT, self.req_prod_pvt)

    def unconsumed_responses(self):
        """``RING_HAS_UNCONSUMED_RESPONSES`` on one validated snapshot of ``rsp_prod``."""
        prod = self._get(_RSP_PROD)
        outstanding = (self.req_prod_pvt - self.rsp_cons) & _IDX_MASK
        available = (prod - self.rsp_cons) & _IDX_MASK
        if available > outstanding:        # stricter than RING_RESPONSE_PROD_OVERFLOW
            raise RingError(f"{self.layout.name} ring: response producer {prod:#x} is {available} "
                            f"past rsp_cons {self.rsp_cons:#x}, but only {outstanding} requests "
                            f"are outstanding")
        return available

    def take_responses(self, limit=None):
        """Copy out and consume the responses available now, oldest first."""
        count = self.unconsumed_responses()
        if limit is not None:
            count = min(count, limit)
        out = self._read_entries(self.rsp_cons, count, self.layout.response)
        self.rsp_cons = (self.rsp_cons + count) & _IDX_MASK
        return out

    def final_check_for_responses(self):
        """``RING_FINAL_CHECK_FOR_RESPONSES``: arm ``rsp_event`` and report pending work."""
        if self.unconsumed_responses():
            return True
        self._set(_RSP_EVENT, self.rsp_cons + 1)
        return bool(self.unconsumed_responses())
