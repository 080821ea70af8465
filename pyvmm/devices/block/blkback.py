"""blkback: domain 0's server for one guest block device (xen/include/public/io/blkif.h).

Responsibility: the blkif protocol of one (frontend domain, device) pair on a
``DiskImage``: what the backend publishes in the handshake (sectors, sector-size,
info, feature-flush-cache, feature-discard, feature-persistent,
feature-max-indirect-segments), what it takes from the frontend's (feature-persistent),
and serving each request: validating it, doing its I/O straight between the image and
the granted pages of guest RAM (``DiskImage.readv``/``writev``: one preadv/pwritev for
a request whose range is contiguous in the image), answering with its status.
Decoding a request slot is request.py's; keeping grants mapped is persistent.py's;
the split-driver mechanics (the ``ring-ref`` mapping, the event channel, the request
loop with notification suppression, disconnecting a hostile frontend) are
``SplitBackend``'s (devices/backend.py).

Features, as Linux's xen-blkback offers them:
- BLKIF_OP_INDIRECT (``feature-max-indirect-segments`` = 256, Linux's
  MAX_INDIRECT_SEGMENTS): a READ/WRITE of up to 256 segments (1 MiB) whose segment
  array is in frontend pages named by ``indirect_grefs``; the response carries the
  ``indirect_op`` (READ/WRITE), as Linux's blkback answers (its frontend only knows
  those).
- ``feature-persistent``: when the frontend also writes it, every grant a request
  uses (data and indirect pages) is mapped writable once and kept until the
  connection ends (up to ``MAX_PERSISTENT_GRANTS``; past it, per request); without
  it each request maps its pages (a WRITE's read-only) and unmaps them before its
  response. A restored backend reads the frontend's choice again and maps afresh.

Invariants:
- A request is validated completely (operation, nr_segments, every segment's
  first_sect <= last_sect < sectors per page, the indirect pages and every gref
  mappable by the frontend in the direction the operation needs, the sector range
  inside the image) before the image is touched; a bad request gets BLKIF_RSP_ERROR
  (BLKIF_RSP_EOPNOTSUPP for an operation this backend does not serve) and changes
  nothing in the image or the frontend's pages.
- Indirect pages are copied before their segments are read (the frontend cannot
  change a request after it was checked).
- Without persistent grants, every mapping made for a request is unmapped before its
  response is written; with them, the kept mappings are unmapped at teardown (the
  frontend closes or is disconnected), and a grant that cannot be mapped leaves the
  kept set as it was (a refused request's good grants, an indirect page, may stay).
- A frontend that breaks the ring protocol (a producer index further ahead than
  the ring holds) is disconnected as SplitBackend says; nothing of that batch
  reaches the image.
- A read-only image (``info`` has VDISK_READONLY) refuses WRITE and DISCARD.

Deviations: barriers (BLKIF_OP_WRITE_BARRIER) and secure discard are not offered
(not advertised; answered with EOPNOTSUPP); one ring page (no multi-page rings,
``ring-page-order``); kept persistent grants are not evicted (no LRU: past the limit
a grant is mapped per request); requests are served synchronously inside the
notification, so "in flight" means queued on the ring.
"""

from pyvmm.devices import blkif
from pyvmm.devices.backend import SplitBackend
from pyvmm.devices.block.persistent import PersistentGrants
from pyvmm.devices.block.request import (BLKIF_REQUEST_VIEWS, BLKIF_RESPONSE_FAST, SECTOR_SIZE,
                                         SECTORS_PER_PAGE, SEGMENT_SIZE, SEGMENTS_PER_INDIRECT_PAGE, BadRequest,
                                         indirect_frames, parse_segments)
from pyvmm.devices.ring import RingLayout
from pyvmm.errors import MigrationStreamError, PyvmmError
from pyvmm.pv import abi

__all__ = ["Blkback", "SECTOR_SIZE", "SECTORS_PER_PAGE", "BLKIF_REQUEST_VIEWS", "BadRequest"]

_RING = RingLayout("blkif", BLKIF_REQUEST_VIEWS, BLKIF_RESPONSE_FAST)
assert _RING.entry.size == blkif.BLKIF_RING.entry.size and _RING.ring_offset == blkif.BLKIF_RING.ring_offset

_READ, _WRITE = blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE
_OKAY, _ERROR = blkif.BLKIF_RSP_OKAY, blkif.BLKIF_RSP_ERROR
_READ_ONLY_MAP = abi.GNTMAP_host_map | abi.GNTMAP_readonly
FEATURE_PERSISTENT = "feature-persistent"
FEATURE_MAX_INDIRECT = "feature-max-indirect-segments"


