"""blkback's negotiated features: indirect requests (BLKIF_OP_INDIRECT,
feature-max-indirect-segments) and persistent grants (feature-persistent), served to a
Python frontend in guest domain 1, and hostile indirect requests."""

import pytest

from pyvmm.devices import blkif
from pyvmm.devices.block import Blkback
from pyvmm.devices.block.request import SEGMENTS_PER_INDIRECT_PAGE, indirect_frames
from pyvmm.devices.xenbus import XenbusState, read_state, write_values
from tests.devices.test_blkback import (DATA_GFN, DATA_REF, DISK, ERROR, EOPNOTSUPP, NR_DATA, OKAY, RAM,
                                        RING_REF, SECTORS, Rig, converted, disk, pattern)  # noqa: F401

READ, WRITE, INDIRECT = blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE, blkif.BLKIF_OP_INDIRECT
IND_GFN, IND_REF = 0x600, 400           # indirect pages: frames 0x600.., refs 400..
NR_IND = 16
PERSISTENT = {"feature-persistent": 1}


def grant_indirect_pages(rig, readonly=False):
    for guest in rig.guests:
        for k in range(NR_IND):
            guest.grant_table.grant_access(IND_REF + k, 0, IND_GFN + k, readonly=readonly)


def queue_indirect(fe, rid, op, sector, segs, first_page=0, nr_segments=None, grefs=None):
    """An indirect request for ``segs`` ((data page, first, last) or (('gref', n), first,
    last)) with its segment array written into indirect pages from ``first_page`` on."""
    raw = b"".join(blkif.BLKIF_SEGMENT.pack(gref=(p[1] if isinstance(p, tuple) else DATA_REF + p),
                                            first_sect=f, last_sect=l) for p, f, l in segs)
    per_page = SEGMENTS_PER_INDIRECT_PAGE * blkif.BLKIF_SEGMENT.size
    frames = max(1, indirect_frames(len(segs)))
    for k in range(frames):
        chunk = raw[k * per_page:(k + 1) * per_page]
        fe.guest.page(IND_GFN + first_page + k)[:len(chunk)] = chunk
    if grefs is None:
        grefs = [IND_REF + first_page + k for k in range(frames)]
    req = blkif.BLKIF_REQUEST_INDIRECT.pack(
        operation=INDIRECT, indirect_op=op, nr_segments=len(segs) if nr_segments is None else nr_segments,
        id=rid, sector_number=sector, handle=0,
        indirect_grefs=grefs + [0] * (blkif.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - len(grefs)))
    fe.ring.put_request(**blkif.BLKIF_REQUEST.unpack(req + bytes(blkif.BLKIF_REQUEST.size - len(req))))


def dom0_mappings(rig):
    return len(rig.dom0.grant_table.mappings())


def test_backend_publishes_both_features_and_takes_the_frontends_persistent(disk):
    path, img = disk
    rig = Rig(img, frontend=PERSISTENT)
    assert rig.xs0.read(f"{rig.be.xenbus.path}/feature-max-indirect-segments") == b"256"
    assert rig.fe.xenbus.backend_values["feature-persistent"] == "1"
    assert rig.be.persistent is not None and len(rig.be.persistent) == 0
    # a backend that offers neither: no indirect node at all (blkif.h), persistent 0
    plain = Rig(img, frontend=PERSISTENT, max_indirect_segments=0, persistent=False)
    assert plain.fe.xenbus.backend_values["feature-persistent"] == "0"
    assert plain.be.persistent is None
    assert "feature-max-indirect-segments" not in plain.xs0.directory(plain.be.xenbus.path)


