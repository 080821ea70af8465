"""The dirty-page scan: C and Python backends give the same answers on the same inputs."""
import os
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate import dirty_scan
from pyvmm.migrate.dirty_scan import HASH_PRIME, DirtyScanner
from pyvmm.mm.memory import GuestMemory

SMALL = 64  # a small page size, so hypothesis covers many pages cheaply


def _set_bits(data):
    return [8 * j + k for j, b in enumerate(data) for k in range(8) if b >> k & 1]


def test_c_backend_is_built():
    # pip install -e . builds pyvmm._dirtyscan (setup.py cffi_modules); without it
    # DirtyScanner() would quietly fall back to Python.
    assert dirty_scan.c_available()
    assert DirtyScanner().backend == "c"


def test_unknown_backend_is_refused():
    with pytest.raises(MigrationError, match="'fortran'"):
        DirtyScanner("fortran")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=80), offset=st.integers(0, 7), clear=st.booleans())
def test_dirty_pages_same_in_both_backends(data, offset, clear):
    # offset puts the bitmap at every alignment, so the C head/word/tail paths all run
    results = []
    for backend in dirty_scan.BACKENDS:
        buf = bytearray(offset) + bytearray(data)
        view = memoryview(buf)[offset:]
        results.append((list(DirtyScanner(backend).dirty_pages(view, clear=clear)), bytes(buf)))
    assert results[0] == results[1]
    pages, after = results[0]
    assert pages == _set_bits(data)
    assert after == (bytes(len(buf)) if clear else bytes(offset) + data)


def test_dirty_pages_keeps_bits_past_capacity():
    # The C contract: when out[] is full, the bits not reported stay set.
    from pyvmm import _dirtyscan
    ffi, lib = _dirtyscan.ffi, _dirtyscan.lib
    bitmap = bytearray(16)
    bitmap[0], bitmap[9] = 0b1011, 0b1
    out = ffi.new("uint64_t[]", 2)
    assert lib.ds_bitmap_pages(ffi.from_buffer(bitmap), 16, out, 2, 1) == 2
    assert list(out) == [0, 1]
    assert bitmap[0] == 0b1000 and bitmap[9] == 1
    assert list(DirtyScanner("c").dirty_pages(bitmap, clear=True)) == [3, 72]


def test_clear_needs_a_writable_bitmap(scanner):
    with pytest.raises(MigrationError, match="writable bitmap"):
        scanner.dirty_pages(b"\x01", clear=True)
    assert list(scanner.dirty_pages(b"\x01\x80")) == [0, 15]


@settings(max_examples=100, deadline=None)
@given(npages=st.integers(1, 40), seed=st.binary(min_size=SMALL, max_size=SMALL),
       edits=st.lists(st.tuples(st.integers(0, 40 * SMALL - 1), st.integers(1, 255)), max_size=20),
       update=st.booleans())
def test_changed_pages_same_in_both_backends(npages, seed, edits, update):
    ram = bytearray(seed * npages)
    for pos, xor in edits:
        if pos < len(ram):
            ram[pos] ^= xor
    differ = [p for p in range(npages) if ram[p * SMALL:(p + 1) * SMALL] != seed]
    results = []
    for backend in dirty_scan.BACKENDS:
        last = bytearray(seed * npages)
        found = DirtyScanner(backend, page_size=SMALL).changed_pages(ram, last, update=update)
        results.append((list(found), bytes(last)))
    assert results[0] == results[1]
    assert results[0][0] == differ
    assert results[0][1] == (bytes(ram) if update else seed * npages)


def test_changed_pages_on_guest_memory_then_clean(scanner):
    mem = GuestMemory(2 << 20)
    try:
        last = bytearray(mem.size)
        mem.write(0x1000, b"guest")
        mem.write_u64(0x1FFFF8, 0xDEADBEEF)
        assert list(scanner.changed_pages(mem, last, update=True)) == [1, 511]
        assert last[0x1000:0x1005] == b"guest"
        assert list(scanner.changed_pages(mem, last)) == []
    finally:
        mem.close()


