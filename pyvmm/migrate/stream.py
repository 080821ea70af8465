"""The migration stream: a VM as a versioned sequence of typed, checksummed records.

Responsibility: write and read the byte format specified in docs/migration-stream.md
(the spec is the authority; this module follows it). It knows the framing (header,
record header, CRC chain, END) and the payload layout of each record type; it does not
know how a component builds its state: components hand in plain values (ints, bytes,
str, bool, None, lists, dicts with str keys), and get the same values back.

Invariants:
- A stream is a header, records, and exactly one END record last. The reader yields a
  record only after its length, CRC and payload layout have been checked, and it
  raises MigrationStreamError (naming the stream, the record index and type, and the
  byte offset) for a newer version, a bad magic, a truncated stream, a CRC mismatch,
  an unknown record type or a malformed payload. ``read_stream`` reads and checks the
  whole stream before returning anything, so a restore built on it changes nothing
  when the stream is bad.
- Each record's CRC-32 is seeded with the previous record's CRC (the header's for the
  first), so a record that is dropped, repeated or moved breaks the chain.
- MEMORY records travel as arrays (``MemoryRecord.batch``): a writer sends the page
  data buffer as it is (no join, no Page object a page) and a reader hands out
  ``entries()`` over its one payload buffer. The arrays are in host byte order, which
  is the wire's little-endian on the x86 hosts pyvmm runs on.
- A stream of a version older than OLDEST_VERSION is refused, as a newer one than
  FORMAT_VERSION is; a version-2 stream is read as it was written (its record types:
  a VIF record in it is an unknown type).
- Reads are incremental: the reader asks the source for exactly the bytes it needs
  next (``read(n)`` of a file, or ``recv`` of a socket), and never more than
  MAX_PAYLOAD bytes for one record, whatever a corrupted length says.
"""

import struct
import zlib
from array import array
from dataclasses import dataclass
from enum import IntEnum

from pyvmm.errors import MigrationStreamError
from pyvmm.migrate.dirty_scan import DirtyScanner
from pyvmm.mm.layout import PAGE_SIZE

MAGIC = b"\x89PYVMMS\n"     # high bit and newline catch 7-bit and text-mode damage
FORMAT_VERSION = 3          # 2: MEMORY entries as arrays; 3: the VIF record (docs/migration-stream.md, "Versions")
OLDEST_VERSION = 2          # the oldest version a reader still takes
MAX_PAYLOAD = 64 << 20       # bytes; a longer record is refused before it is read
MAX_DEPTH = 32               # nesting of lists/maps in a state value

_HEADER = struct.Struct("<8sI")         # magic, version; then u32 crc32 of these 12 bytes
_U32 = struct.Struct("<I")
_REC = struct.Struct("<II")             # type, payload length
ENTRY_BYTES = 13                       # a MEMORY page entry: u64 pfn, u8 encoding, u32 length
_JOIN_BELOW = 64 << 10                  # records up to this size go out in one write
_ZERO_PAGE = bytes(PAGE_SIZE)


class RecordType(IntEnum):
    END = 0
    VCPU = 1
    MEMORY = 2
    DEVICE = 3
    GRANT_TABLE = 4
    EVENT_CHANNELS = 5
    XENSTORE = 6
    DISK = 7
    VIF = 8             # from version 3


class PageEncoding(IntEnum):
    RAW = 0       # PAGE_SIZE bytes
    ZERO = 1      # no bytes: the page is all zeros
    XBZRLE = 2    # a delta against the page as last sent (pyvmm.migrate.dirty_scan)


# --- records, as the reader returns them and the writer takes them ---------------

@dataclass(frozen=True)
class Page:
    pfn: int
    encoding: PageEncoding
    data: bytes = b""


@dataclass(frozen=True)
class VcpuRecord:
    vcpu_id: int
    state: dict


