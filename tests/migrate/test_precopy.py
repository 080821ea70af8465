"""Live migration over loopback TCP: a fake running VM moves to a receiver; faults
(receiver killed, socket cut, silent or refusing peer, garbage) leave the source VM
running and the destination empty-handed."""
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest

from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate import session
from pyvmm.migrate import stream as S
from pyvmm.migrate.precopy import format_progress, migrate
from pyvmm.migrate.receiver import open_listener, receive
from pyvmm.mm.layout import PAGE_SIZE
from tests.migrate.fake_vm import FakeVm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def make_vm():
    vms = []

    def make(pages, rate=0):
        vms.append(FakeVm(pages, rate))
        return vms[-1]
    yield make
    for vm in vms:
        vm.close()


class Destination:
    """A receiver on a thread: what it handed to on_complete, its stats or its error."""

    def __init__(self, on_complete=None, **kw):
        self.listener = open_listener("127.0.0.1:0")
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.got = None
        self.stats = self.error = None
        self._on_complete = on_complete
        self._thread = threading.Thread(target=self._run, kwargs=kw, daemon=True)
        self._thread.start()

    def _complete(self, config, memory, devices):
        if self._on_complete:
            self._on_complete()
        self.got = (config, memory, devices)

    def _run(self, **kw):
        try:
            self.stats = receive(self.listener, self._complete, timeout=5.0, **kw)
        except Exception as e:        # the test looks at it
            self.error = e
        finally:
            self.listener.close()

    def join(self):
        self._thread.join(10)
        assert not self._thread.is_alive()
        return self


def assert_runs_on(vm, before):
    """The source guest runs: not paused (or resumed), and still writing."""
    assert vm.calls.count("pause") == vm.calls.count("resume")
    assert vm.running() and not vm.logging
    vm.guest_write([0])
    assert vm.writes > before


# --- migrations that succeed ---------------------------------------------------------

def test_destination_ram_is_source_ram_at_pause(make_vm):
    vm = make_vm(2048, rate=3000)          # 8 MiB, ~12 MB/s of 8-byte writes
    dest = Destination()
    stats = migrate(vm, dest.address)
    dest.join()
    assert dest.error is None
    config, memory, devices = dest.got
    assert memory == vm.paused_ram           # byte for byte, as the guest left it
    assert config == vm.config() and devices == vm.devices
    assert vm.calls[-3:] == ["pause", "save_devices", "stop_dirty_log"]   # left paused
    assert not vm.running()
    assert stats["status"] == "completed" and stats["pages_per_round"][0] == 2048
    assert stats["rounds"] == len(stats["pages_per_round"]) >= 2
    assert stats["downtime_ms"] > 0 and stats["total_time_s"] * 1e3 > stats["downtime_ms"]
    assert stats["total_pages"] == sum(stats["pages_per_round"]) == dest.stats["pages"]
    assert dest.stats["pages_per_round"] == stats["pages_per_round"]
    assert json.loads(json.dumps(stats)) == stats


def test_rounds_converge_under_the_downtime_limit(make_vm):
    vm = make_vm(1024, rate=1500)          # 6 MB/s of dirtying against a 16 MB/s link
    seen = []
    dest = Destination()
    stats = migrate(vm, dest.address, max_bandwidth=16e6, max_downtime=0.025, max_rounds=10,
                    progress=seen.append)
    dest.join()
    assert dest.got[1] == vm.paused_ram
    assert stats["converged"] is True and stats["expected_downtime_ms"] <= 25
    pre = stats["pages_per_round"][:-1]
    assert len(pre) >= 2 and pre[1] < pre[0] == 1024          # round 2 only re-sends dirty pages
    assert [p["round"] for p in seen] == list(range(1, len(pre) + 1))
    assert seen[0]["dirty_pages"] > 0 and seen[0]["dirty_rate_mbps"] > 0
    assert 8 < seen[0]["bandwidth_mbps"] < 17          # the cap is 16 MB/s
    assert "round 1: sent 1024 pages" in format_progress(seen[0])
    assert "expected downtime" in format_progress(seen[-1])


