"""UDP endpoints: bad addresses, filtering, and guests on two switches joined over loopback
(in one process, and across two pyvmm processes)."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvmm.devices.net import UdpEndpoint, VSwitch
from pyvmm.devices.net.ethernet import (BROADCAST, ETH_P_ARP, ETH_P_IP, arp, ethernet, icmp_echo,
                                        ipv4, parse_icmp, parse_ipv4_packet, split_ethernet)
from pyvmm.errors import ConfigError
from tests.devices.net.netfront import Net, ip_of, mac_of

REPO = Path(__file__).resolve().parents[3]


class Sink:
    def __init__(self):
        self.frames = []

    def deliver(self, frame):
        self.frames.append(frame)
        return True


def arp_request(src, dst):
    return ethernet(BROADCAST, mac_of(src), ETH_P_ARP, arp(1, mac_of(src), ip_of(src), bytes(6), ip_of(dst)))


def arp_reply(src, dst):
    return ethernet(mac_of(dst), mac_of(src), ETH_P_ARP, arp(2, mac_of(src), ip_of(src), mac_of(dst),
                                                            ip_of(dst)))


def ping(src, dst, seq, data):
    return ethernet(mac_of(dst), mac_of(src), ETH_P_IP,
                    ipv4(ip_of(src), ip_of(dst), 1, icmp_echo(8, 0x77, seq, data), ident=seq))


def echo_of(frame):
    return parse_icmp(parse_ipv4_packet(split_ethernet(frame)[3])["payload"])


@pytest.mark.parametrize("text, match", [
    ("127.0.0.1", "not HOST:PORT"), (":5555", "not HOST:PORT"), ("127.0.0.1:70000", "not HOST:PORT"),
    ("127.0.0.1:http", "not HOST:PORT"), ("no-such-host.invalid:5555", "does not resolve"),
    ("[::1]:5555", "does not resolve")])
def test_bad_addresses_are_config_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        UdpEndpoint(text)
    with pytest.raises(ConfigError, match=match):
        UdpEndpoint("127.0.0.1:0", remote=text)


def test_a_local_address_in_use_is_a_config_error():
    with UdpEndpoint("127.0.0.1:0") as first:
        port = first.local_address[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*cannot bind"):
            UdpEndpoint(f"127.0.0.1:{port}")


def test_frames_cross_and_strangers_and_bad_sizes_are_dropped():
    sw_a, sw_b, sink_a, sink_b = VSwitch("a"), VSwitch("b"), Sink(), Sink()
    sw_a.attach(sink_a)
    sw_b.attach(sink_b)
    with UdpEndpoint("127.0.0.1:0", max_frame=1518) as ep_a, UdpEndpoint("127.0.0.1:0", max_frame=1518) as ep_b:
        ep_a.set_remote("127.0.0.1:%d" % ep_b.local_address[1])
        ep_b.set_remote("127.0.0.1:%d" % ep_a.local_address[1])
        ep_a.connect_to(sw_a)
        ep_b.connect_to(sw_b)
        frame = arp_request(1, 2)
        assert ep_a.deliver(frame)
        assert ep_b.poll(timeout=2) == 1 and sink_b.frames == [frame]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(frame, ep_b.local_address)           # right bytes, wrong sender
        ep_a.sock.sendto(b"short", ep_b.local_address)            # shorter than a header
        ep_a.sock.sendto(bytes(1519), ep_b.local_address)         # longer than max_frame
        ep_a.deliver(frame)
        time.sleep(0.05)
        assert ep_b.poll(timeout=1) == 1 and sink_b.frames == [frame, frame]
        assert ep_b.stats["foreign"] == 1 and ep_b.stats["bad"] == 2
        assert ep_b.stats["rx_frames"] == 2 and ep_a.stats["tx_frames"] == 2


def test_a_missing_peer_is_counted_not_raised():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]                                  # closed again below
    with UdpEndpoint("127.0.0.1:0", f"127.0.0.1:{dead}") as ep:
        ep.deliver(arp_request(1, 2))
        ep.deliver(arp_request(1, 2))     # may fail with the ICMP error of the first
        assert ep.poll(timeout=0.05) == 0
        assert ep.stats["tx_frames"] + ep.stats["tx_errors"] >= 2
    with UdpEndpoint("127.0.0.1:0") as ep:
        assert not ep.deliver(arp_request(1, 2)) and ep.stats["tx_errors"] == 1   # no remote yet


def test_two_switches_joined_by_udp_in_one_process():
    net = Net(nr_guests=1)
    sw_b = VSwitch("b")
    g2 = net.add_guest(2)
    a, _ = net.fronts[0], net.backs[0]
    b, _ = net.add_vif(g2, switch=sw_b)
    with UdpEndpoint("127.0.0.1:0") as ep_a, UdpEndpoint("127.0.0.1:0") as ep_b:
        ep_a.set_remote("127.0.0.1:%d" % ep_b.local_address[1])
        ep_b.set_remote("127.0.0.1:%d" % ep_a.local_address[1])
        ep_a.connect_to(net.switch)
        ep_b.connect_to(sw_b)
        a.send(arp_request(1, 2))
        assert ep_b.poll(timeout=2) == 1
        assert b.serve(mac_of(2), ip_of(2)) == 1
        assert ep_a.poll(timeout=2) == 1
        assert a.receive() == [arp_reply(2, 1)]
        for seq in range(1, 4):
            a.send(ping(1, 2, seq, bytes(range(seq * 20))))
            assert ep_b.poll(timeout=2) == 1 and b.serve(mac_of(2), ip_of(2)) == 1
            assert ep_a.poll(timeout=2) == 1
            [reply] = a.receive()
            assert echo_of(reply) == {"type": 0, "code": 0, "ident": 0x77, "seq": seq,
                                      "data": bytes(range(seq * 20))}
        assert sw_b.lookup(mac_of(1)) is ep_b.port and net.switch.lookup(mac_of(2)) is ep_a.port


def test_two_pyvmm_processes_talk_over_udp():
    net = Net(nr_guests=1)
    a = net.fronts[0]
    with UdpEndpoint("127.0.0.1:0") as ep:
        ep.connect_to(net.switch)
        peer = subprocess.Popen([sys.executable, "-m", "tests.devices.net.peer",
                                 "127.0.0.1:%d" % ep.local_address[1], "20"],
                                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ep.set_remote("127.0.0.1:%s" % peer.stdout.readline().strip())
            a.send(arp_request(1, 2))
            assert ep.poll(timeout=10) == 1
            assert a.receive() == [arp_reply(2, 1)]
            for seq in range(1, 6):
                a.send(ping(1, 2, seq, b"across processes %d" % seq))
                assert ep.poll(timeout=10) == 1
                [reply] = a.receive()
                assert echo_of(reply)["data"] == b"across processes %d" % seq
            out, _ = peer.communicate("\n", timeout=10)
        finally:
            peer.kill()
            peer.wait()
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["endpoint"]["rx_frames"] == 6 and stats["endpoint"]["tx_frames"] == 6
    assert stats["netback"]["rx_packets"] == 6 and stats["netback"]["tx_packets"] == 6
