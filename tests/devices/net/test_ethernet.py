"""Frame and packet helpers against published examples and an independent checksum."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.devices.net.ethernet import (BROADCAST, ETH_P_ARP, ETH_P_IP, answer, arp, complete_checksum,
                                        ethernet, format_mac, icmp_echo, internet_checksum, ipv4,
                                        parse_arp, parse_icmp, parse_ipv4, parse_ipv4_packet,
                                        parse_mac, split_ethernet, udp)
from pyvmm.errors import ConfigError, PacketError

MAC1, MAC2 = parse_mac("52:54:00:00:00:01"), parse_mac("52:54:00:00:00:02")
IP1, IP2 = parse_ipv4("10.0.0.1"), parse_ipv4("10.0.0.2")


def slow_checksum(data):
    """One's-complement sum done 16 bits at a time with explicit end-around carry."""
    data = bytes(data) + (b"\0" if len(data) % 2 else b"")
    acc = 0
    for i in range(0, len(data), 2):
        acc += data[i] << 8 | data[i + 1]
        if acc > 0xFFFF:
            acc -= 0xFFFF
    return 0xFFFF - acc


def test_rfc1071_example():
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (checksum 220d)
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_ipv4_header_matches_the_textbook_example():
    # the IPv4 header checksum example (Wikipedia, "Internet checksum"): checksum b861
    packet = ipv4(parse_ipv4("192.168.0.1"), parse_ipv4("192.168.0.199"), 17, bytes(0x73 - 20))
    assert packet[:20] == bytes.fromhex("4500007300004000" "4011b861" "c0a80001" "c0a800c7")
    ip = parse_ipv4_packet(packet)
    assert (ip["proto"], ip["ttl"], ip["payload"]) == (17, 64, bytes(0x73 - 20))


def test_arp_layout_and_parse():
    req = ethernet(BROADCAST, MAC1, ETH_P_ARP, arp(1, MAC1, IP1, bytes(6), IP2))
    assert req.hex() == ("ffffffffffff" "525400000001" "0806" "0001080006040001"
                         "525400000001" "0a000001" "000000000000" "0a000002")
    assert parse_arp(split_ethernet(req)[3]) == {"op": 1, "sha": MAC1, "spa": IP1,
                                                 "tha": bytes(6), "tpa": IP2}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_checksums_agree_with_an_independent_sum(data, ident, seq):
    assert internet_checksum(data) == slow_checksum(data)
    echo = icmp_echo(8, ident, seq, data)
    assert slow_checksum(echo) == 0
    assert parse_icmp(echo) == {"type": 8, "code": 0, "ident": ident, "seq": seq, "data": data}
    dgram = udp(IP1, IP2, 1000, 2000, data)
    pseudo = IP1 + IP2 + struct.pack("!BBH", 0, 17, len(dgram))
    assert slow_checksum(pseudo + dgram) == 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=2, max_size=2), st.sampled_from([6, 17]))
def test_complete_checksum_fills_what_the_guest_left_blank(data, junk, proto):
    if proto == 17:
        good = ipv4(IP1, IP2, 17, udp(IP1, IP2, 1000, 2000, data))
        at = 20 + 6
    else:
        tcp = bytearray(struct.pack("!HHIIBBHHH", 1000, 2000, 1, 2, 5 << 4, 0x18, 512, 0, 0) + data)
        pseudo = IP1 + IP2 + struct.pack("!BBH", 0, 6, len(tcp))
        struct.pack_into("!H", tcp, 16, slow_checksum(pseudo + bytes(tcp)))
        good = ipv4(IP1, IP2, 6, bytes(tcp))
        at = 20 + 16
    frame = ethernet(MAC2, MAC1, ETH_P_IP, good)
    blank = bytearray(frame)
    blank[14 + at:14 + at + 2] = junk
    assert complete_checksum(bytes(blank)) == frame


