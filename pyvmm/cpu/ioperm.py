"""I/O permission: may the guest's current privilege level use a port?

Unicorn runs IN/OUT/INS/OUTS hooks without the protected-mode I/O permission check,
so root mode makes it (SDM Vol. 1, 19.5 "Protected-mode I/O"): when CPL > IOPL, every
port the access touches must have its bit clear in the TSS I/O permission bitmap,
which starts at the 16-bit offset stored at TSS+0x66 and must lie within the TSS
limit; otherwise the instruction raises #GP(0) before it does anything.
"""

from pyvmm.errors import GuestFault, GuestMemoryError
from pyvmm.mm.pagewalk import read_linear

IOMAP_BASE_OFFSET = 0x66
RFLAGS_IOPL_SHIFT = 12


def io_allowed(cpu, mem, paging, port, size, cpl, rflags, tlb=None):
    """True if the access may proceed; False means #GP(0)."""
    if cpl <= (rflags >> RFLAGS_IOPL_SHIFT) & 3:
        return True
    tr = cpu.get_table("tr")
    try:
        if tr.limit < IOMAP_BASE_OFFSET + 1:
            return False
        base = int.from_bytes(read_linear(mem, paging, tr.base + IOMAP_BASE_OFFSET, 2, tlb=tlb), "little")
        first, last = port >> 3, (port + size - 1) >> 3
        if base + last > tr.limit:
            return False
        bits = int.from_bytes(read_linear(mem, paging, tr.base + base + first, last - first + 1, tlb=tlb), "little")
    except (GuestFault, GuestMemoryError):
        return False      # an unreadable TSS denies, as hardware faults on it
    mask = ((1 << size) - 1) << (port & 7)
    return not bits & mask
