"""The guest page-table walker: guest-linear to guest-physical, as the CPU does it.

Root mode uses it to read guest memory by linear address (the instruction at RIP,
the IDT, the stack it pushes an interrupt frame on, hypercall buffers). It walks
the guest's own tables in GuestMemory with the paging mode given by CR0, CR4 and
EFER (SDM Vol. 3A, chapter 4): no paging, 32-bit (with PSE 4 MiB pages), PAE, and
4-level (IA-32e). A walk that fails raises GuestFault(#PF) with the error code the
hardware would push (SDM Vol. 3A, 4.7). Accessed/dirty bits are not set by these
VMM-side walks.

A 4-level walk over GuestMemory is first tried in C (csrc/pagewalk.c, the same
checks): it answers only walks that succeed; a fault, a table outside RAM, and a
walk that records its path are done here, which also makes every #PF's error code.
"""

from pyvmm.cpu.state import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMEP, EFER_LMA, EFER_NXE
from pyvmm._pagewalk import lib as _c
from pyvmm.errors import GuestFault, GuestMemoryError

PF = 14
PTE_P, PTE_W, PTE_U, PTE_PS = 1, 2, 4, 0x80
PTE_NX = 1 << 63
# #PF error code bits (SDM Vol. 3A, Figure 4-12)
PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_I = 1, 2, 4, 8, 16
ADDR_MASK_4K = 0x000F_FFFF_FFFF_F000
MAXPHYADDR = _c.PW_MAXPHYADDR     # the emulated CPU's physical-address width (40)


class Paging:
    """The paging-relevant part of the CPU state, captured for a walk."""
    __slots__ = ("cr0", "cr3", "cr4", "efer")

    def __init__(self, cr0, cr3, cr4, efer):
        self.cr0, self.cr3, self.cr4, self.efer = cr0, cr3, cr4, efer

    @classmethod
    def of(cls, cpu):
        return cls(cpu.get_cr(0), cpu.get_cr(3), cpu.get_cr(4), cpu.efer)


def c_walk_flags(paging, write, user, fetch):
    """The access and the CPU state the C walk checks, as its ``flags`` (csrc/pagewalk.h)."""
    return ((write and _c.PW_WRITE) | (user and _c.PW_USER) | (fetch and _c.PW_FETCH)
            | (_c.PW_WP if paging.cr0 & CR0_WP else 0) | (_c.PW_NXE if paging.efer & EFER_NXE else 0))