@pytest.mark.parametrize("frontend", [None, PERSISTENT], ids=["mapped-per-request", "persistent"])
def test_indirect_requests_carry_1_mib_each_way(disk, tmp_path, frontend):
    path, img = disk
    rig = Rig(img, frontend=frontend)
    grant_indirect_pages(rig)
    fe = rig.fe
    data = pattern(5, 256 * 4096)
    for p in range(256):
        fe.page(p)[:] = data[p * 4096:(p + 1) * 4096]
    queue_indirect(fe, 1, WRITE, 0, [(p, 0, 7) for p in range(256)])
    fe.push()
    assert fe.responses() == [(1, WRITE, OKAY)]          # answered with the indirect_op
    assert converted(path, tmp_path)[:len(data)] == data
    for p in range(256):
        fe.page(p)[:] = bytes(4096)
    queue_indirect(fe, 2, READ, 0, [(p, 0, 7) for p in range(256)])
    fe.push()
    assert fe.responses() == [(2, READ, OKAY)]
    assert b"".join(bytes(fe.page(p)) for p in range(256)) == data
    assert rig.be.served[OKAY] == 2


def test_indirect_partial_segments_over_two_indirect_pages(disk):
    path, img = disk
    rig = Rig(img, max_indirect_segments=600)
    grant_indirect_pages(rig)
    fe = rig.fe
    # 520 segments of one or two sectors at varying places in their pages: the array
    # fills one indirect page and part of a second; each page is used once
    segs = [(i % NR_DATA, i % 7, i % 7 + (i % 2)) for i in range(NR_DATA)]
    segs += [(i % NR_DATA, 0, 0) for i in range(520 - NR_DATA)]
    for p in range(NR_DATA):
        fe.page(p)[:] = b"\xEE" * 4096
    queue_indirect(fe, 7, READ, 100, segs)
    fe.push()
    assert fe.responses() == [(7, READ, OKAY)]
    disk_bytes, pos, want = pattern(99, DISK), 100 * 512, {}
    for p, f, l in segs:             # a page named again holds what its last segment read
        n = (l - f + 1) * 512
        want.setdefault(p, bytearray(b"\xEE" * 4096))[f * 512:(l + 1) * 512] = disk_bytes[pos:pos + n]
        pos += n
    assert all(bytes(fe.page(p)) == bytes(page) for p, page in want.items())


def test_persistent_grants_stay_mapped_and_are_not_mapped_again(disk, tmp_path):
    path, img = disk
    rig = Rig(img, frontend=PERSISTENT)
    grant_indirect_pages(rig)
    fe, gt = rig.fe, rig.guests[0].grant_table
    calls = []
    real = rig.dom0.grant_table.map_grant_ref
    rig.dom0.grant_table.map_grant_ref = lambda *a, **k: calls.append(a) or real(*a, **k)

    fe.page(0)[:] = b"\x11" * 4096
    assert fe.call(WRITE, rid=1, sector=8, segs=[(0, 0, 7), (1, 0, 7)]) == OKAY
    # kept, and writable although the request was a WRITE (blkif.h note 8)
    assert gt.pins(DATA_REF) == (0, 1) and gt.pins(DATA_REF + 1) == (0, 1)
    assert len(calls) == 2
    for rid in range(2, 6):
        assert fe.call(READ, rid=rid, sector=8, segs=[(1, 0, 7), (0, 0, 7)]) == OKAY
    assert len(calls) == 2                                  # no map for the same grants
    assert bytes(fe.page(1)) == b"\x11" * 4096
    queue_indirect(fe, 9, READ, 0, [(p, 0, 7) for p in range(40)])
    fe.push()
    assert fe.responses() == [(9, READ, OKAY)]
    assert len(calls) == 2 + 1 + 38 and len(rig.be.persistent) == 41   # the indirect page too
    assert gt.pins(IND_REF) == (0, 1)
    mapped = dom0_mappings(rig)
    assert mapped == 1 + 41                                 # the ring and the kept grants

    rig.fe.xenbus.close()                                   # orderly close: all unmapped
    assert read_state(rig.xs0, rig.be.xenbus.path) == XenbusState.Closed
    assert dom0_mappings(rig) == 0 and rig.be.persistent is None
    assert all(gt.pins(r) == (0, 0) for r in list(range(DATA_REF, DATA_REF + NR_DATA)) + [IND_REF, RING_REF])


