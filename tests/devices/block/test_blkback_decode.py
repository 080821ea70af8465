"""blkback's one-struct readings of a request slot and of segment arrays give what the
generic blkif.h layouts (checked against gcc) give."""

import pytest
from hypothesis import given, strategies as st

from pyvmm.devices import blkif
from pyvmm.devices.block.request import (BLKIF_REQUEST_VIEWS, SEGMENTS_PER_INDIRECT_PAGE, BadRequest,
                                         indirect_frames, parse_segments)

SLOT = blkif.BLKIF_REQUEST.size


@given(st.binary(min_size=SLOT, max_size=SLOT))
def test_fast_decode_matches_the_layouts(slot):
    req = BLKIF_REQUEST_VIEWS.unpack_from(b"\x00" * 8 + slot, 8)
    rw = blkif.BLKIF_REQUEST.unpack(slot)
    count = min(rw["nr_segments"], blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)
    assert req.rw() == {**rw, "seg": rw["seg"][:count]}
    assert req.discard() == blkif.BLKIF_REQUEST_DISCARD.unpack(slot)
    assert req.indirect() == blkif.BLKIF_REQUEST_INDIRECT.unpack(slot[:blkif.BLKIF_REQUEST_INDIRECT.size])
    assert (req.operation, req.id, req.sector_number) == (rw["operation"], rw["id"], rw["sector_number"])
    assert BLKIF_REQUEST_VIEWS.size == blkif.BLKIF_REQUEST.size


def test_the_request_is_a_copy_the_frontend_cannot_change():
    page = bytearray(blkif.BLKIF_REQUEST.pack(operation=0, nr_segments=1, id=5, sector_number=9,
                                              seg=[{"gref": 8, "last_sect": 7}]))
    req = BLKIF_REQUEST_VIEWS.unpack_from(memoryview(page))
    page[:] = bytes(len(page))
    assert req.rw()["seg"] == [{"gref": 8, "first_sect": 0, "last_sect": 7}] and req.id == 5


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255)),
                min_size=1, max_size=300))
def test_segment_arrays_parse_as_the_layout_reads_them(segs):
    raw = b"".join(blkif.BLKIF_SEGMENT.pack(gref=g, first_sect=f, last_sect=l) for g, f, l in segs)
    if all(f <= l < 8 for _, f, l in segs):
        parsed = parse_segments(raw, len(segs))
        assert list(parsed.grefs) == [g for g, _, _ in segs]
        spans = [(f * 512, (l + 1) * 512) for _, f, l in segs]
        assert parsed.nbytes == sum(b - a for a, b in spans)
        assert parsed.spans in (tuple(spans), None)
        assert parsed.spans is not None or all((f, l) == (0, 7) for _, f, l in segs)
    else:
        with pytest.raises(BadRequest, match="within one page") as err:
            parse_segments(raw, len(segs))
        assert err.value.status == blkif.BLKIF_RSP_ERROR


def test_indirect_frames_as_blkif_h_computes_them():
    assert SEGMENTS_PER_INDIRECT_PAGE == 512
    assert [indirect_frames(n) for n in (1, 256, 512, 513, 4096)] == [1, 1, 1, 2, 8]
