"""qcow2 refcounts: the refcount table, refcount blocks, allocating and freeing clusters.

Source: QEMU docs/interop/qcow2.rst, "Host cluster management". The refcount table
holds big-endian u64 offsets of refcount blocks (bits 0-8 reserved, 0 = block not
allocated); a refcount block is one cluster of ``refcount_bits``-wide big-endian
entries, sub-byte widths packed least significant bit first.

Invariants (what makes a crash leak clusters but never corrupt the image):
- a cluster's refcount is raised, and reaches the disk, before anything that points
  at it (the L2 cache writes refcount blocks first, see cache.py);
- a refcount block is written before the refcount table entry that points at it, and
  a new refcount table before the header that points at it, each with a barrier;
- refcounts are lowered only through ``free`` -> ``apply_pending``, which the image
  runs after the L2/L1 tables that stopped pointing at the clusters are on disk;
  until then the clusters keep their refcount, so they cannot be handed out again.
"""
import struct
from array import array

from pyvmm.errors import BadImageError, DiskImageError
from pyvmm.storage.qcow2.cache import ArrayCodec, TableCache, typecode_for_bits
from pyvmm.storage.qcow2.header import MAX_REFTABLE_BYTES, OFF_REFTABLE

RT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00   # qcow2.rst: refcount table entry bits 9-63
RT_RESERVED = 0x1FF


class PackedCounts:
    """A refcount block of 1-, 2- or 4-bit entries (least significant bits first)."""

    def __init__(self, data, bits):
        self.buf = bytearray(data)
        self.bits = bits
        self.shift = {1: 3, 2: 2, 4: 1}[bits]
        self.low = (1 << self.shift) - 1
        self.mask = (1 << bits) - 1

    def __getitem__(self, i):
        return (self.buf[i >> self.shift] >> ((i & self.low) * self.bits)) & self.mask

    def __setitem__(self, i, value):
        at = (i & self.low) * self.bits
        byte = self.buf[i >> self.shift] & ~(self.mask << at)
        self.buf[i >> self.shift] = byte | (value << at)


class PackedCodec:
    def __init__(self, bits):
        self.bits = bits

    def decode(self, data):
        return PackedCounts(data, self.bits)

    def encode(self, table):
        return bytes(table.buf)

    def empty(self, nbytes):
        return PackedCounts(bytes(nbytes), self.bits)


