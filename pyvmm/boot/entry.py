"""The CPU state a kernel is entered with, and the boot GDT and page tables it relies on.

Responsibility: write the boot GDT at ``BOOT_GDT`` and, for 64-bit entry, identity page
tables at ``BOOT_PML4``; describe the register state (``EntryState``) the CPU layer must
load before the first instruction, per docs/platform.md and the 32-bit / 64-bit boot
protocols of Documentation/arch/x86/boot.rst.

Invariants:
- GDT: 0x00 and 0x08 null, 0x10 (__BOOT_CS) flat code (64-bit: L=1; 32-bit: D=1),
  0x18 (__BOOT_DS) flat writable data; all base 0, limit 4 GiB, DPL 0.
- 64-bit page tables: one PML4 -> one PDPT -> 4 page directories of 2 MiB pages
  identity-mapping 0 .. ``BOOT_IDENTITY_MAP``, in [BOOT_PML4, BOOT_PT_END).
- Segment attributes in ``EntryState`` are in the AMD VMCB packed 12-bit form and agree
  with the GDT descriptors, with the accessed bit set as the CPU sets it when loading.
- Interrupts are off (RFLAGS 0x2); RSI points at the zero page; RSP at the boot stack.
"""

import struct
from dataclasses import dataclass
from typing import Literal

from pyvmm.mm.layout import (BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_IDENTITY_MAP, BOOT_PML4, BOOT_PT_END,
                             BOOT_STACK_TOP, MiB, PAGE_SIZE, ZERO_PAGE)

# Boot GDT descriptors (docs/platform.md); byte 5 = access, high nibble of byte 6 = flags.
CODE64_DESCRIPTOR = 0x00AF9A000000FFFF   # G=1 L=1, present, DPL 0, execute/read
CODE32_DESCRIPTOR = 0x00CF9A000000FFFF   # G=1 D=1, present, DPL 0, execute/read
DATA_DESCRIPTOR = 0x00CF92000000FFFF     # G=1 B=1, present, DPL 0, read/write
GDT_ENTRIES = 4                          # null, null, __BOOT_CS, __BOOT_DS
SEGMENT_ACCESSED = 0x1
FLAT_LIMIT = 0xFFFFFFFF                  # a 4 GiB limit as the VMCB stores it (byte granular)

RFLAGS_RESERVED = 0x2                    # bit 1 is always 1; IF clear
CR0_PE, CR0_MP, CR0_ET, CR0_NE = 1 << 0, 1 << 1, 1 << 4, 1 << 5
CR0_WP, CR0_AM, CR0_PG = 1 << 16, 1 << 18, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10

# Linux's own long-mode CR0 (arch/x86 CR0_STATE): PE|MP|ET|NE|WP|AM|PG = 0x80050033
CR0_LONG64 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
CR0_PROT32 = CR0_PE | CR0_ET

PTE_PRESENT, PTE_WRITABLE, PDE_PS = 1 << 0, 1 << 1, 1 << 7
LARGE_PAGE = 2 * MiB
IDENTITY_PDPT = BOOT_PML4 + PAGE_SIZE       # the identity map's PDPT, then its PDs, one after
IDENTITY_PD = IDENTITY_PDPT + PAGE_SIZE     # another (one entry per 2 MiB page)
_ENTRIES_PER_TABLE = PAGE_SIZE // 8


@dataclass
class EntryState:
    """Registers at the kernel's first instruction. Segments are (base, limit, attributes)."""

    mode: Literal["long64", "prot32"]
    rip: int
    rsp: int
    rsi: int
    rflags: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    gdt_base: int
    gdt_limit: int
    idt_base: int
    idt_limit: int
    cs: int
    ds: int
    es: int
    ss: int
    fs: int
    gs: int
    code_segment: tuple   # hidden part of CS: (base, limit, VMCB attributes)
    data_segment: tuple   # hidden part of DS, ES, SS, FS, GS


def vmcb_attributes(descriptor):
    """A GDT descriptor's attributes in the VMCB 12-bit form: access byte | flags << 8."""
    access = (descriptor >> 40) & 0xFF
    flags = (descriptor >> 52) & 0xF
    return access | SEGMENT_ACCESSED | flags << 8


def write_gdt(memory, mode):
    """Write the boot GDT for ``mode``; return its (base, limit)."""
    code = CODE64_DESCRIPTOR if mode == "long64" else CODE32_DESCRIPTOR
    table = [0] * GDT_ENTRIES
    table[BOOT_CS // 8] = code
    table[BOOT_DS // 8] = DATA_DESCRIPTOR
    memory.write(BOOT_GDT, struct.pack(f"<{GDT_ENTRIES}Q", *table))
    return BOOT_GDT, GDT_ENTRIES * 8 - 1


def write_identity_page_tables(memory):
    """Identity-map 0..BOOT_IDENTITY_MAP with 2 MiB pages; return the PML4 address."""
    pdpt, first_pd = IDENTITY_PDPT, IDENTITY_PD
    n_pds = BOOT_IDENTITY_MAP // (LARGE_PAGE * _ENTRIES_PER_TABLE)
    assert first_pd + n_pds * PAGE_SIZE <= BOOT_PT_END
    table = PTE_PRESENT | PTE_WRITABLE

    def page(entries):
        return struct.pack(f"<{_ENTRIES_PER_TABLE}Q", *entries, *[0] * (_ENTRIES_PER_TABLE - len(entries)))

    memory.write(BOOT_PML4, page([pdpt | table]))
    memory.write(pdpt, page([first_pd + i * PAGE_SIZE | table for i in range(n_pds)]))
    for i in range(n_pds):
        base = i * _ENTRIES_PER_TABLE * LARGE_PAGE
        memory.write(first_pd + i * PAGE_SIZE,
                     page([base + j * LARGE_PAGE | table | PDE_PS for j in range(_ENTRIES_PER_TABLE)]))
    return BOOT_PML4


def prepare_entry(memory, kernel):
    """Write the GDT (and page tables for 64-bit entry); return the entry state for ``kernel``."""
    long64 = kernel.entry_mode == "long64"
    gdt_base, gdt_limit = write_gdt(memory, kernel.entry_mode)
    cr3 = write_identity_page_tables(memory) if long64 else 0
    code = CODE64_DESCRIPTOR if long64 else CODE32_DESCRIPTOR
    return EntryState(
        mode=kernel.entry_mode, rip=kernel.entry, rsp=BOOT_STACK_TOP, rsi=ZERO_PAGE,
        rflags=RFLAGS_RESERVED,
        cr0=CR0_LONG64 if long64 else CR0_PROT32, cr3=cr3, cr4=CR4_PAE if long64 else 0,
        efer=EFER_LME | EFER_LMA if long64 else 0,
        gdt_base=gdt_base, gdt_limit=gdt_limit, idt_base=0, idt_limit=0,
        cs=BOOT_CS, ds=BOOT_DS, es=BOOT_DS, ss=BOOT_DS, fs=BOOT_DS, gs=BOOT_DS,
        code_segment=(0, FLAT_LIMIT, vmcb_attributes(code)),
        data_segment=(0, FLAT_LIMIT, vmcb_attributes(DATA_DESCRIPTOR)))