def test_persistent_grants_of_consecutive_frames_are_done_as_runs(disk, tmp_path):
    """A kept buffer contiguous in the frontend's RAM goes to the image as a few long
    views (one iovec per run of consecutive frames), and reads and writes the same bytes
    as page by page; the views made for a request are released after it."""
    path, img = disk
    rig = Rig(img, frontend=PERSISTENT)
    grant_indirect_pages(rig)
    fe = rig.fe
    order = list(range(32)) + list(range(40, 48)) + [33]          # three runs of frames
    data = pattern(11, len(order) * 4096)
    for k, p in enumerate(order):
        fe.page(p)[:] = data[k * 4096:(k + 1) * 4096]
    queue_indirect(fe, 1, WRITE, 16, [(p, 0, 7) for p in order])
    fe.push()
    assert fe.responses() == [(1, WRITE, OKAY)]
    assert converted(path, tmp_path)[16 * 512:16 * 512 + len(data)] == data
    for p in order:
        fe.page(p)[:] = bytes(4096)
    queue_indirect(fe, 2, READ, 16, [(p, 0, 7) for p in order])
    fe.push()
    assert fe.responses() == [(2, READ, OKAY)]
    assert b"".join(bytes(fe.page(p)) for p in order) == data
    grefs = tuple(DATA_REF + p for p in order)
    views = rig.be.persistent.buffers(grefs)
    assert [len(v) for v in views] == [32 * 4096, 8 * 4096, 4096]
    assert bytes(views[1][:4096]) == data[32 * 4096:33 * 4096]
    for v in views:
        v.release()
    # frames with no neighbour in the request: nothing to merge, the pages are used
    assert rig.be.persistent.buffers(tuple(DATA_REF + p for p in (3, 1))) is None
    rig.fe.xenbus.close()                                         # nothing left exported
    assert dom0_mappings(rig) == 0 and rig.be.persistent is None


def test_persistent_past_the_limit_maps_per_request(disk, monkeypatch):
    path, img = disk
    monkeypatch.setattr(Blkback, "MAX_PERSISTENT_GRANTS", 4)
    rig = Rig(img, frontend=PERSISTENT)
    fe, gt = rig.fe, rig.guests[0].grant_table
    for p in range(8):
        fe.page(p)[:] = bytes([p]) * 4096
    assert fe.call(WRITE, rid=1, sector=0, segs=[(p, 0, 7) for p in range(8)]) == OKAY
    assert len(rig.be.persistent) == 4
    assert [gt.pins(DATA_REF + p) for p in range(8)] == [(0, 1)] * 4 + [(0, 0)] * 4
    assert img.read(0, 8 * 4096) == b"".join(bytes([p]) * 4096 for p in range(8))
    assert dom0_mappings(rig) == 1 + 4


def test_persistent_refusals(disk, tmp_path):
    """A WRITE from a read-only grant is refused (persistent grants are mapped writable),
    and a request with one unmappable gref keeps none of the grants it mapped."""
    path, img = disk
    rig = Rig(img, nr_guests=2, frontend=PERSISTENT)
    fe, gt = rig.fe, rig.guests[0].grant_table
    before = converted(path, tmp_path)
    assert fe.call(READ, rid=1, sector=0, segs=[(0, 0, 7)]) == OKAY          # keeps ref 8
    gt.grant_access(450, 0, DATA_GFN + 30, readonly=True)
    rig.guests[1].grant_table.grant_access(460, 0, DATA_GFN)
    assert fe.call(WRITE, rid=2, sector=0, segs=[(("gref", 450), 0, 7)]) == ERROR
    assert fe.call(WRITE, rid=3, sector=0, segs=[(0, 0, 7), (1, 0, 7), (2, 0, 7), (("gref", 460), 0, 7)]) == ERROR
    assert len(rig.be.persistent) == 1 and 0 + DATA_REF in rig.be.persistent
    assert [gt.pins(DATA_REF + p) for p in range(3)] == [(0, 1), (0, 0), (0, 0)]
    assert gt.pins(450) == (0, 0) and rig.guests[1].grant_table.pins(460) == (0, 0)
    assert converted(path, tmp_path) == before
    assert rig.be.connected


