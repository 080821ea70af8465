"""The netfront guest on `--net`: ping between two guests in one process (one switch) and
across two pyvmm processes (UDP endpoints), checked on both sides; a Python host on the far
end of the UDP link checks the guest's answers byte by byte and throws garbage at it."""

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from pyvmm.devices.net.ethernet import (BROADCAST, ETH_P_ARP, ETH_P_IP, arp, ethernet, icmp_echo, ipv4,
                                        parse_arp, parse_icmp, parse_ipv4_packet, split_ethernet)
from pyvmm.devices.net.vif import NetSpec, default_mac
from pyvmm.devices.xenbus import XenbusState, read_state

from ..frontend_cli import assert_boot_refused
from .udp_ports import free_udp_ports
from pyvmm.errors import ConfigError
from pyvmm.machine import Machine, VmConfig
from pyvmm.pv.hypervisor import DomainSpec, Hypervisor, parse_domain_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NETFRONT = os.path.join(ROOT, "guests", "build", "netfront.elf")
PINGER = "role=pinger ip=10.0.0.1 target=10.0.0.2"
RESPONDER = "role=responder ip=10.0.0.2"
POWEROFF = (0, "guest powered off (SCHEDOP_shutdown poweroff)")
SUMMARY = re.compile(r"netfront: pinger sent (\d+) echo requests to 10\.0\.0\.2, replies (\d+), bad (\d+), "
                     r"duplicates (\d+), lost (\d+)")
PING_ID = 0x7079


def summary(text):
    """(sent, replies, bad, duplicates, lost) from the pinger's console."""
    return tuple(int(n) for n in SUMMARY.search(text).groups())


def run_domains(specs):
    out = bytearray()
    host = Hypervisor(specs, console=out.extend)
    try:
        results = host.run()
    finally:
        host.close()
    return results, out.decode()


