"""The migration stream: round trips of every record type over files and sockets;
newer, truncated, corrupted, reordered and malformed streams refused with clear errors."""
import io
from array import array
import socket
import struct
import threading
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import MigrationStreamError
from pyvmm.migrate import stream as S
from pyvmm.mm.layout import PAGE_SIZE

PAGE_A = bytes(range(256)) * 16

RECORDS = [
    S.VcpuRecord(0, {"rip": 0xFFFF_FFFF_8100_0000, "rflags": 0x202, "cs": [0x10, 0, 0xFFFFFFFF, 0xA09B],
                     "pending": None, "halted": False, "tsc_offset": -12345, "fpu": b"\x7f" * 512}),
    S.MemoryRecord((S.Page(0, S.PageEncoding.ZERO), S.Page(7, S.PageEncoding.RAW, PAGE_A),
                    S.Page(2 ** 40, S.PageEncoding.XBZRLE, b"\x0a\x01z"))),
    S.DeviceRecord("serial0", b"\x01\x02ier lcr"),
    S.GrantTableRecord(1, {"version": 1, "frames": [0x7F000, 0x7F001], "active": {}}),
    S.EventChannelsRecord(1, {"ports": [{"port": 1, "state": "virq", "virq": 0, "pending": True}]}),
    S.XenstoreRecord((S.XenstoreNode("/local/domain/1/name", b"guest", "n0"),
                      S.XenstoreNode("/local/domain/1/device/vbd/51712/state", b"4", "n1r0"))),
    S.DiskRecord({"device": "xvda", "path": "/var/lib/pyvmm/disk.qcow2", "format": "qcow2",
                  "read_only": False, "vdev": 51712}),
]


def _stream(records=RECORDS):
    out = io.BytesIO()
    S.write_stream(out, records)
    return out.getvalue()


def _err(data, match):
    with pytest.raises(MigrationStreamError, match=match) as info:
        S.read_stream(io.BytesIO(data), name="vm.mig")
    assert str(info.value).startswith("vm.mig: ")
    return str(info.value)


def test_round_trip_every_record_type():
    data = _stream()
    assert data[:8] == S.MAGIC and struct.unpack_from("<I", data, 8) == (S.FORMAT_VERSION,)
    assert S.read_stream(io.BytesIO(data)) == RECORDS


