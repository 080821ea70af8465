"""The learning switch with plain Python devices on its ports."""

import pytest

from pyvmm.devices.net import VSwitch
from pyvmm.errors import ConfigError

A, B, C = (bytes.fromhex(f"02000000000{i}") for i in (1, 2, 3))
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


class Device:
    def __init__(self, accept=True):
        self.frames = []
        self.accept = accept

    def deliver(self, frame):
        if self.accept:
            self.frames.append(frame)
        return self.accept


def frame(dst, src, body=b"payload"):
    return dst + src + b"\x88\xb5" + body


@pytest.fixture
def sw():
    sw = VSwitch("t")
    devs = [Device() for _ in range(3)]
    ports = [sw.attach(d, f"p{i}") for i, d in enumerate(devs)]
    return sw, devs, ports


def test_unknown_and_broadcast_flood_except_ingress_then_unicast_is_learned(sw):
    sw, (d0, d1, d2), (p0, p1, p2) = sw
    f1 = frame(B, A)
    assert p0.send(f1) == [p1, p2]                     # B unknown: flooded
    assert d0.frames == [] and d1.frames == [f1] and d2.frames == [f1]
    f2 = frame(A, B)
    assert p1.send(f2) == [p0]                         # A learned on p0
    assert d0.frames == [f2] and d2.frames == [f1]
    f3 = frame(B, A, b"again")
    assert p0.send(f3) == [p1]                         # B learned on p1
    for group in (BCAST, MCAST):
        g = frame(group, A)
        assert p0.send(g) == [p1, p2]
    assert sw.stats["flooded"] == 3
    assert p0.stats == {"in_frames": 4, "in_bytes": sum(map(len, [f1, f3, frame(BCAST, A), frame(MCAST, A)])),
                        "out_frames": 1, "out_bytes": len(f2), "out_refused": 0}


def test_group_sources_are_never_learned_and_runts_are_dropped(sw):
    sw, devs, (p0, p1, p2) = sw
    p0.send(frame(B, BCAST))
    p0.send(frame(B, MCAST))
    assert sw.macs == {}
    assert p0.send(b"\x01" * 13) == [] and sw.stats["runts"] == 1
    assert all(d.frames == [frame(B, BCAST), frame(B, MCAST)] for d in devs[1:])


def test_never_back_to_ingress_and_moves_are_relearned(sw):
    sw, (d0, d1, d2), (p0, p1, p2) = sw
    p0.send(frame(BCAST, A))
    p0.send(frame(BCAST, B))                           # A and B both behind p0
    assert p0.send(frame(B, A)) == [] and sw.stats["filtered"] == 1
    assert d0.frames == []
    p2.send(frame(BCAST, B))                           # B moved to p2
    assert sw.lookup(B) is p2
    assert p0.send(frame(B, A)) == [p2]


def test_a_full_table_floods_instead_of_growing():
    sw = VSwitch("small", max_macs=2)
    devs = [Device(), Device()]
    p0, p1 = (sw.attach(d) for d in devs)
    for i in range(10):
        p0.send(frame(BCAST, bytes([2, 0, 0, 0, 1, i])))
    assert len(sw.macs) == 2 and sw.stats["table_full"] == 8
    p1.send(frame(bytes([2, 0, 0, 0, 1, 9]), C))       # unknown: flooded to p0 anyway
    assert devs[0].frames[-1] == frame(bytes([2, 0, 0, 0, 1, 9]), C)
    p1.send(frame(bytes([2, 0, 0, 0, 1, 0]), C))       # learned: unicast
    assert devs[0].frames[-1] == frame(bytes([2, 0, 0, 0, 1, 0]), C)


def test_refusing_devices_are_counted_and_detached_ports_forgotten(sw):
    sw, (d0, d1, d2), (p0, p1, p2) = sw
    d1.accept = False
    p0.send(frame(BCAST, A))
    assert p1.stats["out_refused"] == 1 and p2.stats["out_frames"] == 1
    p1.send(frame(BCAST, B))
    p1.detach()
    assert sw.lookup(B) is None and p1 not in sw.ports
    assert p0.send(frame(B, A)) == [p2]                # B forgotten: flooded to those left
    assert p1.send(frame(A, B)) == []                  # a detached port sends nothing


def test_bad_ports_and_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="max_macs 0"):
        VSwitch("x", max_macs=0)
    with pytest.raises(ConfigError, match="no deliver"):
        VSwitch("x").attach(object())
