"""Ping between two netfront guests (guests/netfront.c) through the whole guest path: in one
pyvmm on a switch, and across two pyvmm processes over UDP; each next to Python moving the
same frames between two UDP sockets on loopback with the same window, in the same run
(extra_info: packets_per_s, MB_per_s, baseline_packets_per_s, baseline_MB_per_s, vs_baseline).
The timed body is a whole run (boot, handshake, ARP, COUNT echoes, close); the rates are the
pinger's own measurement of the echo phase (vcpu_time_info).

    python3 -m pytest bench/test_net_guests.py --benchmark-only
"""
import pytest

from pyvmm.devices.net import bench as B

COUNT = 500


@pytest.mark.parametrize("setup", ["one_process", "two_processes"])
@pytest.mark.parametrize("size", B.SIZES)
def test_ping_between_guests(benchmark, setup, size):
    measure = getattr(B, setup)
    frames, frame_bytes, ns = benchmark.pedantic(measure, args=(size, COUNT), rounds=1, iterations=1)
    baseline_s = min(B.udp_loopback(B.ping_frames(size, COUNT)) for _ in range(3))
    pps, base_pps = frames / (ns / 1e9), 2 * COUNT / baseline_s
    benchmark.extra_info.update(
        frame_bytes=frame_bytes, packets_per_s=round(pps), MB_per_s=round(pps * frame_bytes / 1e6, 2),
        baseline_packets_per_s=round(base_pps), baseline_MB_per_s=round(base_pps * frame_bytes / 1e6, 2),
        vs_baseline=round(pps / base_pps, 4))
    assert frames == 2 * COUNT and frame_bytes == len(B.ping_frames(size, 1)[0])
