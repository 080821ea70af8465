"""Ethernet frames and the few protocols a virtual network is checked with: ARP, IPv4, ICMP echo, UDP.

Responsibility: build and parse the bytes of an Ethernet II frame (IEEE 802.3
clause 3.2, no FCS: virtual NICs never see it), an ARP packet for IPv4 over
Ethernet (RFC 826), an IPv4 header (RFC 791), an ICMP echo request/reply
(RFC 792) and a UDP datagram (RFC 768), with the Internet checksum (RFC 1071);
complete the transport checksum a guest left blank (NETTXF_csum_blank); answer
ARP requests and echo requests for one (MAC, IPv4) pair (``answer``), which is all a
test guest or a future guest check needs to prove two stacks talk; and the RARP
frame that announces a MAC after a migration (``announcement``).

Invariants: builders return exactly the bytes a real stack puts on the wire (no
padding to 60 bytes: virtual NICs do not pad); parsers never trust a length field
beyond the bytes they were given and raise PacketError naming the field; every
checksum a builder writes verifies with ``internet_checksum(...) == 0``.
"""

import ipaddress
import struct

from pyvmm.errors import ConfigError, PacketError

__all__ = ["ETH_HLEN", "ETH_P_IP", "ETH_P_ARP", "BROADCAST", "parse_mac", "format_mac",
           "parse_ipv4", "is_group", "ethernet", "split_ethernet", "arp", "parse_arp", "ipv4",
           "parse_ipv4_packet", "icmp_echo", "parse_icmp", "udp", "internet_checksum",
           "complete_checksum", "answer", "announcement", "ETH_P_RARP"]

ETH_ALEN = 6
ETH_HLEN = 14                 # dst, src, ethertype (if_ether.h)
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035           # RFC 903 (if_ether.h)
BROADCAST = b"\xff" * ETH_ALEN

ARP_HRD_ETHER = 1             # RFC 826 / if_arp.h ARPHRD_ETHER
ARP_REQUEST, ARP_REPLY = 1, 2
RARP_REQUEST_REVERSE = 3      # RFC 903: "request reverse"
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
ICMP_ECHOREPLY, ICMP_ECHO = 0, 8

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")          # 28 bytes for Ethernet/IPv4
_IPV4 = struct.Struct("!BBHHHBBH4s4s")          # 20 bytes without options
_ICMP_ECHO = struct.Struct("!BBHHH")
_UDP = struct.Struct("!HHHH")
_TCP_CSUM_AT, _UDP_CSUM_AT = 16, 6              # checksum offsets in the TCP / UDP header



