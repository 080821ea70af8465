"""Test helpers: a Python netfront in a guest domain, and a world of guests on switches.

``Netfront`` does what a guest's netfront driver does with its own RAM: a tx and an
rx ring page and buffer pages granted to domain 0, an event channel, the xenbus
frontend handshake, frames written into tx pages (split over several slots with
NETTXF_more_data when asked), rx buffers posted and read back. ``Net`` builds
domain 0, xenstore, guests, one netback per guest and the switches they sit on.
Used by tests/devices/net and bench/test_net.py.
"""

from pyvmm.devices import netif
from pyvmm.devices.net import Netback, VSwitch
from pyvmm.devices.net.ethernet import answer, parse_mac
from pyvmm.devices.ring import FrontRing
from pyvmm.devices.xenbus import XenbusFrontend, XenbusState, create_device, read_state
from pyvmm.pv.xenstore import LocalClient, RingClient, Xenstore
from pyvmm.mm.memory import GuestMemory
from pyvmm.pv.domain import Domain
from tests.pv.pvworld import GRANT_FRAMES, world

PAGE = 4096
TX_RING_GFN, RX_RING_GFN = 0x300, 0x301
TX_RING_REF, RX_RING_REF = 1, 2
TX_GFN, TX_REF = 0x400, 16          # tx buffer i: page TX_GFN + i, grant TX_REF + i
RX_GFN, RX_REF = 0x600, 16 + 256    # rx buffer i: page RX_GFN + i, grant RX_REF + i
NR_BUFS = 256                       # both rings hold 256 entries
RAM = 8 << 20


def mac_of(domid):
    return parse_mac(f"52:54:00:00:00:{domid:02x}")


def ip_of(domid):
    return bytes([10, 0, 0, domid])


