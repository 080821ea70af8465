"""`pyvmm bench net` (devices/net/bench.py): what it reports and what it refuses to report."""

import pytest

from pyvmm.devices.net import bench as B
from pyvmm.devices.net.ethernet import parse_icmp, parse_ipv4_packet, split_ethernet
from pyvmm.errors import PyvmmError

CLEAN = ("pinger: netfront: pinger sent 5 echo requests to 10.0.0.2, replies 5, bad 0, duplicates 0, lost 0\n"
         "pinger: bench ping frames=10 frame_bytes=98 window=16 ns=1000000\n")


def test_parse_bench_line_takes_a_clean_run_only():
    assert B.parse_bench_line(CLEAN, 5) == (10, 98, 1_000_000)
    with pytest.raises(PyvmmError, match="4 of 5 replies, 0 bad, 0 duplicates, 1 lost"):
        B.parse_bench_line(CLEAN.replace("replies 5", "replies 4").replace("lost 0", "lost 1"), 5)
    with pytest.raises(PyvmmError, match="1 bad"):
        B.parse_bench_line(CLEAN.replace("bad 0", "bad 1"), 5)
    with pytest.raises(PyvmmError, match="printed no result"):
        B.parse_bench_line("pinger: FAIL target_answered_arp: got 0 want 1\n", 5)


def test_baseline_frames_are_the_guests_echo_requests():
    frames = B.ping_frames(56, 3)
    assert [len(f) for f in frames] == [98] * 3
    dst, src, ethertype, packet = split_ethernet(frames[2])
    icmp = parse_icmp(parse_ipv4_packet(packet)["payload"])
    assert (icmp["type"], icmp["ident"], icmp["seq"], len(icmp["data"])) == (8, 0x7079, 3, 56)
    assert B.udp_loopback(frames, window=2) > 0


def test_bench_net_reports_both_setups_next_to_the_baseline():
    result = B.bench_net(count=20, repeats=1, sizes=(56,))
    for setup in ("one_process", "two_processes"):
        row = result["rows"][setup][56]
        assert row["frames"] == 40 and row["frame_bytes"] == 98 and row["packets_per_s"] > 0
        assert row["vs_baseline"] == round(row["packets_per_s"] / result["baseline"][56]["packets_per_s"], 4)
    text = B.format_results(result)
    assert "one_process" in text and "two_processes" in text and "UDP loopback" in text