def _bad_indirect(rig, fe, guest, other):
    """(name, queue it, status, operation in the response) for hostile indirect requests."""
    grant_indirect_pages(rig)
    guest.grant_table.grant_access(450, 0, DATA_GFN + 30, readonly=True)   # read-only data page
    other.grant_table.grant_access(460, 0, IND_GFN)                        # another guest's page
    guest.grant_table.grant_access(480, 0, (RAM >> 12) + 5)                # a frame it does not own
    full = [(p, 0, 7) for p in range(4)]
    return [
        ("nr_segments 0", lambda: queue_indirect(fe, 30, WRITE, 0, full, nr_segments=0), ERROR, WRITE),
        ("nr_segments past the maximum", lambda: queue_indirect(fe, 31, READ, 0, full, first_page=1,
                                                                nr_segments=257), ERROR, READ),
        ("nr_segments 65535", lambda: queue_indirect(fe, 32, READ, 0, full, first_page=2,
                                                     nr_segments=65535), ERROR, READ),
        ("indirect_op FLUSH", lambda: queue_indirect(fe, 33, blkif.BLKIF_OP_FLUSH_DISKCACHE, 0, full,
                                                     first_page=3), ERROR, blkif.BLKIF_OP_FLUSH_DISKCACHE),
        ("indirect_op INDIRECT", lambda: queue_indirect(fe, 34, INDIRECT, 0, full, first_page=4),
         ERROR, INDIRECT),
        ("indirect gref beyond the table", lambda: queue_indirect(fe, 35, WRITE, 0, full, first_page=5,
                                                                  grefs=[10**6]), ERROR, WRITE),
        ("indirect gref of another guest", lambda: queue_indirect(fe, 36, WRITE, 0, full, first_page=6,
                                                                  grefs=[460]), ERROR, WRITE),
        ("indirect gref naming a frame it does not own",
         lambda: queue_indirect(fe, 37, READ, 0, full, first_page=7, grefs=[480]), ERROR, READ),
        ("segment first_sect > last_sect", lambda: queue_indirect(fe, 38, WRITE, 0, full[:3] + [(3, 5, 4)],
                                                                  first_page=8), ERROR, WRITE),
        ("segment last_sect 8", lambda: queue_indirect(fe, 39, WRITE, 0, [(0, 0, 8)] + full,
                                                       first_page=9), ERROR, WRITE),
        ("segment gref beyond the table", lambda: queue_indirect(
            fe, 40, WRITE, 0, full + [(("gref", 10**6), 0, 7)], first_page=10), ERROR, WRITE),
        ("segment gref naming a frame it does not own", lambda: queue_indirect(
            fe, 41, READ, 0, full + [(("gref", 480), 0, 7)], first_page=11), ERROR, READ),
        ("read into a read-only grant", lambda: queue_indirect(
            fe, 42, READ, 0, full + [(("gref", 450), 0, 7)], first_page=12), ERROR, READ),
        ("read past the end", lambda: queue_indirect(fe, 43, READ, SECTORS - 8, full, first_page=13),
         ERROR, READ),
        ("write far past the end", lambda: queue_indirect(fe, 44, WRITE, 2**64 - 8, full, first_page=14),
         ERROR, WRITE),
    ]


