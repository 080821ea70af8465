"""ELF kernels: segments land at p_paddr, bss is zeroed, bad files are refused clearly."""

from bootimages import EM_AARCH64, ET_DYN, PT_NOTE, MiB, elf, refusal, write
from pyvmm.boot.elf import load_elf

CODE = bytes(range(1, 65))


def test_elf64_segments_land_at_paddr_with_zeroed_bss(tmp_path, memory):
    memory.fill(0x100000, 0x3000, 0xAA)           # garbage where the bss goes
    path = write(tmp_path, "k64.elf", elf(64, entry=0x100010, segments=[
        (0x100000, CODE, 0x1000),
        (0x102000, b"DATA", 0x1000),
        (0x0, b"note", 4, PT_NOTE),               # not PT_LOAD: ignored, even at 0
    ]))
    kernel = load_elf(path, memory)
    assert memory.read(0x100000, len(CODE)) == CODE
    assert memory.read(0x100000 + len(CODE), 0x1000 - len(CODE)) == bytes(0x1000 - len(CODE))
    assert memory.read(0x102000, 4) == b"DATA"
    assert memory.read(0x102004, 0x1000 - 4) == bytes(0x1000 - 4)
    assert (kernel.kind, kernel.entry_mode, kernel.entry) == ("elf64", "long64", 0x100010)
    assert (kernel.load_start, kernel.load_end) == (0x100000, 0x103000)
    assert kernel.setup_header is None


def test_elf32_loads_for_protected_mode_entry(tmp_path, memory):
    path = write(tmp_path, "k32.elf", elf(32, entry=0x200000, segments=[(0x200000, CODE, 0x2000)]))
    kernel = load_elf(path, memory)
    assert memory.read(0x200000, len(CODE)) == CODE
    assert memory.read(0x200000 + len(CODE), 0x2000 - len(CODE)) == bytes(0x2000 - len(CODE))
    assert (kernel.kind, kernel.entry_mode, kernel.entry) == ("elf32", "prot32", 0x200000)


def refused(tmp_path, memory, data, *words):
    """Load ``data`` as an ELF and check the error names the file and says ``words``."""
    path = write(tmp_path, "bad.elf", data)
    before = memory.read(0x100000, 0x1000)
    refusal(lambda: load_elf(path, memory), path, *words)
    assert memory.read(0x100000, 0x1000) == before      # nothing written


def test_truncated_header(tmp_path, memory):
    refused(tmp_path, memory, elf(64)[:30], "truncated ELF header", "30 bytes", "64")


def test_truncated_inside_a_segment(tmp_path, memory):
    data = elf(64, segments=[(0x100000, bytes(4096), 0x2000)])
    refused(tmp_path, memory, data[:-100], "truncated", "segment 0")


def test_corrupt_magic(tmp_path, memory):
    refused(tmp_path, memory, b"\x7fELG" + elf(64)[4:], "not an ELF file")


def test_wrong_machine(tmp_path, memory):
    refused(tmp_path, memory, elf(64, machine=EM_AARCH64), "EM_AARCH64", "EM_X86_64")


def test_32_bit_class_needs_em_386(tmp_path, memory):
    refused(tmp_path, memory, elf(32, machine=62), "EM_X86_64", "EM_386")


def test_not_et_exec(tmp_path, memory):
    refused(tmp_path, memory, elf(64, etype=ET_DYN), "ET_DYN", "ET_EXEC")


def test_big_endian(tmp_path, memory):
    refused(tmp_path, memory, elf(64, data_byte=2), "little-endian")


def test_no_pt_load(tmp_path, memory):
    refused(tmp_path, memory, elf(64, segments=[(0x100000, b"x", 1, PT_NOTE)]), "no PT_LOAD")


def test_memsz_smaller_than_filesz(tmp_path, memory):
    refused(tmp_path, memory, elf(64, segments=[(0x100000, CODE, 16)]), "p_memsz", "p_filesz")


def test_segment_in_boot_area(tmp_path, memory):
    refused(tmp_path, memory, elf(64, entry=0x8000, segments=[(0x8000, CODE, 0x100)]),
            "overlaps pyvmm's boot area")


def test_segment_outside_ram(tmp_path, memory):
    refused(tmp_path, memory, elf(64, entry=0xF00000, segments=[(0xF00000, CODE, 2 * MiB)]),
            "outside guest RAM", "16 MiB")


def test_kernel_larger_than_ram(tmp_path, memory):
    refused(tmp_path, memory, elf(64, segments=[(0x100000, CODE, 20 * MiB)]),
            "kernel of 20 MiB is larger than guest RAM (16 MiB)")


def test_entry_outside_segments(tmp_path, memory):
    refused(tmp_path, memory, elf(64, entry=0x500000), "entry point 0x500000", "not inside")
