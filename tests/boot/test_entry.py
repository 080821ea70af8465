"""Entry state, boot GDT and identity page tables."""

import struct

from bootimages import bzimage, elf, write
from pyvmm.boot import load_kernel

GDT = 0x2000
PML4 = 0x9000


def gdt(memory):
    return struct.unpack("<4Q", memory.read(GDT, 32))


def walk(memory, va):
    """Translate ``va`` through the 4-level tables; return (physical address, PDE)."""
    pml4e = memory.read_u64(PML4 + ((va >> 39) & 0x1FF) * 8)
    assert pml4e & 0x3 == 0x3
    pdpte = memory.read_u64((pml4e & ~0xFFF) + ((va >> 30) & 0x1FF) * 8)
    assert pdpte & 0x3 == 0x3 and not pdpte & 0x80
    pde = memory.read_u64((pdpte & ~0xFFF) + ((va >> 21) & 0x1FF) * 8)
    return (pde & ~0x1FFFFF & (2**52 - 1)) | (va & 0x1FFFFF), pde


def test_long64_entry_state(tmp_path, memory):
    info = load_kernel(write(tmp_path, "k.elf", elf(64, entry=0x100020)), memory)
    e = info.entry
    assert e.mode == "long64"
    assert (e.rip, e.rsp, e.rsi, e.rflags) == (0x100020, 0x8000, 0x3000, 0x2)
    assert (e.cr0, e.cr3, e.cr4, e.efer) == (0x80050033, 0x9000, 0x20, 0x500)
    assert (e.gdt_base, e.gdt_limit, e.idt_limit) == (0x2000, 31, 0)
    assert (e.cs, e.ds, e.es, e.ss, e.fs, e.gs) == (0x10, 0x18, 0x18, 0x18, 0x18, 0x18)
    assert e.code_segment == (0, 0xFFFFFFFF, 0xA9B)
    assert e.data_segment == (0, 0xFFFFFFFF, 0xC93)
    assert gdt(memory) == (0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)


def test_prot32_entry_state(tmp_path, memory):
    info = load_kernel(write(tmp_path, "bzImage", bzimage(xloadflags=0)), memory)
    e = info.entry
    assert e.mode == "prot32"
    assert (e.rip, e.rsp, e.rsi, e.rflags) == (0x100000, 0x8000, 0x3000, 0x2)
    assert (e.cr0, e.cr3, e.cr4, e.efer) == (0x11, 0, 0, 0)
    assert e.code_segment == (0, 0xFFFFFFFF, 0xC9B)
    assert e.data_segment == (0, 0xFFFFFFFF, 0xC93)
    assert gdt(memory) == (0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
    assert memory.read(PML4, 0x6000) == bytes(0x6000)        # no page tables


def test_64_bit_bzimage_enters_at_0x200(tmp_path, memory):
    info = load_kernel(write(tmp_path, "bzImage", bzimage()), memory)
    assert (info.entry.mode, info.entry.rip) == ("long64", 0x100200)


def test_identity_map_of_4gib_with_2mib_pages(tmp_path, memory):
    load_kernel(write(tmp_path, "k.elf", elf(64)), memory)
    assert memory.read_u64(PML4) == 0xA000 | 0x3
    assert memory.read(PML4 + 8, 4088) == bytes(4088)        # one PML4 entry only
    for va in (0, 0x100000, 0x40200000, 0x7FE00123, 0xFFFFF000):
        pa, pde = walk(memory, va)
        assert pa == va
        assert pde & 0x83 == 0x83                             # present, writable, PS
    assert walk(memory, 0x40200000)[1] == 0x40200000 | 0x83
    assert memory.read_u64(0xA000 + 4 * 8) == 0               # nothing above 4 GiB