def test_changed_pages_refuses_mismatched_copy(scanner):
    ram = bytearray(3 * 4096)
    ram[5] = 1
    last = bytearray(2 * 4096)
    with pytest.raises(MigrationError, match="8192 bytes does not match guest RAM of 12288"):
        scanner.changed_pages(ram, last, update=True)
    assert last == bytearray(2 * 4096)
    with pytest.raises(MigrationError, match="not a whole number"):
        scanner.changed_pages(bytes(100), bytes(100))
    with pytest.raises(MigrationError, match="writable copy"):
        scanner.changed_pages(ram, bytes(3 * 4096), update=True)
    with pytest.raises(MigrationError, match="got int"):
        scanner.changed_pages(5, last)


@settings(max_examples=50, deadline=None)
@given(pages=st.lists(st.binary(min_size=SMALL, max_size=SMALL), min_size=1, max_size=20))
def test_page_hashes_are_the_page_as_an_integer_mod_the_prime(pages):
    ram = b"".join(pages)
    expect = [int.from_bytes(p, "little") % HASH_PRIME for p in pages]
    for backend in dirty_scan.BACKENDS:
        assert list(DirtyScanner(backend, page_size=SMALL).page_hashes(ram)) == expect


def test_hash_of_a_page_at_or_above_the_prime():
    # 0xFF..FF pages are larger than the prime: the C fold must reduce them fully
    for fill in (b"\xff" * 4096, (HASH_PRIME).to_bytes(8, "little") + bytes(4088)):
        expect = int.from_bytes(fill, "little") % HASH_PRIME
        for backend in dirty_scan.BACKENDS:
            assert DirtyScanner(backend).page_hashes(fill)[0] == expect


@pytest.mark.parametrize("page_size", [32, 4096 - 32, 8192, 4096 + 32, 3 * 4096 + 96])
def test_hash_of_pages_of_several_weight_blocks(page_size):
    # the C sum weights 512 limbs (4 KiB) at a time and joins blocks by Horner's rule:
    # partial top blocks and several blocks give the same number as Python
    ram = os.urandom(2 * page_size) + b"\xff" * page_size
    expect = [int.from_bytes(ram[o:o + page_size], "little") % HASH_PRIME
              for o in range(0, len(ram), page_size)]
    for backend in dirty_scan.BACKENDS:
        assert list(DirtyScanner(backend, page_size=page_size).page_hashes(ram)) == expect


def test_dirty_pages_results_do_not_share_the_scan_buffer():
    # the C backend reuses one output buffer a thread: each result is a copy, and a
    # larger bitmap later grows the buffer without touching earlier results
    scanner = DirtyScanner("c")
    first = scanner.dirty_pages(b"\x05")
    big = bytearray(64)
    big[63] = 0x80
    second = scanner.dirty_pages(big, clear=True)
    third = scanner.dirty_pages(b"\x02")
    assert (list(first), list(second), list(third)) == ([0, 2], [511], [1])
    assert big == bytearray(64)


def test_changed_pages_by_hash(pair):
    ram = bytearray(os.urandom(16 * 4096))
    hashes = [s.page_hashes(ram) for s in pair]
    assert hashes[0] == hashes[1]
    ram[3 * 4096] ^= 1
    ram[15 * 4096 + 4095] ^= 0x80
    found = [list(s.changed_pages_by_hash(ram, h, update=True)) for s, h in zip(pair, hashes)]
    assert found == [[3, 15], [3, 15]]
    assert hashes[0] == hashes[1] == pair[0].page_hashes(ram)
    assert [list(s.changed_pages_by_hash(ram, h)) for s, h in zip(pair, hashes)] == [[], []]
    with pytest.raises(MigrationError, match="array\\('Q'\\) of 16 entries, got list of 3"):
        pair[0].changed_pages_by_hash(ram, [1, 2, 3])


def _mutate(old, edits):
    new = bytearray(old)
    for pos, data in edits:
        pos %= len(new)
        new[pos:pos + len(data)] = data
        del new[len(old):]
    return bytes(new)


