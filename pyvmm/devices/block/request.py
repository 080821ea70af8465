"""blkif requests as blkback reads them (xen/include/public/io/blkif.h).

Responsibility: what one ring slot asks for, before any page is mapped:
- the copy of the slot (``Request``; ring.h's RING_COPY_REQUEST: the frontend can no
  longer change it) and the views blkif.h overlays there: ``blkif_request`` (``rw``),
  ``blkif_request_discard`` (``discard``) and ``blkif_request_indirect``
  (``indirect``), each read with one precompiled struct whose offsets are tied to
  blkif.py's layouts (the gcc-checked ones) by asserts;
- the segment list of a READ/WRITE (``Segments``): the grant references and the byte
  range each segment covers in its page, from the slot (up to 11) or from the bytes of
  the indirect pages (BLKIF_OP_INDIRECT), validated: every segment has
  ``first_sect <= last_sect < sectors per page``;
- ``BadRequest``: a request that cannot be served, with the BLKIF_RSP_* to answer;
- ``BLKIF_RESPONSE_FAST``: blkif_response written with one precompiled struct.

Invariants: nothing here maps a grant or touches an image; a request that fails a
check raises BadRequest and yields nothing.
"""

import functools
import struct

from pyvmm.devices import blkif
from pyvmm.errors import PyvmmError
from pyvmm.pv import abi
from pyvmm.pv.cstruct import Struct, Union

__all__ = ["Request", "Segments", "BadRequest", "BLKIF_REQUEST_VIEWS", "BLKIF_RESPONSE_FAST",
           "parse_segments", "indirect_frames", "SECTOR_SIZE", "SECTORS_PER_PAGE", "SEGMENT_SIZE",
           "SEGMENTS_PER_INDIRECT_PAGE"]

SECTOR_SIZE = 512                                   # blkif.h: sector numbers are 512-byte units
SECTORS_PER_PAGE = abi.PAGE_SIZE // SECTOR_SIZE     # so last_sect <= 7 for 4 KiB pages
SEGMENT_SIZE = blkif.BLKIF_SEGMENT.size             # sizeof(struct blkif_request_segment) == 8
# blkif.h, BLKIF_OP_INDIRECT: "every indirect page can contain a maximum of
# (PAGE_SIZE / sizeof(struct blkif_request_segment)) segments" (the header names no constant)
SEGMENTS_PER_INDIRECT_PAGE = abi.PAGE_SIZE // SEGMENT_SIZE

