"""The qcow2 cluster map: guest cluster -> L1 entry -> L2 table -> L2 entry.

Source: QEMU docs/interop/qcow2.rst, "Cluster mapping". L1 and (standard, not
extended) L2 entries are big-endian u64:
- L1: bits 9-55 host offset of the L2 table (0 = unallocated), bit 63 "copied"
  (refcount exactly 1), other bits reserved.
- L2: bit 63 "copied", bit 62 compressed (then a compress.py descriptor); otherwise
  bit 0 "reads as zeros" (v3), bits 9-55 host offset of the data cluster
  (0 = unallocated: read the backing file, or zeros), bits 1-8 reserved.

Invariants: the L1 table is checked when the image opens (entries aligned, inside
the file, reserved bits clear); L2 tables live in a TableCache whose write-back
first writes the refcount blocks; the L1 table is written only after every dirty L2
table (``flush``), so an L1 entry on disk never points at an unwritten L2 table.
"""
import struct
from array import array

from pyvmm.errors import BadImageError, DiskImageError
from pyvmm.storage.qcow2.cache import ArrayCodec, TableCache
from pyvmm.storage.qcow2.header import MAX_L1_BYTES, OFF_L1

OFFSET_MASK = 0x00FFFFFFFFFFFE00      # bits 9-55, L1 and L2
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
L1_RESERVED = 0x7F000000000001FF
L2_RESERVED = 0x3F000000000001FE
PLAIN_LIMIT = 1 << 16


