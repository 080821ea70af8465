"""SplitBackend, the mechanics blkback and netback share, driven through a small device
of its own: an "echo" protocol whose backend answers each request's value doubled,
on a request ring plus a second ring that is only mapped."""

import pytest

from pyvmm.devices.backend import SplitBackend, frontend_int
from pyvmm.devices.ring import FrontRing, RingLayout
from pyvmm.devices.xenbus import XenbusFrontend, XenbusState, create_device, read_state
from pyvmm.errors import GrantError, PyvmmError, RingError
from pyvmm.pv import abi
from pyvmm.pv.cstruct import Struct, u32, u64
from pyvmm.pv.xenstore import LocalClient, RingClient, Xenstore
from tests.pv.pvworld import world

ECHO_REQUEST = Struct("echo_request", [("id", u64), ("value", u32), ("pad", u32)])
ECHO_RESPONSE = Struct("echo_response", [("id", u64), ("value", u32), ("pad", u32)])
ECHO_RING = RingLayout("echo", ECHO_REQUEST, ECHO_RESPONSE)
BREACH = 0xDEAD            # a request value the echo protocol treats as fatal

REQ_GFN, REQ_REF = 0x300, 1
AUX_GFN, AUX_REF = 0x301, 2
DATA_GFN, DATA_REF = 0x400, 8
RAM = 8 << 20


class Echo(SplitBackend):
    DEVTYPE = "echo"
    RINGS = (("req-ring-ref", ECHO_RING), ("aux-ring-ref", ECHO_RING))
    REQUEST_RING = "req-ring-ref"
    FRONTEND_KEYS = ("mode",)

    def __init__(self, backend, client, frontend_domid, devid=0, during_serve=None):
        super().__init__(backend, client, frontend_domid, devid, {"feature-echo": 1})
        self.batches = []
        self.pushed = []
        self.during_serve = during_serve

    def check_frontend(self, values):
        if values["mode"] != "double":
            raise PyvmmError(f"{self.name}: mode {values['mode']!r} is not offered")

    def serve(self, requests):
        if any(r["value"] == BREACH for r in requests):
            raise RingError(f"request value {BREACH:#x} breaks the echo protocol")
        self.batches.append([r["id"] for r in requests])
        if self.during_serve:
            self.during_serve()
        ring = self.rings[self.REQUEST_RING]
        for r in requests:
            ring.put_response(id=r["id"], value=2 * r["value"])
        return len(requests)

    def after_push(self, served):
        self.pushed.append(served)


class Rig:
    def __init__(self, mode="double", aux_ref=AUX_REF, nr_guests=1, during_serve=None):
        self.table, self.dom0, self.guests = world(nr_guests=nr_guests, ram=RAM)
        self.guest = self.guests[0]
        self.store = Xenstore()
        self.xs0 = LocalClient(self.store)
        xs_page = bytearray(4096)
        conn = self.store.introduce(self.guest.domid, xs_page, notify=lambda: client.poll())
        client = RingClient(xs_page, kick=conn.handle)
        fe_path, _ = create_device(self.xs0, "echo", self.guest.domid, 0)
        gt = self.guest.grant_table
        gt.grant_access(REQ_REF, 0, REQ_GFN)
        gt.grant_access(AUX_REF, 0, AUX_GFN)
        for i in range(4):
            gt.grant_access(DATA_REF + i, 0, DATA_GFN + i, readonly=i == 3)
        self.ring = FrontRing(self.guest.page(REQ_GFN), ECHO_RING)
        FrontRing(self.guest.page(AUX_GFN), ECHO_RING)
        self.fe_port = self.guest.evtchn.alloc_unbound(remote_dom=0)
        self.front = XenbusFrontend(
            client, fe_path,
            details=lambda: {"req-ring-ref": REQ_REF, "aux-ring-ref": aux_ref,
                             "event-channel": self.fe_port, "mode": mode},
            backend_keys=["feature-echo"], connected=lambda values: None)
        self.back = Echo(self.dom0, self.xs0, self.guest.domid, during_serve=during_serve)
        self.back.start()
        self.front.start()

    def send(self, *values, first_id=1):
        for i, v in enumerate(values):
            self.ring.put_request(id=first_id + i, value=v)
        if self.ring.push_requests():
            self.guest.evtchn.send(self.fe_port)

    def clear_pending(self):
        si = self.guest.shared_info()
        off = abi.shared_info.offsetof("evtchn_pending")
        si[off:off + 8] = bytes(8)

    def pinned(self, *refs):
        return [self.guest.grant_table.pins(r) for r in refs]