_REQ, _SEG = blkif.BLKIF_REQUEST, blkif.BLKIF_SEGMENT
_DISCARD, _INDIRECT = blkif.BLKIF_REQUEST_DISCARD, blkif.BLKIF_REQUEST_INDIRECT
_HEAD = struct.Struct("<BBH4xQQ")              # operation, nr_segments/flag, handle, id, sector
_DISCARD_TAIL = struct.Struct("<Q")            # blkif_request_discard_t.nr_sectors
_INDIRECT_BODY = struct.Struct("<BBH4xQQH2x%dI4x" % blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
_SEGS_AT = _REQ.offsetof("seg")
assert _HEAD.size == _SEGS_AT == 24 and SEGMENT_SIZE == 8
assert [_REQ.offsetof(n) for n in ("operation", "nr_segments", "handle", "id", "sector_number")] \
    == [0, 1, 2, 8, 16]
assert [_SEG.offsetof(n) for n in ("gref", "first_sect", "last_sect")] == [0, 4, 5]
assert [_DISCARD.offsetof(n) for n in ("flag", "handle", "id", "sector_number", "nr_sectors")] \
    == [1, 2, 8, 16, 24]
assert [_INDIRECT.offsetof(n) for n in ("indirect_op", "nr_segments", "id", "sector_number",
                                        "handle", "indirect_grefs")] == [1, 2, 8, 16, 24, 28]
assert _INDIRECT_BODY.size == _INDIRECT.size


class BadRequest(PyvmmError):
    """One blkif request that cannot be served; ``status`` is the BLKIF_RSP_* to answer."""

    def __init__(self, status, what):
        self.status = status
        super().__init__(what)


class Request:
    """A copy of one request slot; ``operation``, ``id`` and ``sector_number`` are where
    every view has them."""

    __slots__ = ("raw", "operation", "id", "sector_number")

    def __init__(self, raw):
        self.raw = raw
        self.operation, _, _, self.id, self.sector_number = _HEAD.unpack_from(raw)

    def rw(self):
        """The slot as ``blkif_request``; ``seg`` holds the first min(nr_segments, 11)."""
        op, nseg, handle, rid, sector = _HEAD.unpack_from(self.raw)
        segs = []
        for i in range(min(nseg, blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)):
            gref, first, last = _ONE_SEG.unpack_from(self.raw, _SEGS_AT + i * SEGMENT_SIZE)
            segs.append({"gref": gref, "first_sect": first, "last_sect": last})
        return {"operation": op, "nr_segments": nseg, "handle": handle, "id": rid,
                "sector_number": sector, "seg": segs}

    def discard(self):
        """The slot as ``blkif_request_discard``."""
        op, flag, handle, rid, sector = _HEAD.unpack_from(self.raw)
        return {"operation": op, "flag": flag, "handle": handle, "id": rid, "sector_number": sector,
                "nr_sectors": _DISCARD_TAIL.unpack_from(self.raw, _DISCARD.offsetof("nr_sectors"))[0]}

    def indirect(self):
        """The slot as ``blkif_request_indirect``."""
        v = _INDIRECT_BODY.unpack_from(self.raw)
        return {"operation": v[0], "indirect_op": v[1], "nr_segments": v[2], "id": v[3],
                "sector_number": v[4], "handle": v[5], "indirect_grefs": list(v[6:])}

    def indirect_values(self):
        """(indirect_op, nr_segments, sector_number, indirect_grefs tuple) of ``indirect``."""
        v = _INDIRECT_BODY.unpack_from(self.raw)
        return v[1], v[2], v[4], v[6:]

    def inline_segments(self):
        """The ``Segments`` of a READ/WRITE held in the slot; BadRequest unless
        nr_segments is 1..11 and each segment lies inside its page."""
        count = self.raw[1]
        if not 1 <= count <= blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise BadRequest(blkif.BLKIF_RSP_ERROR, f"nr_segments {count} is not in "
                                                    f"1..{blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST}")
        return parse_segments(self.raw[_SEGS_AT:_SEGS_AT + count * SEGMENT_SIZE], count)


_ONE_SEG = struct.Struct("<IBB")


class _FastResponse(Struct):
    """blkif_response (the same layout) whose ``pack_into`` is one precompiled struct."""

    _PACK = struct.Struct("<QBxh")

    def pack_into(self, buf, offset, values):
        self._PACK.pack_into(buf, offset, values["id"], values["operation"], values["status"])


BLKIF_RESPONSE_FAST = _FastResponse("blkif_response", blkif.BLKIF_RESPONSE.members)
assert BLKIF_RESPONSE_FAST.size == blkif.BLKIF_RESPONSE.size == 16
assert [blkif.BLKIF_RESPONSE.offsetof(n) for n in ("id", "operation", "status")] == [0, 8, 10]


class _RequestViews(Union):
    """The request type of blkback's RingLayout: the union of what blkif.h overlays in
    a slot; ``unpack_from`` copies the slot into a ``Request``."""

    def unpack_from(self, buf, offset=0):
        return Request(bytes(buf[offset:offset + self.size]))


BLKIF_REQUEST_VIEWS = _RequestViews("blkif_request_views", [
    ("rw", _REQ), ("discard", _DISCARD), ("indirect", _INDIRECT)])
assert BLKIF_REQUEST_VIEWS.size == _REQ.size


def indirect_frames(count):
    """Indirect pages holding ``count`` segments (blkif.h: ceil(count / segments a page))."""
    return -(-count // SEGMENTS_PER_INDIRECT_PAGE)


class Segments:
    """The validated segments of one READ/WRITE: ``grefs`` (tuple) in order; ``spans``
    the (start, end) byte range of each in its page (tuple), or None when every segment
    is a whole page (the common case: no slicing); ``nbytes`` their total."""

    __slots__ = ("grefs", "spans", "nbytes")

    def __init__(self, grefs, spans, nbytes):
        self.grefs = grefs
        self.spans = spans
        self.nbytes = nbytes


@functools.lru_cache(maxsize=None)
def _grefs_of(count):
    return struct.Struct("<" + "I4x" * count)


@functools.lru_cache(maxsize=64)
def _parsed(raw, count):
    """parse_segments, remembered: a frontend repeats its segment arrays (the same buffer
    read again), and a Segments is not changed by its users."""
    grefs = _grefs_of(count).unpack(raw)
    firsts, lasts = raw[4::SEGMENT_SIZE], raw[5::SEGMENT_SIZE]
    if firsts == _WHOLE_FIRST[:count] and lasts == _WHOLE_LAST[:count]:
        return Segments(grefs, None, count * abi.PAGE_SIZE)
    spans, total = [], 0
    for first, last in zip(firsts, lasts):
        if not first <= last < SECTORS_PER_PAGE:
            raise BadRequest(blkif.BLKIF_RSP_ERROR, f"segment sectors {first}..{last} are not "
                                                    f"within one page")
        spans.append((first * SECTOR_SIZE, (last + 1) * SECTOR_SIZE))
        total += (last - first + 1) * SECTOR_SIZE
    return Segments(grefs, tuple(spans), total)


_WHOLE_FIRST = bytes(4096)                          # first_sect 0 ...
_WHOLE_LAST = bytes([SECTORS_PER_PAGE - 1]) * 4096  # ... last_sect 7: a whole page


def parse_segments(raw, count):
    """``Segments`` from ``raw`` (bytes), the ``count`` blkif_request_segment entries;
    BadRequest if a segment's sectors are not inside one page."""
    return _parsed(bytes(raw), count)