@settings(max_examples=300, deadline=None)
@given(old=st.binary(min_size=1, max_size=300),
       edits=st.lists(st.tuples(st.integers(0, 299), st.binary(min_size=1, max_size=12)), max_size=12),
       limit=st.one_of(st.none(), st.integers(0, 400)))
def test_xbzrle_round_trip_same_bytes_in_both_backends(old, edits, limit):
    new = _mutate(old, edits)
    c, py = DirtyScanner("c"), DirtyScanner("python")
    delta = c.xbzrle_encode(old, new, limit)
    assert py.xbzrle_encode(old, new, limit) == delta
    if delta is None:
        assert limit is not None or len(new) > 0
        return
    assert len(delta) <= (len(new) if limit is None else limit)
    assert c.xbzrle_decode(delta, old) == new == py.xbzrle_decode(delta, old)


def test_xbzrle_wire_format(scanner):
    old = bytes(4096)
    assert scanner.xbzrle_encode(old, old) == b""
    new = bytearray(old)
    new[10], new[12] = 1, 2          # a 1-byte gap is carried inside the run
    new[100:103] = b"abc"            # a 87-byte gap starts a new pair
    new[4095] = 9
    assert scanner.xbzrle_encode(old, new) == (
        b"\x0a\x03\x01\x00\x02" + b"\x57\x03abc" + b"\x98\x1f\x01\x09")   # 3992 = uleb 98 1f
    assert scanner.xbzrle_encode(old, bytes([7]) * 4096) is None   # larger than the page
    assert scanner.xbzrle_encode(old, new, limit=5) is None


