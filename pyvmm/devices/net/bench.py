"""`pyvmm bench net`: packets per second and MB/s between two netfront guests, next to UDP loopback.

Responsibility: measure ping traffic between two guests (guests/netfront.c: the
pinger keeps ``window`` ICMP echo requests in flight, the responder answers each)
through the whole path: netfront, tx ring, grants, netback, switch (and, across
processes, the UDP endpoints and the host's loopback), netback, rx ring, netfront.
The pinger times its run itself (vcpu_time_info) and prints
``bench ping frames=F frame_bytes=B window=W ns=T`` (F counts requests and replies);
every reply was checked by the guest (sender, id, seq, data) and a run with a lost,
bad or duplicate reply is refused, not reported. Two set-ups:
- ``one_process``: both guests as domains of one pyvmm (pv/hypervisor.py) on one switch;
- ``two_processes``: two ``pyvmm boot`` processes joined by ``--net udp``.
Baseline, measured in the same run with the same frames (the guest's own bytes:
Ethernet + IPv4 + ICMP echo) and the same window: Python moving them between two
UDP sockets on 127.0.0.1, one ``sendto`` and one ``recv`` per frame each way (an
echo server in the same thread), i.e. the host kernel's cost of the frames alone.

Invariants: every number comes from this run; each row is the best of ``repeats``
runs (on a shared 2-core VM the slower runs measure other processes); the ratio is
the guest path's packets per second over the baseline's.
"""

import os
import re
import socket
import subprocess
import sys
import time

from pyvmm.devices.net.ethernet import ETH_P_IP, ethernet, icmp_echo, ipv4
from pyvmm.errors import PyvmmError

__all__ = ["bench_net", "free_udp_ports", "format_results", "parse_bench_line", "udp_loopback", "ping_frames", "one_process",
           "two_processes"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NETFRONT = os.path.join(ROOT, "guests", "build", "netfront.elf")
SIZES = (56, 1472)                  # ICMP data bytes: 98-byte and 1514-byte frames
WINDOW = 16
PINGER = "role=pinger ip=10.0.0.1 target=10.0.0.2"
RESPONDER = "role=responder ip=10.0.0.2"
_LINE = re.compile(r"bench ping frames=(\d+) frame_bytes=(\d+) window=(\d+) ns=(\d+)$", re.M)
_SUMMARY = re.compile(r"replies (\d+), bad (\d+), duplicates (\d+), lost (\d+)")


def parse_bench_line(text, count):
    """(frames, frame_bytes, ns) from the pinger's console; PyvmmError unless all
    ``count`` replies came back good."""
    summary, line = _SUMMARY.search(text), _LINE.search(text)
    if summary is None or line is None:
        raise PyvmmError(f"bench net: the pinger printed no result:\n{text[-800:]}")
    replies, bad, duplicates, lost = (int(n) for n in summary.groups())
    if (replies, bad, duplicates, lost) != (count, 0, 0, 0):
        raise PyvmmError(f"bench net: {replies} of {count} replies, {bad} bad, {duplicates} duplicates, "
                         f"{lost} lost: not a clean run")
    frames, frame_bytes, _, ns = (int(n) for n in line.groups())
    return frames, frame_bytes, ns


def ping_frames(size, count):
    """The echo request frames the pinger sends (same layout and lengths)."""
    src, dst = bytes.fromhex("525400000001"), bytes.fromhex("525400000002")
    return [ethernet(dst, src, ETH_P_IP, ipv4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1,
                                             icmp_echo(8, 0x7079, seq & 0xFFFF, bytes([seq & 0xFF]) * size),
                                             ident=seq & 0xFFFF))
            for seq in range(1, count + 1)]


