"""blkback's one-struct reading of a request slot gives what the generic blkif.h layouts give."""

from hypothesis import given, strategies as st

from pyvmm.devices import blkif
from pyvmm.devices.block.blkback import BLKIF_REQUEST_VIEWS


@given(st.binary(min_size=blkif.BLKIF_REQUEST.size, max_size=blkif.BLKIF_REQUEST.size))
def test_fast_decode_matches_the_layouts(slot):
    views = BLKIF_REQUEST_VIEWS.unpack_from(slot)
    rw = blkif.BLKIF_REQUEST.unpack(slot)
    count = min(rw["nr_segments"], blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST)
    assert views["rw"] == {**rw, "seg": rw["seg"][:count]}
    assert views["discard"] == blkif.BLKIF_REQUEST_DISCARD.unpack(slot)
    assert BLKIF_REQUEST_VIEWS.size == blkif.BLKIF_REQUEST.size