def parse_mac(text):
    """``"52:54:00:12:34:56"`` -> 6 bytes; ConfigError names the bad text."""
    parts = str(text).split(":")
    try:
        if len(parts) != ETH_ALEN or any(len(p) != 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(f"MAC address {text!r} is not six hex pairs like 52:54:00:12:34:56") from None


def format_mac(mac):
    return ":".join(f"{b:02x}" for b in mac)


def parse_ipv4(text):
    """``"10.0.0.1"`` -> 4 bytes; ConfigError names the bad text."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise ConfigError(f"IPv4 address {text!r} is not a dotted quad") from None


def is_group(mac):
    """True for broadcast and multicast addresses (the I/G bit, first octet bit 0)."""
    return bool(mac[0] & 1)


def internet_checksum(data, start=0):
    """RFC 1071 one's-complement sum of ``data`` (odd length padded with a zero), complemented."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- Ethernet --------------------------------------------------------------------------

def ethernet(dst, src, ethertype, payload):
    return _ETH.pack(dst, src, ethertype) + bytes(payload)


def split_ethernet(frame):
    """(dst, src, ethertype, payload) of an Ethernet II frame."""
    if len(frame) < ETH_HLEN:
        raise PacketError(f"Ethernet frame of {len(frame)} bytes is shorter than its "
                         f"{ETH_HLEN}-byte header")
    dst, src, ethertype = _ETH.unpack_from(frame)
    return dst, src, ethertype, bytes(frame[ETH_HLEN:])


# --- ARP -------------------------------------------------------------------------------

def arp(op, sha, spa, tha, tpa):
    """An ARP packet (Ethernet hardware, IPv4 protocol), without the Ethernet header."""
    return _ARP.pack(ARP_HRD_ETHER, ETH_P_IP, ETH_ALEN, 4, op, sha, spa, tha, tpa)


def parse_arp(payload):
    """Dict with op, sha, spa, tha, tpa of an Ethernet/IPv4 ARP packet."""
    if len(payload) < _ARP.size:
        raise PacketError(f"ARP packet of {len(payload)} bytes is shorter than {_ARP.size}")
    hrd, pro, hln, pln, op, sha, spa, tha, tpa = _ARP.unpack_from(payload)
    if (hrd, pro, hln, pln) != (ARP_HRD_ETHER, ETH_P_IP, ETH_ALEN, 4):
        raise PacketError(f"ARP for hardware {hrd} protocol {pro:#x} (lengths {hln}/{pln}) is not "
                         "Ethernet/IPv4")
    return {"op": op, "sha": sha, "spa": spa, "tha": tha, "tpa": tpa}


def announcement(mac):
    """The frame that tells every switch on the way where ``mac`` lives now: a broadcast
    RARP "request reverse" from ``mac`` about itself, both IPv4 addresses 0, as QEMU's
    self-announce (net/announce.c) sends after a migration (Xen's netfront sends a
    gratuitous ARP instead, which needs the guest's IP). Not padded to 60 bytes."""
    zero_ip = bytes(4)
    return ethernet(BROADCAST, mac, ETH_P_RARP, arp(RARP_REQUEST_REVERSE, mac, zero_ip, mac, zero_ip))


# --- IPv4 ------------------------------------------------------------------------------

def ipv4(src, dst, proto, payload, ident=0, ttl=64, flags_frag=0x4000):
    """An IPv4 packet with a 20-byte header (DF set by default) and its header checksum."""
    total = _IPV4.size + len(payload)
    if total > 0xFFFF:
        raise PacketError(f"IPv4 packet of {total} bytes exceeds the 65535-byte total length")
    header = bytearray(_IPV4.pack(0x45, 0, total, ident, flags_frag, ttl, proto, 0, src, dst))
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + bytes(payload)


def parse_ipv4_packet(packet):
    """Dict with the header fields and ``payload`` (cut at total length); checks the checksum."""
    if len(packet) < _IPV4.size:
        raise PacketError(f"IPv4 packet of {len(packet)} bytes is shorter than 20")
    vihl, tos, total, ident, flags_frag, ttl, proto, csum, src, dst = _IPV4.unpack_from(packet)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < _IPV4.size:
        raise PacketError(f"IPv4 version/IHL byte {vihl:#04x} is not version 4 with IHL >= 5")
    if not ihl <= total <= len(packet):
        raise PacketError(f"IPv4 total length {total} is outside {ihl}..{len(packet)} (bytes present)")
    if internet_checksum(packet[:ihl]):
        raise PacketError(f"IPv4 header checksum {csum:#06x} is wrong")
    return {"tos": tos, "ident": ident, "flags_frag": flags_frag, "ttl": ttl, "proto": proto,
            "src": src, "dst": dst, "header_len": ihl, "payload": bytes(packet[ihl:total])}


def _pseudo_header_sum(src, dst, proto, length):
    """The unfolded sum of the TCP/UDP pseudo-header (RFC 768 / RFC 793)."""
    return sum(struct.unpack("!4H", src + dst)) + proto + length


# --- ICMP echo, UDP --------------------------------------------------------------------

def icmp_echo(icmp_type, ident, seq, data):
    """An ICMP echo request (type 8) or reply (type 0) with its checksum."""
    body = bytearray(_ICMP_ECHO.pack(icmp_type, 0, 0, ident, seq) + bytes(data))
    struct.pack_into("!H", body, 2, internet_checksum(body))
    return bytes(body)


def parse_icmp(payload):
    """Dict with type, code, ident, seq, data of an ICMP echo message; checks the checksum."""
    if len(payload) < _ICMP_ECHO.size:
        raise PacketError(f"ICMP message of {len(payload)} bytes is shorter than {_ICMP_ECHO.size}")
    if internet_checksum(payload):
        raise PacketError("ICMP checksum is wrong")
    icmp_type, code, _, ident, seq = _ICMP_ECHO.unpack_from(payload)
    return {"type": icmp_type, "code": code, "ident": ident, "seq": seq,
            "data": bytes(payload[_ICMP_ECHO.size:])}


def udp(src_ip, dst_ip, sport, dport, data):
    """A UDP datagram (header + data) with its checksum over the IPv4 pseudo-header."""
    length = _UDP.size + len(data)
    body = bytearray(_UDP.pack(sport, dport, length, 0) + bytes(data))
    csum = internet_checksum(body, _pseudo_header_sum(src_ip, dst_ip, IPPROTO_UDP, length))
    struct.pack_into("!H", body, _UDP_CSUM_AT, csum or 0xFFFF)     # 0 means "no checksum"
    return bytes(body)


def complete_checksum(frame):
    """The frame with the TCP or UDP checksum of its IPv4 packet computed in full.

    What a NIC does for a packet sent with checksum offload (NETTXF_csum_blank): the
    field is recomputed from scratch, whatever partial sum the guest left in it.
    Frames that are not IPv4 TCP/UDP, or are fragments, come back unchanged;
    PacketError if the IPv4 header is malformed or the transport header is cut off.
    """
    dst, src, ethertype, packet = split_ethernet(frame)
    if ethertype != ETH_P_IP:
        return bytes(frame)
    ip = parse_ipv4_packet(packet)
    at = {IPPROTO_TCP: _TCP_CSUM_AT, IPPROTO_UDP: _UDP_CSUM_AT}.get(ip["proto"])
    if at is None or ip["flags_frag"] & 0x3FFF:          # MF set or a fragment offset
        return bytes(frame)
    segment = bytearray(ip["payload"])
    if len(segment) < at + 2:
        raise PacketError(f"{'TCP' if at == _TCP_CSUM_AT else 'UDP'} segment of {len(segment)} "
                         "bytes ends before its checksum field")
    segment[at:at + 2] = b"\0\0"
    csum = internet_checksum(segment, _pseudo_header_sum(ip["src"], ip["dst"], ip["proto"],
                                                         len(segment)))
    if ip["proto"] == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", segment, at, csum)
    start = ETH_HLEN + ip["header_len"]
    return bytes(frame[:start]) + bytes(segment) + bytes(frame[start + len(segment):])


# --- a minimal responder ------------------------------------------------------------

def answer(frame, mac, ip):
    """The reply a host with ``mac``/``ip`` sends to ``frame``, or None.

    ARP requests for ``ip`` get an ARP reply; ICMP echo requests to ``ip`` get an
    echo reply with the same ident, sequence and data (TTL 64, IPv4 ident echoed).
    Anything else, including malformed frames, gets None.
    """
    try:
        dst, src, ethertype, payload = split_ethernet(frame)
        if dst not in (mac, BROADCAST) and not (ethertype == ETH_P_ARP and is_group(dst)):
            return None
        if ethertype == ETH_P_ARP:
            req = parse_arp(payload)
            if req["op"] != ARP_REQUEST or req["tpa"] != ip:
                return None
            return ethernet(src, mac, ETH_P_ARP, arp(ARP_REPLY, mac, ip, req["sha"], req["spa"]))
        if ethertype == ETH_P_IP and dst == mac:
            pkt = parse_ipv4_packet(payload)
            if pkt["dst"] != ip or pkt["proto"] != IPPROTO_ICMP:
                return None
            echo = parse_icmp(pkt["payload"])
            if echo["type"] != ICMP_ECHO:
                return None
            reply = icmp_echo(ICMP_ECHOREPLY, echo["ident"], echo["seq"], echo["data"])
            return ethernet(src, mac, ETH_P_IP, ipv4(ip, pkt["src"], IPPROTO_ICMP, reply,
                                                     ident=pkt["ident"]))
    except PacketError:
        return None
    return None
