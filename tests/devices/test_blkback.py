"""blkback in domain 0 serving a Python blkif frontend in guest domain 1 (and 2)."""

import subprocess

import pytest

from pyvmm.devices import blkif
from pyvmm.devices.block import Blkback
from pyvmm.devices.ring import FrontRing
from pyvmm.devices.xenbus import XenbusFrontend, XenbusState, create_device, read_state
from pyvmm.pv import abi
from pyvmm.pv.xenstore import LocalClient, RingClient, Xenstore
from pyvmm.storage import create_image, open_image
from tests.pv.pvworld import world

DISK = 1 << 20                     # 2048 sectors
SECTORS = DISK // 512
RING_GFN, RING_REF = 0x300, 1
DATA_GFN, DATA_REF = 0x400, 8      # data pages 0x400.. granted as refs 8..
NR_DATA = 32 * 11            # enough pages for a full ring of 11-segment requests
RAM = 8 << 20
OKAY, ERROR, EOPNOTSUPP = blkif.BLKIF_RSP_OKAY, blkif.BLKIF_RSP_ERROR, blkif.BLKIF_RSP_EOPNOTSUPP


def pattern(seed, length):
    return bytes((seed * 31 + i * 7 + (i >> 9)) & 0xFF for i in range(length))


class Frontend:
    """A guest's blkfront: ring page and data pages granted to dom0, an event channel."""

    def __init__(self, store, dom0_client, dom0, guest, devid=51712, extra=None):
        self.guest = guest
        self.xs_page = bytearray(4096)
        conn = store.introduce(guest.domid, self.xs_page, notify=lambda: self.client.poll())
        self.client = RingClient(self.xs_page, kick=conn.handle)
        self.fe_path, self.be_path = create_device(dom0_client, "vbd", guest.domid, devid)
        gt = guest.grant_table
        gt.grant_access(RING_REF, 0, RING_GFN)
        for i in range(NR_DATA):
            gt.grant_access(DATA_REF + i, 0, DATA_GFN + i)
        self.ring = FrontRing(guest.page(RING_GFN), blkif.BLKIF_RING)
        self.port = guest.evtchn.alloc_unbound(remote_dom=0)
        self.xenbus = XenbusFrontend(
            self.client, self.fe_path,
            details=lambda: {"ring-ref": RING_REF, "event-channel": self.port, **(extra or {})},
            backend_keys=["sectors", "sector-size", "info", "feature-flush-cache",
                          "feature-discard", "feature-persistent"],
            connected=lambda values: None)

    def page(self, i):
        return self.guest.page(DATA_GFN + i)

    def queue(self, op, rid, sector=0, segs=(), **extra):
        """segs: (data page index or raw gref via ('gref', n), first, last)."""
        seg = [{"gref": (s[0][1] if isinstance(s[0], tuple) else DATA_REF + s[0]),
                "first_sect": s[1], "last_sect": s[2]} for s in segs]
        fields = dict(operation=op, nr_segments=len(seg), id=rid, sector_number=sector, seg=seg)
        fields.update(extra)
        self.ring.put_request(**fields)

    def push(self):
        if self.ring.push_requests():
            self.guest.evtchn.send(self.port)

    def responses(self):
        return [(r["id"], r["operation"], r["status"]) for r in self.ring.take_responses()]

    def call(self, op, rid=1, sector=0, segs=(), **extra):
        self.queue(op, rid, sector, segs, **extra)
        self.push()
        [rsp] = self.responses()
        return rsp[2]

    def discard_request(self, rid, sector, nr_sectors, flag=0):
        """A blkif_request_discard written into the next slot (overlaid on blkif_request)."""
        raw = blkif.BLKIF_REQUEST_DISCARD.pack(operation=blkif.BLKIF_OP_DISCARD, flag=flag, id=rid,
                                               sector_number=sector, nr_sectors=nr_sectors)
        fields = blkif.BLKIF_REQUEST.unpack(raw + bytes(blkif.BLKIF_REQUEST.size - len(raw)))
        self.ring.put_request(**fields)