class Blkback(SplitBackend):
    """The backend of device ``devid`` of domain ``frontend_domid``, served from ``backend``.

    ``backend`` is the Python-side domain (domain 0) that maps grants and owns the
    event channel; ``client`` its xenstore client; ``image`` an open DiskImage.
    ``max_indirect_segments`` (0: no BLKIF_OP_INDIRECT) and ``persistent`` (offer
    feature-persistent) default to the class's values. ``start()`` begins the
    handshake (the toolstack created the directories). ``error`` records why the
    frontend was disconnected; ``served`` counts responses by status; ``persistent``
    is the PersistentGrants of the connection while the frontend negotiated them.
    """

    DEVTYPE = "vbd"
    RINGS = (("ring-ref", _RING),)
    REQUEST_RING = "ring-ref"
    FRONTEND_OPTIONAL_KEYS = (FEATURE_PERSISTENT,)
    MAX_INDIRECT_SEGMENTS = 256          # Linux xen-blkback's MAX_INDIRECT_SEGMENTS (1 MiB)
    PERSISTENT_GRANTS = True
    # blkif.h, feature-persistent: "ideally ... RING_SIZE * BLKIF_MAX_SEGMENTS_PER_REQUEST"
    MAX_PERSISTENT_GRANTS = 32 * blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST

    def __init__(self, backend, client, frontend_domid, devid, image, max_indirect_segments=None,
                 persistent=None):
        self.image = image
        self.readonly = bool(image.readonly)
        self.sectors = image.size // SECTOR_SIZE
        self.served = {blkif.BLKIF_RSP_OKAY: 0, blkif.BLKIF_RSP_ERROR: 0, blkif.BLKIF_RSP_EOPNOTSUPP: 0}
        self.max_indirect = self.MAX_INDIRECT_SEGMENTS if max_indirect_segments is None \
            else max_indirect_segments
        limit = blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE
        if not 0 <= self.max_indirect <= limit:
            raise PyvmmError(f"max_indirect_segments {self.max_indirect} is not in 0..{limit}")
        self.offer_persistent = self.PERSISTENT_GRANTS if persistent is None else persistent
        self.persistent = None
        details = {"sectors": self.sectors, "sector-size": SECTOR_SIZE,
                   "info": blkif.VDISK_READONLY if self.readonly else 0,
                   "feature-flush-cache": 1, "feature-discard": 0 if self.readonly else 1,
                   "discard-granularity": SECTOR_SIZE, "discard-alignment": 0,
                   FEATURE_PERSISTENT: int(bool(self.offer_persistent))}
        if self.max_indirect:            # blkif.h: without BLKIF_OP_INDIRECT, no such node
            details[FEATURE_MAX_INDIRECT] = self.max_indirect
        super().__init__(backend, client, frontend_domid, devid, details)

    @property
    def ring(self):
        """The blkif BackRing while connected, else None."""
        return self.rings.get("ring-ref")

    # --- save / restore: the connection (SplitBackend) and the response counts ---------

    def save(self):
        state = super().save()
        state["served"] = [self.served[status] for status in sorted(self.served)]
        return state

    def restore(self, state):
        if not isinstance(state, dict):
            raise MigrationStreamError(f"{self.name} backend state: expected a map")
        state = dict(state)
        served = state.pop("served", None)
        if not (isinstance(served, list) and len(served) == len(self.served)
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 64 for n in served)):
            raise MigrationStreamError(f"{self.name} backend state field 'served': {served!r} is not "
                                       f"{len(self.served)} counts")
        super().restore(state)
        self.served = dict(zip(sorted(self.served), served))
        if self.connected:      # the features the frontend negotiated (its xenstore directory
            self.check_frontend(self.frontend_features())    # is restored); grants map afresh

    # --- the connection's features -----------------------------------------------------

    def check_frontend(self, values):
        """Use persistent grants if both ends offer them (the frontend's value is 0/1)."""
        self.persistent = None
        if self.offer_persistent and values.get(FEATURE_PERSISTENT, "0").strip() == "1":
            self.persistent = PersistentGrants(self.backend.grant_table, self.frontend_domid,
                                               self.MAX_PERSISTENT_GRANTS)

    def drop_connection(self):
        """Unmap the persistent grants (the connection ends)."""
        if self.persistent is not None:
            self.persistent.release()
            self.persistent = None

    # --- the requests ----------------------------------------------------------------

    def serve(self, requests):
        """Do each request in ring order and write its response."""
        ring = self.ring
        served = self.served
        for req in requests:
            operation, status = self._serve(req)
            served[status] += 1
            ring.put_response(id=req.id, operation=operation, status=status)

    def _serve(self, req):
        """Do one request; returns (the operation to answer with, its BLKIF_RSP_* status)."""
        op = req.operation
        try:
            if op == _READ or op == _WRITE:
                self._read_write(op == _WRITE, req.sector_number, req.inline_segments())
            elif op == blkif.BLKIF_OP_INDIRECT and self.max_indirect:
                op, count, sector, grefs = req.indirect_values()   # answered with indirect_op, as
                if op != _READ and op != _WRITE:                     # Linux's blkback does
                    raise BadRequest(_ERROR, f"indirect operation {op} is neither READ nor WRITE")
                self._read_write(op == _WRITE, sector, self._indirect_segments(count, grefs))
            elif op == blkif.BLKIF_OP_FLUSH_DISKCACHE:
                self.image.flush()
            elif op == blkif.BLKIF_OP_DISCARD:
                self._discard(req.discard())
            else:
                raise BadRequest(blkif.BLKIF_RSP_EOPNOTSUPP, f"operation {op} is not served")
        except BadRequest as err:
            return op, err.status
        except (PyvmmError, OSError):
            return op, _ERROR
        return op, _OKAY

    def _check_range(self, what, sector, nr_sectors):
        if sector + nr_sectors > self.sectors:
            raise BadRequest(_ERROR, f"{what} of sectors {sector}..{sector + nr_sectors - 1} is past "
                                     f"the end of the disk ({self.sectors} sectors)")

    def _discard(self, req):
        if self.readonly:
            raise BadRequest(_ERROR, "discard on a read-only disk")
        if req["flag"] & blkif.BLKIF_DISCARD_SECURE:
            raise BadRequest(blkif.BLKIF_RSP_EOPNOTSUPP, "secure discard is not offered")
        self._check_range("discard", req["sector_number"], req["nr_sectors"])
        self.image.discard(req["sector_number"] * SECTOR_SIZE, req["nr_sectors"] * SECTOR_SIZE)

    def _indirect_segments(self, count, indirect_grefs):
        """The ``count`` segments of an indirect request, copied out of its indirect pages."""
        if not 1 <= count <= self.max_indirect:
            raise BadRequest(_ERROR, f"indirect nr_segments {count} is not in 1..{self.max_indirect}")
        grefs = indirect_grefs[:indirect_frames(count)]
        nbytes = count * SEGMENT_SIZE
        per_page = SEGMENTS_PER_INDIRECT_PAGE * SEGMENT_SIZE
        pages, release = self._map(grefs, writable=False)
        try:
            if len(pages) == 1:                  # up to 512 segments: the common case
                raw = bytes(pages[0][:nbytes])
            else:
                raw = b"".join(bytes(page[:min(per_page, nbytes - i * per_page)])
                               for i, page in enumerate(pages))
        finally:
            release()
        return parse_segments(raw, count)

    def _map(self, grefs, writable):
        """(the mapped page of each gref, the function that ends mappings made for this
        request only); GrantError if any is not mappable, with nothing left mapped."""
        if self.persistent is not None:
            pages, transient = self.persistent.pages(grefs)
            return pages, (transient.release if transient is not None else _nothing)
        mapped = self.frontend_pages(grefs, writable)
        return mapped.pages, mapped.release

    def _read_write(self, writing, sector, segs):
        """A READ or WRITE of the validated ``segs`` at ``sector``."""
        if writing and self.readonly:
            raise BadRequest(_ERROR, "write on a read-only disk")
        self._check_range("write" if writing else "read", sector, segs.nbytes // SECTOR_SIZE)
        # Without persistent grants a WRITE only reads the frontend's pages: mapped
        # read-only, as Linux's blkback does.
        pages, release = self._map(segs.grefs, writable=not writing)
        runs = None
        try:
            if segs.spans is not None:
                pages = [page[start:end] for page, (start, end) in zip(pages, segs.spans)]
            elif release is _nothing and self.persistent is not None:
                runs = self.persistent.buffers(segs.grefs)     # whole kept pages: merge runs
            if writing:
                self.image.writev(sector * SECTOR_SIZE, runs or pages, segs.nbytes)
            else:
                self.image.readv(sector * SECTOR_SIZE, runs or pages, segs.nbytes)
        finally:
            for view in runs or ():
                view.release()
            release()


def _nothing():
    pass
