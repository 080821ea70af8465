"""Measurement behind ``pyvmm bench migrate``: live migration of a running guest over
loopback TCP, next to the link's raw speed measured in the same run.

For each RAM size (MiB) and dirty rate, one Machine boots guests/build/memdirty.elf
(rate R kB/s over a region of half the RAM above its 8 MiB base, so the dirty set of
a round is rate x round time, not capped by a tiny region), runs ``warmup_s`` so the
guest is writing at its pace, and is live-migrated with ``MachineTarget.migrate`` (the
path of ``pyvmm ctl SOCKET migrate``) to a receiver in another process, which takes it as ``pyvmm receive``
does (``Machine.receive_migration``: the Machine is built when the stream begins and
the pages are written into its RAM as they arrive) and closes it. Reported per case: ``downtime_ms`` (the source's
pause to the destination's ok, as the source measures it), ``total_s`` (the migrate
command to the source's shutdown), ``rounds`` and ``pages`` (page entries the
receiver got, all rounds), ``wire_MB``, ``dest_start_ms`` (the part of the downtime the
destination spent after END: restoring devices and vCPU), and ``link_s``: the same RAM size sent with
one ``sendall`` over loopback to a process that reads it to the end, in this run.

``link_MBps`` is that baseline's speed (10^6 bytes/s, median of ``repeats``). Targets
(issue 7): an idle 256 MiB guest under 50 ms downtime, 10 MB/s under 300 ms, total
time near RAM size / link speed.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time

from pyvmm.errors import MigrationError
from pyvmm.mm.layout import MiB

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNEL = os.path.join(ROOT, "guests", "build", "memdirty.elf")
RATES = (("idle", 0), ("1MBps", 1000), ("10MBps", 10000))     # name, kB/s for memdirty
SIZES_MIB = (64, 256)
TARGETS = {"idle_256_downtime_ms": 50, "10MBps_downtime_ms": 300}
REGION_BASE_MIB = 8                 # memdirty.S: REGION_BASE

_DRAIN = """
import socket, sys
l = socket.create_server(('127.0.0.1', 0)); print(l.getsockname()[1], flush=True)
c, _ = l.accept()
buf = bytearray(1 << 20)
while c.recv_into(buf):
    pass
c.sendall(b'k')
"""


def _child(code_or_args, timeout=60):
    """A Python child that prints its port first; (process, port)."""
    args = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else \
        [sys.executable, *code_or_args]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise MigrationError(f"bench migrate: helper process did not start (said {line!r})")
    return proc, int(line)


def link_seconds(nbytes):
    """Seconds one sendall of ``nbytes`` takes over loopback to a reader that reads it to
    the end and answers (the acknowledgement is included, as the migration's answer is)."""
    data = os.urandom(1 << 20) * (nbytes // (1 << 20))
    proc, port = _child(_DRAIN)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            t0 = time.perf_counter()
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            if s.recv(1) != b"k":
                raise MigrationError("bench migrate: the loopback reader did not acknowledge")
            return time.perf_counter() - t0
    finally:
        proc.wait(10)


def receive_main(argv):
    """The receiver process: listen on a free loopback port (printed), take one VM,
    build it as `pyvmm receive` does, close it, print the receiver's stats as JSON."""
    from pyvmm.machine import Machine
    from pyvmm.migrate.receiver import open_listener
    listener = open_listener("127.0.0.1:0")
    print(listener.getsockname()[1], flush=True)
    machine, stats = Machine.receive_migration(listener, console=lambda data: None, timeout=60)
    machine.close()
    print(json.dumps(stats), flush=True)
    return 0


def migrate_once(size_mib, rate_kbps, warmup_s=1.0, timeout=120.0):
    """Migrate one running memdirty guest of ``size_mib`` MiB writing ``rate_kbps``; its row."""
    from pyvmm.control.machine_target import MachineTarget
    from pyvmm.machine import Machine, VmConfig
    region = max(1, size_mib // 2)
    if REGION_BASE_MIB + region > size_mib:
        raise MigrationError(f"bench migrate: {size_mib} MiB is too small for the guest's region")
    cmdline = f"mem={region} rate={rate_kbps} round_ms=1000 rounds=1000000"
    console = []
    machine = Machine(VmConfig(kernel=KERNEL, cmdline=cmdline, memory=f"{size_mib}M", console=console.append))
    target = MachineTarget(machine)
    proc, port = _child(["-m", "pyvmm.migrate.bench", "--receive"])
    try:
        target.start()
        time.sleep(warmup_s)
        t0 = time.perf_counter()
        target.migrate("127.0.0.1", port)
        if not target.done.wait(timeout):
            raise MigrationError(f"bench migrate: {size_mib} MiB at {rate_kbps} kB/s did not finish "
                                 f"in {timeout} s")
        total = time.perf_counter() - t0
        info = target.info_migrate()
        if info.get("status") != "completed":
            raise MigrationError(f"bench migrate: {size_mib} MiB at {rate_kbps} kB/s: {info}")
        out, _ = proc.communicate(timeout=60)
        received = json.loads(out.strip().splitlines()[-1])
    finally:
        if target.status()["status"] != "shutdown":
            target.quit()
        proc.kill()
    if b"FAIL" in b"".join(console):
        raise MigrationError(f"bench migrate: the guest failed: {b''.join(console)!r}")
    return {"downtime_ms": info["downtime-ms"], "total_s": round(total, 4), "rounds": info["round"],
            "pages": received["pages"], "wire_MB": round(info["transferred"] / 1e6, 2),
            "dest_start_ms": round(received["start_s"] * 1e3, 1)}


def bench_migrate(sizes_mib=SIZES_MIB, rates=RATES, warmup_s=1.0, repeats=3):
    """{"64": {"idle": {...}, "1MBps": {...}, ...}, "256": {...}, "link_MBps": N, "targets": {...}}."""
    result = {}
    link = []
    for size in sizes_mib:
        seconds = statistics.median(link_seconds(size * MiB) for _ in range(repeats))
        link.append(size * MiB / seconds / 1e6)
        row = {name: migrate_once(size, rate, warmup_s) for name, rate in rates}
        for case in row.values():
            case["link_s"] = round(seconds, 4)
        result[str(size)] = row
    result["link_MBps"] = round(statistics.median(link), 1)
    result["targets"] = dict(TARGETS)
    return result


def format_results(result):
    lines = [f"loopback link: {result['link_MBps']} MB/s (one sendall of the RAM size)"]
    for size, row in result.items():
        if not isinstance(row, dict) or size == "targets":
            continue
        for name, r in row.items():
            lines.append(f"{size:>4} MiB {name:<7} downtime {r['downtime_ms']:8.1f} ms  total {r['total_s']:6.2f} s"
                         f" (link alone {r['link_s']:.2f} s)  {r['rounds']} rounds, {r['pages']} pages, "
                         f"{r['wire_MB']} MB on the wire; destination start {r['dest_start_ms']} ms")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["--receive"]:
    sys.exit(receive_main(sys.argv[2:]))
