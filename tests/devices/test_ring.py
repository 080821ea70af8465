"""io/ring.h semantics: FIFO order, notifications exactly when needed, hostile indices refused."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices.blkif import BLKIF_OP_READ, BLKIF_RING
from pyvmm.devices.netif import NETIF_TX_RING
from pyvmm.devices.ring import BackRing, FrontRing, RingLayout, SRING_HEADER
from pyvmm.errors import RingError
from pyvmm.pv.cstruct import Struct, u32, u64

# A small test layout: 8-byte request, 16-byte entry -> 4032/16 = 252 -> 128 slots on a
# page; on a 256-byte "page" (64 header + 192) -> 12 -> 8 slots, so wrap is frequent.
TEST_RING = RingLayout("test", Struct("test_req", [("id", u64)]),
                       Struct("test_rsp", [("id", u64), ("status", u32)]))
SMALL_PAGE = 256


def _pair(layout=TEST_RING, page_bytes=SMALL_PAGE, start=0):
    page = bytearray(page_bytes)
    front = FrontRing(page, layout, page_bytes, start=start)
    back = BackRing(page, layout, page_bytes, start=start)
    return page, front, back


def _set_index(page, name, value):
    struct.pack_into("<I", page, SRING_HEADER.offsetof(name), value & 0xFFFFFFFF)


def _get_index(page, name):
    return struct.unpack_from("<I", page, SRING_HEADER.offsetof(name))[0]


def test_ring_init_and_sizes():
    page, front, back = _pair()
    assert front.size == back.size == 8
    assert [_get_index(page, n) for n in ("req_prod", "req_event", "rsp_prod", "rsp_event")] == [0, 1, 0, 1]
    assert FrontRing(bytearray(4096), BLKIF_RING).size == 32
    assert FrontRing(bytearray(4096), NETIF_TX_RING).size == 256
    with pytest.raises(RingError, match="hold no entry"):
        FrontRing(bytearray(100), BLKIF_RING, page_bytes=100)
    with pytest.raises(RingError, match="read-only"):
        BackRing(bytes(4096), BLKIF_RING)


def test_blkif_request_round_trip_through_the_page():
    page = bytearray(4096)
    front, back = FrontRing(page, BLKIF_RING), BackRing(page, BLKIF_RING)
    segs = [{"gref": 7 + i, "first_sect": 0, "last_sect": 7} for i in range(3)]
    front.put_request(operation=BLKIF_OP_READ, nr_segments=3, handle=51712, id=0xABCDEF,
                      sector_number=2048, seg=segs)
    assert front.push_requests() is True
    # The request sits at offset 64 of the page, laid out as blkif.h says.
    assert page[64] == BLKIF_OP_READ and page[65] == 3
    assert struct.unpack_from("<HxxxxQQI", page, 66) == (51712, 0xABCDEF, 2048, 7)
    [req] = back.take_requests()
    assert req["id"] == 0xABCDEF and req["seg"][:3] == segs and req["nr_segments"] == 3
    back.put_response(id=req["id"], operation=req["operation"], status=-1)
    assert back.push_responses() is True
    assert front.take_responses() == [{"id": 0xABCDEF, "operation": 0, "status": -1}]


# One step of an interleaving: the frontend queues n requests and pushes, or the
# backend serves up to n requests (answering them) and pushes, or either end does
# its final check (the moment a driver would go to sleep).
STEPS = st.lists(st.tuples(st.sampled_from(["produce", "serve", "reap"]), st.integers(1, 10)),
                 max_size=80)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, start=st.sampled_from([0, 5, 0xFFFFFFFF - 3, 0xFFFFFFF0]))
def test_random_interleavings_keep_fifo_and_notify_exactly_when_the_peer_sleeps(steps, start):
    page, front, back = _pair(start=start)
    next_id = 0
    consumed, answered = [], []
    back_asleep = front_asleep = True         # both wait for a notification after init
    for action, n in steps:
        if action == "produce":
            count = min(n, front.free_requests())
            for _ in range(count):
                front.put_request(id=next_id)
                next_id += 1
            notify = front.push_requests()
            # ring.h: notify iff the backend armed req_event for what we just pushed,
            # which in a step-by-step run is exactly "the backend went to sleep".
            assert notify == (back_asleep and count > 0)
            if notify:
                back_asleep = False
        elif action == "serve" and not back_asleep:
            reqs = back.take_requests(limit=n)
            consumed += [r["id"] for r in reqs]
            for r in reqs:
                back.put_response(id=r["id"], status=0)
            notify = back.push_responses()
            assert notify == (front_asleep and bool(reqs))
            if notify:
                front_asleep = False
            if not back.final_check_for_requests():
                back_asleep = True
        elif action == "reap" and not front_asleep:
            answered += [r["id"] for r in front.take_responses(limit=n)]
            if not front.final_check_for_responses():
                front_asleep = True
    assert consumed == list(range(len(consumed)))           # FIFO, nothing lost or doubled
    assert answered == consumed[:len(answered)]
    # No lost wakeup: whatever is still queued, its consumer is awake to see it.
    if back.unconsumed_requests():
        assert not back_asleep
    if front.unconsumed_responses():
        assert not front_asleep


@settings(max_examples=100, deadline=None)
@given(bogus=st.integers(0, 0xFFFFFFFF), queued=st.integers(0, 8))
def test_hostile_request_producer_is_refused_and_leaves_the_backend_intact(bogus, queued):
    page, front, back = _pair()
    for i in range(queued):
        front.put_request(id=i)
    front.push_requests()
    _set_index(page, "req_prod", bogus)
    before = (back.req_cons, back.rsp_prod_pvt)
    if bogus <= back.size:          # a plausible producer: at most a ring's worth of entries
        assert len(back.take_requests()) == bogus
    else:
        with pytest.raises(RingError, match="req"):
            back.take_requests()
        assert (back.req_cons, back.rsp_prod_pvt) == before


def test_producer_far_ahead_and_moved_back_are_named():
    page, front, back = _pair()
    _set_index(page, "req_prod", 1000)
    with pytest.raises(RingError, match=r"0x3e8 .* holds 8 \(producer too far ahead\)"):
        back.take_requests()
    _set_index(page, "req_prod", 4)
    assert len(back.take_requests()) == 4
    _set_index(page, "req_prod", 2)
    with pytest.raises(RingError, match="moved back"):
        back.take_requests()
    assert back.req_cons == 4


def test_backend_never_consumes_more_than_it_can_answer():
    page, front, back = _pair()
    for i in range(8):
        front.put_request(id=i)
    front.push_requests()
    assert len(back.take_requests()) == 8
    assert back.request_cons_overflow()
    assert back.unconsumed_requests() == 0          # a full ring's worth is outstanding
    with pytest.raises(RingError, match="without an outstanding request"):
        for i in range(9):
            back.put_response(id=i, status=0)
    assert back.rsp_prod_pvt == 8


def test_hostile_response_producer_is_refused():
    page, front, back = _pair()
    front.put_request(id=1)
    front.push_requests()
    _set_index(page, "rsp_prod", 3)
    with pytest.raises(RingError, match="only 1 requests are outstanding"):
        front.take_responses()
    assert front.rsp_cons == 0


def test_front_ring_full_is_an_error_not_an_overwrite():
    page, front, back = _pair()
    for i in range(8):
        front.put_request(id=i)
    assert front.full()
    with pytest.raises(RingError, match="full"):
        front.put_request(id=99)


def test_entries_are_copies_the_guest_cannot_change_later():
    page, front, back = _pair()
    front.put_request(id=5)
    front.push_requests()
    [req] = back.take_requests()
    struct.pack_into("<Q", page, TEST_RING.ring_offset, 6)
    assert req["id"] == 5