def pyvmm(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", NETFRONT, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)


# --- one process, one switch ---------------------------------------------------------

@pytest.mark.parametrize("window", [1, 8])
def test_two_guests_ping_on_one_switch(window):
    results, out = run_domains([
        DomainSpec(NETFRONT, name="pinger", cmdline=f"{PINGER} count=40 window={window}", nets=["switch=lan"]),
        DomainSpec(NETFRONT, name="responder", cmdline=f"{RESPONDER} packets=40", nets=["switch=lan"])])
    assert [(r.status, r.reason) for r in results.values()] == [POWEROFF] * 2, out
    assert summary(out) == (40, 40, 0, 0, 0)
    assert "pinger: netfront: 10.0.0.2 is at 52:54:00:00:00:02" in out            # domain 2's default MAC
    # the pinger repeats its ARP request every 20 ms until answered: more than one may be answered
    assert re.search(r"responder: netfront: responder answered \d+ ARP requests and 40 echo requests; "
                     r"ignored 0 frames; 0 tx errors", out), out
    assert "FAIL" not in out


def test_a_third_guest_on_another_switch_hears_nothing():
    results, out = run_domains([
        DomainSpec(NETFRONT, name="pinger", cmdline=f"{PINGER} count=5", nets=["switch=a"]),
        DomainSpec(NETFRONT, name="responder", cmdline=f"{RESPONDER} packets=5", nets=["switch=a"]),
        DomainSpec(NETFRONT, name="other", cmdline="role=responder ip=10.0.0.2 idle_ms=300",
                   nets=["switch=b"])])
    assert summary(out) == (5, 5, 0, 0, 0)
    assert "other: netfront: responder answered 0 ARP requests and 0 echo requests; ignored 0" in out
    assert results[3].status == 0


def test_a_peer_that_goes_away_costs_only_lost_replies():
    # the responder powers off after 5 echoes; its vif is destroyed with the domain
    results, out = run_domains([
        DomainSpec(NETFRONT, name="pinger", cmdline=f"{PINGER} count=10 timeout_ms=50", nets=["switch=lan"]),
        DomainSpec(NETFRONT, name="responder", cmdline=f"{RESPONDER} packets=5", nets=["switch=lan"])])
    assert summary(out) == (10, 5, 0, 0, 5)
    assert "pinger: FAIL every_echo_answered: got 5 want 10" in out
    assert results[1].status == 1 and "crash" in results[1].reason
    assert results[2].status == 0


def test_pinger_alone_gives_up_on_arp():
    out = bytearray()
    m = Machine(VmConfig(kernel=NETFRONT, pv=True, console=out.extend, nets=["switch=lan"],
                         cmdline=f"{PINGER} wait_ms=200"))
    status, reason = m.run()
    assert status == 1, out.decode()
    assert "FAIL target_answered_arp: got 0 want 1" in out.decode()


def test_vif_nodes_and_close():
    out = bytearray()
    m = Machine(VmConfig(kernel=NETFRONT, pv=True, console=out.extend, cmdline=f"{RESPONDER} idle_ms=100",
                         nets=["switch=lan,mac=52:54:00:ab:cd:ef", "switch=wan"]))
    xs = m.pv.xs
    fe, be = m.vifs[0].frontend_path, m.vifs[0].backend_path
    assert (fe, be) == ("/local/domain/1/device/vif/0", "/local/domain/0/backend/vif/1/0")
    assert xs.read(f"{fe}/mac") == b"52:54:00:ab:cd:ef" == xs.read(f"{be}/mac")
    assert xs.read(f"{fe}/handle") == b"0" and xs.read(f"{be}/bridge") == b"lan"
    assert xs.read(f"{m.vifs[1].frontend_path}/mac") == b"52:54:00:01:00:01"   # default: devid 1, domid 1
    assert read_state(xs, be) == XenbusState.InitWait
    netback = m.vifs[0].netback
    assert m.run() == POWEROFF, out.decode()
    # the guest used vif 0 and closed it; everything is detached with the VM
    assert read_state(xs, be) == XenbusState.Closed and not netback.connected
    assert m.vifs == [] and netback.uplink.attached is False


# --- two processes over UDP ------------------------------------------------------------

def test_ping_across_two_pyvmm_processes():
    a, b = free_udp_ports(2)
    responder = pyvmm("--cmdline", f"{RESPONDER} packets=30", "--net",
                      f"udp,local=127.0.0.1:{a},remote=127.0.0.1:{b}")
    pinger = pyvmm("--cmdline", f"{PINGER} count=30 window=4", "--net",
                   f"udp,local=127.0.0.1:{b},remote=127.0.0.1:{a},mac=52:54:00:00:00:aa")
    p_out, p_err = pinger.communicate(timeout=60)
    r_out, r_err = responder.communicate(timeout=60)
    assert pinger.returncode == 0, p_out + p_err
    assert responder.returncode == 0, r_out + r_err
    assert summary(p_out) == (30, 30, 0, 0, 0)
    mac = default_mac(NetSpec.parse(f"udp,local=127.0.0.1:{a},remote=127.0.0.1:{b}"), 1, 0)
    assert f"netfront: 10.0.0.2 is at {mac.hex(':')}" in p_out
    assert re.search(r"netfront: responder answered \d+ ARP requests and 30 echo requests; ignored 0 frames", r_out)


def test_a_host_on_the_udp_link_gets_exact_answers_and_garbage_is_ignored():
    """The far end is Python: it ARPs, pings with checked replies, and sends frames the
    guest must ignore (not for it, truncated, bad checksums, a fragment, garbage)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host:
        host.bind(("127.0.0.1", 0))
        host.settimeout(20)
        port = free_udp_ports(1)[0]
        guest = pyvmm("--cmdline", f"{RESPONDER} packets=3 idle_ms=5000", "--net",
                      f"udp,local=127.0.0.1:{port},remote=127.0.0.1:{host.getsockname()[1]}")
        me_mac, me_ip, guest_ip = bytes.fromhex("525400ee0001"), bytes([10, 0, 0, 9]), bytes([10, 0, 0, 2])
        guest_addr = ("127.0.0.1", port)
        request = ethernet(BROADCAST, me_mac, ETH_P_ARP, arp(1, me_mac, me_ip, bytes(6), guest_ip))
        reply = None
        deadline = time.monotonic() + 20
        while reply is None and time.monotonic() < deadline:     # until its socket is bound and vif up
            host.sendto(request, guest_addr)
            host.settimeout(0.2)
            try:
                reply = host.recv(2048)
            except socket.timeout:
                pass
        host.settimeout(20)
        assert reply is not None, "no ARP reply from the guest"
        dst, src, ethertype, payload = split_ethernet(reply)
        assert (dst, ethertype) == (me_mac, ETH_P_ARP)
        answer = parse_arp(payload)
        assert (answer["op"], answer["spa"], answer["tha"], answer["tpa"]) == (2, guest_ip, me_mac, me_ip)
        guest_mac = answer["sha"]
        assert src == guest_mac

        def echo(seq, data, **kw):
            return ethernet(guest_mac, me_mac, ETH_P_IP, ipv4(me_ip, guest_ip, 1, icmp_echo(8, 0x4242, seq, data), **kw))

        good = echo(1, b"x" * 20)
        garbage = [
            ethernet(bytes.fromhex("525400ee0002"), me_mac, ETH_P_IP, good[14:]),   # for another MAC (flooded)
            good[:30],                                                   # truncated IPv4 header
            good[:24] + bytes([good[24] ^ 0xFF]) + good[25:],            # IPv4 header checksum broken
            good[:-1] + bytes([good[-1] ^ 1]),                           # ICMP checksum broken
            echo(3, b"frag", flags_frag=0x2000),                         # a fragment
            ethernet(guest_mac, me_mac, 0x88B5, bytes(46)),              # unknown ethertype
        ]
        for frame in garbage:
            host.sendto(frame, guest_addr)
        for seq, data in ((1, b"x" * 20), (4, bytes(range(256)) * 5), (5, b"")):
            host.sendto(echo(seq, data), guest_addr)
            frame = host.recv(2048)
            dst, src, ethertype, packet = split_ethernet(frame)
            assert (dst, src, ethertype) == (me_mac, guest_mac, ETH_P_IP)
            ip = parse_ipv4_packet(packet)
            assert (ip["src"], ip["dst"], ip["proto"]) == (guest_ip, me_ip, 1)
            assert parse_icmp(ip["payload"]) == {"type": 0, "code": 0, "ident": 0x4242, "seq": seq, "data": data}
        out, err = guest.communicate(timeout=60)
    assert guest.returncode == 0, out + err
    assert re.search(rf"responder answered \d+ ARP requests and 3 echo requests; ignored {len(garbage)} frames", out), out


# --- arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("arg, problem", [
    ("bridge=x", "start with switch=NAME or udp"),
    ("switch=", "the switch name is empty"),
    ("switch=a,mtu=9000", "unknown or empty option 'mtu=9000'"),
    ("switch=a,mac=01:00:5e:00:00:01", "group (multicast) address"),
    ("switch=a,mac=52:54", "is not six hex pairs"),
    ("udp,local=127.0.0.1:1", "udp needs remote=HOST:PORT"),
    ("udp,local=127.0.0.1:x,remote=127.0.0.1:2", "is not HOST:PORT"),
    ("udp,local=127.0.0.1:1,remote=127.0.0.1:2,local=127.0.0.1:3", "local= given twice"),
])
def test_bad_net_argument_exits_2_with_one_line(arg, problem):
    assert_boot_refused(NETFRONT, "--net", arg, problem)


def test_a_busy_local_port_refuses_the_boot():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*cannot bind"):
            Machine(VmConfig(kernel=NETFRONT, pv=True, nets=[f"udp,local=127.0.0.1:{port},remote=127.0.0.1:9"]))


def test_net_needs_pv():
    with pytest.raises(ConfigError, match="--net needs --pv"):
        Machine(VmConfig(kernel=NETFRONT, nets=["switch=a"]))


def test_domain_spec_takes_several_nets():
    spec = parse_domain_spec(f"{NETFRONT},cmdline={RESPONDER},net=switch=a,net=udp,local=127.0.0.1:5,"
                             f"remote=127.0.0.1:6,mac=52:54:00:00:00:09")
    assert spec.cmdline == RESPONDER
    assert spec.nets == ["switch=a", "udp,local=127.0.0.1:5,remote=127.0.0.1:6,mac=52:54:00:00:00:09"]
    with pytest.raises(ConfigError, match="net= is empty"):
        parse_domain_spec(f"{NETFRONT},net=")


def test_net_spec_and_default_macs():
    assert NetSpec.parse("switch=lan") == NetSpec("switch", switch="lan")
    spec = NetSpec.parse("udp,remote=127.0.0.1:2,local=127.0.0.1:4660,mac=52:54:00:00:00:07")
    assert spec == NetSpec("udp", local="127.0.0.1:4660", remote="127.0.0.1:2", mac=bytes.fromhex("525400000007"))
    assert default_mac(NetSpec.parse("switch=a"), 0x1234, 2) == bytes.fromhex("525400021234")
    assert default_mac(NetSpec.parse("udp,local=127.0.0.1:4660,remote=127.0.0.1:1"), 1, 1) == \
        bytes.fromhex("525400811234")