def translate(mem, paging, vaddr, write=False, user=False, fetch=False, path=None):
    """Guest-linear ``vaddr`` -> guest-physical address, or GuestFault(#PF).

    With a list as ``path``, the walk appends ``(entry_address, entry)`` for every
    paging-structure entry it reads, top level first (the shadow MMU sets accessed
    and dirty bits through it and learns which guest frames are page tables)."""
    if not paging.cr0 & CR0_PG:
        return vaddr & 0xFFFF_FFFF
    if paging.efer & EFER_LMA and path is None:
        ram = getattr(mem, "host_address", None)
        if ram is not None:
            gpa = _c.pw_translate64(ram, mem.size, paging.cr3, vaddr & 0xFFFF_FFFF_FFFF_FFFF,
                                    c_walk_flags(paging, write, user, fetch))
            if gpa != _c.PW_FALLBACK:
                return gpa
    # I/D is only reported with SMEP or PAE-format NX (SDM Vol. 3A, 4.7)
    fetch_id = fetch and bool(paging.cr4 & CR4_SMEP or (paging.cr4 & CR4_PAE and paging.efer & EFER_NXE))
    rsvd_hi = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)   # bits 51:MAXPHYADDR; 62:52 are ignored
    if paging.efer & EFER_LMA:
        levels = ((paging.cr3 & ADDR_MASK_4K, 39), (None, 30), (None, 21), (None, 12))
        entry_size = 8
    elif paging.cr4 & CR4_PAE:
        pdpte = mem.read_u64((paging.cr3 & 0xFFFF_FFE0) + ((vaddr >> 30) & 3) * 8)
        if not pdpte & PTE_P:
            _fault(vaddr, 0, write, user, fetch_id)
        levels = ((pdpte & ADDR_MASK_4K, 21), (None, 12))
        entry_size = 8
    else:
        levels = ((paging.cr3 & 0xFFFF_F000, 22), (None, 12))
        entry_size = 4
    nx_ok = bool(paging.efer & EFER_NXE)
    table = levels[0][0]
    allow_w = allow_u = True
    allow_x = True
    for depth, (_, shift) in enumerate(levels):
        index = (vaddr >> shift) & (0x3FF if entry_size == 4 else 0x1FF)
        try:
            entry = mem.read_u64(table + index * 8) if entry_size == 8 else mem.read_u32(table + index * 4)
        except GuestMemoryError:
            # A table outside RAM reads as all ones on a PC: reserved bits are set.
            _fault(vaddr, PFEC_P | PFEC_RSVD, write, user, fetch_id)
        if path is not None:
            path.append((table + index * entry_size, entry))
        if not entry & PTE_P:
            _fault(vaddr, 0, write, user, fetch_id)
        if entry_size == 8 and (entry & rsvd_hi or (entry & PTE_NX and not nx_ok)
                                or entry & _large_reserved(len(levels) - depth, entry)):
            _fault(vaddr, PFEC_P | PFEC_RSVD, write, user, fetch_id)
        allow_w &= bool(entry & PTE_W)
        allow_u &= bool(entry & PTE_U)
        if entry_size == 8 and entry & PTE_NX:
            allow_x = False
        last = depth == len(levels) - 1
        large = not last and entry & PTE_PS and (shift in (21, 30) if entry_size == 8 else paging.cr4 & CR4_PSE)
        if last or large:
            _check(vaddr, write, user, fetch, fetch_id, allow_w, allow_u, allow_x, paging)
            if entry_size == 4 and large:        # 4 MiB page: bits 31:22, PSE-36 bits 20:13
                base = (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
            else:
                base = entry & ADDR_MASK_4K & ~((1 << shift) - 1)
            return base | (vaddr & ((1 << shift) - 1))
        table = entry & (ADDR_MASK_4K if entry_size == 8 else 0xFFFF_F000)
    raise AssertionError("unreachable")


def _large_reserved(levels_left, entry):
    """Reserved bits of a PAE-format entry beyond the address width (SDM Vol. 3A, Tables
    4-15, 4-16, 4-18): PS in a PML4E, bits 29:13 of a 1-GiB PDPTE, bits 20:13 of a 2-MiB PDE."""
    if levels_left == 4:
        return PTE_PS
    if not entry & PTE_PS:
        return 0
    return {3: 0x3FFF_E000, 2: 0x1F_E000}.get(levels_left, 0)


def _check(vaddr, write, user, fetch, fetch_id, allow_w, allow_u, allow_x, paging):
    if (user and not allow_u or write and not allow_w and (user or paging.cr0 & CR0_WP)
            or fetch and not allow_x):
        _fault(vaddr, PFEC_P, write, user, fetch_id)


def _fault(vaddr, code, write, user, fetch):
    code |= (PFEC_W if write else 0) | (PFEC_U if user else 0) | (PFEC_I if fetch else 0)
    raise GuestFault(PF, error_code=code, cr2=vaddr, why=f"page walk of {vaddr:#x}")


class TranslationCache:
    """Root mode's TLB: successful translations by (CR3, page, access). Like the
    CPU's TLB it is flushed by INVLPG and by CR writes (``flush``), never holds a
    failed walk, and may be stale in between exactly where the CPU's may be."""

    LIMIT = 1024

    def __init__(self):
        self._map = {}

    def translate(self, mem, paging, vaddr, write=False, user=False, fetch=False):
        key = (paging.cr3, vaddr >> 12, write, user, fetch)
        base = self._map.get(key)
        if base is None:
            base = translate(mem, paging, vaddr & ~0xFFF, write, user, fetch)
            if len(self._map) >= self.LIMIT:
                self._map.clear()
            self._map[key] = base
        return base | (vaddr & 0xFFF)

    def flush(self, address=None):
        self._map.clear()


def read_linear(mem, paging, vaddr, length, user=False, fetch=False, tlb=None):
    """Read ``length`` bytes at guest-linear ``vaddr`` (may cross pages)."""
    walk = tlb.translate if tlb is not None else translate
    if length <= 0x1000 - (vaddr & 0xFFF):          # one page: a hypercall's argument
        return mem.read(walk(mem, paging, vaddr, user=user, fetch=fetch), length) if length > 0 else b""
    out = bytearray()
    while length > 0:
        chunk = min(length, 0x1000 - (vaddr & 0xFFF))
        out += mem.read(walk(mem, paging, vaddr, user=user, fetch=fetch), chunk)
        vaddr += chunk
        length -= chunk
    return bytes(out)


def write_linear(mem, paging, vaddr, data, user=False):
    """Write ``data`` at guest-linear ``vaddr``; every page is translated before any
    byte is written, so a fault leaves memory unchanged."""
    parts, off = [], 0
    while off < len(data):
        chunk = min(len(data) - off, 0x1000 - ((vaddr + off) & 0xFFF))
        parts.append((translate(mem, paging, vaddr + off, write=True, user=user), data[off:off + chunk]))
        off += chunk
    for gpa, piece in parts:
        mem.write(gpa, piece)
