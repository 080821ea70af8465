"""netback in domain 0 serving Python netfronts in guest domains, all on one switch."""

import pytest

from pyvmm.devices import netif
from pyvmm.devices.net import Netback, VSwitch
from pyvmm.devices.net.ethernet import (BROADCAST, ETH_P_ARP, ETH_P_IP, arp, ethernet, icmp_echo,
                                        ipv4, parse_icmp, parse_ipv4_packet, split_ethernet, udp)
from pyvmm.devices.xenbus import XenbusState, read_state
from pyvmm.errors import ConfigError
from pyvmm.pv import abi
from pyvmm.pv.xenstore import LocalClient, Xenstore
from tests.devices.net.netfront import (NR_BUFS, RX_RING_GFN, RX_RING_REF, TX_RING_GFN, TX_RING_REF,
                                        Net, Netfront, ip_of, mac_of)
from tests.pv.pvworld import world

OKAY, ERROR, NULL = netif.NETIF_RSP_OKAY, netif.NETIF_RSP_ERROR, netif.NETIF_RSP_NULL

# Guest 1 (52:54:00:00:00:01, 10.0.0.1) asks who has 10.0.0.2, as bytes on the wire.
ARP_REQUEST = bytes.fromhex(
    "ffffffffffff" "525400000001" "0806"           # broadcast, from guest 1, ARP
    "0001" "0800" "06" "04" "0001"                  # Ethernet, IPv4, lengths, request
    "525400000001" "0a000001" "000000000000" "0a000002")
ARP_REPLY = bytes.fromhex(
    "525400000001" "525400000002" "0806"
    "0001" "0800" "06" "04" "0002"                  # reply
    "525400000002" "0a000002" "525400000001" "0a000001")


def payload(n, seed=1):
    return bytes((seed * 37 + i * 11) & 0xFF for i in range(n))


def ping(src, dst, seq, data=b"pyvmm ping data!"):
    echo = icmp_echo(8, 0x1234, seq, data)
    return ethernet(mac_of(dst), mac_of(src), ETH_P_IP, ipv4(ip_of(src), ip_of(dst), 1, echo, ident=seq))


@pytest.fixture
def net():
    return Net(nr_guests=2)


def test_handshake_publishes_the_vif(net):
    a = net.fronts[0]
    assert a.xenbus.backend_values == {"mac": "52:54:00:00:00:01", "handle": "0", "feature-rx-copy": "1"}
    back = net.backs[0]
    assert back.connected
    gt = net.guests[0].grant_table
    assert gt.pins(TX_RING_REF) == (0, 1) and gt.pins(RX_RING_REF) == (0, 1)


def test_arp_and_icmp_echo_round_trip_byte_by_byte(net):
    a, b = net.fronts
    assert ARP_REQUEST == ethernet(BROADCAST, mac_of(1), ETH_P_ARP,
                                   arp(1, mac_of(1), ip_of(1), bytes(6), ip_of(2)))
    assert a.send(ARP_REQUEST) == [(0, OKAY)]                  # tx buffer 0, one slot
    assert b.receive() == [ARP_REQUEST]                         # flooded, unchanged
    b.queue(ARP_REPLY)
    b.push()
    assert [s for _, s in b.reap_tx()] == [OKAY]
    assert a.receive() == [ARP_REPLY]
    assert net.switch.lookup(mac_of(1)).name == "vif1.0" and net.switch.lookup(mac_of(2)).name == "vif2.0"

    request = ping(1, 2, seq=7)
    a.send(request)
    got = b.receive()
    assert got == [request]
    b.queue(ethernet(mac_of(1), mac_of(2), ETH_P_IP,
                     ipv4(ip_of(2), ip_of(1), 1, icmp_echo(0, 0x1234, 7, b"pyvmm ping data!"), ident=7)))
    b.push()
    b.reap_tx()
    [reply] = a.receive()
    dst, src, ethertype, packet = split_ethernet(reply)
    assert (dst, src, ethertype) == (mac_of(1), mac_of(2), ETH_P_IP)
    ip = parse_ipv4_packet(packet)
    assert (ip["src"], ip["dst"], ip["proto"]) == (ip_of(2), ip_of(1), 1)
    assert parse_icmp(ip["payload"]) == {"type": 0, "code": 0, "ident": 0x1234, "seq": 7,
                                         "data": b"pyvmm ping data!"}
    # exactly what the wire carries: 14 + 20 + 8 + 16 bytes, checksums included
    assert reply == bytes.fromhex(
        "525400000001525400000002" "0800"
        "4500002c00074000400126c80a0000020a000001"     # header checksum 0x26c8
        "0000d7f212340007") + b"pyvmm ping data!"       # ICMP checksum 0xd7f2
    assert net.backs[0].stats["tx_packets"] == 2 and net.backs[1].stats["rx_packets"] == 2