class Rig:
    """Domain 0 serving ``nr_guests`` Python frontends from ``image``; ``frontend`` are
    extra keys each frontend publishes (features), ``backend`` Blkback's keyword options."""

    def __init__(self, image, nr_guests=1, frontend=None, **backend):
        self.table, self.dom0, self.guests = world(nr_guests=nr_guests, ram=RAM)
        self.store = Xenstore()
        self.xs0 = LocalClient(self.store)
        self.image = image
        self.fronts = [Frontend(self.store, self.xs0, self.dom0, g, extra=frontend) for g in self.guests]
        self.backs = [Blkback(self.dom0, self.xs0, g.domid, 51712, image, **backend) for g in self.guests]
        for back, front in zip(self.backs, self.fronts):
            back.start()
            front.xenbus.start()
            assert read_state(self.xs0, back.xenbus.path) == XenbusState.Connected
            assert front.xenbus.state == XenbusState.Connected

    @property
    def fe(self):
        return self.fronts[0]

    @property
    def be(self):
        return self.backs[0]


@pytest.fixture(params=["raw", "qcow2"])
def disk(request, tmp_path):
    path = tmp_path / f"disk.{request.param}"
    create_image(path, request.param, DISK)
    img = open_image(path)
    img.write(0, pattern(99, DISK))
    img.flush()
    yield path, img
    img.close()


def converted(path, tmp_path):
    out = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(out)], check=True,
                   capture_output=True)
    return out.read_bytes()


def test_handshake_publishes_the_disk(disk):
    path, img = disk
    rig = Rig(img)
    vals = rig.fe.xenbus.backend_values
    assert vals == {"sectors": str(SECTORS), "sector-size": "512", "info": "0",
                    "feature-flush-cache": "1", "feature-discard": "1", "feature-persistent": "1"}
    assert rig.xs0.read(f"{rig.be.xenbus.path}/feature-max-indirect-segments") == b"256"
    assert rig.be.persistent is None          # this frontend did not ask for persistent grants
    assert rig.be.connected and rig.dom0.grant_table.mapping(rig.be.ring_mappings[0].handle)
    assert rig.guests[0].grant_table.pins(RING_REF) == (0, 1)


def test_many_requests_in_flight_read_and_write(disk, tmp_path):
    path, img = disk
    rig = Rig(img)
    fe = rig.fe
    # 32 writes queued together (the whole ring), up to 11 segments each, partial pages too.
    expected = bytearray(pattern(99, DISK))
    sector = 0
    page = 0
    for rid in range(fe.ring.size):
        nseg = 1 + rid % 11
        segs = []
        for k in range(nseg):
            first, last = (rid + k) % 4, 4 + (rid * k) % 4
            p = page
            page += 1
            segs.append((p, first, last))
        data = b""
        for p, first, last in segs:
            chunk = pattern(rid * 100 + p, (last - first + 1) * 512)
            fe.page(p)[first * 512:(last + 1) * 512] = chunk
            data += chunk
        fe.queue(blkif.BLKIF_OP_WRITE, 1000 + rid, sector, segs)
        expected[sector * 512:sector * 512 + len(data)] = data
        sector += len(data) // 512 + 3
    assert fe.ring.full()                  # the whole ring is in flight at once
    fe.push()
    rsps = fe.responses()
    assert [(r[0], r[2]) for r in rsps] == [(1000 + i, OKAY) for i in range(fe.ring.size)]
    assert rig.be.served[OKAY] == fe.ring.size
    assert fe.call(blkif.BLKIF_OP_FLUSH_DISKCACHE, rid=7) == OKAY
    assert converted(path, tmp_path) == bytes(expected)

    # Read it all back with 11-segment full-page reads, 3 in flight at once.
    for base in range(0, SECTORS, 3 * 88):
        ids = []
        for j in range(3):
            start = base + j * 88
            if start + 88 > SECTORS:
                break
            fe.queue(blkif.BLKIF_OP_READ, start, start, [(j * 11 + k, 0, 7) for k in range(11)])
            ids.append(start)
        fe.push()
        rsps = fe.responses()
        assert [(r[0], r[2]) for r in rsps] == [(i, OKAY) for i in ids]
        assert all(r[1] == blkif.BLKIF_OP_READ for r in rsps)
        for j, start in enumerate(ids):
            got = b"".join(bytes(fe.page(j * 11 + k)) for k in range(11))
            assert got == bytes(expected[start * 512:(start + 88) * 512])
    # Segment pages were unmapped after each request: only the ring stays pinned.
    gt = rig.guests[0].grant_table
    assert all(gt.pins(DATA_REF + i) == (0, 0) for i in range(NR_DATA))


