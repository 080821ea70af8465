"""A reference walker for 4-level (IA-32e) paging, written to be read against the SDM.

Responsibility: given the paging registers, an access, and guest physical memory, say what
the CPU does: the physical address and the rights of the page, or the #PF error code (or
#GP for a non-canonical address). It exists to check pyvmm's working walkers
(pyvmm/mm/pagewalk.py, and the shadow/EPT MMUs) against, so it trades speed for being
obviously right: one function per rule, named after the SDM section it implements.

Source: Intel SDM Vol. 3A, chapter 4 (4.1.1 canonical addresses, 4.5 4-level paging and
Tables 4-14 .. 4-20 for the entry formats, 4.6 access rights, 4.7 page-fault error code).

Invariants and choices:
- Only 4-level paging (CR0.PG = 1, CR4.PAE = 1, EFER.LMA = 1); CR4.PSE is ignored there
  (SDM 4.1.1: PSE only matters for 32-bit paging). No PCID, no protection keys, no
  5-level paging, no shadow stacks.
- Memory is read through ``read_u64(paddr)``; an entry outside guest RAM reads as all ones,
  as a read of unbacked physical memory does on a PC. All ones has reserved bits set
  (bits 51:MAXPHYADDR, and the PS bit of a PML4E), so such a walk ends in a RSVD fault.
- Reserved bits (Tables 4-14 .. 4-20): in every entry bits 51:MAXPHYADDR and, with
  EFER.NXE = 0, bit 63; PML4E bit 7; a 1-GiB PDPTE bits 29:13 (and PS itself when the CPU
  has no 1-GiB pages); a 2-MiB PDE bits 20:13. A not-present entry is never checked.
- Rights (SDM 4.6) are the combination over every level: writable if R/W = 1 at every
  level, user if U/S = 1 at every level, executable unless XD = 1 at some level (with
  EFER.NXE = 1). Faults found while walking (not present, reserved) win over rights.
- Error code (SDM 4.7): P = 0 only for a not-present entry; W/R, U/S as the access; RSVD;
  I/D only for a fetch when CR4.SMEP = 1 or EFER.NXE = 1.
- Accessed/dirty bits are not modelled: the walk never writes memory.
"""

from dataclasses import dataclass

from pyvmm.errors import GuestMemoryError

# CR0 / CR4 / EFER bits (SDM Vol. 3A, 2.5; EFER: 2.2.1)
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
RFLAGS_AC = 1 << 18

# Paging-structure entry bits (SDM Vol. 3A, Tables 4-14 .. 4-20)
P, RW, US, PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
XD = 1 << 63

# Page-fault error code bits (SDM Vol. 3A, 4.7, Figure 4-12)
PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_I = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4

PF_VECTOR = 14
GP_VECTOR = 13
ALL_ONES = (1 << 64) - 1

LEVELS = ("PML4E", "PDPTE", "PDE", "PTE")
SHIFTS = (39, 30, 21, 12)


@dataclass(frozen=True)
class Cpu:
    """The CPU state a walk depends on."""
    cr0: int
    cr3: int
    cr4: int
    efer: int
    rflags: int = 0x2
    maxphyaddr: int = 40       # physical-address width (CPUID.80000008H:EAX[7:0])
    page1gb: bool = True       # 1-GiB pages supported (CPUID.80000001H:EDX[26])


@dataclass(frozen=True)
class Access:
    """One linear-address access. ``user``: made at CPL 3. ``implicit``: a supervisor-mode
    access the CPU makes on its own (to the GDT, IDT, TSS ...) whatever the CPL."""
    write: bool = False
    user: bool = False
    fetch: bool = False
    implicit: bool = False


@dataclass(frozen=True)
class Translation:
    """A successful walk: the physical address and the rights of the page."""
    paddr: int
    page_size: int
    writable: bool
    user: bool
    executable: bool


@dataclass(frozen=True)
class Fault:
    """The exception the access raises: #PF with its error code and CR2, or #GP(0)."""
    vector: int
    error_code: int
    cr2: int | None = None


def is_canonical(vaddr):
    """SDM 4.1.1 / Vol. 1, 3.3.7.1: bits 63:47 all equal (48-bit linear addresses)."""
    top = vaddr >> 47
    return top == 0 or top == (1 << 17) - 1