class MemoryRecord:
    """A batch of pages. ``MemoryRecord(pages)`` takes Page objects; ``MemoryRecord.batch``
    takes the arrays the wire carries (no object a page), which is how the reader
    returns a record and how pre-copy and snapshots write one. ``pages`` gives Page
    objects either way; ``entries()`` gives (pfn, encoding number, data) without them."""

    __slots__ = ("_pages", "_wire")

    def __init__(self, pages=()):
        self._pages = tuple(pages)
        self._wire = None

    @classmethod
    def batch(cls, pfns, encodings, lengths, data):
        """From ``pfns`` (array('Q')), ``encodings`` (bytes, a PageEncoding number each),
        ``lengths`` (array('I'), each page's data length) and ``data`` (the pages' data
        one after another); checked when written."""
        record = cls.__new__(cls)
        record._pages = None
        record._wire = (pfns, bytes(encodings), lengths, data)
        return record

    @property
    def pages(self):
        if self._pages is None:
            self._pages = tuple(Page(pfn, PageEncoding(enc), bytes(data)) for pfn, enc, data in self.entries())
        return self._pages

    def entries(self):
        """(pfn, encoding number, data as a buffer) for each page, in order."""
        if self._wire is None:
            return ((p.pfn, int(p.encoding), p.data) for p in self._pages)
        return _batch_entries(*self._wire)

    def arrays(self):
        """(pfns: array('Q'), encodings: bytes, lengths: array('I'), data): the batch as
        the wire carries it (built from the pages for a record made of Page objects)."""
        if self._wire is None:
            pages = self._pages
            return (array("Q", (p.pfn for p in pages)), bytes(int(p.encoding) for p in pages),
                    array("I", (len(p.data) for p in pages)), b"".join(bytes(p.data) for p in pages))
        return self._wire

    def __len__(self):
        return len(self._pages) if self._wire is None else len(self._wire[0])

    def __eq__(self, other):
        return isinstance(other, MemoryRecord) and self.pages == other.pages

    __hash__ = None

    def __repr__(self):
        return f"MemoryRecord({len(self)} pages)"


def _batch_entries(pfns, encodings, lengths, data):
    view, off = memoryview(data), 0
    for pfn, enc, n in zip(pfns, encodings, lengths):
        yield pfn, enc, view[off:off + n]
        off += n


@dataclass(frozen=True)
class DeviceRecord:
    name: str
    blob: bytes


@dataclass(frozen=True)
class GrantTableRecord:
    domid: int
    state: dict


@dataclass(frozen=True)
class EventChannelsRecord:
    domid: int
    state: dict


@dataclass(frozen=True)
class XenstoreNode:
    path: str
    value: bytes
    perms: str = "n0"      # xenstore permission string, as XS_GET_PERMS returns it


@dataclass(frozen=True)
class XenstoreRecord:
    nodes: tuple


@dataclass(frozen=True)
class DiskRecord:
    state: dict


@dataclass(frozen=True)
class VifRecord:
    state: dict


@dataclass(frozen=True)
class EndRecord:
    pass


# --- state values: the self-describing encoding of component state ----------------

class _Kind(IntEnum):
    NONE, FALSE, TRUE, UINT, NINT, BYTES, STR, LIST, MAP = range(9)


def _put_str(out, text, width, what):
    raw = text.encode("utf-8")
    if len(raw) >= 1 << (8 * width):
        raise MigrationStreamError(f"{what} {text[:40]!r}... is {len(raw)} bytes, too long to write")
    out += len(raw).to_bytes(width, "little") + raw