def test_partial_segments_read_into_their_sectors_only(disk):
    path, img = disk
    rig = Rig(img)
    fe = rig.fe
    fe.page(0)[:] = b"\xEE" * 4096
    assert fe.call(blkif.BLKIF_OP_READ, sector=10, segs=[(0, 2, 4)]) == OKAY
    page = bytes(fe.page(0))
    assert page[:1024] == b"\xEE" * 1024 and page[2560:] == b"\xEE" * 1536
    assert page[1024:2560] == pattern(99, DISK)[10 * 512:13 * 512]


def test_discard_reads_back_zeros_and_qemu_agrees(disk, tmp_path):
    path, img = disk
    rig = Rig(img)
    fe = rig.fe
    fe.discard_request(5, 128, 256)
    fe.push()
    assert fe.responses() == [(5, blkif.BLKIF_OP_DISCARD, OKAY)]
    assert fe.call(blkif.BLKIF_OP_FLUSH_DISKCACHE) == OKAY
    expected = bytearray(pattern(99, DISK))
    expected[128 * 512:384 * 512] = bytes(256 * 512)
    assert converted(path, tmp_path) == bytes(expected)
    # past the end, and secure discard (not offered)
    fe.discard_request(6, SECTORS - 10, 11)
    fe.discard_request(7, 0, 8, flag=blkif.BLKIF_DISCARD_SECURE)
    fe.push()
    assert fe.responses() == [(6, blkif.BLKIF_OP_DISCARD, ERROR), (7, blkif.BLKIF_OP_DISCARD, EOPNOTSUPP)]
    assert converted(path, tmp_path) == bytes(expected)


def test_response_notifications_follow_rsp_event(disk):
    path, img = disk
    rig = Rig(img)
    fe, ev = rig.fe, rig.guests[0].evtchn

    def clear():
        si = rig.guests[0].shared_info()
        off = abi.shared_info.offsetof("evtchn_pending")
        si[off:off + 8] = bytes(8)

    clear()
    fe.queue(blkif.BLKIF_OP_READ, 1, 0, [(0, 0, 7)])
    fe.push()
    assert ev.is_pending(fe.port)           # rsp_event = 1 lies in (0, 1]
    clear()
    fe.queue(blkif.BLKIF_OP_READ, 2, 0, [(0, 0, 7)])
    fe.push()                               # the frontend has not re-armed rsp_event
    assert not ev.is_pending(fe.port)
    assert len(fe.responses()) == 2
    assert not fe.ring.final_check_for_responses()     # re-arms rsp_event at rsp_cons + 1
    fe.queue(blkif.BLKIF_OP_READ, 3, 0, [(0, 0, 7)])
    assert fe.ring.push_requests()          # the backend re-armed req_event after its final check
    ev.send(fe.port)
    assert ev.is_pending(fe.port) and fe.responses() == [(3, 0, OKAY)]


def test_readonly_disk_refuses_write_and_discard(tmp_path):
    path = tmp_path / "ro.raw"
    create_image(path, "raw", DISK)
    rw = open_image(path)
    rw.write(0, pattern(1, DISK))
    rw.close()
    before = path.read_bytes()
    with open_image(path, readonly=True) as img:
        rig = Rig(img)
        fe = rig.fe
        assert fe.xenbus.backend_values["info"] == str(blkif.VDISK_READONLY)
        assert fe.xenbus.backend_values["feature-discard"] == "0"
        fe.page(0)[:] = b"\x55" * 4096
        assert fe.call(blkif.BLKIF_OP_WRITE, segs=[(0, 0, 7)]) == ERROR
        fe.discard_request(9, 0, 8)
        fe.push()
        assert fe.responses() == [(9, blkif.BLKIF_OP_DISCARD, ERROR)]
        assert fe.call(blkif.BLKIF_OP_READ, sector=8, segs=[(1, 0, 7)]) == OKAY
        assert bytes(fe.page(1)) == pattern(1, DISK)[4096:8192]
        assert fe.call(blkif.BLKIF_OP_FLUSH_DISKCACHE) == OKAY
    assert path.read_bytes() == before


# --- hostile frontends ---------------------------------------------------------------

