"""Live migration, source side: pre-copy rounds over TCP, then stop-and-copy.

Responsibility: move a running VM to a receiver (pyvmm.migrate.receiver) the way
Clark et al. (NSDI 2005) and QEMU do. Round 1 sends every page while the guest runs;
each further round sends the pages the dirty log says were written meanwhile. After
each round the remaining dirty set is priced with the bandwidth measured in that
round; when it would take no longer than ``max_downtime`` (default 0.3 s, QEMU's
default downtime-limit) or after ``max_rounds`` rounds (default 5, the limit of Xen's
libxc save, tools/libs/guest/xg_sr_save.c), the VM is paused, the last dirty pages
and the devices are sent, and the source waits for the destination's answer.

The VM is reached through the ``SourceVm`` protocol below (the Machine implements
it; tests use a fake whose RAM a thread writes). The wire conversation is
pyvmm.migrate.session's.

Invariants:
- The destination gets every page at least once, and after the final round each
  page holds the bytes it had when ``pause()`` returned: a page the guest writes
  while it is being sent is in the next dirty log, and the final round sends the
  union of the last two dirty logs (the one that decided to stop, and the one read
  after the pause).
- ``migrate`` returns only after the destination said it has taken the VM; the
  source VM then stays paused (the caller ends it). On any failure (connection
  refused, dropped or cut, a silent peer, a refusal, an error of the VM itself, ^C)
  the VM is resumed if it was paused, dirty logging stops, the socket is closed,
  and MigrationError says why; the guest runs on as if nothing had happened.
- The one window where both sides may run: the destination took the VM and its
  answer never arrived; the source then resumes (a duplicate, never a loss).
"""

import socket
import time
from array import array
from typing import Protocol

from pyvmm.errors import MigrationError
from pyvmm.migrate import session
from pyvmm.migrate.dirty_scan import DirtyScanner
from pyvmm.migrate import stream
from pyvmm.mm.layout import PAGE_SIZE

DEFAULT_MAX_DOWNTIME = 0.300     # seconds; QEMU's default downtime-limit (300 ms)
DEFAULT_MAX_ROUNDS = 5           # Xen libxc: 5 pre-copy iterations, then stop-and-copy
_ENTRY_BYTES = stream.ENTRY_BYTES   # a MEMORY page entry's pfn, encoding and length
BATCH_PAGES = 512                # pages a MEMORY record (2 MiB of raw pages at most)
_ZERO_PAGE = bytes(PAGE_SIZE)


class SourceVm(Protocol):
    """What pre-copy needs from a running VM. The guest keeps running (on another
    thread) between these calls, except between ``pause()`` and ``resume()``."""

    memory: memoryview       # guest RAM, ``page_count * PAGE_SIZE`` bytes, read while the guest runs
    page_count: int

    def start_dirty_log(self) -> None:
        """Start recording written pages (a page written later shows in the next read)."""

    def read_dirty_log(self) -> bytes:
        """Bitmap of ceil(page_count / 8) bytes, bit n (LSB first) = page n written
        since the last read (or since start_dirty_log); reading clears it."""

    def stop_dirty_log(self) -> None:
        """Stop recording (write tracking costs the guest); called when migration ends."""

    def pause(self) -> None:
        """Stop the guest; when this returns no guest write is in flight."""

    def resume(self) -> None:
        """Let the guest run again (after a failed migration)."""

    def save_devices(self) -> dict:
        """Device and vCPU state as plain values (stream.encode_value's kinds); paused."""

    def config(self) -> dict:
        """The VM's configuration as plain values, for the destination to build it."""


def _mbps(nbytes, seconds):
    return round(nbytes / seconds / 1e6, 2) if seconds > 0 else None


