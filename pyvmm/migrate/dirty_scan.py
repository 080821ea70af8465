"""Which guest pages changed since they were last sent, and how (the migration hot loop).

Responsibility: given guest RAM, find the pages to send in a pre-copy round and
encode a changed page as a small delta against the copy last sent:

- ``dirty_pages(bitmap, clear)``: a dirty bitmap (LSB-first bytes, bit k of byte j
  is page 8*j + k: KVM_GET_DIRTY_LOG's layout on x86) to ascending page numbers,
  optionally clearing what was read ("cleared when read").
- ``changed_pages(ram, last_sent, update)``: pages whose bytes differ from the copy
  last sent; with ``update`` the copy of those pages is refreshed, so the caller
  sends exactly what the copy now holds.
- ``page_hashes`` / ``changed_pages_by_hash``: the same against one 64-bit hash a
  page (8 bytes a page kept instead of a 4 KiB copy). The hash is the page read as
  one little-endian integer modulo the prime 2^64 - 59; two different pages share
  a hash only if the prime divides their difference, so a changed page can be
  missed with a chance of about 2^-64. Use the copy where that is not acceptable.
- ``nonzero_pages(ram)``: the zero-page check, the pages that hold a non-zero byte
  (a snapshot writes only those);
- ``gather_pages(ram, pfns)``: a batch of pages as the MEMORY record carries them:
  each page's encoding (ZERO for an all-zero page, else RAW), its data length, and
  the bytes of the RAW pages one after another;
- ``scatter_pages(ram, pfns, encodings, lengths, data, received)``: the receiver's
  side of ``gather_pages``: a MEMORY record's pages written into RAM in place (RAW
  copied, ZERO zeroed, XBZRLE deltas applied), refusing a page outside RAM or a delta
  with nothing to apply to;
- ``xbzrle_encode`` / ``xbzrle_decode``: QEMU's XBZRLE idea (runs of unchanged and
  changed bytes, give up when the delta is larger than a limit); the wire format is
  in csrc/dirtyscan.h and docs/migration-stream.md.

Two backends give the same answers on the same inputs: "c" (pyvmm._dirtyscan, built
by cffi from csrc/dirtyscan.c, working on RAM in place through ``ffi.from_buffer``)
and "python" (this file, no extension needed). ``DirtyScanner()`` picks C when the
extension imports.

Invariants: page numbers come back as ``array('Q')`` in ascending order; inputs are
checked (sizes, writability) before anything is read or written, and a bad input
raises MigrationError or MigrationStreamError naming it, leaving every buffer as it
was. Clearing in the C backend is atomic a word at a time: a bit a concurrent thread
sets is never lost (it may be reported once more). The Python backend clears a word
between two bytecodes, so it is exact only without a concurrent writer.
Both backends assume a little-endian host (x86), like the guest they serve.
"""

import re
import threading
from array import array

from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.mm.layout import PAGE_SIZE

try:
    from pyvmm import _dirtyscan
except ImportError as e:  # the extension is built by `pip install -e .` (setup.py)
    _dirtyscan = None
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

BACKENDS = ("c", "python")

# From csrc/dirtyscan.h (the C side reads the same constants from there).
HASH_PRIME = 2 ** 64 - 59          # DS_HASH_PRIME
XBZRLE_MIN_SKIP = 3                # DS_XBZRLE_MIN_SKIP
ERR_TRUNCATED, ERR_OVERRUN, ERR_EMPTY_RUN, ERR_BAD_LENGTH = -1, -2, -3, -4
ERR_PFN, ERR_NO_BASE, ERR_ENCODING, ERR_DATA = -5, -6, -7, -8      # ds_scatter_pages only
PAGE_RAW, PAGE_ZERO, PAGE_XBZRLE = 0, 1, 2    # DS_PAGE_*: stream.PageEncoding's numbers
XBZRLE_ERRORS = {
    ERR_TRUNCATED: "a run length or the bytes of a run go past the end of the delta",
    ERR_OVERRUN: "the runs add up to more than the page",
    ERR_EMPTY_RUN: "a changed run of length 0, or an unchanged run of length 0 after the first",
    ERR_BAD_LENGTH: "a run length longer than 5 bytes of uleb128",
}
SCATTER_ERRORS = {
    ERR_PFN: "is outside the guest's RAM",
    ERR_NO_BASE: "is an XBZRLE delta, but no full copy of the page arrived before it",
    ERR_ENCODING: "has an unknown encoding or a data length wrong for its encoding",
    ERR_DATA: "has a data length that runs past the end of the record's data",
}