def test_a_guest_stack_answers_arp_and_ping(net):
    a, b = net.fronts
    a.send(ARP_REQUEST)
    assert b.serve(mac_of(2), ip_of(2)) == 1
    assert a.receive() == [ARP_REPLY]
    for seq in range(1, 6):
        a.send(ping(1, 2, seq, payload(56, seq)))
        assert b.serve(mac_of(2), ip_of(2)) == 1
        [reply] = a.receive()
        echo = parse_icmp(parse_ipv4_packet(split_ethernet(reply)[3])["payload"])
        assert (echo["type"], echo["seq"], echo["data"]) == (0, seq, payload(56, seq))
    # learned unicast: guest 3 on the same switch sees only the first broadcast
    c, _ = net.add_vif(net.add_guest(3))
    a.send(ping(1, 2, 99))
    assert c.receive() == [] and b.receive() == [ping(1, 2, 99)]


def test_multi_slot_packets_arrive_whole(net):
    a, b = net.fronts
    frame = ethernet(mac_of(2), mac_of(1), 0x88B5, payload(1500))
    statuses = a.send(frame, chunks=[100, 600, 14], offset=3000 - 2000)
    assert [s for _, s in statuses] == [OKAY] * 4
    assert b.receive() == [frame]
    # first slot empty (all bytes in later slots), and a zero-length middle slot
    frame2 = ethernet(mac_of(2), mac_of(1), 0x88B5, payload(200, 3))
    assert [s for _, s in a.send(frame2, chunks=[0, 100, 0])] == [OKAY] * 4
    assert b.receive() == [frame2]
    # a full ring's worth of 18-slot packets queued before one push
    frames = [ethernet(mac_of(2), mac_of(1), 0x88B5, payload(17 * 10, k)) for k in range(14)]
    ids = [a.queue(f, chunks=[10] * 17) for f in frames]
    a.push()
    done = dict(a.reap_tx())
    assert all(done[i] == OKAY for slot_ids in ids for i in slot_ids)
    assert b.receive() == frames
    assert net.backs[0].stats["tx_packets"] == 16


def test_checksum_offload_is_completed_by_the_backend(net):
    a, b = net.fronts
    good = ethernet(mac_of(2), mac_of(1), ETH_P_IP,
                    ipv4(ip_of(1), ip_of(2), 17, udp(ip_of(1), ip_of(2), 4000, 53, payload(33))))
    blank = bytearray(good)
    blank[14 + 20 + 6:14 + 20 + 8] = b"\x12\x34"       # a partial sum, as Linux leaves it
    a.send(bytes(blank), flags=netif.NETTXF_csum_blank)
    assert b.receive() == [good]
    a.send(bytes(blank))                                # without the flag: passed as is
    assert b.receive() == [bytes(blank)]


def test_frames_without_rx_buffers_are_dropped_and_counted():
    net = Net(nr_guests=2, post=0)
    a, b = net.fronts
    for seq in range(3):
        a.send(ping(1, 2, seq))
    assert net.backs[1].stats["rx_dropped"] == 3 and b.receive() == []
    assert net.switch.ports[1].stats["out_refused"] == 3
    b.post_rx(2)
    for seq in range(3, 6):
        a.send(ping(1, 2, seq))
    assert b.receive(repost=False) == [ping(1, 2, 3), ping(1, 2, 4)]
    assert net.backs[1].stats["rx_dropped"] == 4
    b.post_rx(2)
    assert not net.backs[1].deliver(ethernet(mac_of(2), mac_of(1), 0x88B5, bytes(1519 - 14)))
    assert net.backs[1].stats["rx_dropped"] == 5 and b.receive() == []    # over the MTU: dropped


def test_notifications_follow_the_event_indices(net):
    a, b = net.fronts
    ev = net.guests[1].evtchn

    def clear(guest):
        si = guest.shared_info()
        off = abi.shared_info.offsetof("evtchn_pending")
        si[off:off + 8] = bytes(8)

    clear(net.guests[1])
    a.send(ping(1, 2, 1))
    assert ev.is_pending(b.port)             # rsp_event = 1 lies in (0, 1]
    clear(net.guests[1])
    a.send(ping(1, 2, 2))
    assert not ev.is_pending(b.port)         # b has not re-armed rsp_event
    assert len(b.receive()) == 2
    assert not b.rx.final_check_for_responses()
    a.send(ping(1, 2, 3))
    assert ev.is_pending(b.port)


# --- hostile frontends ---------------------------------------------------------------

