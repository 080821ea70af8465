"""blkback: domain 0's server for one guest block device (xen/include/public/io/blkif.h).

Responsibility: the blkif protocol of one (frontend domain, device) pair on a
``DiskImage``: what the backend publishes in the handshake (sectors, sector-size,
info, feature-flush-cache, feature-discard), and serving each request: validating
it, doing its I/O through grant-mapped segment pages, answering with its status.
The split-driver mechanics (the ``ring-ref`` mapping, the event channel, the
request loop with notification suppression, disconnecting a hostile frontend) are
``SplitBackend``'s (devices/backend.py).

Invariants:
- A request is validated completely (operation, nr_segments, every segment's
  first_sect <= last_sect < sectors per page, every gref mappable by the frontend
  in the direction the operation needs, the sector range inside the image) before
  the image is touched; a bad request gets BLKIF_RSP_ERROR (BLKIF_RSP_EOPNOTSUPP
  for an operation this backend does not serve) and changes nothing.
- Every segment mapping made for a request is unmapped before its response is
  written; between requests the backend holds only the ring page mapping.
- A frontend that breaks the ring protocol (a producer index further ahead than
  the ring holds) is disconnected as SplitBackend says; nothing of that batch
  reaches the image.
- A read-only image (``info`` has VDISK_READONLY) refuses WRITE and DISCARD.

Deviations: indirect requests (BLKIF_OP_INDIRECT), barriers (BLKIF_OP_WRITE_BARRIER)
and secure discard are not offered (not advertised; answered with EOPNOTSUPP);
one ring page (no multi-page rings, ``ring-page-order``); requests are served
synchronously inside the notification, so "in flight" means queued on the ring.
"""

import struct

from pyvmm.devices import blkif
from pyvmm.devices.backend import SplitBackend
from pyvmm.devices.ring import RingLayout
from pyvmm.errors import PyvmmError
from pyvmm.pv import abi
from pyvmm.pv.cstruct import Union

__all__ = ["Blkback", "SECTOR_SIZE", "SECTORS_PER_PAGE", "BLKIF_REQUEST_VIEWS"]

SECTOR_SIZE = 512                                   # blkif.h: sector numbers are 512-byte units
SECTORS_PER_PAGE = abi.PAGE_SIZE // SECTOR_SIZE     # so last_sect <= 7 for 4 KiB pages

# blkif_request_t read with one precompiled struct (the generic cstruct walk cost more
# than the I/O of a request); the asserts tie every offset to blkif.py's layouts, and
# tests/devices/block/test_blkback_decode.py compares both readings on random bytes.
_RW = struct.Struct("<BBH4xQQ" + "IBB2x" * blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)
_DISCARD_TAIL = struct.Struct("<Q")          # blkif_request_discard_t.nr_sectors
_REQ, _SEG = blkif.BLKIF_REQUEST, blkif.BLKIF_SEGMENT
assert _RW.size == _REQ.size and _SEG.size == 8
assert [_REQ.offsetof(n) for n in ("operation", "nr_segments", "handle", "id", "sector_number", "seg")] \
    == [0, 1, 2, 8, 16, 24]
assert [_SEG.offsetof(n) for n in ("gref", "first_sect", "last_sect")] == [0, 4, 5]
assert [blkif.BLKIF_REQUEST_DISCARD.offsetof(n) for n in ("flag", "nr_sectors")] == [1, 24]


class _RequestViews(Union):
    """The ring entry a request slot holds, read as each request kind blkif.h overlays
    there (blkif_request_t and blkif_request_discard_t share operation/handle/id/
    sector_number); one copy of the slot gives both readings of the same bytes.
    ``rw["seg"]`` holds the first min(nr_segments, 11) segments (the ones that count)."""

    def unpack_from(self, buf, offset=0):
        v = _RW.unpack_from(buf, offset)
        nseg = min(v[1], blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)
        rw = {"operation": v[0], "nr_segments": v[1], "handle": v[2], "id": v[3], "sector_number": v[4],
              "seg": [{"gref": v[5 + 3 * i], "first_sect": v[6 + 3 * i], "last_sect": v[7 + 3 * i]}
                      for i in range(nseg)]}
        discard = {"operation": v[0], "flag": v[1], "handle": v[2], "id": v[3], "sector_number": v[4],
                   "nr_sectors": _DISCARD_TAIL.unpack_from(buf, offset + 24)[0]}
        return {"rw": rw, "discard": discard}


BLKIF_REQUEST_VIEWS = _RequestViews("blkif_request_views", [
    ("rw", blkif.BLKIF_REQUEST), ("discard", blkif.BLKIF_REQUEST_DISCARD)])
_RING = RingLayout("blkif", BLKIF_REQUEST_VIEWS, blkif.BLKIF_RESPONSE)
assert BLKIF_REQUEST_VIEWS.size == blkif.BLKIF_REQUEST.size
assert _RING.entry.size == blkif.BLKIF_RING.entry.size and _RING.ring_offset == blkif.BLKIF_RING.ring_offset

_SERVED = {blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE, blkif.BLKIF_OP_FLUSH_DISKCACHE,
           blkif.BLKIF_OP_DISCARD}


