"""The netfront guest (guests/netfront.c) on `--net`, saved mid-run and restored, and
live-migrated mid-run: the vif's attachment (netback's two rings, grants and event
channel, xenbus state, the tx ring drained, the rx requests the guest posted) carries
over, so the pinger goes on where it stopped and its checks pass. Frames on the wire
around the switch-over may be lost (a UDP peer's replies to a closed port): the pinger
is given `max_lost=` its window. The restored vif announces its MAC (a RARP frame), which
the responder in the other process counts as the one frame it ignored.
"""

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from pyvmm.devices.net.ethernet import ETH_P_RARP, announcement, answer, split_ethernet
from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.machine import Machine, VmConfig
from pyvmm.migrate import snapshot
from pyvmm.migrate import stream as S
from tests.devices.net.udp_ports import free_udp_ports, port_is_free
from tests.migrate.live import LiveMigration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETFRONT = os.path.join(ROOT, "guests", "build", "netfront.elf")
POWEROFF = (0, "guest powered off (SCHEDOP_shutdown poweroff)")
PINGER = "role=pinger ip=10.0.0.1 target=10.0.0.2"
RESPONDER_MAC, RESPONDER_IP = bytes.fromhex("525400000002"), bytes([10, 0, 0, 2])
WINDOW = 4
SUMMARY = re.compile(rb"pinger sent (\d+) echo requests to 10\.0\.0\.2, replies (\d+), bad (\d+), "
                     rb"duplicates (\d+), lost (\d+)")
RESPONDED = re.compile(r"responder answered \d+ ARP requests and (\d+) echo requests; ignored (\d+) frames")


def summary(text):
    """(sent, replies, bad, duplicates, lost) from the pinger's console."""
    found = SUMMARY.search(text)
    assert found, text[-1500:]
    return tuple(int(n) for n in found.groups())


class Responder:
    """A host on a switch that answers ARP and ping for 10.0.0.2 (as the responder guest
    would) and keeps every frame it was given."""

    def __init__(self, switch):
        self.frames = []
        self.hook = None
        self.port = switch.attach(self, "responder")

    def deliver(self, frame):
        self.frames.append(bytes(frame))
        if self.hook is not None:
            self.hook(self)
        reply = answer(frame, RESPONDER_MAC, RESPONDER_IP)
        if reply is not None:
            self.port.send(reply)
        return True