@pytest.mark.parametrize("delta, problem", [
    (b"\x00", "go past the end"),                    # u, no c
    (b"\x00\x05ab", "go past the end"),              # 5 literal bytes promised, 2 given
    (b"\x00\x00", "changed run of length 0"),
    (b"\x00\x01a\x00\x01b", "changed run of length 0"),  # u == 0 after the first pair
    (b"\xff\x1f\x01a", "more than the page"),        # skips 4095, then 1 byte: fits; see next
    (b"\x80\x20\x01a", "more than the page"),        # skips 4096
    (b"\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
])
def test_malformed_xbzrle_is_refused_the_same_way(pair, delta, problem):
    old = bytes(range(256)) * 16
    if delta == b"\xff\x1f\x01a":
        delta += b"\x01\x01b"        # a second pair past the end of the page
    messages = []
    for scanner in pair:
        with pytest.raises(MigrationStreamError, match=problem) as info:
            scanner.xbzrle_decode(delta, old)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert f"delta of {len(delta)} bytes for a 4096-byte page" in messages[0]


@settings(max_examples=300, deadline=None)
@given(delta=st.binary(max_size=40))
def test_any_delta_decodes_or_fails_alike(delta):
    old = bytes(64)
    outcome = []
    for backend in dirty_scan.BACKENDS:
        try:
            outcome.append(DirtyScanner(backend).xbzrle_decode(delta, old))
        except MigrationStreamError as e:
            outcome.append(str(e))
    assert outcome[0] == outcome[1]


def test_decode_leaves_the_old_page_alone(scanner):
    old = bytearray(b"x" * 64)
    assert scanner.xbzrle_decode(b"\x02\x01y", old) == b"xxyx" + b"x" * 60
    assert old == b"x" * 64


def test_results_are_page_number_arrays(scanner):
    found = scanner.changed_pages(b"\x01" * 8192, bytes(8192))
    assert isinstance(found, array) and found.typecode == "Q" and list(found) == [0, 1]


def test_python_constants_match_the_c_header():
    from pyvmm import _dirtyscan
    lib = _dirtyscan.lib
    assert (lib.DS_HASH_PRIME, lib.DS_XBZRLE_MIN_SKIP) == (HASH_PRIME, dirty_scan.XBZRLE_MIN_SKIP)
    assert (lib.DS_ERR_TRUNCATED, lib.DS_ERR_OVERRUN, lib.DS_ERR_EMPTY_RUN, lib.DS_ERR_BAD_LENGTH) == (
        dirty_scan.ERR_TRUNCATED, dirty_scan.ERR_OVERRUN, dirty_scan.ERR_EMPTY_RUN,
        dirty_scan.ERR_BAD_LENGTH)
    assert (lib.DS_ERR_PFN, lib.DS_ERR_NO_BASE, lib.DS_ERR_ENCODING, lib.DS_ERR_DATA) == (
        dirty_scan.ERR_PFN, dirty_scan.ERR_NO_BASE, dirty_scan.ERR_ENCODING, dirty_scan.ERR_DATA)
    assert (lib.DS_PAGE_RAW, lib.DS_PAGE_ZERO, lib.DS_PAGE_XBZRLE) == (
        dirty_scan.PAGE_RAW, dirty_scan.PAGE_ZERO, dirty_scan.PAGE_XBZRLE)


# ---- the zero-page check and the page gather of MEMORY records ----

@st.composite
def _sparse_ram(draw):
    """RAM of small pages, each all zeros or with a few non-zero bytes anywhere
    (the first, the last, or one in the middle of the page)."""
    npages = draw(st.integers(1, 40))
    ram = bytearray(npages * SMALL)
    for p in draw(st.lists(st.integers(0, npages - 1), max_size=npages)):
        ram[p * SMALL + draw(st.integers(0, SMALL - 1))] = draw(st.integers(1, 255))
    return ram


@settings(max_examples=200, deadline=None)
@given(ram=_sparse_ram(), data=st.data())
def test_zero_page_check_and_gather_same_in_both_backends(ram, data):
    npages = len(ram) // SMALL
    pfns = array("Q", data.draw(st.lists(st.integers(0, npages - 1), max_size=2 * npages)))
    c, py = DirtyScanner("c", SMALL), DirtyScanner("python", SMALL)
    want = [p for p in range(npages) if any(ram[p * SMALL:(p + 1) * SMALL])]
    assert list(c.nonzero_pages(ram)) == list(py.nonzero_pages(ram)) == want
    enc, lengths, gathered = c.gather_pages(ram, pfns)
    assert (enc, lengths, gathered) == py.gather_pages(ram, pfns)
    assert list(enc) == [dirty_scan.PAGE_RAW if p in want else dirty_scan.PAGE_ZERO for p in pfns]
    assert list(lengths) == [SMALL if p in want else 0 for p in pfns]
    assert gathered == b"".join(ram[p * SMALL:(p + 1) * SMALL] for p in pfns if p in want)


def test_gather_refuses_pages_outside_ram_and_wrong_types(scanner):
    ram = bytearray(4 * 4096)
    with pytest.raises(MigrationError, match="page 0x4 is outside the 4-page RAM"):
        scanner.gather_pages(ram, array("Q", [1, 4]))
    with pytest.raises(MigrationError, match=r"array\('Q'\)"):
        scanner.gather_pages(ram, [1, 2])


def test_zero_page_check_on_guest_memory(scanner):
    mem = GuestMemory(2 << 20)
    mem.write_u8(5 * 4096 + 4095, 1)
    mem.write_u64(509 * 4096, 1 << 63)
    assert list(scanner.nonzero_pages(mem)) == [5, 509]


# ---- the receiver's scatter of MEMORY records into RAM ----

def _batch(entries):
    """(pfns, encodings, lengths, data) of [(pfn, encoding, data)] entries."""
    return (array("Q", [p for p, _, _ in entries]), bytes(e for _, e, _ in entries),
            array("I", [len(d) for _, _, d in entries]), b"".join(d for _, _, d in entries))


@st.composite
def _records(draw):
    """RAM of small pages as it stood, and entries a sender could make of later states
    of it: RAW copies, ZERO pages and XBZRLE deltas against the copy the receiver has."""
    npages = draw(st.integers(1, 12))
    truth = bytearray(npages * SMALL)            # the pages as the receiver should hold them
    sent = set()
    entries = []
    py = DirtyScanner("python", SMALL)
    for _ in range(draw(st.integers(0, 3 * npages))):
        p = draw(st.integers(0, npages - 1))
        old = bytes(truth[p * SMALL:(p + 1) * SMALL])
        kind = draw(st.sampled_from(["raw", "zero", "delta"]))
        if kind == "zero":
            new = bytes(SMALL)
            entries.append((p, dirty_scan.PAGE_ZERO, b""))
        else:
            new = bytearray(old)
            for i, v in draw(st.lists(st.tuples(st.integers(0, SMALL - 1), st.integers(0, 255)), max_size=6)):
                new[i] = v
            delta = py.xbzrle_encode(old, new) if kind == "delta" and p in sent else None
            entries.append((p, dirty_scan.PAGE_XBZRLE, delta) if delta is not None
                           else (p, dirty_scan.PAGE_RAW, bytes(new)))
        truth[p * SMALL:(p + 1) * SMALL] = new
        sent.add(p)
    return npages, entries, truth, sent


@settings(max_examples=200, deadline=None)
@given(case=_records())
def test_scatter_same_in_both_backends(case):
    npages, entries, truth, sent = case
    results = []
    for backend in dirty_scan.BACKENDS:
        ram, received = bytearray(npages * SMALL), bytearray(npages)
        DirtyScanner(backend, SMALL).scatter_pages(ram, *_batch(entries), received)
        results.append((ram, received))
    assert results[0] == results[1]
    assert results[0][0] == truth
    assert [p for p in range(npages) if results[0][1][p]] == sorted(sent)


def test_scatter_writes_into_guest_memory_in_place(scanner):
    mem = GuestMemory(2 << 20)
    received = bytearray(512)
    page = bytes(range(256)) * 16
    scanner.scatter_pages(mem, *_batch([(7, dirty_scan.PAGE_RAW, page), (9, dirty_scan.PAGE_ZERO, b"")]), received)
    assert mem.read(7 * 4096, 4096) == page and received[7] == received[9] == 1
    delta = scanner.xbzrle_encode(page, b"\xff" + page[1:])
    scanner.scatter_pages(mem, *_batch([(7, dirty_scan.PAGE_XBZRLE, delta)]), received)
    assert mem.read_u8(7 * 4096) == 0xFF
    scanner.scatter_pages(mem, *_batch([(7, dirty_scan.PAGE_ZERO, b"")]), received)
    assert list(scanner.nonzero_pages(mem)) == []


@pytest.mark.parametrize("entries, problem", [
    ([(0, 0, bytes(4096)), (4, 0, bytes(4096))], r"entry 1 \(page 0x4\) is outside the guest's RAM"),
    ([(2, 2, b"\x00\x01\x07")], r"entry 0 \(page 0x2\) is an XBZRLE delta, but no full copy"),
    ([(1, 0, bytes(4096)), (1, 2, b"\x00\x05\x07")], r"entry 1 .* cannot apply: a run length or the bytes"),
    ([(1, 0, bytes(100))], r"entry 0 .* data length wrong for its encoding"),
    ([(1, 1, b"x")], r"entry 0 .* data length wrong for its encoding"),
    ([(1, 9, b"")], r"entry 0 .* unknown encoding"),
])
def test_scatter_refuses_bad_entries_alike(pair, entries, problem):
    for scanner in pair:
        ram, received = bytearray(4 * 4096), bytearray(4)
        with pytest.raises(MigrationStreamError, match=problem):
            scanner.scatter_pages(ram, *_batch(entries), received)
        assert sum(received) == len(entries) - 1       # the entries before the bad one were applied


def test_scatter_refuses_lengths_past_the_data(pair):
    pfns, enc, lengths, data = _batch([(0, 0, bytes(4096)), (1, 0, bytes(4096))])
    for scanner in pair:
        with pytest.raises(MigrationStreamError, match=r"entry 1 .* runs past the end of the record's data"):
            scanner.scatter_pages(bytearray(4 * 4096), pfns, enc, lengths, data[:6000], bytearray(4))
        with pytest.raises(MigrationError, match="one writable byte a page"):
            scanner.scatter_pages(bytearray(4 * 4096), pfns, enc, lengths, data, bytearray(3))
