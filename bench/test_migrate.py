"""Live migration (pre-copy) of a 64 MiB idle VM over loopback TCP, next to a plain
socket sendall of the same 64 MiB in the same run.

The timed part is ``migrate()`` of a fake VM whose RAM is all random data (no zero
pages to skip) to a receiver in another process (``receive`` with a no-op
``on_complete``). The baseline, timed in the same test (median of 3), sends the same
bytes with one ``sendall`` to a process that reads them to EOF and answers one byte.
extra_info holds MB/s for both, their ratio, and the migration's downtime.

    python3 -m pytest bench/test_migrate.py --benchmark-only
"""
import os
import socket
import subprocess
import sys
import time

import pytest

from pyvmm.migrate.precopy import migrate
from tests.migrate.fake_vm import FakeVm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = 16384                     # 64 MiB

RECEIVER = """
from pyvmm.migrate.receiver import open_listener, receive
l = open_listener('127.0.0.1:0'); print(l.getsockname()[1], flush=True)
receive(l, lambda config, memory, devices: None)
"""
DRAIN = """
import socket
l = socket.create_server(('127.0.0.1', 0)); print(l.getsockname()[1], flush=True)
c, _ = l.accept()
while c.recv(1 << 20):
    pass
c.sendall(b'k')
"""


def _serve(code):
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    return proc, int(proc.stdout.readline())


@pytest.fixture(scope="module")
def vm():
    vm = FakeVm(PAGES, keep_paused_ram=False)
    vm.ram[:] = os.urandom(len(vm.ram))
    yield vm
    vm.close()


def _sendall(data):
    proc, port = _serve(DRAIN)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b"k"
        seconds = time.perf_counter() - t0
    proc.wait()
    return seconds


def test_precopy_loopback_64mib(benchmark, vm):
    runs = []

    def setup():
        vm.resume()                      # each migration leaves the VM paused
        proc, port = _serve(RECEIVER)
        runs.append(proc)
        return (vm, ("127.0.0.1", port)), {}

    stats = benchmark.pedantic(migrate, setup=setup, rounds=3, iterations=1)
    for proc in runs:
        assert proc.wait(10) == 0
    assert stats["status"] == "completed" and stats["pages_per_round"][0] == PAGES
    precopy_s = benchmark.stats.stats.median
    sendall_s = sorted(_sendall(bytes(vm.ram)) for _ in range(3))[1]
    mb = len(vm.ram) / 1e6
    benchmark.extra_info.update(
        precopy_mbps=round(mb / precopy_s, 1), sendall_mbps=round(mb / sendall_s, 1),
        precopy_vs_sendall=round(sendall_s / precopy_s, 3), rounds=stats["rounds"],
        downtime_ms=stats["downtime_ms"], wire_bytes=stats["total_bytes"])
    assert precopy_s > 0 and sendall_s > 0


def test_migrate_memdirty_guest(benchmark):
    """`pyvmm bench migrate`: the memdirty guest idle and dirtying 1 and 10 MB/s, at 64
    and 256 MiB, migrated live over loopback; the baseline in the same run is one
    sendall of the same RAM size (link_s per case, link_MBps). The timed call is the
    whole table; extra_info holds it (downtime_ms, total_s, rounds, pages per case)."""
    from pyvmm.migrate.bench import bench_migrate, format_results

    result = benchmark.pedantic(bench_migrate, kwargs={"repeats": 3}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + format_results(result))
    for size in ("64", "256"):
        for name in ("idle", "1MBps", "10MBps"):
            case = result[size][name]
            assert case["rounds"] >= 2 and case["pages"] >= int(size) * 256   # every page went once
            assert 0 < case["downtime_ms"] < case["total_s"] * 1e3
    assert result["link_MBps"] > 0