def responder_process(local, remote, packets):
    """The responder guest in a pyvmm process of its own, on a UDP vif."""
    return subprocess.Popen([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", NETFRONT, "--cmdline",
                             f"role=responder ip=10.0.0.2 packets={packets} idle_ms=20000",
                             "--net", f"udp,local=127.0.0.1:{local},remote=127.0.0.1:{remote}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish_responder(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    found = RESPONDED.search(out)
    assert found, out
    return tuple(int(n) for n in found.groups())


def pinger_config(console, net, count, **extra):
    options = " ".join(f"{k}={v}" for k, v in extra.items())
    return VmConfig(kernel=NETFRONT, pv=True, console=console, memory="16M", nets=[net],
                    cmdline=f"{PINGER} count={count} window={WINDOW} {options}".strip())


def pause_after_replies(machine, replies):
    """Pause ``machine`` right after its vif took in its ``replies``-th frame."""
    netback = machine.vifs[0].netback
    deliver = netback.deliver

    def counting(frame):
        taken = deliver(frame)
        if netback.stats["rx_packets"] >= replies and not machine.vcpu.pause_requested:
            machine.vcpu.request_pause()
        return taken
    netback.deliver = counting


# --- save and restore ---------------------------------------------------------------------

def test_a_pinger_on_a_switch_saved_mid_run_and_restored_loses_nothing(tmp_path):
    """In one process nothing is on a wire: the save serves the tx ring (the responder
    answers into the posted rx buffers at once), so every echo is answered."""
    src, dst = [], []
    m = Machine(pinger_config(src.append, "switch=lan", 200))
    host = Responder(m.platform.network.switch("lan"))
    host.hook = lambda h: len(h.frames) == 80 and m.vcpu.request_pause()
    assert m.run() is None, b"".join(src)
    state = m.snapshot().vifs
    m.save(tmp_path / "net.snap")
    m.close()
    [vif] = state
    assert {k: vif[k] for k in ("kind", "switch", "local", "remote", "mac", "devid")} == \
        {"kind": "switch", "switch": "lan", "local": None, "remote": None, "mac": bytes.fromhex("525400000001"),
         "devid": 0}
    backend = vif["backend"]
    tx, rx = backend["rings"]["tx-ring-ref"], backend["rings"]["rx-ring-ref"]
    assert backend["state"] == 4 and tx[0] == 8 and rx[0] == 9           # netfront's TX_RING_REF, RX_RING_REF
    assert tx[1] == tx[2] == backend["stats"]["tx_packets"] == 80        # the tx ring drained: nothing in flight
    assert 0 < backend["rx_posted"] <= 64

    restored = Machine.restore(tmp_path / "net.snap", console=dst.append)
    netback = restored.vifs[0].netback
    switch = restored.platform.network.switch("lan")
    assert netback.connected and netback.announcements == 1
    assert switch.lookup(bytes.fromhex("525400000001")) is netback.uplink      # learned from the announcement
    assert netback.stats["tx_packets"] == 80                                   # the counters go on
    Responder(switch)
    assert restored.run() == POWEROFF, b"".join(dst)
    text = b"".join(src + dst)
    assert b"is at 52:54:00:00:00:02" in b"".join(src) and b"pinger sent" not in b"".join(src)
    assert summary(text) == (200, 200, 0, 0, 0)
    assert text.endswith(b"16/16 checks passed\n"), text[-600:]


def test_saved_before_the_guest_connected_the_vif_the_handshake_goes_on_after_the_restore(tmp_path):
    src, dst = [], []

    def console(data):
        src.append(data)
        if b"ok bind_virq_timer" in b"".join(src):
            m.vcpu.request_pause()
    m = Machine(pinger_config(console, "switch=lan", 20))
    assert m.run() is None
    [vif] = m.snapshot().vifs
    assert vif["backend"]["state"] == 2 and vif["backend"]["rings"] is None and vif["backend"]["port"] is None
    m.save(tmp_path / "net.snap")
    m.close()
    restored = Machine.restore(tmp_path / "net.snap", console=dst.append)
    assert not restored.vifs[0].netback.connected and restored.vifs[0].netback.announcements == 0
    Responder(restored.platform.network.switch("lan"))
    assert restored.run() == POWEROFF, b"".join(dst)
    assert b"connected, ip 10.0.0.1" in b"".join(dst) and summary(b"".join(dst)) == (20, 20, 0, 0, 0)


def test_a_pinger_on_udp_saved_and_restored_goes_on_with_its_peer_in_another_process(tmp_path):
    a, b = free_udp_ports(2)
    count = 300
    responder = responder_process(a, b, count)
    src, dst = [], []
    m = Machine(pinger_config(src.append, f"udp,local=127.0.0.1:{b},remote=127.0.0.1:{a}", count,
                              timeout_ms=200, max_lost=WINDOW))
    pause_after_replies(m, 100)
    assert m.run() is None, b"".join(src)
    m.save(tmp_path / "net.snap")
    m.close()
    assert port_is_free(b)                       # the closed VM let go of its address
    time.sleep(0.2)                              # replies to the closed port are lost meanwhile
    restored = Machine.restore(tmp_path / "net.snap", console=dst.append)
    assert restored.vifs[0].endpoint.bound and restored.vifs[0].netback.announcements == 1
    assert restored.run() == POWEROFF, b"".join(dst)
    sent, replies, bad, duplicates, lost = summary(b"".join(dst))
    assert (sent, bad, duplicates) == (count, 0, 0) and replies + lost == count and lost <= WINDOW
    assert b"".join(dst).endswith(b"checks passed\n") and b"FAIL" not in b"".join(src + dst)
    assert finish_responder(responder) == (count, 1)     # every request arrived; the RARP was ignored


def test_save_and_restore_through_the_cli(tmp_path):
    a, b = free_udp_ports(2)
    count = 200
    responder = responder_process(a, b, count)
    src = []
    m = Machine(pinger_config(src.append, f"udp,local=127.0.0.1:{b},remote=127.0.0.1:{a}", count,
                              timeout_ms=200, max_lost=WINDOW))
    pause_after_replies(m, 50)
    assert m.run() is None
    m.save(tmp_path / "net.snap")
    m.close()
    done = subprocess.run([sys.executable, "-m", "pyvmm.cli", "restore", str(tmp_path / "net.snap")],
                          capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    sent, replies, bad, duplicates, lost = summary(done.stdout)
    assert (sent, bad, duplicates) == (count, 0, 0) and lost <= WINDOW
    assert finish_responder(responder) == (count, 1)


# --- live migration -----------------------------------------------------------------------

def _migrate_pinger(count, receiver=Machine):
    """A pinger on UDP live-migrated (to a Machine in this process, so on the same host
    and the same local port) once it knows its peer; returns (the LiveMigration under
    way, the responder, the vif's local port)."""
    a, b = free_udp_ports(2)
    responder = responder_process(a, b, count)
    live = LiveMigration(trigger=b" is at ", receiver=receiver)
    live.start(Machine(pinger_config(live.console, f"udp,local=127.0.0.1:{b},remote=127.0.0.1:{a}", count,
                                     timeout_ms=200, max_lost=3 * WINDOW)))
    return live, responder, b


def test_live_migration_mid_run_on_one_host_hands_the_udp_port_over():
    count = 8000
    live, responder, port = _migrate_pinger(count)
    src, dst = live.src, live.dst
    machine, stats = live.arrived(90)
    assert stats["status"] == "completed" and stats["rounds"] >= 1
    vif = machine.vifs[0]
    assert vif.endpoint.bound and vif.endpoint.local_address == ("127.0.0.1", port)
    assert vif.netback.connected and vif.netback.announcements == 1
    assert machine.run() == POWEROFF, b"".join(dst)
    assert b"pinger sent" not in b"".join(src)                      # moved mid-run
    sent, replies, bad, duplicates, lost = summary(b"".join(dst))
    assert (sent, bad, duplicates) == (count, 0, 0) and lost <= 3 * WINDOW
    assert b"".join(dst).endswith(b"checks passed\n") and b"FAIL" not in b"".join(src + dst)
    assert finish_responder(responder) == (count, 1)


def test_live_migration_of_a_pinger_on_a_switch():
    """The destination process has a switch of that name of its own; a responder there
    answers once the VM arrived. The tx ring is served at the pause, and the source's
    responder answers into the guest's rx buffers before the last dirty log is read,
    so nothing is lost."""
    count = 5000
    live = LiveMigration(trigger=b" is at ")
    src, dst = live.src, live.dst
    machine = Machine(pinger_config(live.console, "switch=lan", count))
    Responder(machine.platform.network.switch("lan"))
    live.start(machine)
    arrived, stats = live.arrived(90)
    netback = arrived.vifs[0].netback
    assert netback.connected and netback.announcements == 1 and arrived.vifs[0].endpoint is None
    Responder(arrived.platform.network.switch("lan"))
    assert arrived.run() == POWEROFF, b"".join(dst)
    assert b"pinger sent" not in b"".join(src)
    assert summary(b"".join(dst)) == (count, count, 0, 0, 0)


class PortTaken(Machine):
    """A destination where something else holds the vif's address when the devices
    arrive (and lets go right after the refusal)."""

    def finish_migration(self, state):
        port = int(state["vifs"][0]["local"].rpartition(":")[2])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind(("127.0.0.1", port))
            super().finish_migration(state)


def test_a_destination_that_cannot_bind_the_port_fails_cleanly_and_the_source_runs_on():
    count = 4000
    live, responder, port = _migrate_pinger(count, PortTaken)
    target, received, src, dst = live.target, live.received, live.src, live.dst
    status = live.wait(90)
    assert status == POWEROFF, (status, target.info_migrate(), b"".join(src)[-800:])
    info = target.info_migrate()
    assert info["status"] == "failed" and f"127.0.0.1:{port}" in info["error"] and "cannot bind" in info["error"]
    assert "the VM runs on here" in info["error"] and "resuming" not in info["error"]
    assert isinstance(received[0], MigrationError) and dst == []
    sent, replies, bad, duplicates, lost = summary(b"".join(src))        # the source finished the run
    assert (sent, bad, duplicates) == (count, 0, 0) and lost <= 3 * WINDOW
    assert finish_responder(responder) == (count, 0)      # no announcement: the VM never moved
    assert port_is_free(port)


# ---- what is refused -----------------------------------------------------------------------

@pytest.fixture
def saved_udp(tmp_path):
    """A pinger on a UDP vif saved once it is connected (and the snapshot's path, its port)."""
    port, remote = free_udp_ports(2)
    out = []

    def console(data):
        out.append(data)
        if b"connected, ip" in data:
            m.vcpu.request_pause()
    m = Machine(pinger_config(console, f"udp,local=127.0.0.1:{port},remote=127.0.0.1:{remote}", 5,
                              wait_ms=50))
    assert m.run() is None
    m.save(tmp_path / "net.snap")
    m.close()
    return tmp_path / "net.snap", port


def _refused(snap, error, match, port):
    with pytest.raises(error, match=match):
        Machine.from_snapshot(snap)
    assert port_is_free(port), "the refused restore left the vif's address bound"


@pytest.mark.parametrize("field, value, match", [
    ("kind", "tap", r"vif state field 'kind': 'tap' is not one of \['switch', 'udp'\]"),
    ("mac", b"\x01\x00\x5e\x00\x00\x01", "group \\(multicast\\) address"),
    ("mac", b"RT\x00", "'mac': 3 bytes, expected 6"),
    ("devid", 3, "vif record 0 is for vif 3"),
    ("switch", "lan", "'switch': set for a udp vif"),
    ("local", "127.0.0.1:99999", "is not HOST:PORT"),
    ("backend", [], "'backend': not a map"),
])
def test_a_malformed_vif_record_is_refused_and_nothing_is_bound(saved_udp, field, value, match):
    path, port = saved_udp
    snap = snapshot.load_file(path)
    snap.vifs[0][field] = value
    _refused(snap, MigrationStreamError, match, port)


@pytest.mark.parametrize("change, match", [
    (lambda b: b["rings"]["rx-ring-ref"].__setitem__(0, 4000), "the saved connection cannot be made again"),
    (lambda b: b["rings"]["tx-ring-ref"].__setitem__(1, 1000), "the saved connection cannot be made again"),
    (lambda b: b.__setitem__("port", 999), "the saved connection cannot be made again"),
    (lambda b: b.__setitem__("rx_posted", 3), "the restored rx ring holds 64 posted requests, the save saw 3"),
    (lambda b: b.__setitem__("rx_posted", 10 ** 6), "'rx_posted': 1000000 is outside"),
    (lambda b: b["stats"].pop("rx_bytes"), "'stats'"),
    (lambda b: b.__setitem__("extra", 1), "unknown field\\(s\\) 'extra'"),
])
def test_a_damaged_netback_state_is_refused_and_nothing_is_bound(saved_udp, change, match):
    path, port = saved_udp
    snap = snapshot.load_file(path)
    change(snap.vifs[0]["backend"])
    _refused(snap, MigrationStreamError, match, port)


def test_a_second_vif_malformed_leaves_the_first_unbound(saved_udp):
    path, port = saved_udp
    snap = snapshot.load_file(path)
    second = dict(snap.vifs[0], devid=1, kind="bogus")
    snap.vifs.append(second)
    _refused(snap, MigrationStreamError, "'kind': 'bogus'", port)


def test_a_busy_address_refuses_the_restore(saved_udp):
    path, port = saved_udp
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", port))
        with pytest.raises(MigrationError, match=f"a vif cannot be attached here: local '127.0.0.1:{port}': "
                                                 "cannot bind"):
            Machine.restore(path)


def test_the_vif_record_is_checked_when_the_file_is_read(saved_udp, tmp_path):
    path, port = saved_udp
    records = S.read_stream(open(path, "rb"))
    bad = [S.VifRecord(dict(r.state, kind="tap")) if isinstance(r, S.VifRecord) else r for r in records]
    with open(tmp_path / "bad.snap", "wb") as out:
        S.write_stream(out, bad)
    with pytest.raises(MigrationStreamError, match="'kind': 'tap'"):
        snapshot.load_file(tmp_path / "bad.snap")
    # a VIF record in a snapshot of format 3 (written before vifs could be saved)
    config = S.decode_value(records[0].blob)
    old = [S.DeviceRecord(snapshot.CONFIG, bytes(S.encode_value(dict(config, format=3))))] + records[1:]
    with open(tmp_path / "old.snap", "wb") as out:
        S.write_stream(out, old)
    with pytest.raises(MigrationStreamError, match="snapshot format 3 with VIF records"):
        snapshot.load_file(tmp_path / "old.snap")
    assert port_is_free(port)


def test_the_announcement_is_a_rarp_request_reverse_from_the_mac():
    mac = bytes.fromhex("525400123456")
    frame = announcement(mac)
    dst, src, ethertype, payload = split_ethernet(frame)
    assert (dst, src, ethertype) == (b"\xff" * 6, mac, ETH_P_RARP)
    # htype 1, ptype IPv4, hlen 6, plen 4, op 3; sender and target the MAC, both IPs 0
    assert payload == bytes.fromhex("0001 0800 06 04 0003") + mac + bytes(4) + mac + bytes(4)


class PortKept(Machine):
    """A destination where something else holds the vif's address and keeps it after
    the refusal, so the source cannot bind it again either."""

    squatters = []

    def finish_migration(self, state):
        port = int(state["vifs"][0]["local"].rpartition(":")[2])
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind(("127.0.0.1", port))
        self.squatters.append(squatter)
        super().finish_migration(state)


def test_a_source_that_cannot_bind_its_port_again_runs_on_and_says_its_vif_is_cut_off():
    live, responder, port = _migrate_pinger(4000, PortKept)
    target = live.target
    try:
        deadline = time.monotonic() + 60
        while target.info_migrate()["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        info = target.info_migrate()
        assert info["status"] == "failed", info
        assert (f"on resuming the source VM: the VM runs, but vif 0: local '127.0.0.1:{port}': cannot bind UDP "
                "socket") in info["error"] and "its frames are dropped" in info["error"]
        assert target.status()["status"] == "running" and not target.machine.vifs[0].endpoint.bound
        target.quit()
        assert target.wait(10) == (0, "quit through the control socket")
    finally:
        responder.kill()
        responder.communicate()
        live.rx.join(10)
        for squatter in PortKept.squatters:
            squatter.close()


def test_a_released_endpoint_lets_go_of_its_port_and_takes_it_back():
    from pyvmm.devices.net.hostnet import HostNetwork
    port, remote = free_udp_ports(2)
    net = HostNetwork()
    try:
        net.udp_switch(f"127.0.0.1:{port}", f"127.0.0.1:{remote}")
        endpoint = net.endpoint(f"127.0.0.1:{port}")
        assert net.can_wake and not port_is_free(port)
        endpoint.release()
        assert port_is_free(port) and not net.can_wake and not endpoint.bound
        assert endpoint.deliver(announcement(bytes.fromhex("525400000001"))) is False
        assert endpoint.stats["tx_errors"] == 1 and endpoint.poll() == 0
        assert net.wait(0.01) == 0                   # a released endpoint is not waited on
        endpoint.reclaim()
        assert endpoint.bound and not port_is_free(port) and net.can_wake
    finally:
        net.close()
    assert port_is_free(port)