def udp_loopback(frames, window=WINDOW):
    """Seconds to move every frame there and back between two UDP sockets on loopback,
    ``window`` in flight (the echo side in the same thread)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
        a_addr, b_addr = a.getsockname(), b.getsockname()
        sent = back = 0
        t0 = time.perf_counter()
        while back < len(frames):
            while sent < len(frames) and sent - back < window:
                a.sendto(frames[sent], b_addr)
                sent += 1
            b.sendto(b.recv(65535), a_addr)            # the echo side
            if len(a.recv(65535)) != len(frames[back]):
                raise PyvmmError("bench net: the UDP baseline got a frame of the wrong length back")
            back += 1
        return time.perf_counter() - t0


def one_process(size, count):
    from pyvmm.pv.hypervisor import DomainSpec, Hypervisor
    out = bytearray()
    host = Hypervisor([DomainSpec(NETFRONT, name="pinger", nets=["switch=bench"],
                                  cmdline=f"{PINGER} count={count} size={size} window={WINDOW}"),
                       DomainSpec(NETFRONT, name="responder", nets=["switch=bench"],
                                  cmdline=f"{RESPONDER} packets={count}")], console=out.extend)
    try:
        results = host.run()
    finally:
        host.close()
    text = out.decode(errors="replace")
    if any(r.status for r in results.values()):
        raise PyvmmError(f"bench net: a guest did not power off cleanly:\n{text[-800:]}")
    return parse_bench_line(text, count)


def free_udp_ports(n):
    """``n`` distinct UDP ports the host just handed out for 127.0.0.1 and let go again
    (for two processes' ``--net udp`` link; the tests use it too)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def two_processes(size, count):
    a, b = free_udp_ports(2)

    def boot(cmdline, local, remote):
        return subprocess.Popen([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", NETFRONT,
                                 "--cmdline", cmdline, "--net",
                                 f"udp,local=127.0.0.1:{local},remote=127.0.0.1:{remote}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    responder = boot(f"{RESPONDER} packets={count}", a, b)
    pinger = boot(f"{PINGER} count={count} size={size} window={WINDOW}", b, a)
    try:
        p_out = pinger.communicate(timeout=120)[0]
        r_out = responder.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        for p in (pinger, responder):
            p.kill()
            p.wait()
        raise PyvmmError("bench net: the two pyvmm processes did not finish within their time") from None
    if pinger.returncode or responder.returncode:
        raise PyvmmError(f"bench net: pinger status {pinger.returncode}, responder status "
                         f"{responder.returncode}:\n{p_out[-600:]}\n{r_out[-600:]}")
    return parse_bench_line(p_out, count)


def _row(measure, size, count, repeats):
    best = None
    for _ in range(repeats):
        frames, frame_bytes, ns = measure(size, count)
        if best is None or ns < best[2]:
            best = (frames, frame_bytes, ns)
    frames, frame_bytes, ns = best
    return {"frames": frames, "frame_bytes": frame_bytes, "ns": ns,
            "packets_per_s": round(frames / (ns / 1e9)), "MB_per_s": round(frames * frame_bytes / (ns / 1e3), 2)}


def bench_net(count=1000, repeats=3, sizes=SIZES):
    """{"window", "count", "rows": {setup: {size: row}}, "baseline": {size: row}} with the
    guest rows' ``vs_baseline`` (packets per second, guest path / UDP loopback)."""
    if not os.path.exists(NETFRONT):
        raise PyvmmError(f"bench net: {NETFRONT} is missing: run `make -C guests`")
    result = {"window": WINDOW, "count": count, "repeats": repeats, "rows": {}, "baseline": {}}
    for size in sizes:
        frames = ping_frames(size, count)
        seconds = min(udp_loopback(frames) for _ in range(repeats))
        moved = 2 * count
        result["baseline"][size] = {"frames": moved, "frame_bytes": len(frames[0]),
                                    "packets_per_s": round(moved / seconds),
                                    "MB_per_s": round(moved * len(frames[0]) / seconds / 1e6, 2)}
    for setup, measure in (("one_process", one_process), ("two_processes", two_processes)):
        rows = result["rows"][setup] = {}
        for size in sizes:
            row = rows[size] = _row(measure, size, count, repeats)
            if row["frame_bytes"] != result["baseline"][size]["frame_bytes"]:
                raise PyvmmError(f"bench net: the guest's frames are {row['frame_bytes']} bytes, the "
                                 f"baseline's {result['baseline'][size]['frame_bytes']}")
            row["vs_baseline"] = round(row["packets_per_s"] / result["baseline"][size]["packets_per_s"], 4)
    return result


def format_results(result):
    lines = [f"ping between two netfront guests, {result['window']} echo requests in flight, "
             f"{result['count']} a run, best of {result['repeats']}:",
             f"  {'set-up':<15} {'frame':>6} {'packets/s':>10} {'MB/s':>8}  {'UDP loopback':>12} {'MB/s':>8}  guest/UDP"]
    for setup, rows in result["rows"].items():
        for size, row in rows.items():
            base = result["baseline"][size]
            lines.append(f"  {setup:<15} {row['frame_bytes']:>6} {row['packets_per_s']:>10} {row['MB_per_s']:>8}  "
                         f"{base['packets_per_s']:>12} {base['MB_per_s']:>8}  {row['vs_baseline']:.3f}")
    return "\n".join(lines)
