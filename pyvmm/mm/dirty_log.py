"""The dirty log: one bit per guest page, set when the guest writes the page.

Responsibility: remember which guest-physical pages were written since the log was
last read. Both MMU modes feed it (EPT: write-protected pages whose first write
exits; shadow: the dirty bit the VMM sets in the guest's PTE when it makes a shadow
entry writable), and migration reads it. Reading clears it (``read_and_clear``),
as KVM_GET_DIRTY_LOG does, and the reader then re-arms write tracking.

Invariant: bit n <-> page n (guest-physical ``n << 12``) written since the last read;
pages outside guest RAM are never marked.
"""

PAGE_SHIFT = 12


class DirtyLog:
    def __init__(self, ram_size):
        self.pages = -(-ram_size >> PAGE_SHIFT)
        self._bits = bytearray(-(-self.pages // 8))
        self.marked = 0                 # marks since creation (a statistic)

    def mark(self, gpa):
        gfn = gpa >> PAGE_SHIFT
        if 0 <= gfn < self.pages:
            self._bits[gfn >> 3] |= 1 << (gfn & 7)
            self.marked += 1

    def is_dirty(self, gpa):
        gfn = gpa >> PAGE_SHIFT
        return 0 <= gfn < self.pages and bool(self._bits[gfn >> 3] >> (gfn & 7) & 1)

    def read_and_clear(self):
        """The bitmap (bytes, bit n = page n, little-endian within a byte), then cleared."""
        out = bytes(self._bits)
        self._bits[:] = bytes(len(self._bits))
        return out

    @staticmethod
    def pages_in(bitmap):
        """Page numbers set in a bitmap from read_and_clear (the slow, obvious way)."""
        return [i * 8 + b for i, byte in enumerate(bitmap) if byte for b in range(8) if byte >> b & 1]