def test_handshake_maps_every_ring_and_binds_the_port():
    rig = Rig()
    be = rig.back
    assert read_state(rig.xs0, be.xenbus.path) == XenbusState.Connected
    assert rig.front.backend_values == {"feature-echo": "1"}
    assert be.connected and set(be.rings) == {"req-ring-ref", "aux-ring-ref"}
    assert rig.pinned(REQ_REF, AUX_REF) == [(0, 1), (0, 1)]
    assert be.port is not None and be.name == "echo1.0"


def test_requests_are_served_in_batches_and_answered():
    rig = Rig()
    rig.send(3, 4, 5)
    assert [(r["id"], r["value"]) for r in rig.ring.take_responses()] == [(1, 6), (2, 8), (3, 10)]
    assert rig.back.batches == [[1, 2, 3]] and rig.back.pushed == [3]


def test_notifications_are_suppressed_as_ring_h_says():
    rig = Rig()
    ev = rig.guest.evtchn
    rig.clear_pending()
    rig.send(1)
    assert ev.is_pending(rig.fe_port)              # rsp_event 1 lies in (0, 1]
    rig.clear_pending()
    rig.send(2, first_id=2)                        # the frontend has not re-armed rsp_event
    assert not ev.is_pending(rig.fe_port)
    assert len(rig.ring.take_responses()) == 2
    assert not rig.ring.final_check_for_responses()
    rig.ring.put_request(id=3, value=3)
    assert rig.ring.push_requests()                # the backend re-armed req_event after its loop
    ev.send(rig.fe_port)
    assert ev.is_pending(rig.fe_port)
    assert [r["value"] for r in rig.ring.take_responses()] == [6]


def test_requests_published_while_serving_are_taken_by_the_final_check():
    rig = Rig()
    published = []

    def more():                   # the frontend adds a request in the middle of a batch
        if not published:
            published.append(1)
            rig.send(7, first_id=10)

    rig.back.during_serve = more
    rig.send(1)
    assert rig.back.batches == [[1], [10]]         # served by the same loop, not re-entered
    assert [r["id"] for r in rig.ring.take_responses()] == [1, 10]


@pytest.mark.parametrize("breach", ["producer", "serve"])
def test_a_protocol_breach_disconnects_and_unmaps_everything(breach):
    rig = Rig(nr_guests=2)
    be = rig.back
    rig.send(1)
    rig.ring.take_responses()
    if breach == "producer":
        rig.guest.page(REQ_GFN)[0:4] = (1 + 10_000).to_bytes(4, "little")
        rig.guest.evtchn.send(rig.fe_port)
        assert "producer" in be.error
    else:
        rig.send(2, BREACH, first_id=2)
        assert "breaks the echo protocol" in be.error
        assert rig.ring.take_responses() == []     # nothing of that batch was answered
    assert be.error.startswith("echo1.0: ")
    assert not be.connected and be.rings == {} and be.port is None
    assert rig.pinned(REQ_REF, AUX_REF) == [(0, 0), (0, 0)]
    assert read_state(rig.xs0, be.xenbus.path) in (XenbusState.Closing, XenbusState.Closed)
    assert be.error.encode() == rig.xs0.read(f"{be.xenbus.path}/error")
    batches = list(be.batches)
    rig.guest.evtchn.send(rig.fe_port)            # later kicks reach nobody
    be.process()
    assert be.batches == batches
    assert rig.guests[1].grant_table.pins(REQ_REF) == (0, 0)