# A changed run: changed bytes, with unchanged gaps shorter than XBZRLE_MIN_SKIP
# inside it as long as changed bytes follow (in the XOR of the pages, 0 = unchanged).
_CHANGED_RUN = re.compile(rb"[^\x00]+(?:\x00{1,%d}[^\x00]+)*" % (XBZRLE_MIN_SKIP - 1))


def _uleb(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return out


def _read_uleb(delta, pos):
    """(value, next pos) or (error code, pos) for the uleb128 at delta[pos]."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(delta):
            return ERR_TRUNCATED, pos
        byte = delta[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    return ERR_BAD_LENGTH, pos


class PythonKernels:
    """The pure-Python backend: every kernel of csrc/dirtyscan.c, same answers."""

    name = "python"

    def dirty_pages(self, bitmap, clear):
        out = array("Q")
        nwords = len(bitmap) // 8
        words = bitmap[:nwords * 8].cast("Q")
        for i, w in enumerate(words):
            if w:
                if clear:
                    words[i] = 0
                base = i * 64
                while w:
                    low = w & -w
                    out.append(base + low.bit_length() - 1)
                    w ^= low
        for j in range(nwords * 8, len(bitmap)):
            b = bitmap[j]
            if b:
                if clear:
                    bitmap[j] = 0
                out.extend(j * 8 + k for k in range(8) if b >> k & 1)
        return out

    def changed_pages(self, ram, last, npages, page_size, update):
        out = array("Q")
        for p in range(npages):
            o = p * page_size
            e = o + page_size
            if bytes(ram[o:e]) != bytes(last[o:e]):
                out.append(p)
                if update:
                    last[o:e] = ram[o:e]
        return out

    def page_hashes(self, ram, npages, page_size):
        return array("Q", (int.from_bytes(ram[p * page_size:(p + 1) * page_size], "little")
                           % HASH_PRIME for p in range(npages)))

    def changed_pages_by_hash(self, ram, hashes, npages, page_size, update):
        out = array("Q")
        for p in range(npages):
            h = int.from_bytes(ram[p * page_size:(p + 1) * page_size], "little") % HASH_PRIME
            if h != hashes[p]:
                out.append(p)
                if update:
                    hashes[p] = h
        return out

    def nonzero_pages(self, ram, npages, page_size):
        zero = bytes(page_size)
        return array("Q", (p for p in range(npages)
                           if ram[p * page_size:(p + 1) * page_size] != zero))

    def gather_pages(self, ram, npages, page_size, pfns):
        zero = bytes(page_size)
        enc, lengths, data = bytearray(len(pfns)), array("I", bytes(4 * len(pfns))), bytearray()
        for i, pfn in enumerate(pfns):
            page = ram[pfn * page_size:(pfn + 1) * page_size]
            if page == zero:
                enc[i] = PAGE_ZERO
            else:
                lengths[i] = page_size
                data += page
        return bytes(enc), lengths, data

    def scatter_pages(self, ram, npages, page_size, pfns, encodings, lengths, data, received):
        zero, off = bytes(page_size), 0
        for i, (pfn, enc, n) in enumerate(zip(pfns, encodings, lengths)):
            if pfn >= npages:
                return ERR_PFN, i
            if n > len(data) - off:
                return ERR_DATA, i
            o = pfn * page_size
            if enc == PAGE_RAW and n == page_size:
                ram[o:o + page_size] = data[off:off + n]
            elif enc == PAGE_ZERO and n == 0:
                if received[pfn]:
                    ram[o:o + page_size] = zero
            elif enc == PAGE_XBZRLE and n <= page_size:
                if not received[pfn]:
                    return ERR_NO_BASE, i
                err = self.xbzrle_decode(data[off:off + n], ram[o:o + page_size])
                if err:
                    return err, i
            else:
                return ERR_ENCODING, i
            received[pfn] = 1
            off += n
        return 0, len(pfns)

    def xbzrle_encode(self, old, new, limit):
        n = len(new)
        diff = (int.from_bytes(old, "little") ^ int.from_bytes(new, "little")).to_bytes(n, "little")
        out = bytearray()
        prev = 0
        for m in _CHANGED_RUN.finditer(diff):
            start, end = m.span()
            out += _uleb(start - prev)
            out += _uleb(end - start)
            if len(out) > limit or end - start > limit - len(out):
                return None
            out += new[start:end]
            prev = end
        return bytes(out)

    def xbzrle_decode(self, delta, page):
        runs = []
        pos = off = 0
        while pos < len(delta):
            u, pos = _read_uleb(delta, pos)
            if u < 0:
                return u
            c, pos = _read_uleb(delta, pos)
            if c < 0:
                return c
            if c == 0 or (u == 0 and off != 0):
                return ERR_EMPTY_RUN
            if u > len(page) - off or c > len(page) - off - u:
                return ERR_OVERRUN
            if c > len(delta) - pos:
                return ERR_TRUNCATED
            off += u
            runs.append((off, pos, c))
            pos += c
            off += c
        for off, pos, c in runs:
            page[off:off + c] = delta[pos:pos + c]
        return 0


class CKernels:
    """The C backend: pyvmm._dirtyscan over the callers' buffers, no copies."""

    name = "c"

    def __init__(self):
        if _dirtyscan is None:
            raise MigrationError(f"the C dirty-scan backend is not built ({_IMPORT_ERROR}); "
                                 "run `pip install -e .` or use backend='python'")
        self.ffi, self.lib = _dirtyscan.ffi, _dirtyscan.lib
        self._local = threading.local()

    def _out(self, cap):
        """This thread's page-number buffer of at least ``cap`` entries and its cffi
        pointer: allocated once and grown, never per scan (a scan's cost is then one
        C call and the copy of what it found)."""
        local = self._local
        out = getattr(local, "out", None)
        if out is None or len(out) < cap:
            out = local.out = array("Q", bytes(8 * cap))
            local.ptr = self.ffi.from_buffer("uint64_t[]", out)
        return out, local.ptr

    def dirty_pages(self, bitmap, clear):
        # Room for every bit, so one call reports them all (the C function stops at
        # cap, which cannot happen here) and clearing is done in the same pass.
        nbytes = len(bitmap)
        out, ptr = self._out(8 * nbytes)
        got = self.lib.ds_bitmap_pages(self.ffi.from_buffer(bitmap, require_writable=bool(clear)),
                                       nbytes, ptr, 8 * nbytes, 1 if clear else 0)
        return out[:got]

    def _changed(self, changed):
        return self.dirty_pages(memoryview(changed), False)

    def changed_pages(self, ram, last, npages, page_size, update):
        ffi = self.ffi
        changed = bytearray((npages + 7) // 8)
        self.lib.ds_compare_pages(ffi.from_buffer(ram), ffi.from_buffer(last, require_writable=update),
                                  npages, page_size, ffi.from_buffer(changed), 1 if update else 0)
        return self._changed(changed)

    def page_hashes(self, ram, npages, page_size):
        out = array("Q", bytes(8 * npages))
        self.lib.ds_hash_pages(self.ffi.from_buffer(ram), npages, page_size,
                               self.ffi.from_buffer("uint64_t[]", out))
        return out

    def changed_pages_by_hash(self, ram, hashes, npages, page_size, update):
        ffi = self.ffi
        changed = bytearray((npages + 7) // 8)
        self.lib.ds_compare_hashes(ffi.from_buffer(ram), ffi.from_buffer("uint64_t[]", hashes),
                                   npages, page_size, ffi.from_buffer(changed), 1 if update else 0)
        return self._changed(changed)

    def nonzero_pages(self, ram, npages, page_size):
        bitmap = bytearray((npages + 7) // 8)
        self.lib.ds_nonzero_pages(self.ffi.from_buffer(ram), npages, page_size, self.ffi.from_buffer(bitmap))
        return self._changed(bitmap)

    def gather_pages(self, ram, npages, page_size, pfns):
        ffi, n = self.ffi, len(pfns)
        enc, lengths, data = bytearray(n), array("I", bytes(4 * n)), bytearray(n * page_size)
        used = self.lib.ds_gather_pages(ffi.from_buffer(ram), npages, page_size,
                                        ffi.from_buffer("uint64_t[]", pfns), n, ffi.from_buffer(enc),
                                        ffi.from_buffer("uint32_t[]", lengths), ffi.from_buffer(data))
        del data[used:]
        return bytes(enc), lengths, data

    def scatter_pages(self, ram, npages, page_size, pfns, encodings, lengths, data, received):
        ffi = self.ffi
        bad = ffi.new("uint64_t *")
        err = self.lib.ds_scatter_pages(ffi.from_buffer(ram, require_writable=True), npages, page_size,
                                        ffi.from_buffer("uint64_t[]", pfns), ffi.from_buffer(encodings),
                                        ffi.from_buffer("uint32_t[]", lengths), len(pfns),
                                        ffi.from_buffer(data), len(data),
                                        ffi.from_buffer(received, require_writable=True), bad)
        return err, bad[0] if err else len(pfns)

    def xbzrle_encode(self, old, new, limit):
        limit = min(limit, 2 * len(new) + 16)   # no delta is longer: each pair carries >= 1 byte
        out = bytearray(limit)
        n = self.lib.ds_xbzrle_encode(self.ffi.from_buffer(old), self.ffi.from_buffer(new), len(new),
                                      self.ffi.from_buffer(out), limit)
        return None if n < 0 else bytes(out[:n])

    def xbzrle_decode(self, delta, page):
        return self.lib.ds_xbzrle_decode(self.ffi.from_buffer(delta), len(delta),
                                         self.ffi.from_buffer(page), len(page))


def c_available():
    """True when the C backend (pyvmm._dirtyscan) imports."""
    return _dirtyscan is not None


def _bytes_view(obj, what):
    """A flat byte view of a buffer, or of a GuestMemory's RAM (its ``view``)."""
    obj = getattr(obj, "view", obj)
    try:
        view = memoryview(obj)
    except TypeError:
        raise MigrationError(f"{what}: expected a buffer (bytes, bytearray, mmap, GuestMemory), "
                             f"got {type(obj).__name__}") from None
    if not view.c_contiguous:
        raise MigrationError(f"{what}: the buffer is not contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class DirtyScanner:
    """The dirty-page scan with one backend: ``"c"``, ``"python"``, or None for C when built."""

    def __init__(self, backend=None, page_size=PAGE_SIZE):
        if backend is None:
            backend = "c" if c_available() else "python"
        if backend not in BACKENDS:
            raise MigrationError(f"dirty-scan backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if page_size <= 0 or page_size % 32:
            raise MigrationError(f"page size {page_size}: must be a positive multiple of 32")
        self.kernels = CKernels() if backend == "c" else PythonKernels()
        self.backend = backend
        self.page_size = page_size

    def _ram(self, ram):
        view = _bytes_view(ram, "guest RAM")
        if len(view) % self.page_size:
            raise MigrationError(f"guest RAM of {len(view)} bytes is not a whole number of "
                                 f"{self.page_size}-byte pages")
        return view, len(view) // self.page_size

    def dirty_pages(self, bitmap, clear=False):
        """Ascending numbers of the set bits of ``bitmap``; ``clear`` zeroes the bits read."""
        bits = _bytes_view(bitmap, "dirty bitmap")
        if clear and bits.readonly:
            raise MigrationError("dirty bitmap: clear=True needs a writable bitmap")
        return self.kernels.dirty_pages(bits, clear)

    def changed_pages(self, ram, last_sent, update=False):
        """Pages of ``ram`` that differ from ``last_sent`` (same size); ``update`` copies them over."""
        ram, npages = self._ram(ram)
        last = _bytes_view(last_sent, "last-sent copy")
        if len(last) != len(ram):
            raise MigrationError(f"last-sent copy of {len(last)} bytes does not match guest RAM "
                                 f"of {len(ram)} bytes")
        if update and last.readonly:
            raise MigrationError("last-sent copy: update=True needs a writable copy")
        return self.kernels.changed_pages(ram, last, npages, self.page_size, update)

    def page_hashes(self, ram):
        """One hash a page of ``ram``, as ``array('Q')``."""
        ram, npages = self._ram(ram)
        return self.kernels.page_hashes(ram, npages, self.page_size)

    def changed_pages_by_hash(self, ram, hashes, update=False):
        """Pages whose hash differs from ``hashes`` (an ``array('Q')``, one a page);
        ``update`` stores the new hashes of those pages."""
        ram, npages = self._ram(ram)
        if not isinstance(hashes, array) or hashes.typecode != "Q" or len(hashes) != npages:
            raise MigrationError(f"page hashes: expected array('Q') of {npages} entries, got "
                                 f"{type(hashes).__name__} of {len(hashes)}")
        return self.kernels.changed_pages_by_hash(ram, hashes, npages, self.page_size, update)

    def nonzero_pages(self, ram):
        """Ascending numbers of the pages of ``ram`` that hold a non-zero byte."""
        ram, npages = self._ram(ram)
        return self.kernels.nonzero_pages(ram, npages, self.page_size)

    def gather_pages(self, ram, pfns):
        """Pages ``pfns`` (an ``array('Q')``) of ``ram`` as a MEMORY record carries them:
        (encodings: bytes, PAGE_ZERO or PAGE_RAW each; lengths: ``array('I')``, 0 or the
        page size; data: bytearray, the RAW pages' bytes in order)."""
        ram, npages = self._ram(ram)
        if not isinstance(pfns, array) or pfns.typecode != "Q":
            raise MigrationError(f"gather_pages: page numbers must be array('Q'), got {type(pfns).__name__}")
        if pfns and max(pfns) >= npages:
            raise MigrationError(f"gather_pages: page {max(pfns):#x} is outside the {npages}-page RAM")
        return self.kernels.gather_pages(ram, npages, self.page_size, pfns)

    def scatter_pages(self, ram, pfns, encodings, lengths, data, received):
        """Put the pages of a MEMORY record into ``ram`` in order (the receiver's side
        of ``gather_pages``): ``pfns`` (array('Q')), ``encodings`` (bytes: PAGE_RAW,
        PAGE_ZERO or PAGE_XBZRLE each), ``lengths`` (array('I')) and ``data`` (the pages'
        data one after another). RAW copies the page in; ZERO zeroes it, except where
        ``received[pfn]`` is 0 (the caller's RAM is still zero there); XBZRLE applies the
        delta to the page in place and needs ``received[pfn]``. ``received`` (a bytearray,
        one byte a page) gets 1 for every page written. A refused entry raises
        MigrationStreamError naming it; the entries before it are applied, it and the
        rest are not (the caller drops the RAM)."""
        ram, npages = self._ram(ram)
        if ram.readonly:
            raise MigrationError("scatter_pages: guest RAM is read-only")
        if not isinstance(pfns, array) or pfns.typecode != "Q" or not isinstance(lengths, array) \
                or lengths.typecode != "I" or not len(pfns) == len(encodings) == len(lengths):
            raise MigrationError("scatter_pages: expected array('Q') page numbers, bytes encodings "
                                 "and array('I') lengths of one length")
        received = _bytes_view(received, "received pages")
        if len(received) != npages or received.readonly:
            raise MigrationError(f"scatter_pages: received map of {len(received)} bytes for "
                                 f"{npages} pages (one writable byte a page)")
        data = _bytes_view(data, "page data")
        err, index = self.kernels.scatter_pages(ram, npages, self.page_size, pfns, bytes(encodings),
                                                lengths, data, received)
        if err:
            problem = SCATTER_ERRORS.get(err) or f"is an XBZRLE delta that cannot apply: {XBZRLE_ERRORS[err]}"
            raise MigrationStreamError(f"page entry {index} (page {pfns[index]:#x}) {problem}")

    def xbzrle_encode(self, old, new, limit=None):
        """Delta turning ``old`` into ``new`` (equal lengths), or None if it would be
        longer than ``limit`` bytes (default: the page length; send the page raw)."""
        old, new = _bytes_view(old, "XBZRLE old page"), _bytes_view(new, "XBZRLE new page")
        if len(old) != len(new):
            raise MigrationError(f"XBZRLE: old page of {len(old)} bytes, new page of {len(new)}")
        limit = len(new) if limit is None else limit
        if limit < 0:
            raise MigrationError(f"XBZRLE limit {limit}: must be >= 0")
        return self.kernels.xbzrle_encode(old, new, limit)

    def xbzrle_decode(self, delta, old):
        """The page ``delta`` makes of ``old``; MigrationStreamError if the delta is malformed."""
        delta = _bytes_view(delta, "XBZRLE delta")
        page = bytearray(_bytes_view(old, "XBZRLE old page"))
        err = self.kernels.xbzrle_decode(delta, page)
        if err:
            raise MigrationStreamError(f"XBZRLE delta of {len(delta)} bytes for a {len(page)}-byte "
                                       f"page: {XBZRLE_ERRORS[err]}")
        return bytes(page)