def test_round_limit_stops_a_guest_that_never_settles(make_vm):
    vm = make_vm(256)
    vm.hot_pages = range(0, 256, 4)
    dest = Destination()
    stats = migrate(vm, dest.address, max_downtime=0, max_rounds=3)
    dest.join()
    assert dest.got[1] == vm.paused_ram
    assert stats["converged"] is False
    assert stats["pages_per_round"] == [256, 64, 64, 64]       # 3 pre-copy rounds + stop-and-copy


def test_xbzrle_sends_small_deltas_for_resent_pages(make_vm):
    vm = make_vm(256)
    vm.guest_write([1])                      # 8 bytes in a zero page: first sent whole, not as a delta
    vm.hot_pages = range(0, 256, 2)          # 8-byte writes to pages full of data
    dest = Destination()
    stats = migrate(vm, dest.address, max_downtime=0, max_rounds=2, xbzrle=True)
    dest.join()
    assert dest.got[1] == vm.paused_ram
    assert stats["pages_per_round"][1:] == [128, 128]
    assert stats["bytes_per_round"][1] < 128 * 64                # ~20 bytes a page, not 4 KiB


# --- faults: the source keeps running, the destination discards ------------------------

def test_receiver_process_killed_midway(make_vm):
    vm = make_vm(2048, rate=2000)
    vm.hot_pages = range(0, 2048, 8)
    code = ("import sys; from pyvmm.migrate.receiver import open_listener, receive\n"
            "l = open_listener('127.0.0.1:0'); print(l.getsockname()[1], flush=True)\n"
            "receive(l, lambda *a: print('COMPLETE', flush=True), timeout=10)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        port = int(proc.stdout.readline())

        def kill(p):
            if p["round"] == 1:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        before = vm.writes
        with pytest.raises(MigrationError, match=r"failed in round [23] \(pre-copy\).*runs on here") as e:
            migrate(vm, f"127.0.0.1:{port}", max_downtime=0, max_rounds=5, progress=kill)
    finally:
        proc.kill()
        out = proc.communicate()[0]
    assert "COMPLETE" not in out
    assert e.value.stats["status"] == "failed" and e.value.stats["pages_per_round"][0] == 2048
    assert "pause" not in vm.calls
    assert_runs_on(vm, before)


def test_socket_cut_during_precopy(make_vm):
    vm = make_vm(512, rate=1000)
    vm.hot_pages = [1, 2, 3]
    dest = Destination()
    sock = socket.create_connection(dest.listener.getsockname())

    def cut(p):
        sock.shutdown(socket.SHUT_RDWR)
    before = vm.writes
    with pytest.raises(MigrationError, match="failed in round 2"):
        migrate(vm, sock, max_downtime=0, progress=cut)
    dest.join()
    assert dest.got is None and isinstance(dest.error, MigrationStreamError)
    assert "truncated" in str(dest.error)
    assert_runs_on(vm, before)


def test_socket_cut_after_pause_resumes_the_source(make_vm):
    vm = make_vm(512, rate=1000)
    dest = Destination()
    sock = socket.create_connection(dest.listener.getsockname())
    vm.on_save_devices = lambda: sock.shutdown(socket.SHUT_RDWR)
    before = vm.writes
    with pytest.raises(MigrationError, match=r"\(devices\)"):
        migrate(vm, sock)
    dest.join()
    assert dest.got is None and dest.error is not None
    assert vm.calls.count("pause") == 1
    assert_runs_on(vm, before)


def test_destination_that_cannot_start_the_vm_says_no(make_vm):
    vm = make_vm(64)

    def refuse():
        raise OSError("no room for 256 KiB of guest RAM")
    dest = Destination(on_complete=refuse)
    before = vm.writes
    with pytest.raises(MigrationError, match="refused the VM: .*could not be started here: no room"):
        migrate(vm, dest.address)
    dest.join()
    assert "could not be started" in str(dest.error)
    assert_runs_on(vm, before)


def test_silent_destination_times_out(make_vm):
    vm = make_vm(4096)                      # 16 MiB: more than the socket buffers hold
    listener = open_listener("127.0.0.1:0")
    try:
        t0 = time.monotonic()
        with pytest.raises(MigrationError, match="silent"):
            migrate(vm, "127.0.0.1:%d" % listener.getsockname()[1], timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        listener.close()
    assert_runs_on(vm, 0)


def test_nobody_listening(make_vm):
    vm = make_vm(16)
    listener = open_listener("127.0.0.1:0")
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(MigrationError, match=f"cannot connect to the migration receiver at 127.0.0.1:{port}"):
        migrate(vm, f"127.0.0.1:{port}")
    assert vm.calls == []


def test_bad_dirty_bitmap_from_the_vm_fails_cleanly(make_vm):
    vm = make_vm(64)
    vm.read_dirty_log = lambda: b"\xff" * 3
    dest = Destination()
    with pytest.raises(MigrationError, match="dirty bitmap of 3 bytes for 64 pages"):
        migrate(vm, dest.address)
    dest.join()
    assert dest.got is None
    assert_runs_on(vm, 0)


@pytest.mark.parametrize("bad, problem", [
    ("nowhere", "expected HOST:PORT"), ("h:99999", "port 0..65535"), ("h:x", "not a number")])
def test_bad_addresses_are_refused(bad, problem):
    with pytest.raises(MigrationError, match=problem):
        session.parse_address(bad)
    assert session.parse_address("[::1]:4444") == ("::1", 4444)


# --- the receiver refuses what is not a whole, well-formed migration ---------------------

def feed(data, **kw):
    """Send ``data`` to receive() over a socket pair: (error, answer, completed)."""
    ours, theirs = socket.socketpair()
    got = []
    sender = threading.Thread(target=lambda: (ours.sendall(data), ours.shutdown(socket.SHUT_WR)))
    sender.start()
    with pytest.raises(MigrationError) as e:
        receive(theirs, lambda *a: got.append(a), timeout=2.0, **kw)
    sender.join()
    answer = session.read_result(ours, "test")
    ours.close()
    assert not got and answer["ok"] is False
    return e.value, answer


def crafted(*records, version=S.FORMAT_VERSION):
    out = io.BytesIO()
    S.write_stream(out, list(records))
    data = out.getvalue()
    if version != S.FORMAT_VERSION:
        head = S.MAGIC + version.to_bytes(4, "little")
        data = head + zlib.crc32(head).to_bytes(4, "little") + data[16:]
    return data


def begin(pages=4, **over):
    fields = dict(protocol=session.PROTOCOL, page_size=PAGE_SIZE, page_count=pages, config={})
    fields.update(over)
    return session.control(session.BEGIN, **fields)


def mem(*pfns, enc=S.PageEncoding.ZERO):
    return S.MemoryRecord(tuple(S.Page(p, enc, b"\x00\x01" if enc == S.PageEncoding.XBZRLE else b"")
                                for p in pfns))


def rnd(n, pages, final=False):
    return session.control(session.ROUND, round=n, pages=pages, final=final)


DEVICES = session.control(session.DEVICES, devices={})


def test_garbage_is_refused():
    err, answer = feed(os.urandom(4096))
    assert "not a pyvmm migration stream" in str(err) and answer["error"] == str(err)


def test_newer_stream_version_is_refused():
    err, _ = feed(crafted(begin(), version=S.FORMAT_VERSION + 1))
    assert f"version {S.FORMAT_VERSION + 1} is newer" in str(err)


def test_whole_crafted_stream_is_accepted():
    ours, theirs = socket.socketpair()
    ours.sendall(crafted(begin(), mem(0, 1, 2, 3), rnd(1, 4, final=True), DEVICES))
    got = []
    stats = receive(theirs, lambda *a: got.append(a), timeout=2.0)
    assert got == [({}, bytearray(4 * PAGE_SIZE), {})] and stats["pages_per_round"] == [4]
    assert session.read_result(ours, "test")["ok"] is True


@pytest.mark.parametrize("records, problem", [
    ((mem(0),), "starts with migration/begin"),
    ((begin(protocol=session.PROTOCOL + 1),), f"protocol {session.PROTOCOL + 1} is newer"),
    ((begin(protocol=session.PROTOCOL - 1),), f"protocol {session.PROTOCOL - 1} is older"),
    ((begin(page_size=8192),), "page size 8192"),
    ((begin(pages=1 << 30),), "pages of RAM: expected 1 .. 256"),
    ((begin(page_count=True),), "field 'page_count' is True, expected int"),
    ((begin(), mem(4)), "page entry 0 \\(page 0x4\\) is outside the guest's RAM"),
    ((begin(), mem(1, enc=S.PageEncoding.XBZRLE)), "page 0x1.* XBZRLE delta, but no full copy of the page arrived"),
    ((begin(), mem(0, 1), rnd(1, 3)), "round 1 of 3 pages; received round 1 of 2"),
    ((begin(), mem(0, 1, 2, 3), rnd(2, 4)), "says round 2"),
    ((begin(), mem(0, 1, 2), rnd(1, 3, final=True), DEVICES), "page 0x3 .* never arrived"),
    ((begin(), mem(0, 1, 2, 3), rnd(1, 4)), "END before the final round"),
    ((begin(), mem(0, 1, 2, 3), DEVICES), "device state before the final round"),
    ((begin(), mem(0, 1, 2, 3), rnd(1, 4, final=True), mem(0)), "pages after the final round"),
    ((begin(), S.VcpuRecord(0, {})), "VcpuRecord record has no place"),
])
def test_malformed_session_is_refused(records, problem):
    err, answer = feed(crafted(*records), max_memory=PAGE_SIZE * 256)
    assert isinstance(err, MigrationStreamError)
    assert re.search(problem, str(err)), str(err)
    assert answer["error"] == str(err)


def test_truncated_stream_is_refused():
    data = crafted(begin(), mem(0, 1, 2, 3), rnd(1, 4, final=True), DEVICES)
    err, _ = feed(data[:-30])
    assert "truncated" in str(err)


def test_source_hears_why_the_receiver_refused(make_vm):
    vm = make_vm(4096)                                   # 16 MiB, more than the socket buffers
    dest = Destination(max_memory=1 << 20)
    with pytest.raises(MigrationError, match=r"4096 pages of RAM: expected 1 \.\. 256"):
        migrate(vm, dest.address)
    dest.join()
    assert dest.got is None and "4096 pages of RAM" in str(dest.error)
    assert_runs_on(vm, 0)


# --- a destination that builds its VM when the stream begins -------------------------

class Built:
    """What prepare() built and whether discard() dropped it."""

    def __init__(self):
        self.ram = None
        self.configs = []
        self.discarded = 0

    def prepare(self, config, size):
        self.configs.append(config)
        self.ram = bytearray(size)
        return self.ram

    def discard(self):
        self.discarded += 1


def test_pages_are_written_into_the_destinations_ram_as_they_arrive():
    built = Built()
    page = bytes(range(256)) * 16
    ours, theirs = socket.socketpair()
    ours.sendall(crafted(begin(config={"k": 1}), S.MemoryRecord([S.Page(2, S.PageEncoding.RAW, page)]),
                         mem(0, 1, 3), rnd(1, 4, final=True), DEVICES))
    got = []
    receive(theirs, lambda *a: got.append(a), prepare=built.prepare, discard=built.discard, timeout=2.0)
    assert built.configs == [{"k": 1}] and built.discarded == 0
    assert built.ram == bytes(2 * PAGE_SIZE) + page + bytes(PAGE_SIZE)
    assert session.read_result(ours, "test")["ok"] is True


@pytest.mark.parametrize("records, cut", [
    ((begin(), mem(0, 1)), 10),                                  # dropped mid-stream
    ((begin(), mem(0, 1, 7)), 0),                                # a page outside RAM
    ((begin(), mem(0, 1, 2, 3), rnd(1, 4, final=True)), 0),     # END before the devices
])
def test_a_refused_stream_discards_what_prepare_built_once(records, cut):
    built = Built()
    data = crafted(*records)
    err, answer = feed(data[:len(data) - cut], prepare=built.prepare, discard=built.discard)
    assert built.discarded == 1 and answer["error"] == str(err)


def test_a_destination_that_cannot_build_the_vm_refuses_it():
    def prepare(config, size):
        raise OSError("no such kernel")
    discarded = []
    err, answer = feed(crafted(begin(), mem(0, 1, 2, 3)), prepare=prepare, discard=lambda: discarded.append(1))
    assert "the VM cannot be built here: no such kernel" in str(err) and not discarded