def address_mask(cpu):
    """Bits MAXPHYADDR-1:12 of an entry: the physical address of a table or page."""
    return ((1 << cpu.maxphyaddr) - 1) & ~0xFFF


def reserved_bits(cpu, level, entry):
    """The reserved bits of a present entry at ``level`` (0 = PML4E .. 3 = PTE) that are set."""
    rsvd = ((1 << 52) - 1) & ~((1 << cpu.maxphyaddr) - 1)      # bits 51:MAXPHYADDR
    if not cpu.efer & EFER_NXE:
        rsvd |= XD
    if level == 0:
        rsvd |= PS                                               # Table 4-15
    elif level == 1 and entry & PS:
        rsvd |= 0x3FFFE000 if cpu.page1gb else PS                # Table 4-16: bits 29:13
    elif level == 2 and entry & PS:
        rsvd |= 0x1FE000                                         # Table 4-18: bits 20:13
    return entry & rsvd


def error_code(cpu, access, present, rsvd=False):
    """SDM 4.7: the error code of a #PF for ``access``."""
    code = PFEC_P if present else 0
    if access.write:
        code |= PFEC_W
    if access.user:
        code |= PFEC_U
    if rsvd:
        code |= PFEC_RSVD
    if access.fetch and (cpu.cr4 & CR4_SMEP or cpu.efer & EFER_NXE):
        code |= PFEC_I
    return code


def allowed(cpu, access, writable, user_page, executable):
    """SDM 4.6: may ``access`` use a page with these combined rights?"""
    supervisor = access.implicit or not access.user
    if not supervisor:                                           # CPL 3, explicit
        if not user_page:
            return False
        if access.write:
            return writable
        if access.fetch:
            return executable
        return True
    if access.fetch:
        if user_page and cpu.cr4 & CR4_SMEP:
            return False
        return executable
    if user_page and cpu.cr4 & CR4_SMAP and (access.implicit or not cpu.rflags & RFLAGS_AC):
        return False
    if access.write and cpu.cr0 & CR0_WP:
        return writable
    return True


def walk(read_u64, cpu, vaddr, access):
    """Translate ``vaddr`` for ``access``: a Translation or a Fault.

    ``read_u64(paddr)`` reads an 8-byte entry (GuestMemory.read_u64); GuestMemoryError
    for an address outside RAM counts as reading all ones.
    """
    if not (cpu.cr0 & CR0_PG and cpu.cr4 & CR4_PAE and cpu.efer & EFER_LMA):
        raise ValueError(f"refwalk models 4-level paging only: cr0={cpu.cr0:#x} "
                         f"cr4={cpu.cr4:#x} efer={cpu.efer:#x}")
    if not is_canonical(vaddr):
        return Fault(GP_VECTOR, 0)
    table = cpu.cr3 & address_mask(cpu)
    writable = user_page = executable = True
    for level, shift in enumerate(SHIFTS):
        index = (vaddr >> shift) & 0x1FF
        entry = _read_entry(read_u64, table + index * 8)
        if not entry & P:
            return Fault(PF_VECTOR, error_code(cpu, access, present=False), vaddr)
        if reserved_bits(cpu, level, entry):
            return Fault(PF_VECTOR, error_code(cpu, access, present=True, rsvd=True), vaddr)
        writable = writable and bool(entry & RW)
        user_page = user_page and bool(entry & US)
        if cpu.efer & EFER_NXE and entry & XD:
            executable = False
        leaf = level == 3 or (level in (1, 2) and entry & PS)
        if leaf:
            if not allowed(cpu, access, writable, user_page, executable):
                return Fault(PF_VECTOR, error_code(cpu, access, present=True), vaddr)
            size = 1 << shift
            base = entry & address_mask(cpu) & ~(size - 1)
            return Translation(base | (vaddr & (size - 1)), size, writable, user_page, executable)
        table = entry & address_mask(cpu)
    raise AssertionError("a PTE is always a leaf")


def _read_entry(read_u64, paddr):
    try:
        return read_u64(paddr)
    except GuestMemoryError:   # outside RAM: the bus returns all ones
        return ALL_ONES