def test_each_malformed_packet_gets_errors_and_nothing_leaves(net):
    a, b = net.fronts
    g1, g2 = net.guests
    g2.grant_table.grant_access(700, 0, 0x700)                    # granted by another guest
    g1.grant_table.grant_access(701, 2, 0x701)                    # granted to guest 2, not dom0
    frame = ping(1, 2, 1)
    good_slot = a.free_tx[-1]

    def raw(gref, size, offset=0, flags=0, rid=500):
        a.tx.put_request(gref=gref, offset=offset, flags=flags, id=rid, size=size)
        return [rid]

    a.guest.page(0x400 + good_slot)[:len(frame)] = frame
    gref = 16 + good_slot
    cases = [
        ("shorter than a header", lambda: raw(gref, 13, rid=301), [ERROR]),
        ("oversized", lambda: raw(gref, 0xFFFF, rid=302), [ERROR]),
        ("above the MTU by one", lambda: raw(gref, 1519, rid=303), [ERROR]),
        ("crosses the page end", lambda: raw(gref, 200, offset=4000, rid=304), [ERROR]),
        ("gref another guest granted", lambda: raw(700, 60, rid=305), [ERROR]),
        ("gref granted to another domain", lambda: raw(701, 60, rid=306), [ERROR]),
        ("gref beyond the table", lambda: raw(10**6, 60, rid=307), [ERROR]),
        ("later slots larger than the total",
         lambda: raw(gref, 60, flags=netif.NETTXF_more_data, rid=308) + raw(gref, 61, rid=309),
         [ERROR, ERROR]),
        ("19 slots", lambda: sum((raw(gref, 60 if k == 0 else 1,
                                      flags=netif.NETTXF_more_data if k < 18 else 0, rid=310 + k)
                                  for k in range(19)), []), [ERROR] * 19),
        ("extra info slot", lambda: raw(gref, 60, flags=netif.NETTXF_extra_info | netif.NETTXF_more_data, rid=340)
         + _extra(a) + raw(gref, 1, rid=341), [ERROR, NULL, ERROR]),
    ]
    expected = []
    for name, queue, statuses in cases:
        expected.append((name, queue(), statuses))
    good_ids = a.queue(frame)                                      # a good packet after them
    a.push()
    rsps = a.tx.take_responses()
    by_slot = [(r["id"], r["status"]) for r in rsps]
    pos = 0
    for name, ids, statuses in expected:
        got = [s for _, s in by_slot[pos:pos + len(statuses)]]
        assert got == statuses, name
        pos += len(statuses)
    assert by_slot[pos:] == [(good_ids[0], OKAY)]
    assert b.receive() == [frame]                                  # only the good packet left
    assert net.backs[0].stats["tx_errors"] == len(cases) and net.backs[0].connected
    assert "extra-info" in net.backs[0].last_refused
    assert read_state(net.xs0, net.backs[0].xenbus.path) == XenbusState.Connected
    for g in net.guests:                                           # nothing stayed mapped
        assert g.foreign_pins.keys() <= {TX_RING_GFN, RX_RING_GFN}


def _extra(front):
    """An extra-info slot (GSO) written into the next tx slot; returns no id (it has none)."""
    raw = netif.NETIF_EXTRA_INFO.pack(type=netif.XEN_NETIF_EXTRA_TYPE_GSO, flags=0,
                                      u={"gso": {"size": 1448, "type": 1}})
    fields = netif.NETIF_TX_REQUEST.unpack(raw + bytes(netif.NETIF_TX_REQUEST.size - len(raw)))
    front.tx.put_request(**fields)
    return [None]


def test_bad_rx_buffers_get_error_responses(net):
    a, b = net.fronts
    b.rx.take_responses()
    g2 = net.guests[1]
    g2.grant_table.grant_access(800, 0, 0x700, readonly=True)   # dom0 may only read it
    # use up b's posted buffers, then post two bad ones and a good one
    for _ in range(NR_BUFS):
        a.send(ping(1, 2, 0))
    b.receive(repost=False)
    b.rx.put_request(id=1, gref=800)
    b.rx.put_request(id=2, gref=5000)
    b.rx.put_request(id=3, gref=16 + 256 + 3)
    b.rx.push_requests()
    for seq in range(3):
        a.send(ping(1, 2, seq))
    assert b.receive(repost=False) == [ping(1, 2, 2)]
    assert b.received == [(1, ERROR), (2, ERROR)]
    assert net.backs[1].stats["rx_errors"] == 2 and net.backs[1].connected
    assert g2.grant_table.pins(800) == (0, 0)


