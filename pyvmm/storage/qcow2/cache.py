"""A write-back cache of cluster-sized metadata tables (L2 tables, refcount blocks).

Tables are kept decoded (an ``array`` of native integers, or a codec's object) and
keyed by their host offset. Least recently used tables are evicted first.

Invariants: a dirty table is written back only after ``before_writeback()`` has run
(the L2 cache passes "write the refcount blocks first and barrier", which is how a
crash can leak clusters but never leave an L2 entry pointing at a cluster whose
refcount is 0); ``flush`` writes dirty tables in host-offset order; the cache never
holds more than ``capacity`` tables.
"""
import sys
from array import array

_SWAP = sys.byteorder == "little"


class ArrayCodec:
    """Big-endian unsigned integers of one width <-> ``array`` of that width."""

    def __init__(self, typecode):
        self.typecode = typecode
        self.itemsize = array(typecode).itemsize

    def decode(self, data):
        table = array(self.typecode, data)
        if _SWAP and self.itemsize > 1:
            table.byteswap()
        return table

    def encode(self, table):
        if _SWAP and self.itemsize > 1:
            table = array(self.typecode, table)
            table.byteswap()
        return table.tobytes()

    def empty(self, nbytes):
        return array(self.typecode, bytes(nbytes))


def typecode_for_bits(bits):
    for code in ("B", "H", "I", "L", "Q"):
        if array(code).itemsize * 8 == bits:
            return code
    raise ValueError(f"no array type of {bits} bits")


class TableCache:
    def __init__(self, hostfile, table_size, capacity, codec, what, before_writeback=None):
        self.f = hostfile
        self.table_size = table_size
        self.capacity = max(2, capacity)
        self.codec = codec
        self.what = what
        self.before_writeback = before_writeback
        self.tables = {}
        self.dirty = set()
        # The most recently used table, served without touching the dict: it is
        # always the dict's last entry, so the dict order stays exact LRU order.
        self.mru_offset = None
        self.mru = None

    def get(self, offset):
        if offset == self.mru_offset:
            return self.mru
        tables = self.tables
        table = tables.get(offset)
        if table is None:
            data = self.f.pread_exact(offset, self.table_size, self.what)
            table = self.codec.decode(data)
            self._insert(offset, table)
        else:
            del tables[offset]
            tables[offset] = table
            self.mru_offset, self.mru = offset, table
        return table

    def new(self, offset):
        """A fresh all-zero table at ``offset`` (a cluster just allocated), dirty."""
        table = self.codec.empty(self.table_size)
        self._insert(offset, table)
        self.dirty.add(offset)
        return table

    def mark_dirty(self, offset, table):
        """Record a change to ``table``; brings it back if it was evicted meanwhile."""
        if offset not in self.tables:
            self._insert(offset, table)
        self.dirty.add(offset)

    def forget(self, offset):
        self.tables.pop(offset, None)
        self.dirty.discard(offset)
        if offset == self.mru_offset:
            self.mru_offset = self.mru = None

    def _insert(self, offset, table):
        if len(self.tables) >= self.capacity:
            victim = next(iter(self.tables))
            if victim in self.dirty:
                if self.before_writeback:
                    self.before_writeback()
                self._write(victim)
            del self.tables[victim]
        self.tables[offset] = table
        self.mru_offset, self.mru = offset, table

    def _write(self, offset):
        self.f.pwrite(offset, self.codec.encode(self.tables[offset]))
        self.dirty.discard(offset)

    def flush(self):
        """Write every dirty table; returns True if anything was written."""
        if not self.dirty:
            return False
        if self.before_writeback:
            self.before_writeback()
        for offset in sorted(self.dirty):
            self._write(offset)
        return True