def test_complete_checksum_leaves_other_frames_alone():
    arp_frame = ethernet(BROADCAST, MAC1, ETH_P_ARP, arp(1, MAC1, IP1, bytes(6), IP2))
    ping = ethernet(MAC2, MAC1, ETH_P_IP, ipv4(IP1, IP2, 1, icmp_echo(8, 1, 1, b"x")))
    fragment = ethernet(MAC2, MAC1, ETH_P_IP, ipv4(IP1, IP2, 17, b"\0" * 20, flags_frag=0x2000))
    for f in (arp_frame, ping, fragment):
        assert complete_checksum(f) == f
    with pytest.raises(PacketError, match="UDP segment of 4 bytes"):
        complete_checksum(ethernet(MAC2, MAC1, ETH_P_IP, ipv4(IP1, IP2, 17, b"\0" * 4)))


def test_answer_replies_to_arp_and_echo_only():
    req = ethernet(BROADCAST, MAC1, ETH_P_ARP, arp(1, MAC1, IP1, bytes(6), IP2))
    assert answer(req, MAC2, IP2) == ethernet(MAC1, MAC2, ETH_P_ARP, arp(2, MAC2, IP2, MAC1, IP1))
    assert answer(req, MAC2, parse_ipv4("10.0.0.3")) is None             # not our address
    ping = ethernet(MAC2, MAC1, ETH_P_IP, ipv4(IP1, IP2, 1, icmp_echo(8, 5, 6, b"hi"), ident=9))
    assert answer(ping, MAC2, IP2) == ethernet(MAC1, MAC2, ETH_P_IP,
                                               ipv4(IP2, IP1, 1, icmp_echo(0, 5, 6, b"hi"), ident=9))
    reply = answer(ping, MAC2, IP2)
    assert answer(reply, MAC1, IP1) is None                              # replies get no reply
    broken = bytearray(ping)
    broken[-1] ^= 1                                                      # ICMP checksum now wrong
    assert answer(bytes(broken), MAC2, IP2) is None
    assert answer(b"\0" * 10, MAC2, IP2) is None


@pytest.mark.parametrize("data, match", [
    (b"\0" * 13, "shorter than its 14-byte header")])
def test_short_frames_are_packet_errors(data, match):
    with pytest.raises(PacketError, match=match):
        split_ethernet(data)


def test_malformed_ipv4_arp_icmp_are_packet_errors():
    good = ipv4(IP1, IP2, 1, icmp_echo(8, 1, 1, b"abc"))
    with pytest.raises(PacketError, match="shorter than 20"):
        parse_ipv4_packet(good[:19])
    with pytest.raises(PacketError, match="version/IHL byte 0x65"):
        parse_ipv4_packet(b"\x65" + good[1:])
    with pytest.raises(PacketError, match="total length 31"):
        parse_ipv4_packet(good[:30])
    bad = bytearray(good)
    bad[8] = 1                                                           # TTL changed, checksum not
    with pytest.raises(PacketError, match="header checksum"):
        parse_ipv4_packet(bytes(bad))
    with pytest.raises(PacketError, match="is not Ethernet/IPv4"):
        parse_arp(b"\x00\x06" + arp(1, MAC1, IP1, MAC2, IP2)[2:])
    with pytest.raises(PacketError, match="shorter than 28"):
        parse_arp(arp(1, MAC1, IP1, MAC2, IP2)[:27])
    with pytest.raises(PacketError, match="ICMP checksum"):
        parse_icmp(b"\x08\x00\x00\x00\x00\x01\x00\x01")


@pytest.mark.parametrize("text", ["52:54:00:00:00", "52:54:00:00:00:0g", "525400000001", "1:2:3:4:5:6"])
def test_bad_mac_text_is_a_config_error(text):
    with pytest.raises(ConfigError, match="MAC address"):
        parse_mac(text)


def test_mac_and_ip_text():
    assert format_mac(parse_mac("52:54:00:AB:cd:01")) == "52:54:00:ab:cd:01"
    with pytest.raises(ConfigError, match="10.0.0.256"):
        parse_ipv4("10.0.0.256")