class Refcounts:
    def __init__(self, hostfile, header, path, cache_tables):
        self.f = hostfile
        self.path = path
        self.cluster_bits = header.cluster_bits
        self.cs = 1 << self.cluster_bits
        bits = 1 << header.refcount_order
        self.max_refcount = (1 << bits) - 1
        self.block_shift = self.cluster_bits + 3 - header.refcount_order
        self.block_mask = (1 << self.block_shift) - 1
        self.table_offset = header.refcount_table_offset
        self.table_clusters = header.refcount_table_clusters
        self._q = ArrayCodec("Q")
        self.table = self._q.decode(hostfile.pread_exact(
            self.table_offset, self.table_clusters * self.cs, "refcount table"))
        self.codec = ArrayCodec(typecode_for_bits(bits)) if bits >= 8 else PackedCodec(bits)
        self.cache = TableCache(hostfile, self.cs, cache_tables, self.codec, "refcount block")
        self.pending = []          # (first cluster, count) freed, not yet decremented
        self.hint = 0              # no free cluster below this one
        self.end = -(-hostfile.size // self.cs)   # every cluster from here on is free

    # -- lookups ---------------------------------------------------------------
    def _block_offset(self, ti):
        entry = self.table[ti]
        off = entry & RT_OFFSET_MASK
        if entry & RT_RESERVED or off % self.cs:
            raise BadImageError(self.path, f"refcount table entry {ti} ({entry:#x}) is not cluster aligned")
        if off and off + self.cs > self.f.size:
            raise BadImageError(self.path, f"refcount block {ti} at {off:#x} is past the end of the file "
                                           f"({self.f.size:#x} bytes)")
        return off

    def get(self, cluster):
        ti = cluster >> self.block_shift
        if ti >= len(self.table):
            return 0
        off = self._block_offset(ti)
        if not off:
            return 0
        return self.cache.get(off)[cluster & self.block_mask]

    # -- changes ---------------------------------------------------------------
    def change(self, cluster, count, delta):
        """Add ``delta`` to the refcounts of ``count`` clusters from ``cluster``."""
        while count:
            ti = cluster >> self.block_shift
            if ti >= len(self.table) or not self._block_offset(ti):
                self._create_block(ti)
            off = self._block_offset(ti)
            block = self.cache.get(off)
            start = cluster & self.block_mask
            n = min(count, self.block_mask + 1 - start)
            for i in range(start, start + n):
                value = block[i] + delta
                if not 0 <= value <= self.max_refcount:
                    raise BadImageError(self.path, f"refcount of cluster {(ti << self.block_shift) + i} "
                                                   f"would become {value} (limit {self.max_refcount})")
            for i in range(start, start + n):
                block[i] += delta
            self.cache.mark_dirty(off, block)
            cluster += n
            count -= n

    def _create_block(self, ti):
        """A new refcount block for table entry ``ti``, placed in the first cluster it
        covers (free: nothing it covers can have a refcount yet) and counting itself."""
        if ti >= len(self.table):
            self._grow_table(ti)
            if self._block_offset(ti):
                return
        if ti == 0:
            raise BadImageError(self.path, "refcount table entry 0 is empty: the header has no refcount")
        cluster = ti << self.block_shift
        block = self.codec.empty(self.cs)
        block[0] = 1
        off = cluster * self.cs
        self.f.pwrite(off, self.codec.encode(block))
        self.f.barrier()
        self.table[ti] = off
        self.f.pwrite(self.table_offset + ti * 8, struct.pack(">Q", off))
        self.end = max(self.end, cluster + 1)

    def _grow_table(self, need):
        """Move the refcount table to the end of the image with room for entry ``need``."""
        per = self.cs // 8
        old = self.table
        t = self.end
        entries = max(need + 1, 2 * len(old))
        nblocks = 0
        while True:
            k = -(-entries // per)
            last = t + k + nblocks - 1
            needed = [ti for ti in range(t >> self.block_shift, (last >> self.block_shift) + 1)
                      if ti >= len(old) or not old[ti]]
            if needed:
                entries = max(entries, needed[-1] + 1)
            if len(needed) == nblocks and -(-entries // per) == k:
                break
            nblocks = len(needed)
        if k * self.cs > MAX_REFTABLE_BYTES:
            raise DiskImageError(self.path, f"refcount table would grow past 8 MiB ({k} clusters)")
        new = array("Q", old)
        new.extend(array("Q", bytes(8 * (k * per - len(old)))))
        blocks = {}
        for j, ti in enumerate(needed):
            new[ti] = (t + k + j) * self.cs
            blocks[ti] = self.codec.empty(self.cs)
        for c in range(t, t + k + nblocks):
            ti = c >> self.block_shift
            if ti in blocks:
                blocks[ti][c & self.block_mask] += 1
            else:
                self.change(c, 1, 1)
        self.cache.flush()
        for ti, block in blocks.items():
            self.f.pwrite(new[ti], self.codec.encode(block))
        self.f.pwrite(t * self.cs, self._q.encode(new))
        self.f.barrier()
        self.f.pwrite(OFF_REFTABLE, struct.pack(">QI", t * self.cs, k))
        self.f.barrier()
        old_first, old_count = self.table_offset // self.cs, self.table_clusters
        self.table, self.table_offset, self.table_clusters = new, t * self.cs, k
        self.end = max(self.end, t + k + nblocks)
        self.change(old_first, old_count, -1)
        self.hint = min(self.hint, old_first)

    # -- allocation ------------------------------------------------------------
    def _find_free(self, n, whole):
        """First run of free clusters from the hint: (first, length <= n); with
        ``whole`` only a run of exactly n."""
        c = self.hint
        while c < self.end:
            if self.get(c) == 0:
                run = 1
                while run < n and (c + run >= self.end or self.get(c + run) == 0):
                    run += 1
                if run == n or not whole:
                    return c, run
                c += run
            else:
                c += 1
        return c, n

    def allocate(self, n, whole=False):
        """Allocate up to ``n`` (exactly n with ``whole``) contiguous clusters with
        refcount 1: returns (first cluster, count)."""
        while True:
            first, got = self._find_free(n, whole)
            created = False
            for ti in range(first >> self.block_shift, ((first + got - 1) >> self.block_shift) + 1):
                if ti >= len(self.table) or not self._block_offset(ti):
                    self._create_block(ti)
                    created = True
            if not created:
                break
        self.change(first, got, 1)
        if first == self.hint:
            self.hint = first + got
        self.end = max(self.end, first + got)
        return first, got

    def free(self, cluster, count=1):
        """Drop one reference to ``count`` clusters once the pointers to them are on disk."""
        self.pending.append((cluster, count))

    def apply_pending(self):
        """Lower the refcounts of freed clusters; returns the runs that became free."""
        freed = []
        pending, self.pending = self.pending, []
        for cluster, count in pending:
            self.change(cluster, count, -1)
            self.hint = min(self.hint, cluster)
            for c in range(cluster, cluster + count):
                if self.get(c) == 0:
                    if freed and freed[-1][0] + freed[-1][1] == c:
                        freed[-1][1] += 1
                    else:
                        freed.append([c, 1])
        return freed

    def flush(self):
        return self.cache.flush()