def _bad_requests(fe, guest, other_guest):
    """(name, how to queue it) for every malformed request the issue lists."""
    fe.page(0)[:] = b"\x77" * 4096
    guest.grant_table.grant_access(450, 0, DATA_GFN + 30, readonly=True)   # read-only grant
    other_guest.grant_table.grant_access(460, 0, DATA_GFN)                 # another guest's grant
    guest.grant_table.grant_access(470, other_guest.domid, DATA_GFN + 29)  # granted to a guest, not dom0
    guest.grant_table.grant_access(480, 0, (RAM >> 12) + 5)                # a frame it does not own
    seg12 = [(i, 0, 7) for i in range(12)]
    return [
        ("nr_segments > 11", lambda: fe.ring.put_request(
            operation=blkif.BLKIF_OP_WRITE, nr_segments=12, id=11, sector_number=0,
            seg=[{"gref": DATA_REF + i, "last_sect": 7} for i, _, _ in seg12[:11]]), ERROR),
        ("nr_segments = 0", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 12, 0, []), ERROR),
        ("first_sect > last_sect", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 13, 0, [(0, 5, 4)]), ERROR),
        ("last_sect > 7", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 14, 0, [(0, 0, 8)]), ERROR),
        ("gref another guest granted", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 15, 0,
                                                        [(("gref", 460), 0, 7)]), ERROR),
        ("gref beyond the table", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 16, 0,
                                                   [(0, 0, 7), (("gref", 10**6), 0, 7)]), ERROR),
        ("read into a read-only grant", lambda: fe.queue(blkif.BLKIF_OP_READ, 17, 0,
                                                         [(("gref", 450), 0, 7)]), ERROR),
        ("sector past the end", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 18, SECTORS - 1, [(0, 0, 1)]), ERROR),
        ("sector far past the end", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 19, 2**64 - 1, [(0, 0, 7)]), ERROR),
        ("unknown op", lambda: fe.queue(200, 20, 0, [(0, 0, 7)]), EOPNOTSUPP),
        ("barrier", lambda: fe.queue(blkif.BLKIF_OP_WRITE_BARRIER, 21, 0, [(0, 0, 7)]), EOPNOTSUPP),
        # read as blkif_request_indirect: indirect_op 1 (WRITE, the nr_segments byte), 0 segments
        ("indirect", lambda: fe.queue(blkif.BLKIF_OP_INDIRECT, 22, 0, [(0, 0, 7)]), ERROR),
        ("gref granted to another domain", lambda: fe.queue(blkif.BLKIF_OP_WRITE, 23, 0,
                                                            [(("gref", 470), 0, 7)]), ERROR),
        ("gref naming a frame the guest does not own",
         lambda: fe.queue(blkif.BLKIF_OP_READ, 24, 0, [(0, 0, 7), (("gref", 480), 0, 7)]), ERROR),
        ("write whose last segment runs past the end",
         lambda: fe.queue(blkif.BLKIF_OP_WRITE, 25, SECTORS - 9, [(0, 0, 7), (1, 0, 1)]), ERROR),
    ]


def test_each_malformed_request_gets_an_error_and_changes_nothing(disk, tmp_path):
    path, img = disk
    rig = Rig(img, nr_guests=2)
    fe = rig.fe
    before = converted(path, tmp_path)
    cases = _bad_requests(fe, rig.guests[0], rig.guests[1])
    for name, queue, _ in cases:
        queue()
    fe.queue(blkif.BLKIF_OP_READ, 99, 0, [(1, 0, 7)])         # a good request after them
    fe.push()
    rsps = fe.responses()
    got = {rid: status for rid, _, status in rsps}
    assert len(cases) == 15
    for (name, _, want), rid in zip(cases, range(11, 26)):
        assert got[rid] == want, name
    assert got[99] == OKAY and bytes(fe.page(1)) == pattern(99, DISK)[:4096]
    assert bytes(fe.page(0)) == b"\x77" * 4096      # the refused READ wrote nothing into it
    assert fe.call(blkif.BLKIF_OP_FLUSH_DISKCACHE) == OKAY
    assert converted(path, tmp_path) == before
    assert rig.be.connected and read_state(rig.xs0, rig.be.xenbus.path) == XenbusState.Connected
    # no grant stayed pinned by a refused request, in either guest
    for g in rig.guests:
        assert all(g.grant_table.pins(r) == (0, 0) for r in range(DATA_REF, DATA_REF + NR_DATA))


