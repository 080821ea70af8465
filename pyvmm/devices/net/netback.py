"""netback: domain 0's server for one guest network interface (xen/include/public/io/netif.h).

Responsibility: the netif protocol of one (frontend domain, vif) pair between its
rings and a switch port: what the backend publishes in the handshake
(feature-rx-copy=1, feature-rx-flip=0, mac and handle; it requires
request-rx-copy=1), and
- transmit: the tx requests of each batch (the request loop is SplitBackend's,
  devices/backend.py, which also maps tx-ring-ref and rx-ring-ref and binds the
  event channel), split into packets (a first slot whose ``size`` is the whole packet,
  NETTXF_more_data chaining the next slots), copy each packet's bytes out of the
  frontend's granted pages and hand the frame to the switch port (``uplink``); one
  tx response per slot;
- receive: ``deliver(frame)`` (called by the switch) takes one rx request the
  frontend posted, copies the frame into its granted page, answers in the same ring
  slot with the frame's length, and notifies as ``rsp_event`` asks.

Invariants:
- A packet is checked whole before any byte of it leaves: first size in
  ETH_HLEN..max_frame, at most XEN_NETIF_NR_SLOTS_MIN data slots, every slot inside
  one page (offset + size <= 4096), the later slots' sizes not above the first's
  total, every gref readable by this backend. A bad packet gets NETIF_RSP_ERROR in
  each of its request slots (NETIF_RSP_NULL in its extra-info slots) and reaches no
  port; the next packet is served normally.
- A frontend that breaks the ring protocol (a producer further ahead than the ring
  holds on either ring, or a packet whose NETTXF_more_data / extra chain runs past
  the requests it published, which Linux's netback also treats as fatal) is
  disconnected as SplitBackend says (both rings unmapped); other vifs, the switch
  and other domains are untouched.
- Every grant mapping made to copy a slot is undone before the next slot is looked
  at; between packets the backend holds only the two ring mappings.
- A frame for the guest is dropped and counted (``stats['rx_dropped']``) when the
  vif is not connected or no rx request is posted; it is never queued.

Save/restore (docs/migration-stream.md, "Network interfaces"): ``save`` is
SplitBackend's connection (xenbus state, both rings' grant refs and private
indices, the frontend's port), taken after the tx requests already on the ring
are served (their frames leave, their responses are in the ring page), plus the
counters and the number of rx requests the frontend has posted and the backend
not yet used (they stay in the ring page, in guest RAM). ``restore`` takes it up
in a fresh, unstarted Netback and checks that the restored rx ring shows exactly
that many posted requests; a mismatch drops the connection again (nothing stays
mapped or bound). ``announce()`` sends ``ethernet.announcement(mac)`` into the
switch from the vif's port, as QEMU announces a migrated NIC: every switch on the
way (the local one, and through a UDP endpoint the other process's) learns at once
where the guest's MAC lives now.

Deviations: pyvmm's domain 0 is Python code without guest RAM, so GNTTABOP_copy
(whose local side is a gmfn of the caller) cannot name a dom0 buffer; each slot is
copied through a transient grant mapping instead (same checks: GTF_permit_access,
grantee, GTF_readonly for rx, frame ownership; GTF_reading/writing set only while
copying). One queue, one event channel (no feature-split-event-channels, no
multi-queue), no control ring. No GSO and no scatter-gather receive: frames are at
most ``mtu + 18`` bytes and always fit one rx page. Tx extra-info slots (GSO,
multicast, hash) are parsed and refused: the packet gets NETIF_RSP_ERROR, as
nothing that needs them is advertised. NETTXF_csum_blank is honoured by computing
the IPv4 TCP/UDP checksum before the frame leaves (Linux netfront always offloads);
received frames always carry full checksums, so NETRXF_* flags stay 0.
"""

from pyvmm.devices import netif
from pyvmm.devices.backend import SplitBackend, frontend_int
from pyvmm.devices.net.ethernet import ETH_HLEN, announcement, complete_checksum, format_mac
from pyvmm.errors import ConfigError, MigrationStreamError, PyvmmError, RingError
from pyvmm.migrate.state import StateFields
from pyvmm.pv import abi

__all__ = ["Netback", "MAX_TX_SLOTS", "VLAN_ETH_HLEN", "STAT_KEYS"]

MAX_TX_SLOTS = netif.XEN_NETIF_NR_SLOTS_MIN      # data slots one packet may use (netif.h)
MAX_TX_EXTRAS = netif.XEN_NETIF_EXTRA_TYPE_MAX - 1   # one extra slot per defined type
VLAN_ETH_HLEN = ETH_HLEN + 4                     # an 802.1Q tag may follow the addresses

STAT_KEYS = ("tx_packets", "tx_bytes", "tx_errors", "rx_packets", "rx_bytes", "rx_errors", "rx_dropped")
_EXTRA_SIZE = netif.NETIF_EXTRA_INFO.size
assert _EXTRA_SIZE <= netif.NETIF_TX_REQUEST.size