class Netfront:
    """Guest ``guest``'s vif ``devid``: rings, buffers, grants, event channel, xenbus."""

    def __init__(self, store, dom0_client, guest, devid=0):
        self.guest = guest
        self.xs_page = bytearray(PAGE)
        conn = store.introduce(guest.domid, self.xs_page, notify=lambda: self.client.poll())
        self.client = RingClient(self.xs_page, kick=conn.handle)
        self.fe_path, self.be_path = create_device(dom0_client, "vif", guest.domid, devid)
        gt = guest.grant_table
        gt.grow(2)                       # 1024 entries: rings + 2 x 256 buffers
        gt.grant_access(TX_RING_REF, 0, TX_RING_GFN)
        gt.grant_access(RX_RING_REF, 0, RX_RING_GFN)
        for i in range(NR_BUFS):
            gt.grant_access(TX_REF + i, 0, TX_GFN + i, readonly=True)
            gt.grant_access(RX_REF + i, 0, RX_GFN + i)
        self.tx = FrontRing(guest.page(TX_RING_GFN), netif.NETIF_TX_RING)
        self.rx = FrontRing(guest.page(RX_RING_GFN), netif.NETIF_RX_RING)
        self.port = guest.evtchn.alloc_unbound(remote_dom=0)
        self.free_tx = list(range(NR_BUFS - 1, -1, -1))
        self.tx_status = {}              # id -> status of its last response
        self.received = []               # (rx id, status) of responses with errors
        self.xenbus = XenbusFrontend(
            self.client, self.fe_path,
            details=lambda: {"tx-ring-ref": TX_RING_REF, "rx-ring-ref": RX_RING_REF,
                             "event-channel": self.port, "request-rx-copy": 1,
                             "feature-rx-notify": 1},
            backend_keys=["mac", "handle", "feature-rx-copy"],
            connected=lambda values: None)

    @property
    def mac(self):
        return parse_mac(self.xenbus.backend_values["mac"])

    def kick(self):
        self.guest.evtchn.send(self.port)

    # --- receive ------------------------------------------------------------------

    def post_rx(self, count=NR_BUFS):
        """Post ``count`` rx buffers (ids 0..count-1, buffer i in page RX_GFN + i)."""
        for i in range(count):
            self.rx.put_request(id=i, gref=RX_REF + i)
        self.rx.push_requests()

    def receive(self, repost=True):
        """Frames the backend delivered since the last call (each rx buffer re-posted)."""
        frames = []
        for rsp in self.rx.take_responses():
            if rsp["status"] > 0:
                page = self.guest.page(RX_GFN + rsp["id"])
                frames.append(bytes(page[rsp["offset"]:rsp["offset"] + rsp["status"]]))
            else:
                self.received.append((rsp["id"], rsp["status"]))
            if repost:
                self.rx.put_request(id=rsp["id"], gref=RX_REF + rsp["id"])
        if repost:
            self.rx.push_requests()
        return frames

    # --- transmit -----------------------------------------------------------------

    def reap_tx(self):
        """Collect tx responses: buffers come back free; returns [(id, status)]."""
        out = []
        for rsp in self.tx.take_responses():
            out.append((rsp["id"], rsp["status"]))
            self.tx_status[rsp["id"]] = rsp["status"]
            if rsp["status"] != netif.NETIF_RSP_NULL:
                self.free_tx.append(rsp["id"])
        return out

    def queue(self, frame, chunks=None, offset=0, flags=0):
        """Put ``frame`` on the tx ring (not pushed); ``chunks`` splits it into slots of those
        sizes (the rest in the last), each in its own page at ``offset``. Returns the ids."""
        sizes = list(chunks or [])
        sizes.append(len(frame) - sum(sizes))
        ids, pos = [], 0
        for k, size in enumerate(sizes):
            buf = self.free_tx.pop()
            self.guest.page(TX_GFN + buf)[offset:offset + size] = frame[pos:pos + size]
            more = netif.NETTXF_more_data if k < len(sizes) - 1 else 0
            self.tx.put_request(gref=TX_REF + buf, offset=offset, id=buf,
                                flags=(flags if k == 0 else 0) | more,
                                size=len(frame) if k == 0 else size)
            ids.append(buf)
            pos += size
        return ids

    def push(self):
        if self.tx.push_requests():
            self.kick()

    def send(self, frame, **kw):
        """Queue, push, and reap the responses; returns [(id, status)] of this frame's slots."""
        ids = self.queue(frame, **kw)
        self.push()
        done = dict(self.reap_tx())
        return [(i, done.get(i)) for i in ids]

    def serve(self, mac, ip):
        """One step of a guest stack: answer every ARP/echo request received; returns how many."""
        replies = [r for r in (answer(f, mac, ip) for f in self.receive()) if r is not None]
        for reply in replies:
            self.queue(reply)
        if replies:
            self.push()
            self.reap_tx()
        return len(replies)


class Net:
    """Domain 0, xenstore, ``nr_guests`` guests each with a netback on ``switch``."""

    def __init__(self, nr_guests=2, switch=None, post=NR_BUFS):
        self.table, self.dom0, self.guests = world(nr_guests=nr_guests, ram=RAM)
        self.store = Xenstore()
        self.xs0 = LocalClient(self.store)
        self.switch = switch or VSwitch("sw0")
        self.fronts, self.backs = [], []
        for g in self.guests:
            self.add_vif(g, post)

    def add_guest(self, domid):
        """A new guest ``domid`` in the same domain table (no vif yet)."""
        guest = self.table.add(Domain(domid, GuestMemory(RAM), grant_frames=GRANT_FRAMES))
        self.guests.append(guest)
        return guest

    def add_vif(self, guest, post=NR_BUFS, switch=None):
        front = Netfront(self.store, self.xs0, guest)
        back = Netback(self.dom0, self.xs0, guest.domid, 0, mac_of(guest.domid),
                       switch or self.switch)
        back.start()
        front.xenbus.start()
        assert read_state(self.xs0, back.xenbus.path) == XenbusState.Connected
        assert front.xenbus.state == XenbusState.Connected
        if post:
            front.post_rx(post)
        self.fronts.append(front)
        self.backs.append(back)
        return front, back