class BadRequest(PyvmmError):
    """One blkif request that cannot be served; ``status`` is the BLKIF_RSP_* to answer."""

    def __init__(self, status, what):
        self.status = status
        super().__init__(what)


class Blkback(SplitBackend):
    """The backend of device ``devid`` of domain ``frontend_domid``, served from ``backend``.

    ``backend`` is the Python-side domain (domain 0) that maps grants and owns the
    event channel; ``client`` its xenstore client; ``image`` an open DiskImage.
    ``start()`` begins the handshake (the toolstack created the directories).
    ``error`` records why the frontend was disconnected; ``served`` counts responses
    by status.
    """

    DEVTYPE = "vbd"
    RINGS = (("ring-ref", _RING),)
    REQUEST_RING = "ring-ref"

    def __init__(self, backend, client, frontend_domid, devid, image):
        self.image = image
        self.readonly = bool(image.readonly)
        self.sectors = image.size // SECTOR_SIZE
        self.served = {blkif.BLKIF_RSP_OKAY: 0, blkif.BLKIF_RSP_ERROR: 0, blkif.BLKIF_RSP_EOPNOTSUPP: 0}
        details = {"sectors": self.sectors, "sector-size": SECTOR_SIZE,
                   "info": blkif.VDISK_READONLY if self.readonly else 0,
                   "feature-flush-cache": 1, "feature-discard": 0 if self.readonly else 1,
                   "discard-granularity": SECTOR_SIZE, "discard-alignment": 0}
        super().__init__(backend, client, frontend_domid, devid, details)

    @property
    def ring(self):
        """The blkif BackRing while connected, else None."""
        return self.rings.get("ring-ref")

    # --- the requests ----------------------------------------------------------------

    def serve(self, requests):
        """Do each request in ring order and write its response."""
        ring = self.ring
        for entry in requests:
            req = entry["rw"]
            status = self._serve(entry)
            self.served[status] += 1
            ring.put_response(id=req["id"], operation=req["operation"], status=status)

    def _serve(self, entry):
        """Do one request; returns its BLKIF_RSP_* status."""
        op = entry["rw"]["operation"]
        try:
            if op not in _SERVED:
                raise BadRequest(blkif.BLKIF_RSP_EOPNOTSUPP, f"operation {op} is not served")
            if op == blkif.BLKIF_OP_FLUSH_DISKCACHE:
                self.image.flush()
            elif op == blkif.BLKIF_OP_DISCARD:
                self._discard(entry["discard"])
            else:
                self._read_write(entry["rw"])
        except BadRequest as err:
            return err.status
        except (PyvmmError, OSError):
            return blkif.BLKIF_RSP_ERROR
        return blkif.BLKIF_RSP_OKAY

    def _check_range(self, what, sector, nr_sectors):
        if sector + nr_sectors > self.sectors:
            raise BadRequest(blkif.BLKIF_RSP_ERROR,
                             f"{what} of sectors {sector}..{sector + nr_sectors - 1} is past the "
                             f"end of the disk ({self.sectors} sectors)")

    def _discard(self, req):
        if self.readonly:
            raise BadRequest(blkif.BLKIF_RSP_ERROR, "discard on a read-only disk")
        if req["flag"] & blkif.BLKIF_DISCARD_SECURE:
            raise BadRequest(blkif.BLKIF_RSP_EOPNOTSUPP, "secure discard is not offered")
        self._check_range("discard", req["sector_number"], req["nr_sectors"])
        self.image.discard(req["sector_number"] * SECTOR_SIZE, req["nr_sectors"] * SECTOR_SIZE)

    def _segments(self, req):
        """The request's segments as (gref, byte offset in page, bytes), checked."""
        count = req["nr_segments"]
        if not 1 <= count <= blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise BadRequest(blkif.BLKIF_RSP_ERROR, f"nr_segments {count} is not in "
                                                    f"1..{blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST}")
        out = []
        for seg in req["seg"][:count]:
            first, last = seg["first_sect"], seg["last_sect"]
            if not first <= last < SECTORS_PER_PAGE:
                raise BadRequest(blkif.BLKIF_RSP_ERROR, f"segment sectors {first}..{last} are not "
                                                        f"within one page")
            out.append((seg["gref"], first * SECTOR_SIZE, (last - first + 1) * SECTOR_SIZE))
        return out

    def _read_write(self, req):
        writing = req["operation"] == blkif.BLKIF_OP_WRITE
        if writing and self.readonly:
            raise BadRequest(blkif.BLKIF_RSP_ERROR, "write on a read-only disk")
        segments = self._segments(req)
        total = sum(length for _, _, length in segments)
        self._check_range("write" if writing else "read", req["sector_number"], total // SECTOR_SIZE)
        offset = req["sector_number"] * SECTOR_SIZE
        # A WRITE only reads the frontend's pages: map them read-only, as Linux's blkback does.
        with self.frontend_pages([gref for gref, _, _ in segments], writable=not writing) as pages:
            if writing:
                data = b"".join(bytes(page[start:start + length])
                                for page, (_, start, length) in zip(pages, segments))
                self.image.write(offset, data)
            else:
                data = memoryview(self.image.read(offset, total))
                pos = 0
                for page, (_, start, length) in zip(pages, segments):
                    page[start:start + length] = data[pos:pos + length]
                    pos += length
