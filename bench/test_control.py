"""Control socket cost: one ``query-status`` round trip through ControlClient and
ControlServer (to the fake VM of tests/control), next to its floor.

The baseline, timed in the same test, is the same request line sent over a unix
stream socket to a thread that answers each line with a reply of the same size:
the transport and thread hand-off without QMP parsing, dispatch or JSON.
Results land in extra_info: us_per_command, baseline_us, ratio_to_baseline.

    python3 -m pytest bench/test_control.py --benchmark-only
"""

import socket
import tempfile
import threading
import time

from pyvmm.control import qmp
from pyvmm.control.client import ControlClient
from pyvmm.control.server import ControlServer
from tests.control.peers import FakeVm

ROUND_TRIPS = 200


def _echo_baseline_us(request, reply, rounds=5):
    """Best-of-``rounds`` microseconds per request/reply over a socketpair served by a thread."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def answer():
        lines = qmp.LineBuffer(1 << 16)
        while True:
            data = theirs.recv(65536)
            if not data:
                return
            for _ in lines.feed(data):
                theirs.sendall(reply)

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    reader = qmp.LineBuffer(1 << 16)
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            ours.sendall(request)
            while not reader.feed(ours.recv(65536)):
                pass
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    ours.close()
    server.join(5)
    theirs.close()
    return best / ROUND_TRIPS * 1e6


def test_query_status_round_trip(benchmark):
    with tempfile.TemporaryDirectory(prefix="pvbench") as d:
        vm = FakeVm()
        with ControlServer(f"{d}/c.sock", vm) as server:
            vm.server = server
            with ControlClient(f"{d}/c.sock") as client:
                client.negotiate()

                def run():
                    for _ in range(ROUND_TRIPS):
                        status = client.execute("query-status")
                    return status

                status = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert status["status"] == "running" and vm.exits and vm.exits % ROUND_TRIPS == 0
    if benchmark.disabled:      # --benchmark-disable: ran once as a test, nothing measured
        return
    request = qmp.encode({"execute": "query-status", "id": 1})
    reply = qmp.encode(qmp.return_reply(status, {"id": 1}))
    baseline = _echo_baseline_us(request, reply)
    per_command = benchmark.stats.stats.median / ROUND_TRIPS * 1e6
    benchmark.extra_info.update(us_per_command=round(per_command, 1), baseline_us=round(baseline, 1),
                                ratio_to_baseline=round(per_command / baseline, 1))
    assert per_command > 0 and baseline > 0