@pytest.mark.parametrize("frontend", [None, PERSISTENT], ids=["mapped-per-request", "persistent"])
def test_hostile_indirect_requests_get_errors_and_change_nothing(disk, tmp_path, frontend):
    path, img = disk
    rig = Rig(img, nr_guests=2, frontend=frontend)
    fe = rig.fe
    before = converted(path, tmp_path)
    for p in range(4):
        fe.page(p)[:] = b"\x77" * 4096
    cases = _bad_indirect(rig, fe, rig.guests[0], rig.guests[1])
    for _, queue, _, _ in cases:
        queue()
    queue_indirect(fe, 99, READ, 8, [(5, 0, 7), (6, 0, 7)], first_page=15)   # a good one after them
    fe.push()
    got = {rid: (op, status) for rid, op, status in fe.responses()}
    for (name, _, status, op), rid in zip(cases, range(30, 30 + len(cases))):
        assert got[rid] == (op, status), name
    assert got[99] == (READ, OKAY)
    assert bytes(fe.page(5)) + bytes(fe.page(6)) == pattern(99, DISK)[8 * 512:8 * 512 + 8192]
    assert all(bytes(fe.page(p)) == b"\x77" * 4096 for p in range(4))      # refused reads wrote nothing
    assert fe.call(blkif.BLKIF_OP_FLUSH_DISKCACHE, rid=100) == OKAY
    assert converted(path, tmp_path) == before
    assert rig.be.connected and rig.be.served[ERROR] == len(cases)
    pins = {r: rig.guests[0].grant_table.pins(r) for r in range(DATA_REF, DATA_REF + NR_DATA)}
    other_pins = [rig.guests[1].grant_table.pins(r) for r in (460,)]
    assert other_pins == [(0, 0)] and rig.guests[0].grant_table.pins(450) == (0, 0)
    if frontend is None:                  # mapped per request: nothing stays pinned
        assert set(pins.values()) == {(0, 0)}
        assert dom0_mappings(rig) == 2    # the two rings
    else:                                 # persistent: only grants that could be mapped are kept
        kept = {r for r, p in pins.items() if p != (0, 0)}
        assert kept <= {DATA_REF + p for p in range(7)}


def test_indirect_without_the_feature_is_not_served(disk, tmp_path):
    path, img = disk
    rig = Rig(img, max_indirect_segments=0)
    grant_indirect_pages(rig)
    before = converted(path, tmp_path)
    rig.fe.page(0)[:] = b"\x42" * 4096
    queue_indirect(rig.fe, 1, WRITE, 0, [(0, 0, 7)])
    rig.fe.push()
    assert rig.fe.responses() == [(1, INDIRECT, EOPNOTSUPP)]
    assert converted(path, tmp_path) == before and rig.guests[0].grant_table.pins(IND_REF) == (0, 0)


def test_a_destroyed_frontend_domain_leaves_a_backend_that_stops_cleanly(disk):
    """The frontend's domain goes away while blkback holds its ring and persistent
    grants (Xen drops other domains' mappings of its grants): stopping the backend
    afterwards unmaps nothing twice and raises nothing."""
    path, img = disk
    rig = Rig(img, nr_guests=2, frontend=PERSISTENT)
    assert rig.fe.call(READ, rid=1, sector=0, segs=[(0, 0, 7), (1, 0, 7)]) == OKAY
    assert dom0_mappings(rig) == 2 + 2                       # two rings, two kept grants
    rig.guests[0].destroy()
    assert dom0_mappings(rig) == 1                           # the other guest's ring
    rig.backs[0].stop()
    assert rig.backs[0].persistent is None and not rig.backs[0].connected
    assert rig.fronts[1].call(READ, rid=2, sector=8, segs=[(0, 0, 7)]) == OKAY


def test_a_restored_backend_takes_up_persistent_grants_again(disk):
    """Saved and restored (tests/devices/block/test_blkback_state.py's move), the backend
    reads the frontend's feature-persistent again: the old kept grants were unmapped
    with the old backend, the new one maps them afresh as requests use them."""
    path, img = disk
    rig = Rig(img, frontend=PERSISTENT)
    fe, gt = rig.fe, rig.guests[0].grant_table
    fe.page(0)[:] = b"\x42" * 4096
    assert fe.call(WRITE, rid=1, sector=16, segs=[(0, 0, 7)]) == OKAY
    state = rig.be.save()
    rig.be.stop()
    assert gt.pins(DATA_REF) == (0, 0) and dom0_mappings(rig) == 0
    write_values(rig.xs0, rig.be.xenbus.path, {"state": int(XenbusState.Initialising)})
    fresh = Blkback(rig.dom0, rig.xs0, rig.guests[0].domid, 51712, img)
    fresh.restore(state)
    assert fresh.persistent is not None and len(fresh.persistent) == 0
    fe.page(1)[:] = bytes(4096)
    assert fe.call(READ, rid=2, sector=16, segs=[(1, 0, 7)]) == OKAY
    assert bytes(fe.page(1)) == b"\x42" * 4096 and gt.pins(DATA_REF + 1) == (0, 1)