def _as_extra(slot):
    """A tx slot read as the netif_extra_info that overlays the request (netif.h "Extra Info").

    Slots are unpacked as requests (the common case); the rare extra slot is turned
    back into its bytes and read again with the extra-info layout.
    """
    return netif.NETIF_EXTRA_INFO.unpack(netif.NETIF_TX_REQUEST.pack(**slot)[:_EXTRA_SIZE])




class _BadPacket(PyvmmError):
    """One tx packet that is refused with NETIF_RSP_ERROR (the message says why)."""


class _Incomplete(RingError):
    """A packet chain that runs past the requests the frontend published (fatal)."""


class Netback(SplitBackend):
    """The backend of vif ``devid`` of domain ``frontend_domid``, served from ``backend``.

    ``backend`` is the Python-side domain (domain 0); ``client`` its xenstore client;
    ``mac`` the guest's 6-byte MAC (published as ``mac``); ``switch`` anything with
    ``attach(sink, name) -> port`` (a VSwitch): frames the guest sends go to
    ``port.send(frame)``, and the switch calls ``deliver(frame)``. ``start()`` begins the
    handshake (the toolstack created the directories). ``stats`` counts packets,
    bytes, errors and drops each way; ``error`` records why the vif was disconnected,
    ``last_refused`` why the last refused tx packet was refused.
    """

    DEVTYPE = "vif"
    RINGS = (("tx-ring-ref", netif.NETIF_TX_RING), ("rx-ring-ref", netif.NETIF_RX_RING))
    REQUEST_RING = "tx-ring-ref"
    FRONTEND_KEYS = ("request-rx-copy",)

    def __init__(self, backend, client, frontend_domid, devid, mac, switch, mtu=1500):
        if len(mac) != 6:
            raise ConfigError(f"vif {frontend_domid}.{devid}: MAC {bytes(mac).hex()} is not 6 bytes")
        if not 68 <= mtu <= abi.PAGE_SIZE - VLAN_ETH_HLEN:
            raise ConfigError(f"vif {frontend_domid}.{devid}: MTU {mtu} is outside "
                              f"68..{abi.PAGE_SIZE - VLAN_ETH_HLEN} (a frame must fit one page)")
        self.mac = bytes(mac)
        self.mtu = mtu
        self.max_frame = mtu + VLAN_ETH_HLEN
        self.last_refused = None
        self.announcements = 0
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        details = {"feature-rx-copy": 1, "feature-rx-flip": 0, "feature-sg": 0,
                   "feature-gso-tcpv4": 0, "feature-gso-tcpv6": 0, "feature-split-event-channels": 0,
                   "mac": format_mac(self.mac), "handle": devid}
        super().__init__(backend, client, frontend_domid, devid, details)
        self.uplink = switch.attach(self, self.name)

    @property
    def tx(self):
        """The tx BackRing while connected, else None."""
        return self.rings.get("tx-ring-ref")

    @property
    def rx(self):
        """The rx BackRing while connected, else None."""
        return self.rings.get("rx-ring-ref")

    def check_frontend(self, values):
        if frontend_int(values, "request-rx-copy") != 1:
            raise PyvmmError(f"{self.name}: frontend did not set request-rx-copy=1 (page flipping "
                             "is not offered)")

    # --- save / restore ---------------------------------------------------------------

    def save(self):
        """The connection (SplitBackend.save: the tx ring served first) with the counters
        and the rx requests posted and not yet used."""
        backend = super().save()
        posted = self.rx.unconsumed_requests() if self.rx is not None else 0
        return {**backend, "stats": dict(self.stats), "rx_posted": posted}

    def restore(self, state):
        """Take up a saved connection in this unstarted backend (SplitBackend.restore);
        the rx ring must show the ``rx_posted`` requests the save saw."""
        f = StateFields(state, f"{self.name} backend")
        stats = f.raw("stats")
        if not isinstance(stats, dict) or sorted(stats) != sorted(STAT_KEYS):
            f.fail("stats", f"{stats!r} is not a map of {list(STAT_KEYS)}")
        for key in STAT_KEYS:
            if isinstance(stats[key], bool) or not isinstance(stats[key], int) or not 0 <= stats[key] < 1 << 64:
                f.fail("stats", f"{key}: {stats[key]!r} is not a counter")
        rx_size = netif.NETIF_RX_RING.ring_size(abi.PAGE_SIZE)
        posted = f.uint("rx_posted", rx_size + 1)
        connection = {k: v for k, v in state.items() if k not in ("stats", "rx_posted")}
        super().restore(connection)
        now = self.rx.unconsumed_requests() if self.rx is not None else 0
        if now != posted:
            self.stop()
            raise MigrationStreamError(f"{self.name} backend: the restored rx ring holds {now} posted "
                                       f"requests, the save saw {posted}")
        self.stats = dict(stats)

    def announce(self):
        """Send the RARP announcement of the guest's MAC into the switch (after a restore
        or a migration); False when the vif is not connected (the guest has not brought
        it up: its first frame will teach the switch)."""
        if not self.connected:
            return False
        self.uplink.send(announcement(self.mac))
        self.announcements += 1
        return True

    def destroy(self):
        """Leave the switch and drop the connection (the toolstack removes the vif)."""
        self.uplink.detach()
        self.stop()

    # --- transmit (guest -> switch) ------------------------------------------------

    def after_push(self, frames):
        """The batch's frames leave once their tx responses are pushed."""
        for frame in frames:
            self.uplink.send(frame)

    def serve(self, slots):
        """Check and copy every packet in ``slots``; responses written; frames returned.

        The whole batch is split first, so a chain that runs past the last slot
        raises _Incomplete before any response is written or any frame leaves.
        """
        packets = []
        i = 0
        while i < len(slots):
            packet, i = self._split(slots, i)
            packets.append(packet)
        frames = []
        tx = self.tx
        for requests, extras in packets:
            status = netif.NETIF_RSP_OKAY
            try:
                frames.append(self._read_packet(requests, extras))
                self.stats["tx_packets"] += 1
                self.stats["tx_bytes"] += len(frames[-1])
            except PyvmmError as err:   # _BadPacket, GrantError, PacketError from the checksum
                self.last_refused = str(err)
                status = netif.NETIF_RSP_ERROR
                self.stats["tx_errors"] += 1
            tx.put_response(id=requests[0]["id"], status=status)
            for _ in extras:
                tx.put_response(id=0, status=netif.NETIF_RSP_NULL)
            for req in requests[1:]:
                tx.put_response(id=req["id"], status=status)
        return frames

    @staticmethod
    def _split(slots, i):
        """The packet starting at slot ``i``: (request slots, extra slots), next index."""
        first = slots[i]

        def chain(i, more, read, more_bit, what):
            out = []
            while more:
                if i >= len(slots):
                    raise _Incomplete(f"tx packet id {first['id']}: {what} chain runs past the "
                                      f"{len(slots)} requests published")
                out.append(read(slots[i]))
                more = out[-1]["flags"] & more_bit
                i += 1
            return out, i

        extras, i = chain(i + 1, first["flags"] & netif.NETTXF_extra_info, _as_extra,
                          netif.XEN_NETIF_EXTRA_FLAG_MORE, "extra-info")
        rest, i = chain(i, first["flags"] & netif.NETTXF_more_data, dict, netif.NETTXF_more_data,
                        "NETTXF_more_data")
        return ([first] + rest, extras), i

    def _read_packet(self, requests, extras):
        """The frame one packet carries, checked whole first; raises _BadPacket."""
        first = requests[0]
        total = first["size"]
        if extras:
            raise _BadPacket(f"tx packet id {first['id']} has {len(extras)} extra-info slot(s) "
                             f"(type {extras[0]['type']}); none is offered")
        if len(requests) > MAX_TX_SLOTS:
            raise _BadPacket(f"tx packet id {first['id']} uses {len(requests)} slots, more than "
                             f"{MAX_TX_SLOTS}")
        if not ETH_HLEN <= total <= self.max_frame:
            raise _BadPacket(f"tx packet id {first['id']} of {total} bytes is outside "
                             f"{ETH_HLEN}..{self.max_frame}")
        rest = sum(req["size"] for req in requests[1:])
        if rest > total:
            raise _BadPacket(f"tx packet id {first['id']}: later slots hold {rest} bytes, more "
                             f"than the packet's {total}")
        sizes = [total - rest] + [req["size"] for req in requests[1:]]
        for req, size in zip(requests, sizes):
            if req["offset"] + size > abi.PAGE_SIZE:
                raise _BadPacket(f"tx slot id {req['id']}: {size} bytes at offset {req['offset']} "
                                 "cross the page end")
        frame = b"".join(self.copy_from_frontend(req["gref"], req["offset"], size)
                         for req, size in zip(requests, sizes) if size)
        if first["flags"] & netif.NETTXF_csum_blank:
            frame = complete_checksum(frame)
        return frame

    # --- receive (switch -> guest) -------------------------------------------------

    def deliver(self, frame):
        """Copy ``frame`` into the next rx buffer the guest posted; False if dropped."""
        if not self.connected or len(frame) > self.max_frame:
            self.stats["rx_dropped"] += 1
            return False
        rx = self.rx
        try:
            posted = rx.take_requests(limit=1)
        except RingError as err:
            self.disconnect(str(err))
            self.stats["rx_dropped"] += 1
            return False
        if not posted:
            self.stats["rx_dropped"] += 1
            return False
        req = posted[0]
        try:
            self.copy_to_frontend(req["gref"], frame)
            status = len(frame)
        except PyvmmError:
            status = netif.NETIF_RSP_ERROR
        rx.put_response(id=req["id"], offset=0, flags=0, status=status)
        self.push(rx)
        if status < 0:
            self.stats["rx_errors"] += 1
            return False
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += len(frame)
        return True