def format_progress(p):
    """One line for a progress display, from a progress dict ``migrate`` hands out."""
    rate = "-" if p["bandwidth_mbps"] is None else f"{p['bandwidth_mbps']:.1f} MB/s"
    dirty = "-" if p["dirty_rate_mbps"] is None else f"{p['dirty_rate_mbps']:.2f} MB/s"
    return (f"round {p['round']}: sent {p['pages']} pages ({p['bytes'] / 2**20:.1f} MiB) at {rate}; "
            f"{p['dirty_pages']} dirty (dirty rate {dirty}); expected downtime "
            f"{p['expected_downtime_ms']:.1f} ms")


class _CountingSink:
    """The socket as StreamWriter's sink, counting the bytes that went out."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = 0

    def sendall(self, data):
        self.sock.sendall(data)
        self.sent += len(data)


class _PreCopy:
    def __init__(self, vm, sock, peer, max_downtime, max_rounds, max_bandwidth, xbzrle, progress):
        self.vm, self.sock, self.peer = vm, sock, peer
        self.max_downtime, self.max_rounds = max_downtime, max_rounds
        self.max_bandwidth, self.progress = max_bandwidth, progress
        self.pages = vm.page_count
        self.ram = memoryview(vm.memory).cast("B")
        if len(self.ram) != self.pages * PAGE_SIZE:
            raise MigrationError(f"source VM: memory of {len(self.ram)} bytes is not page_count "
                                 f"{self.pages} x {PAGE_SIZE}")
        self.scanner = DirtyScanner()
        self.last_sent = bytearray(len(self.ram)) if xbzrle else None   # pages as the destination has them
        self.sink = _CountingSink(sock)
        self.writer = None
        self.round = 0
        self.phase = "connect"
        self.paused = self.dirty_logging = False
        self.last_read = None          # time.monotonic() of the last dirty-log read
        self.stats = {"status": "running", "peer": peer, "page_count": self.pages,
                      "max_downtime_ms": max_downtime * 1e3, "max_rounds": max_rounds,
                      "xbzrle": bool(xbzrle), "rounds": 0, "pages_per_round": [],
                      "bytes_per_round": [], "seconds_per_round": [], "converged": None,
                      "progress": []}

    # --- one round -----------------------------------------------------------------

    def _send_pages(self, pfns, throttle):
        """Send ``pfns`` (an array('Q')) in MEMORY records; (wire bytes, seconds) of the round."""
        start, t0 = self.sink.sent, time.monotonic()
        delta = self.last_sent is not None and self.round > 1    # round 1 is every page's first copy
        for i in range(0, len(pfns), BATCH_PAGES):
            batch = pfns[i:i + BATCH_PAGES]
            self.writer.write(self._deltas(batch) if delta else self._copies(batch))
            if throttle and self.max_bandwidth:
                ahead = (self.sink.sent - start) / self.max_bandwidth - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        return self.sink.sent - start, time.monotonic() - t0

    def _copies(self, pfns):
        """A MEMORY record of ``pfns`` as ZERO or RAW pages (one copy each: the guest may
        write on), gathered by the scanner; the last-sent copy follows when kept."""
        record = stream.MemoryRecord.batch(pfns, *self.scanner.gather_pages(self.ram, pfns))
        last = self.last_sent
        if last is not None:
            for pfn, enc, page in record.entries():
                o = pfn * PAGE_SIZE
                last[o:o + PAGE_SIZE] = page if enc == stream.PageEncoding.RAW else _ZERO_PAGE
        return record

    def _deltas(self, pfns):
        """A MEMORY record of ``pfns`` with XBZRLE deltas against the last-sent copy where shorter."""
        ram, last, pages = self.ram, self.last_sent, []
        for pfn in pfns:
            o = pfn * PAGE_SIZE
            data = ram[o:o + PAGE_SIZE].tobytes()
            pages.append(stream.encode_page(pfn, data, last[o:o + PAGE_SIZE], self.scanner))
            last[o:o + PAGE_SIZE] = data
        return stream.MemoryRecord(pages)

    def _round(self, pfns, final):
        self.round += 1
        nbytes, seconds = self._send_pages(pfns, throttle=not final)
        self.writer.write(session.control(session.ROUND, round=self.round, pages=len(pfns), final=final))
        s = self.stats
        s["rounds"] = self.round
        s["pages_per_round"].append(len(pfns))
        s["bytes_per_round"].append(nbytes)
        s["seconds_per_round"].append(round(seconds, 6))
        return nbytes, seconds

    def _dirty_bitmap(self):
        bitmap = self.vm.read_dirty_log()
        want = -(-self.pages // 8)
        if len(bitmap) != want:
            raise MigrationError(f"source VM: dirty bitmap of {len(bitmap)} bytes for {self.pages} "
                                 f"pages (expected {want})")
        value = int.from_bytes(bitmap, "little")
        if value >> self.pages:
            raise MigrationError(f"source VM: dirty bitmap marks pages beyond page_count {self.pages}")
        return value

    def _pfns(self, bits):
        return self.scanner.dirty_pages(bits.to_bytes(-(-self.pages // 8), "little"))

    # --- the whole migration -------------------------------------------------------

    def run(self):
        t_start = time.monotonic()
        self.phase = "stream header"
        self.writer = stream.StreamWriter(self.sink)
        self.writer.write(session.control(session.BEGIN, protocol=session.PROTOCOL, page_size=PAGE_SIZE,
                                          page_count=self.pages, config=self.vm.config()))
        self.phase = "pre-copy"
        self.vm.start_dirty_log()
        self.dirty_logging = True
        self.last_read = time.monotonic()
        pfns = array("Q", range(self.pages))
        while True:
            nbytes, seconds = self._round(pfns, final=False)
            t_read = time.monotonic()
            bits = self._dirty_bitmap()
            pfns = self._pfns(bits)
            # Round 1 covers all RAM, zero pages too; a page the guest wrote is full (or
            # a delta the size later rounds show): price it at a raw page until measured.
            per_page = (nbytes / self.stats["pages_per_round"][-1] if self.round > 1
                        else PAGE_SIZE + _ENTRY_BYTES)
            bandwidth = nbytes / seconds if seconds > 0 else None
            expected = len(pfns) * per_page / bandwidth if bandwidth else 0.0
            since, self.last_read = t_read - self.last_read, t_read
            self._report(nbytes, seconds, len(pfns), since, expected)
            if expected <= self.max_downtime or self.round >= self.max_rounds:
                self.stats["converged"] = expected <= self.max_downtime
                self.stats["expected_downtime_ms"] = round(expected * 1e3, 3)
                break

        self.phase = "stop-and-copy"
        t_pause = time.monotonic()
        self.vm.pause()
        self.paused = True
        self._round(self._pfns(bits | self._dirty_bitmap()), final=True)
        self.phase = "devices"
        self.writer.write(session.control(session.DEVICES, devices=self.vm.save_devices()))
        self.writer.end()
        self.phase = "waiting for the destination's answer"
        answer = session.read_result(self.sock, self.peer)
        if not answer["ok"]:
            raise MigrationError(f"the destination refused the VM: {answer['error']}")
        t_end = time.monotonic()
        s = self.stats
        s.update(status="completed", downtime_ms=round((t_end - t_pause) * 1e3, 3),
                 total_time_s=round(t_end - t_start, 6), total_pages=sum(s["pages_per_round"]),
                 total_bytes=self.sink.sent,
                 bandwidth_mbps=_mbps(sum(s["bytes_per_round"]), sum(s["seconds_per_round"])))
        return s

    def _report(self, nbytes, seconds, dirty, since, expected):
        p = {"round": self.round, "pages": self.stats["pages_per_round"][-1], "bytes": nbytes,
             "seconds": round(seconds, 6), "bandwidth_mbps": _mbps(nbytes, seconds),
             "dirty_pages": dirty, "dirty_rate_mbps": _mbps(dirty * PAGE_SIZE, since),
             "expected_downtime_ms": round(expected * 1e3, 3)}
        self.stats["progress"].append(p)
        if self.progress is not None:
            self.progress(p)


def _connect(dest, timeout):
    if isinstance(dest, socket.socket):
        return dest, session.peer_name(dest)
    host, port = session.parse_address(dest)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise MigrationError(f"cannot connect to the migration receiver at {host}:{port}: {e}") from None
    return sock, f"{host}:{port}"


def migrate(vm, dest, *, max_downtime=DEFAULT_MAX_DOWNTIME, max_rounds=DEFAULT_MAX_ROUNDS,
            max_bandwidth=None, xbzrle=False, progress=None, timeout=30.0):
    """Live-migrate ``vm`` (a SourceVm) to the receiver at ``dest`` ("HOST:PORT", a
    (host, port) pair, or a connected socket, which this call closes).

    ``max_downtime`` (s) and ``max_rounds`` decide when pre-copy stops; ``max_bandwidth``
    (bytes/s, None: as fast as the link) caps pre-copy rounds, not the stop-and-copy;
    ``xbzrle`` sends re-sent pages as deltas (keeping a copy of RAM as last sent);
    ``progress(p)`` is called after every pre-copy round (see ``format_progress``);
    ``timeout`` (s) bounds the connect and every send or wait for the destination.

    Returns the stats (JSON-able): status, rounds, pages_per_round, bytes_per_round,
    seconds_per_round, converged, expected_downtime_ms, downtime_ms, total_time_s,
    total_pages, total_bytes, bandwidth_mbps, progress. The VM is left paused: the
    caller ends it. Raises MigrationError (with ``.stats``) when anything fails; the VM
    then runs on here.
    """
    if not max_downtime >= 0 or not isinstance(max_rounds, int) or max_rounds < 1:
        raise MigrationError(f"migration limits: max_downtime {max_downtime!r} must be >= 0 s and "
                             f"max_rounds {max_rounds!r} an integer >= 1")
    if max_bandwidth is not None and not max_bandwidth > 0:
        raise MigrationError(f"migration max_bandwidth {max_bandwidth!r}: must be > 0 bytes/s or None")
    sock, peer = _connect(dest, timeout)
    job = None
    try:
        session.tune(sock, timeout)
        job = _PreCopy(vm, sock, peer, max_downtime, max_rounds, max_bandwidth, xbzrle, progress)
        return job.run()
    except BaseException as e:
        reason = _undo(vm, job, e)
        if isinstance(e, OSError) and not isinstance(e, TimeoutError) and job is not None:
            reason = _refusal(sock, peer) or reason
        if not isinstance(e, Exception):
            raise
        where = f" in round {job.round} ({job.phase})" if job else ""
        err = MigrationError(f"migration to {peer} failed{where}: {reason}; the VM runs on here")
        err.stats = dict(job.stats if job else {}, status="failed", error=str(err))
        raise err from e
    finally:
        if job is not None and job.dirty_logging:
            vm.stop_dirty_log()
        sock.close()


def _refusal(sock, peer):
    """The destination's reason, when it refused the VM and closed before we were done
    sending (the answer may still wait in our receive buffer); else None."""
    try:
        sock.settimeout(1.0)
        answer = session.read_result(sock, peer)
    except (OSError, MigrationError):
        return None
    return None if answer["ok"] else f"the destination refused the VM: {answer['error']}"


def _undo(vm, job, error):
    """Resume the VM if pre-copy paused it; the reason for the failure, as text."""
    reason = str(error) or type(error).__name__
    if isinstance(error, TimeoutError):
        reason = f"the destination went silent for longer than the timeout ({reason})"
    if job is not None and job.paused:
        job.paused = False
        try:
            vm.resume()
        except Exception as e:     # the VM cannot run here either, or runs without a part: say so, loudly
            reason += f"; and on resuming the source VM: {e}"
    return reason