def encode_value(value, out=None, depth=0):
    """Append the state-value encoding of ``value`` to ``out`` (a bytearray); return it."""
    out = bytearray() if out is None else out
    if depth > MAX_DEPTH:
        raise MigrationStreamError(f"state value nested deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(_Kind.NONE)
    elif value is True or value is False:
        out.append(_Kind.TRUE if value else _Kind.FALSE)
    elif isinstance(value, int):
        if 0 <= value < 1 << 64:
            out.append(_Kind.UINT)
            out += value.to_bytes(8, "little")
        elif -(1 << 63) <= value < 0:
            out.append(_Kind.NINT)
            out += value.to_bytes(8, "little", signed=True)
        else:
            raise MigrationStreamError(f"state value {value}: integers must fit in 64 bits")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(_Kind.BYTES)
        out += _U32.pack(len(value)) + bytes(value)
    elif isinstance(value, str):
        out.append(_Kind.STR)
        _put_str(out, value, 4, "state string")
    elif isinstance(value, (list, tuple)):
        out.append(_Kind.LIST)
        out += _U32.pack(len(value))
        for item in value:
            encode_value(item, out, depth + 1)
    elif isinstance(value, dict):
        out.append(_Kind.MAP)
        out += _U32.pack(len(value))
        for key, item in value.items():
            if not isinstance(key, str):
                raise MigrationStreamError(f"state map key {key!r}: keys must be str")
            _put_str(out, key, 2, "state map key")
            encode_value(item, out, depth + 1)
    else:
        raise MigrationStreamError(f"state value of type {type(value).__name__} cannot be written: "
                                   "use int, bytes, str, bool, None, list or dict")
    return out


class _Payload:
    """A cursor over one record's payload; every read is bounds-checked."""

    def __init__(self, data, where):
        self.data = data
        self.pos = 0
        self.where = where

    def fail(self, problem):
        raise MigrationStreamError(f"{self.where}: {problem} (payload offset {self.pos})")

    def take(self, n):
        if n > len(self.data) - self.pos:
            self.fail(f"payload ends early: {n} more bytes needed, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, width):
        return int.from_bytes(self.take(width), "little")

    def text(self, width, what):
        raw = self.take(self.uint(width))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8")

    def rest(self):
        return self.take(len(self.data) - self.pos)

    def done(self):
        if self.pos != len(self.data):
            self.fail(f"{len(self.data) - self.pos} bytes left over after the payload")

    def value(self, depth=0):
        if depth > MAX_DEPTH:
            self.fail(f"state value nested deeper than {MAX_DEPTH} levels")
        kind = self.uint(1)
        if kind == _Kind.NONE:
            return None
        if kind in (_Kind.FALSE, _Kind.TRUE):
            return kind == _Kind.TRUE
        if kind == _Kind.UINT:
            return self.uint(8)
        if kind == _Kind.NINT:
            v = int.from_bytes(self.take(8), "little", signed=True)
            if v >= 0:
                self.fail(f"negative integer field holds {v}")
            return v
        if kind == _Kind.BYTES:
            return bytes(self.take(self.uint(4)))
        if kind == _Kind.STR:
            return self.text(4, "state string")
        if kind == _Kind.LIST:
            return [self.value(depth + 1) for _ in range(self._count())]
        if kind == _Kind.MAP:
            out = {}
            for _ in range(self._count()):
                key = self.text(2, "state map key")
                out[key] = self.value(depth + 1)
            return out
        self.fail(f"unknown state value kind {kind}")

    def _count(self):
        n = self.uint(4)
        if n > len(self.data) - self.pos:      # every item takes at least one byte
            self.fail(f"count {n} is larger than the bytes left")
        return n

    def state_map(self):
        v = self.value()
        if not isinstance(v, dict):
            self.fail(f"state is a {type(v).__name__}, expected a map")
        return v


def decode_value(data):
    """The value ``encode_value`` wrote into ``data`` (which must hold exactly one)."""
    p = _Payload(bytes(data), "state value")
    v = p.value()
    p.done()
    return v


# --- payload layouts, one pair of functions a record type ------------------------

def _state(state, what):
    if not isinstance(state, dict):
        raise MigrationStreamError(f"{what}: state must be a dict, got {type(state).__name__}")
    return encode_value(state)


def _check_page(page, where):
    if page.encoding not in PageEncoding._value2member_map_:
        raise MigrationStreamError(f"{where}: page {page.pfn!r} has unknown encoding {page.encoding!r}")
    if not isinstance(page.pfn, int) or not 0 <= page.pfn < 1 << 64:
        raise MigrationStreamError(f"{where}: page number {page.pfn} does not fit in 64 bits")
    n = len(page.data)
    if page.encoding == PageEncoding.RAW and n != PAGE_SIZE:
        raise MigrationStreamError(f"{where}: raw page {page.pfn:#x} has {n} bytes, not {PAGE_SIZE}")
    if page.encoding == PageEncoding.ZERO and n:
        raise MigrationStreamError(f"{where}: zero page {page.pfn:#x} carries {n} bytes")
    if page.encoding == PageEncoding.XBZRLE and n > PAGE_SIZE:
        raise MigrationStreamError(f"{where}: XBZRLE delta of page {page.pfn:#x} is {n} bytes, "
                                   f"larger than a page")


def _id(value, width, what):
    if not isinstance(value, int) or not 0 <= value < 1 << (8 * width):
        raise MigrationStreamError(f"{what} {value!r} does not fit in {8 * width} bits")
    return value.to_bytes(width, "little")


def _check_batch(pfns, encodings, lengths, data_len, fail):
    """Refuse a page batch whose arrays disagree or break a page entry's rules."""
    if not len(pfns) == len(encodings) == len(lengths):
        fail(f"{len(pfns)} page numbers, {len(encodings)} encodings and {len(lengths)} lengths")
    total = 0
    for pfn, enc, n in zip(pfns, encodings, lengths):
        total += n
        if enc == PageEncoding.RAW:
            if n != PAGE_SIZE:
                fail(f"raw page {pfn:#x} has {n} bytes, not {PAGE_SIZE}")
        elif enc == PageEncoding.ZERO:
            if n:
                fail(f"zero page {pfn:#x} carries {n} bytes")
        elif enc == PageEncoding.XBZRLE:
            if n > PAGE_SIZE:
                fail(f"XBZRLE delta of page {pfn:#x} is {n} bytes, larger than a page")
        else:
            fail(f"page {pfn:#x} has unknown encoding {enc}")
    if total != data_len:
        fail(f"page lengths add up to {total} bytes, the data is {data_len}")


def _raise(problem):
    raise MigrationStreamError(f"MEMORY record: {problem}")


def _memory_parts(record):
    """[entry arrays, page data]: the MEMORY payload in two pieces (the data is not copied)."""
    if record._wire is None:
        pages = record._pages
        for page in pages:
            _check_page(page, "MEMORY record")
        pfns, encodings, lengths, data = record.arrays()
    else:
        pfns, encodings, lengths, data = record._wire
        if not (isinstance(pfns, array) and pfns.typecode == "Q" and isinstance(lengths, array)
                and lengths.typecode == "I"):
            _raise("page numbers must be array('Q') and lengths array('I')")
        _check_batch(pfns, encodings, lengths, len(data), _raise)
    return [_U32.pack(len(pfns)) + pfns.tobytes() + encodings + lengths.tobytes(), data]


def _decode_memory(p):
    n = p.uint(4)
    if n * ENTRY_BYTES > len(p.data) - p.pos:
        p.fail(f"{n} page entries need {n * ENTRY_BYTES} bytes, {len(p.data) - p.pos} left")
    pfns, lengths = array("Q"), array("I")
    pfns.frombytes(p.take(8 * n))
    encodings = bytes(p.take(n))
    lengths.frombytes(p.take(4 * n))
    data = memoryview(p.data)[p.pos:]
    p.pos = len(p.data)
    _check_batch(pfns, encodings, lengths, len(data), p.fail)
    return MemoryRecord.batch(pfns, encodings, lengths, data)


def _encode_xenstore(nodes):
    out = bytearray(_U32.pack(len(nodes)))
    for node in nodes:
        _put_str(out, node.path, 2, "xenstore path")
        out += _U32.pack(len(node.value)) + bytes(node.value)
        _put_str(out, node.perms, 2, "xenstore permissions")
    return out


def _decode_xenstore(p):
    nodes = []
    for _ in range(p.uint(4)):
        path = p.text(2, "xenstore path")
        value = bytes(p.take(p.uint(4)))
        nodes.append(XenstoreNode(path, value, p.text(2, "xenstore permissions")))
    return XenstoreRecord(tuple(nodes))


def _encode(record):
    """(RecordType, payload) for a record object; the payload is one buffer or, for
    MEMORY, a list of buffers to be sent one after another."""
    if isinstance(record, MemoryRecord):
        return RecordType.MEMORY, _memory_parts(record)
    if isinstance(record, VcpuRecord):
        return RecordType.VCPU, _id(record.vcpu_id, 4, "vCPU id") + _state(record.state, "VCPU record")
    if isinstance(record, DeviceRecord):
        out = bytearray()
        _put_str(out, record.name, 2, "device name")
        return RecordType.DEVICE, out + bytes(record.blob)
    if isinstance(record, GrantTableRecord):
        return RecordType.GRANT_TABLE, (_id(record.domid, 2, "domid")
                                        + _state(record.state, "GRANT_TABLE record"))
    if isinstance(record, EventChannelsRecord):
        return RecordType.EVENT_CHANNELS, (_id(record.domid, 2, "domid")
                                           + _state(record.state, "EVENT_CHANNELS record"))
    if isinstance(record, XenstoreRecord):
        return RecordType.XENSTORE, _encode_xenstore(record.nodes)
    if isinstance(record, DiskRecord):
        return RecordType.DISK, _state(record.state, "DISK record")
    if isinstance(record, VifRecord):
        return RecordType.VIF, _state(record.state, "VIF record")
    if isinstance(record, EndRecord):
        return RecordType.END, b""
    raise MigrationStreamError(f"cannot write a {type(record).__name__} as a migration record")


_DECODERS = {
    RecordType.END: lambda p: EndRecord(),
    RecordType.VCPU: lambda p: VcpuRecord(p.uint(4), p.state_map()),
    RecordType.MEMORY: _decode_memory,
    RecordType.DEVICE: lambda p: DeviceRecord(p.text(2, "device name"), bytes(p.rest())),
    RecordType.GRANT_TABLE: lambda p: GrantTableRecord(p.uint(2), p.state_map()),
    RecordType.EVENT_CHANNELS: lambda p: EventChannelsRecord(p.uint(2), p.state_map()),
    RecordType.XENSTORE: _decode_xenstore,
    RecordType.DISK: lambda p: DiskRecord(p.state_map()),
    RecordType.VIF: lambda p: VifRecord(p.state_map()),
}
_FIRST_VERSION = {RecordType.VIF: 3}      # record types a version before this does not have


# --- framing ---------------------------------------------------------------------

class StreamWriter:
    """Writes the header at once, then one record a ``write`` call; ``end()`` closes the
    stream with the END record. ``sink`` is a file object (``write``) or a socket
    (``sendall``)."""

    def __init__(self, sink):
        self._send = getattr(sink, "sendall", None) or sink.write
        head = _HEADER.pack(MAGIC, FORMAT_VERSION)
        self._crc = zlib.crc32(head)
        self._send(head + _U32.pack(self._crc))
        self.ended = False
        self.records = 0

    def write(self, record):
        if self.ended:
            raise MigrationStreamError("migration stream: a record after END")
        rtype, parts = _encode(record)
        parts = parts if isinstance(parts, list) else [parts]
        size = sum(len(part) for part in parts)
        if size > MAX_PAYLOAD:
            raise MigrationStreamError(f"{rtype.name} record of {size} bytes is larger than "
                                       f"{MAX_PAYLOAD}: split it")
        head = _REC.pack(rtype, size)
        crc = zlib.crc32(head, self._crc)
        for part in parts:
            crc = zlib.crc32(part, crc)
        self._crc = crc
        if size <= _JOIN_BELOW:           # one write for a small record
            self._send(b"".join([head, *parts, _U32.pack(crc)]))
        else:                             # no copy of the large parts (page data)
            self._send(head + parts[0])
            for part in parts[1:]:
                self._send(part)
            self._send(_U32.pack(crc))
        self.records += 1
        self.ended = rtype == RecordType.END

    def end(self):
        self.write(EndRecord())


def _reader(source):
    """read(n) -> up to n bytes, b"" at the end, for a file object or a socket."""
    if hasattr(source, "read"):
        return source.read
    if hasattr(source, "recv"):
        return source.recv
    raise MigrationStreamError(f"cannot read a migration stream from a {type(source).__name__}")


class StreamReader:
    """Iterates the records of a stream, checking each before it is yielded; the
    iteration ends after END. ``name`` (a path, a peer address) is used in errors."""

    def __init__(self, source, name="migration stream"):
        self._read = _reader(source)
        self._read_into = getattr(source, "recv_into", None)     # sockets: no copy a chunk
        self.name = name
        self.offset = 0
        head = self._exact(_HEADER.size + 4, "the stream header")
        magic, version = _HEADER.unpack_from(head)
        if magic != MAGIC:
            raise MigrationStreamError(f"{name}: not a pyvmm migration stream (magic {magic!r}, "
                                       f"expected {MAGIC!r})")
        (crc,) = _U32.unpack_from(head, _HEADER.size)
        if crc != zlib.crc32(head[:_HEADER.size]):
            raise MigrationStreamError(f"{name}: the stream header is corrupted (crc32 mismatch)")
        if version > FORMAT_VERSION:
            raise MigrationStreamError(f"{name}: stream format version {version} is newer than this "
                                       f"pyvmm reads (up to {FORMAT_VERSION}); upgrade the receiver")
        if version < 1:
            raise MigrationStreamError(f"{name}: stream format version {version} does not exist")
        if version < OLDEST_VERSION:
            raise MigrationStreamError(f"{name}: stream format version {version} is older than this "
                                       f"pyvmm reads ({OLDEST_VERSION} to {FORMAT_VERSION}): it was "
                                       f"written by an older pyvmm; restore it with that one")
        self.version = version
        self._crc = crc
        self._index = 0
        self.ended = False

    def _exact(self, n, what):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            if self._read_into is not None:
                k = self._read_into(view[got:])
            else:
                chunk = self._read(n - got)
                k = len(chunk)
                view[got:got + k] = chunk
            if not k:
                raise MigrationStreamError(
                    f"{self.name}: truncated at offset {self.offset + got}: {what} needs "
                    f"{n} bytes, the stream ended after {got}")
            got += k
        self.offset += n
        return buf

    def __iter__(self):
        while not self.ended:
            yield self.read_record()

    def read_record(self):
        if self.ended:
            raise MigrationStreamError(f"{self.name}: read past the END record")
        start = self.offset
        where = f"{self.name}: record {self._index} at offset {start}"
        head = self._exact(_REC.size, f"record {self._index}'s header (no END record yet)")
        rtype, length = _REC.unpack(head)
        name = RecordType(rtype).name if rtype in RecordType._value2member_map_ else f"type {rtype}"
        where = f"{self.name}: record {self._index} ({name}) at offset {start}"
        if length > MAX_PAYLOAD:
            raise MigrationStreamError(f"{where}: payload length {length} is over the limit "
                                       f"{MAX_PAYLOAD} (a corrupted length?)")
        body = self._exact(length + 4, f"record {self._index} ({name}) of {length} payload bytes")
        (stored,) = _U32.unpack_from(body, length)
        del body[length:]                 # the payload, without a copy
        payload = body
        crc = zlib.crc32(payload, zlib.crc32(head, self._crc))
        if crc != stored:
            raise MigrationStreamError(f"{where}: crc32 mismatch (stored {stored:#010x}, computed "
                                       f"{crc:#010x}): the record is corrupted, or one before it "
                                       f"is missing or out of order")
        if rtype not in _DECODERS or self.version < _FIRST_VERSION.get(rtype, OLDEST_VERSION):
            raise MigrationStreamError(f"{where}: unknown record type {rtype} in a version "
                                       f"{self.version} stream")
        p = _Payload(payload, where)
        record = _DECODERS[rtype](p)
        p.done()
        self._crc = crc
        self._index += 1
        self.ended = rtype == RecordType.END
        return record


def write_stream(sink, records):
    """Write ``records`` (record objects, without END) and the END record to ``sink``."""
    writer = StreamWriter(sink)
    for record in records:
        writer.write(record)
    writer.end()
    return writer.records


def read_stream(source, name="migration stream"):
    """Every record before END, read and checked in full before anything is returned."""
    return [r for r in StreamReader(source, name) if not isinstance(r, EndRecord)]


def encode_page(pfn, data, last_sent=None, scanner=None):
    """The smallest Page for ``data``: ZERO, an XBZRLE delta against ``last_sent`` when
    one is given and the delta is shorter than the page, or RAW."""
    data = bytes(data)
    if len(data) != PAGE_SIZE:
        raise MigrationStreamError(f"page {pfn:#x} has {len(data)} bytes, not {PAGE_SIZE}")
    if data == _ZERO_PAGE:         # memcmp; any() walks the page a byte at a time (100x slower)
        return Page(pfn, PageEncoding.ZERO)
    if last_sent is not None:
        delta = (scanner or DirtyScanner()).xbzrle_encode(last_sent, data, limit=PAGE_SIZE - 1)
        if delta is not None:
            return Page(pfn, PageEncoding.XBZRLE, delta)
    return Page(pfn, PageEncoding.RAW, data)


def decode_page(page, last_sent=None, scanner=None):
    """The PAGE_SIZE bytes a Page stands for; XBZRLE needs the page as last sent."""
    if page.encoding == PageEncoding.ZERO:
        return bytes(PAGE_SIZE)
    if page.encoding == PageEncoding.RAW:
        return page.data
    if last_sent is None:
        raise MigrationStreamError(f"XBZRLE page {page.pfn:#x} arrived before any full copy of it")
    return (scanner or DirtyScanner()).xbzrle_decode(page.data, last_sent)