def test_refused_frontend_values_map_nothing():
    rig = Rig(mode="triple")
    assert not rig.back.connected
    assert b"triple" in rig.xs0.read(f"{rig.back.xenbus.path}/error")
    assert rig.pinned(REQ_REF, AUX_REF) == [(0, 0), (0, 0)]


@pytest.mark.parametrize("aux_ref,word", [(500, b"500"), ("x1", b"x1")])
def test_a_connect_that_fails_part_way_undoes_what_it_made(aux_ref, word):
    rig = Rig(aux_ref=aux_ref)
    be = rig.back
    assert not be.connected and be.port is None and be.ring_mappings == []
    assert word in rig.xs0.read(f"{be.xenbus.path}/error")
    assert rig.pinned(REQ_REF, AUX_REF) == [(0, 0), (0, 0)]
    rig.send(1)                                    # nothing serves the ring
    assert be.batches == []


def test_frontend_pages_are_mapped_for_the_body_only_and_all_or_nothing():
    rig = Rig()
    be = rig.back
    rig.guest.page(DATA_GFN + 3)[:4] = b"ro!!"
    with be.frontend_pages([DATA_REF, DATA_REF + 3], writable=False) as pages:
        assert bytes(pages[1][:4]) == b"ro!!"
        assert rig.pinned(DATA_REF, DATA_REF + 3) == [(1, 0), (1, 0)]
    assert rig.pinned(DATA_REF, DATA_REF + 3) == [(0, 0), (0, 0)]
    with be.frontend_pages([DATA_REF + 1], writable=True) as [page]:
        page[:5] = b"hello"
    assert bytes(rig.guest.page(DATA_GFN + 1)[:5]) == b"hello"
    # a writable mapping of a read-only grant, and a ref never granted: nothing stays mapped
    for refs in ([DATA_REF, DATA_REF + 1, DATA_REF + 3], [DATA_REF, 900]):
        with pytest.raises(GrantError):
            with be.frontend_pages(refs, writable=True):
                pass
        assert rig.pinned(DATA_REF, DATA_REF + 1, DATA_REF + 3) == [(0, 0)] * 3
    # the work failing inside the body unmaps as well
    with pytest.raises(ValueError):
        with be.frontend_pages([DATA_REF], writable=True):
            raise ValueError("device work failed")
    assert rig.pinned(DATA_REF) == [(0, 0)]


def test_copies_map_the_page_for_the_copy_only():
    rig = Rig()
    be = rig.back
    rig.guest.page(DATA_GFN + 3)[100:104] = b"abcd"
    assert be.copy_from_frontend(DATA_REF + 3, 100, 4) == b"abcd"      # a read-only grant will do
    be.copy_to_frontend(DATA_REF + 2, b"xyz", offset=4094 - 3)
    assert bytes(rig.guest.page(DATA_GFN + 2)[4091:4094]) == b"xyz"
    with pytest.raises(GrantError):
        be.copy_to_frontend(DATA_REF + 3, b"no")                       # read-only: refused
    with pytest.raises(GrantError):
        be.copy_from_frontend(900, 0, 4)                               # never granted
    assert bytes(rig.guest.page(DATA_GFN + 3)[:2]) != b"no"
    assert rig.pinned(DATA_REF + 2, DATA_REF + 3) == [(0, 0), (0, 0)]


def test_orderly_close_and_stop():
    rig = Rig()
    rig.front.close()
    assert read_state(rig.xs0, rig.back.xenbus.path) == XenbusState.Closed
    assert not rig.back.connected and rig.pinned(REQ_REF, AUX_REF) == [(0, 0), (0, 0)]
    rig2 = Rig()
    rig2.back.stop()
    assert not rig2.back.connected and rig2.pinned(REQ_REF, AUX_REF) == [(0, 0), (0, 0)]


def test_frontend_int():
    assert frontend_int({"ring-ref": " 12\n"}, "ring-ref") == 12
    for bad in ("-1", "0x10", "", "1e3"):
        with pytest.raises(PyvmmError, match="ring-ref"):
            frontend_int({"ring-ref": bad}, "ring-ref")
