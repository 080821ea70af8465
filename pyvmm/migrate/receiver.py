"""Live migration, destination side: take one incoming VM from a pre-copy source.

Responsibility: listen (or use a given socket), accept one connection, read the
session (pyvmm.migrate.session) with the checks of pyvmm.migrate.stream, write the
pages as they arrive into the guest RAM the destination gives (``prepare``, called
when the begin record names the config and RAM size; by default a bytearray), and
only after END and every check hand the config, that RAM and the device map to
``on_complete(config, ram, devices)``; then answer the source.

Pages go straight into that RAM during pre-copy (pyvmm.migrate.dirty_scan's
``scatter_pages``, in C when built): nothing is staged or copied after the stream
ends, so the destination's part of the downtime is the final round and the devices.

Invariants:
- Nothing is handed to ``on_complete`` before the whole stream checked out: the begin
  record first (protocol as ours, our page size, a RAM size within ``max_memory``),
  every page inside RAM, an XBZRLE page only on a page received before, round
  markers numbered 1, 2, ... whose page counts match what came, one final round, the
  device map after it, END last, and every page received at least once. A stream that
  breaks any of these, is corrupted, truncated, or whose connection drops or goes
  silent for ``timeout`` seconds is refused with MigrationStreamError /
  MigrationError, the RAM is dropped (``discard()`` is called once when ``prepare``
  had built it), and ``on_complete`` is never called.
- The RAM ``prepare`` returns must read as zeros wherever the source's first round
  says ZERO (a ZERO entry for a page never received is not written).
- The source hears ``ok`` only after ``on_complete`` returned; a refusal (with the
  reason) is sent when the connection still works. If ``on_complete`` raised, the
  source is told no and resumes its VM (and ``discard()`` is called).
"""

import socket
import time

from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate import session
from pyvmm.migrate.dirty_scan import DirtyScanner
from pyvmm.migrate.stream import DeviceRecord, EndRecord, MemoryRecord, StreamReader
from pyvmm.mm.layout import PAGE_SIZE

DEFAULT_MAX_MEMORY = 64 << 30      # bytes; a begin record asking for more is refused


class _Incoming:
    """The VM as received so far, and the checks that decide whether it is whole."""

    def __init__(self, name, max_memory, prepare):
        self.name = name
        self.max_memory = max_memory
        self.prepare = prepare
        self.prepared = False          # prepare() built the RAM: discard() it on failure
        self.ram = None
        self.config = None
        self.devices = None
        self.round = 0                 # rounds closed by a marker
        self.in_round = 0              # pages since the last marker
        self.final = False
        self.pages_per_round = []

    def fail(self, where, problem):
        raise MigrationStreamError(f"{where}: {problem}")

    def apply(self, record, where):
        if self.ram is None:
            return self._begin(record, where)
        if isinstance(record, MemoryRecord):
            return self._memory(record, where)
        if isinstance(record, DeviceRecord) and record.name == session.ROUND:
            return self._round(record, where)
        if isinstance(record, DeviceRecord) and record.name == session.DEVICES:
            if not self.final or self.devices is not None:
                self.fail(where, "device state before the final round, or twice")
            fields = session.control_fields(record, where, {"devices": dict})
            self.devices = fields["devices"]
            return None
        if isinstance(record, EndRecord):
            return self._end(where)
        what = record.name if isinstance(record, DeviceRecord) else type(record).__name__
        self.fail(where, f"a {what} record has no place in a live migration")

    def _begin(self, record, where):
        if not isinstance(record, DeviceRecord) or record.name != session.BEGIN:
            self.fail(where, f"a live migration starts with {session.BEGIN}, not "
                             f"{getattr(record, 'name', type(record).__name__)}")
        f = session.control_fields(record, where, {"protocol": int, "page_size": int,
                                                   "page_count": int, "config": dict})
        if f["protocol"] > session.PROTOCOL:
            self.fail(where, f"migration protocol {f['protocol']} is newer than this pyvmm "
                             f"speaks (up to {session.PROTOCOL}); upgrade the receiver")
        if f["protocol"] < session.PROTOCOL:
            self.fail(where, f"migration protocol {f['protocol']} is older than this pyvmm "
                             f"speaks ({session.PROTOCOL}); migrate between equal pyvmm versions")
        if f["page_size"] != PAGE_SIZE:
            self.fail(where, f"page size {f['page_size']}, this receiver uses {PAGE_SIZE}")
        if not 0 < f["page_count"] * PAGE_SIZE <= self.max_memory:
            self.fail(where, f"{f['page_count']} pages of RAM: expected 1 .. "
                             f"{self.max_memory // PAGE_SIZE} (max_memory {self.max_memory} bytes)")
        self.page_count = f["page_count"]
        self.config = f["config"]
        self.ram = self._build_ram(where, self.page_count * PAGE_SIZE)
        self.received = bytearray(self.page_count)      # 1 once a page arrived
        self.scanner = DirtyScanner()

    def _build_ram(self, where, size):
        if self.prepare is None:
            try:
                return bytearray(size)
            except MemoryError:
                raise MigrationError(f"{where}: cannot allocate {size // PAGE_SIZE} pages of guest RAM") from None
        try:
            ram = self.prepare(self.config, size)
        except (MigrationError, MigrationStreamError) as e:
            raise type(e)(f"{where}: the VM cannot be built here: {e}") from e
        except Exception as e:
            raise MigrationError(f"{where}: the VM cannot be built here: {e}") from e
        self.prepared = True
        view = memoryview(ram).cast("B")
        if view.readonly or len(view) != size:
            raise MigrationError(f"{where}: the destination's guest RAM is {len(view)} bytes "
                                 f"(readonly={view.readonly}), the source's {size}")
        return view

    def _memory(self, record, where):
        if self.final:
            self.fail(where, "pages after the final round")
        try:
            self.scanner.scatter_pages(self.ram, *record.arrays(), self.received)
        except MigrationStreamError as e:
            self.fail(where, str(e))
        self.in_round += len(record)

    def _round(self, record, where):
        f = session.control_fields(record, where, {"round": int, "pages": int, "final": bool})
        if self.final:
            self.fail(where, f"round marker {f['round']} after the final round")
        if f["round"] != self.round + 1 or f["pages"] != self.in_round:
            self.fail(where, f"round marker says round {f['round']} of {f['pages']} pages; "
                             f"received round {self.round + 1} of {self.in_round} pages")
        self.round += 1
        self.pages_per_round.append(self.in_round)
        self.in_round = 0
        self.final = f["final"]
        return f

    def _end(self, where):
        if self.devices is None:
            self.fail(where, "END before the final round and the device state")
        missing = self.received.find(0)
        if missing >= 0:
            self.fail(where, f"END, but page {missing:#x} (and maybe others) never arrived")