@pytest.mark.parametrize("req_prod", [33, 10_000, 2**32 - 1])
def test_producer_far_ahead_disconnects_only_that_guest(disk, tmp_path, req_prod):
    path, img = disk
    rig = Rig(img, nr_guests=2)
    bad, good = rig.fronts
    before = converted(path, tmp_path)
    bad.page(0)[:] = b"\x66" * 4096
    for rid in range(4):
        bad.queue(blkif.BLKIF_OP_WRITE, rid, rid * 8, [(0, 0, 7)])
    bad.push()
    assert [s for _, _, s in bad.responses()] == [OKAY] * 4
    before = converted(path, tmp_path)
    bad.queue(blkif.BLKIF_OP_WRITE, 9, 512, [(0, 0, 7)])
    rig.guests[0].page(RING_GFN)[0:4] = ((4 + req_prod) & 0xFFFFFFFF).to_bytes(4, "little")
    rig.guests[0].evtchn.send(bad.port)
    be = rig.backs[0]
    assert not be.connected and "producer" in be.error
    assert read_state(rig.xs0, be.xenbus.path) in (XenbusState.Closing, XenbusState.Closed)
    assert bad.xenbus.state == XenbusState.Closed
    assert rig.guests[0].grant_table.pins(RING_REF) == (0, 0)      # ring unmapped
    assert be.port is None
    assert converted(path, tmp_path) == before
    # the other guest is still served
    assert good.call(blkif.BLKIF_OP_READ, sector=512, segs=[(0, 0, 7)]) == OKAY
    assert bytes(good.page(0)) == pattern(99, DISK)[512 * 512:512 * 512 + 4096]
    # further kicks from the disconnected guest reach nobody (its port is unbound again)
    served = dict(be.served)
    rig.guests[0].evtchn.send(bad.port)
    assert be.served == served and converted(path, tmp_path) == before


def test_bad_ring_ref_is_refused_at_connect(disk):
    path, img = disk
    table, dom0, [guest] = world(nr_guests=1, ram=RAM)
    store = Xenstore()
    xs0 = LocalClient(store)
    fe = Frontend(store, xs0, dom0, guest)
    fe.xenbus.details = lambda: {"ring-ref": 500, "event-channel": fe.port}   # not granted
    be = Blkback(dom0, xs0, guest.domid, 51712, img)
    be.start()
    fe.xenbus.start()
    assert not be.connected
    assert read_state(xs0, be.xenbus.path) in (XenbusState.Closing, XenbusState.Closed)
    assert b"500" in xs0.read(f"{be.xenbus.path}/error")


def test_orderly_close_unmaps_the_ring(disk):
    path, img = disk
    rig = Rig(img)
    rig.fe.xenbus.close()
    assert read_state(rig.xs0, rig.be.xenbus.path) == XenbusState.Closed
    assert not rig.be.connected and rig.guests[0].grant_table.pins(RING_REF) == (0, 0)


def test_a_damaged_image_gives_errors_not_a_dead_backend(tmp_path):
    """An L2 entry pointing past the end of the qcow2 file: requests touching that
    cluster get BLKIF_RSP_ERROR, the rest of the disk is served, the ring stays up."""
    path = tmp_path / "damaged.qcow2"
    create_image(path, "qcow2", DISK, cluster_size=4096)
    with open_image(path) as img:
        img.write(0, pattern(99, DISK))
        l2 = img.map.l1[0] & 0x00FFFFFFFFFFFE00
    with open(path, "r+b") as f:                    # guest cluster 2 -> far past the end
        f.seek(l2 + 2 * 8)
        f.write(((1 << 63) | (1 << 45)).to_bytes(8, "big"))
    with open_image(path) as img:
        rig = Rig(img)
        fe = rig.fe
        fe.page(0)[:] = b"\x33" * 4096
        fe.queue(blkif.BLKIF_OP_READ, 1, 16, [(0, 0, 7)])            # cluster 2: damaged
        fe.queue(blkif.BLKIF_OP_WRITE, 2, 8, [(1, 0, 7), (2, 0, 7)])  # clusters 1-2
        fe.queue(blkif.BLKIF_OP_READ, 3, 24, [(3, 0, 7)])            # cluster 3: fine
        fe.push()
        assert [(r[0], r[2]) for r in fe.responses()] == [(1, ERROR), (2, ERROR), (3, OKAY)]
        assert bytes(fe.page(0)) == b"\x33" * 4096
        assert bytes(fe.page(3)) == pattern(99, DISK)[24 * 512:32 * 512]
        assert rig.be.connected and rig.be.served[ERROR] == 2
        assert fe.call(blkif.BLKIF_OP_FLUSH_DISKCACHE, rid=4) == OKAY