class Trickle(io.RawIOBase):
    """A source that returns at most 3 bytes a read, like a slow pipe."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n=-1):
        chunk = self.data[self.pos:self.pos + min(n, 3)]
        self.pos += len(chunk)
        return chunk


def test_incremental_reads_from_a_trickling_source():
    reader = S.StreamReader(Trickle(_stream()))
    first = reader.read_record()
    assert first == RECORDS[0] and reader.offset < len(_stream())   # read no further than needed
    assert [first] + [r for r in reader][:-1] == RECORDS
    assert reader.ended


def test_round_trip_over_a_socket():
    a, b = socket.socketpair()
    with a, b:
        big = S.MemoryRecord(tuple(S.Page(p, S.PageEncoding.RAW, PAGE_A) for p in range(600)))
        t = threading.Thread(target=lambda: S.write_stream(a, [big] + RECORDS))
        t.start()
        got = S.read_stream(b, name="peer")
        t.join()
    assert got == [big] + RECORDS


def _header(version):
    head = S.MAGIC + struct.pack("<I", version)
    return head + struct.pack("<I", zlib.crc32(head)), zlib.crc32(head)


def _record(rtype, payload, prev_crc):
    head = struct.pack("<II", rtype, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head, prev_crc))
    return head + payload + struct.pack("<I", crc), crc


def _crafted(*records, version=S.FORMAT_VERSION):
    data, crc = _header(version)
    for rtype, payload in records:
        rec, crc = _record(rtype, payload, crc)
        data += rec
    return data


def test_newer_version_is_refused():
    msg = _err(_crafted((S.RecordType.END, b""), version=S.FORMAT_VERSION + 1),
               f"version {S.FORMAT_VERSION + 1} is newer")
    assert f"up to {S.FORMAT_VERSION}" in msg


def test_version_1_stream_is_refused_as_older():
    msg = _err(_crafted((S.RecordType.END, b""), version=1), "version 1 is older than this pyvmm reads")
    assert f"(2 to {S.FORMAT_VERSION})" in msg


def test_a_version_2_stream_is_still_read_but_holds_no_vif_record():
    disk = S.DiskRecord({"path": "a"})
    payload = S.encode_value({"path": "a"})
    assert S.read_stream(io.BytesIO(_crafted((S.RecordType.DISK, bytes(payload)), (S.RecordType.END, b""),
                                             version=2))) == [disk]
    _err(_crafted((S.RecordType.VIF, bytes(payload)), (S.RecordType.END, b""), version=2),
         "unknown record type 8 in a version 2 stream")
    vif = S.VifRecord({"kind": "udp", "devid": 0})
    assert S.read_stream(io.BytesIO(_stream([vif]))) == [vif]


def test_not_a_stream_and_damaged_header():
    _err(b"GIF89a" + bytes(20), "not a pyvmm migration stream")
    data = bytearray(_stream())
    data[9] ^= 1
    _err(bytes(data), "header is corrupted")


def test_every_truncation_is_refused():
    data = _stream()
    for cut in range(len(data)):
        _err(data[:cut], "truncated at offset")


def test_truncation_says_where_and_what():
    data = _stream()
    msg = _err(data[:-12], "truncated")
    assert "END" in msg
    cut = len(_stream(RECORDS[:1])) - 12 + 8          # inside record 1's payload
    assert "record 1 (MEMORY)" in _err(data[:cut], "truncated")


def test_every_corrupted_byte_is_refused():
    data = _stream()
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises(MigrationStreamError):
            S.read_stream(io.BytesIO(bytes(bad)))


def test_corrupted_record_names_it():
    data = bytearray(_stream())
    start = len(_stream(RECORDS[:2])) - 12               # where record 2 (DEVICE) begins
    data[start + 10] ^= 1                                # a byte of its payload
    assert "crc32 mismatch" in _err(bytes(data), f"record 2 \\(DEVICE\\) at offset {start}:")


def _split(data):
    """The header and the records of a stream as byte strings."""
    parts, pos = [data[:16]], 16
    while pos < len(data):
        _, n = struct.unpack_from("<II", data, pos)
        parts.append(data[pos:pos + 12 + n])
        pos += 12 + n
    return parts


def test_dropped_or_reordered_records_break_the_chain():
    parts = _split(_stream())
    assert len(parts) == 1 + len(RECORDS) + 1
    dropped = b"".join(parts[:3] + parts[4:])
    assert "record 2 (GRANT_TABLE)" in _err(dropped, "crc32 mismatch")
    swapped = b"".join(parts[:2] + [parts[3], parts[2]] + parts[4:])
    _err(swapped, "crc32 mismatch")


def test_hostile_length_is_refused_before_reading():
    data, crc = _header(S.FORMAT_VERSION)
    data += struct.pack("<II", S.RecordType.DEVICE, 0xFFFF_FFF0)
    _err(data, "payload length 4294967280 is over the limit")


def test_unknown_record_type():
    _err(_crafted((99, b"hello"), (S.RecordType.END, b"")), "unknown record type 99")


def _memory(entries, data=b"", count=None):
    """A version-2 MEMORY payload: count, the pfns, the encodings, the lengths, the data."""
    count = len(entries) if count is None else count
    return (struct.pack("<I", count) + b"".join(struct.pack("<Q", e[0]) for e in entries)
            + bytes(e[1] for e in entries) + b"".join(struct.pack("<I", e[2]) for e in entries) + data)


def test_memory_payload_layout_is_the_documented_one():
    pages = (S.Page(7, S.PageEncoding.RAW, PAGE_A), S.Page(0, S.PageEncoding.ZERO),
             S.Page(9, S.PageEncoding.XBZRLE, b"\x0a\x01z"))
    payload = _memory([(7, 0, PAGE_SIZE), (0, 1, 0), (9, 2, 3)], PAGE_A + b"\x0a\x01z")
    assert _stream([S.MemoryRecord(pages)]) == _crafted((S.RecordType.MEMORY, payload), (S.RecordType.END, b""))
    batch = S.MemoryRecord.batch(array("Q", [7, 0, 9]), b"\x00\x01\x02", array("I", [PAGE_SIZE, 0, 3]),
                                 PAGE_A + b"\x0a\x01z")
    assert _stream([batch]) == _stream([S.MemoryRecord(pages)]) and batch == S.MemoryRecord(pages)
    assert [(p, e, bytes(d)) for p, e, d in batch.entries()] == [(7, 0, PAGE_A), (0, 1, b""), (9, 2, b"\x0a\x01z")]


@pytest.mark.parametrize("rtype, payload, match", [
    (S.RecordType.MEMORY, _memory([(5, 0, 10)], bytes(10)), "raw page 0x5 has 10 bytes"),
    (S.RecordType.MEMORY, _memory([(5, 9, 0)]), "unknown encoding 9"),
    (S.RecordType.MEMORY, _memory([(5, 1, 4)], bytes(4)), "zero page 0x5 carries 4 bytes"),
    (S.RecordType.MEMORY, _memory([(5, 1, 0)], count=3), "3 page entries need 39 bytes"),
    (S.RecordType.MEMORY, _memory([(5, 0, PAGE_SIZE)], bytes(10)), "lengths add up to 4096 bytes, the data is 10"),
    (S.RecordType.MEMORY, _memory([(5, 2, 5000)], bytes(5000)), "larger than a page"),
    (S.RecordType.VCPU, struct.pack("<I", 0) + b"\x42", "unknown state value kind 66"),
    (S.RecordType.VCPU, struct.pack("<I", 0) + b"\x07" + struct.pack("<I", 0), "expected a map"),
    (S.RecordType.VCPU, struct.pack("<I", 0) + b"\x08" + struct.pack("<I", 10 ** 9), "count 1000000000"),
    (S.RecordType.DISK, b"\x08\x00\x00\x00\x00\x00", "1 bytes left over"),
    (S.RecordType.DEVICE, b"\x02\x00\xff\xfe", "device name is not UTF-8"),
    (S.RecordType.END, b"\x00", "1 bytes left over"),
])
def test_malformed_payloads_with_good_crc(rtype, payload, match):
    _err(_crafted((rtype, payload), (S.RecordType.END, b"")), match)


def test_deep_nesting_is_refused():
    payload = b"\x07" + struct.pack("<I", 1)
    _err(_crafted((S.RecordType.DISK, payload * 40 + b"\x00"), (S.RecordType.END, b"")),
         "nested deeper than 32")


def test_writer_refuses_what_it_cannot_write():
    w = S.StreamWriter(io.BytesIO())
    with pytest.raises(MigrationStreamError, match="must fit in 64 bits"):
        w.write(S.DiskRecord({"size": 1 << 64}))
    with pytest.raises(MigrationStreamError, match="type set cannot be written"):
        w.write(S.DiskRecord({"flags": {1, 2}}))
    with pytest.raises(MigrationStreamError, match="raw page 0x3 has 5 bytes"):
        w.write(S.MemoryRecord((S.Page(3, S.PageEncoding.RAW, b"short"),)))
    with pytest.raises(MigrationStreamError, match="domid 70000 does not fit in 16 bits"):
        w.write(S.GrantTableRecord(70000, {}))
    w.end()
    with pytest.raises(MigrationStreamError, match="after END"):
        w.write(RECORDS[2])


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.binary(max_size=20)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(state=st.dictionaries(st.text(max_size=8), _values, max_size=6), vcpu=st.integers(0, 2 ** 32 - 1))
def test_any_state_round_trips(state, vcpu):
    rec = S.VcpuRecord(vcpu, state)
    assert S.read_stream(io.BytesIO(_stream([rec]))) == [rec]


def test_page_encoding_picks_the_smallest(scanner):
    zero = S.encode_page(1, bytes(PAGE_SIZE), scanner=scanner)
    assert zero.encoding == S.PageEncoding.ZERO
    new = bytearray(PAGE_A)
    new[100] ^= 0xFF
    delta = S.encode_page(2, new, last_sent=PAGE_A, scanner=scanner)
    assert delta.encoding == S.PageEncoding.XBZRLE and len(delta.data) == 3
    assert S.decode_page(delta, PAGE_A, scanner) == new
    raw = S.encode_page(3, PAGE_A, last_sent=bytes(PAGE_SIZE), scanner=scanner)
    assert raw.encoding == S.PageEncoding.RAW and S.decode_page(raw) == PAGE_A
    assert S.decode_page(zero) == bytes(PAGE_SIZE)
    with pytest.raises(MigrationStreamError, match="before any full copy"):
        S.decode_page(delta)