def open_listener(where):
    """A listening TCP socket on "HOST:PORT" (port 0 picks a free port)."""
    host, port = session.parse_address(where)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
    except OSError as e:
        raise MigrationError(f"cannot listen for a migration on {host}:{port}: {e}") from None
    return listener


def _accept(where, accept_timeout):
    """(connected socket, peer name); a listener made here is closed after the accept."""
    own = None
    if not isinstance(where, socket.socket):
        where = own = open_listener(where)
    if not where.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return where, session.peer_name(where)
    where.settimeout(accept_timeout)
    try:
        conn, addr = where.accept()
    except TimeoutError:
        raise MigrationError(f"no migration source connected to {'%s:%s' % where.getsockname()[:2]} "
                             f"within {accept_timeout} s") from None
    finally:
        if own is not None:
            own.close()
    return conn, session.peer_name(conn)


def receive(where, on_complete, *, prepare=None, discard=None, timeout=30.0, accept_timeout=None,
            max_memory=DEFAULT_MAX_MEMORY, progress=None):
    """Take one VM migrating in. ``where``: "HOST:PORT" to listen on, a listening
    socket (one connection is accepted), or a connected socket. ``timeout`` (s)
    bounds each wait for the source once connected; ``accept_timeout`` the wait for
    it to connect (None: for ever). ``progress(round, pages)`` is called after every
    round marker. ``prepare(config, ram_size)`` (optional) builds the destination when
    the begin record arrives and returns its guest RAM, a writable buffer of
    ``ram_size`` bytes that reads as zeros, which the pages are written into;
    ``discard()`` (optional) is called once if the VM is then not taken.
    ``on_complete(config, ram, devices)`` gets the whole VM.

    Returns stats (JSON-able): status, peer, rounds, pages_per_round, pages, bytes,
    total_time_s, stream_s (connection to END), start_s (``on_complete``'s time).
    Raises MigrationError / MigrationStreamError when the VM was not taken; then
    nothing was handed to ``on_complete``.
    """
    conn, peer = _accept(where, accept_timeout)
    t0 = time.monotonic()
    name = f"migration from {peer}"
    vm = _Incoming(name, max_memory, prepare)
    try:
        session.tune(conn, timeout)
        reader = StreamReader(conn, name)
        for index, record in enumerate(reader):
            marker = vm.apply(record, f"{name}: record {index} (ending at offset {reader.offset})")
            if marker and progress is not None:
                progress(marker["round"], marker["pages"])
        t_stream = time.monotonic()
        try:
            on_complete(vm.config, vm.ram, vm.devices)
        except Exception as e:
            raise MigrationError(f"{name}: the VM arrived whole but could not be started here: {e}") from e
        if vm.prepared:                # the destination owns its RAM: let go of our view
            vm.ram.release()
    except BaseException as e:
        _refuse(conn, vm, e, discard)
        if not isinstance(e, Exception):
            raise
        if isinstance(e, TimeoutError):
            raise MigrationError(f"{name}: the source went silent for more than {timeout} s") from e
        if isinstance(e, OSError):
            raise MigrationError(f"{name}: the connection dropped: {e}") from e
        raise
    pages = sum(vm.pages_per_round)
    try:
        session.send_result(conn, True, pages=pages, rounds=vm.round)
    except OSError as e:
        raise MigrationError(f"{name}: the VM was started here but the source could not be told "
                             f"({e}); it resumes its copy: stop one of the two") from e
    finally:
        conn.close()
    return {"status": "completed", "peer": peer, "rounds": vm.round,
            "pages_per_round": vm.pages_per_round, "pages": pages, "bytes": reader.offset,
            "total_time_s": round(time.monotonic() - t0, 6), "stream_s": round(t_stream - t0, 6),
            "start_s": round(time.monotonic() - t_stream, 6)}


def _refuse(conn, vm, error, discard):
    """Drop what was received and tell the source why, if it still listens."""
    prepared, vm.prepared = vm.prepared, False
    if isinstance(vm.ram, memoryview):
        vm.ram.release()
    vm.ram = vm.devices = vm.config = None
    if prepared and discard is not None:
        discard()
    try:
        conn.settimeout(1.0)
        session.send_result(conn, False, error=str(error) or type(error).__name__,
                            pages=sum(vm.pages_per_round), rounds=vm.round)
    except OSError:
        pass
    finally:
        conn.close()