class ClusterMap:
    def __init__(self, hostfile, header, path, refcounts, cache_tables):
        self.f = hostfile
        self.path = path
        self.refcounts = refcounts
        self.cluster_bits = header.cluster_bits
        self.cs = 1 << header.cluster_bits
        self.l2_bits = header.cluster_bits - 3
        self.l2_mask = (1 << self.l2_bits) - 1
        self._q = ArrayCodec("Q")
        self.l1_offset = header.l1_table_offset
        self.l1 = self._q.decode(hostfile.pread_exact(self.l1_offset, header.l1_size * 8, "L1 table"))
        self.l1_dirty = False
        for i, entry in enumerate(self.l1):
            if entry:
                self._check_l1(i, entry)
        self.cache = TableCache(hostfile, self.cs, cache_tables, self._q, "L2 table",
                                before_writeback=self._refcounts_first)
        # guest cluster -> host offset, for entries seen to be plain data with COPIED
        # and checked (aligned, past the header, inside the file): the fast path of
        # reads and in-place writes. Kept in step by set_entry, the only writer.
        self.plain = {}
        self._not_plain = COMPRESSED | L2_RESERVED | ZERO | (self.cs - 1) | COPIED

    def _check_l1(self, i, entry):
        off = entry & OFFSET_MASK
        if entry & L1_RESERVED or off % self.cs:
            raise BadImageError(self.path, f"L1 entry {i} ({entry:#x}) has reserved bits set or is not "
                                           f"cluster aligned")
        if off and (off < self.cs or off + self.cs > self.f.size):
            raise BadImageError(self.path, f"L1 entry {i} points at {off:#x}, in the header or past the "
                                           f"end of the file ({self.f.size:#x} bytes)")

    def _refcounts_first(self):
        if self.refcounts.flush():
            self.f.barrier()

    def l2(self, l1i):
        """(host offset, decoded table) of L2 table ``l1i``, or (0, None)."""
        if l1i >= len(self.l1):
            return 0, None
        off = self.l1[l1i] & OFFSET_MASK
        if not off:
            return 0, None
        return off, self.cache.get(off)

    def entry(self, gci):
        off, table = self.l2(gci >> self.l2_bits)
        if not off:
            return 0
        e = table[gci & self.l2_mask]
        if e & self._not_plain == COPIED:
            self.note_plain(gci, e & OFFSET_MASK)
        return e

    def plain_host(self, gci):
        """Host offset of guest cluster ``gci`` if it is a plain COPIED data cluster inside
        the file (now remembered in ``plain``), else -1."""
        self.entry(gci)
        return self.plain.get(gci, -1)

    def plain_run(self, gci, count):
        """Host offset of guest cluster ``gci`` if clusters gci..gci+count-1 are plain
        COPIED data clusters at consecutive host offsets inside the file, else -1.

        One slice comparison per L2 table the run touches (not a Python step per
        cluster): the entries must equal ``first, first + cs, ...`` exactly, which
        also proves every one of them has no reserved, zero or compressed bit.
        """
        cs, bits, mask = self.cs, self.l2_bits, self.l2_mask
        first = expect = -1
        while count > 0:
            off, table = self.l2(gci >> bits)
            if table is None:
                return -1
            i = gci & mask
            n = min(count, mask + 1 - i)
            e = table[i]
            if e & self._not_plain != COPIED or (expect >= 0 and e != expect):
                return -1
            if n > 1 and table[i:i + n] != array("Q", range(e, e + n * cs, cs)):
                return -1
            if first < 0:
                first = e & OFFSET_MASK
            expect = e + n * cs
            gci += n
            count -= n
        if first < cs or (expect & OFFSET_MASK) > self.f.size:
            return -1
        return first

    def note_plain(self, gci, host):
        if self.cs <= host and host + self.cs <= self.f.size:
            if len(self.plain) >= PLAIN_LIMIT:
                self.plain.clear()
            self.plain[gci] = host

    def set_entry(self, gci, value):
        """Point guest cluster ``gci`` at ``value``, allocating its L2 table if needed."""
        l1i = gci >> self.l2_bits
        if l1i >= len(self.l1):
            raise DiskImageError(self.path, f"guest cluster {gci} is beyond the L1 table ({len(self.l1)} entries)")
        off, table = self.l2(l1i)
        if not off:
            if not value:
                return
            first, _ = self.refcounts.allocate(1)
            off = first * self.cs
            table = self.cache.new(off)
            self.l1[l1i] = off | COPIED
            self.l1_dirty = True
        elif not self.l1[l1i] & COPIED:
            raise DiskImageError(self.path, f"L2 table {l1i} is shared (no COPIED flag); writing "
                                            f"images with internal snapshots is not supported")
        table[gci & self.l2_mask] = value
        self.cache.mark_dirty(off, table)
        self.plain.pop(gci, None)
        if value & self._not_plain == COPIED:
            self.note_plain(gci, value & OFFSET_MASK)

    def flush(self):
        """Write dirty L2 tables, then the L1 table; True if anything was written."""
        wrote = self.cache.flush()
        if self.l1_dirty:
            self.f.pwrite(self.l1_offset, self._q.encode(self.l1))
            self.l1_dirty = False
            wrote = True
        return wrote

    def grow_l1(self, entries):
        """Move the L1 table to a new place with ``entries`` entries (more than now)."""
        if entries * 8 > MAX_L1_BYTES:
            raise DiskImageError(self.path, f"L1 table of {entries} entries is larger than 32 MiB")
        clusters = -(-entries * 8 // self.cs)
        old_first, old_clusters = self.l1_offset // self.cs, -(-len(self.l1) * 8 // self.cs)
        first, _ = self.refcounts.allocate(clusters, whole=True)
        new = array("Q", self.l1)
        new.extend(array("Q", bytes(8 * (entries - len(new)))))
        self.flush()
        self._refcounts_first()
        data = self._q.encode(new)
        self.f.pwrite(first * self.cs, data + bytes(clusters * self.cs - len(data)))
        self.f.barrier()
        self.f.pwrite(OFF_L1, struct.pack(">IQ", entries, first * self.cs))
        self.f.barrier()
        self.l1, self.l1_offset = new, first * self.cs
        if old_clusters:
            self.refcounts.free(old_first, old_clusters)