@pytest.mark.parametrize("ring", ["tx", "rx"])
@pytest.mark.parametrize("ahead", [257, 10_000, 2**31])
def test_producer_far_ahead_disconnects_only_that_guest(ring, ahead):
    net = Net(nr_guests=3)
    bad, good, other = net.fronts
    bad.send(ping(1, 2, 1))
    assert good.receive() == [ping(1, 2, 1)]
    assert other.receive() == [ping(1, 2, 1)]       # flooded: guest 2's MAC was not learned yet
    gfn = TX_RING_GFN if ring == "tx" else RX_RING_GFN
    page = net.guests[0].page(gfn)
    prod = int.from_bytes(page[0:4], "little")
    page[0:4] = ((prod + ahead) & 0xFFFFFFFF).to_bytes(4, "little")
    if ring == "tx":
        bad.kick()
    else:
        good.send(ping(2, 1, 2))                     # delivering to the bad guest finds it
    back = net.backs[0]
    assert not back.connected and "producer" in back.error
    assert read_state(net.xs0, back.xenbus.path) in (XenbusState.Closing, XenbusState.Closed)
    assert bad.xenbus.state == XenbusState.Closed
    gt = net.guests[0].grant_table
    assert gt.pins(TX_RING_REF) == (0, 0) and gt.pins(RX_RING_REF) == (0, 0)
    assert back.port is None
    # the others still talk, and frames for the disconnected guest are dropped
    good.send(ping(2, 3, 3))
    assert other.receive() == [ping(2, 3, 3)]
    other.send(ping(3, 2, 4))
    assert good.receive() == [ping(3, 2, 4)]
    dropped = back.stats["rx_dropped"]
    good.send(ping(2, 1, 5))
    assert back.stats["rx_dropped"] == dropped + 1
    bad.kick()                                       # its port is unbound: reaches nobody


@pytest.mark.parametrize("chain", ["more_data", "extra"])
def test_chain_past_the_published_requests_disconnects(net, chain):
    a, b = net.fronts
    frame = ping(1, 2, 1)
    if chain == "more_data":
        a.queue(frame, chunks=[20])
    else:
        a.queue(frame, flags=netif.NETTXF_extra_info)
        _extra(a)
    # publish only the first slot of the two
    page = net.guests[0].page(TX_RING_GFN)
    page[0:4] = ((a.tx.req_prod_pvt - 1) & 0xFFFFFFFF).to_bytes(4, "little")
    a.kick()
    assert not net.backs[0].connected and "runs past" in net.backs[0].error
    assert b.receive() == []
    # guest 2 keeps its vif
    assert net.backs[1].connected


@pytest.mark.parametrize("details, word", [({"tx-ring-ref": 900}, b"900"),
                                           ({"rx-ring-ref": 900}, b"900"),
                                           ({"request-rx-copy": 0}, b"request-rx-copy"),
                                           ({"event-channel": "x1"}, b"x1"),
                                           ({"event-channel": 77}, b"77")])
def test_refused_at_connect(details, word):
    table, dom0, [guest] = world(nr_guests=1, ram=8 << 20)
    store = Xenstore()
    xs0 = LocalClient(store)
    front = Netfront(store, xs0, guest)
    base = front.xenbus.details()
    front.xenbus.details = lambda: {**base, **details}
    back = Netback(dom0, xs0, guest.domid, 0, mac_of(1), VSwitch())
    back.start()
    front.xenbus.start()
    assert not back.connected
    assert read_state(xs0, back.xenbus.path) in (XenbusState.Closing, XenbusState.Closed)
    assert word in xs0.read(f"{back.xenbus.path}/error")
    assert guest.foreign_pins == {} and dom0.evtchn.open_ports() == []   # nothing left behind


def test_bad_configuration_is_refused():
    table, dom0, [guest] = world(nr_guests=1, ram=8 << 20)
    xs0 = LocalClient(Xenstore())
    with pytest.raises(ConfigError, match="MTU 4090"):
        Netback(dom0, xs0, 1, 0, mac_of(1), VSwitch(), mtu=4090)
    with pytest.raises(ConfigError, match="not 6 bytes"):
        Netback(dom0, xs0, 1, 0, b"\1\2\3", VSwitch())


def test_orderly_close_unmaps_both_rings(net):
    a, b = net.fronts
    a.xenbus.close()
    assert read_state(net.xs0, net.backs[0].xenbus.path) == XenbusState.Closed
    assert not net.backs[0].connected
    assert net.guests[0].grant_table.pins(TX_RING_REF) == (0, 0)
    assert net.guests[0].grant_table.pins(RX_RING_REF) == (0, 0)
    net.backs[0].destroy()
    assert len(net.switch.ports) == 1 and net.switch.lookup(mac_of(1)) is None
