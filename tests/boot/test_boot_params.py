"""The zero page, byte for byte, the command line and the initrd, through load_kernel."""

import struct

from bootimages import MiB, bzimage, elf, refusal, write
from pyvmm.boot import load_kernel

ZERO_PAGE = 0x3000
PAYLOAD = b"\xf4" * 8192


def u8(memory, offset):
    return memory.read_u8(ZERO_PAGE + offset)


def u16(memory, offset):
    return memory.read_u16(ZERO_PAGE + offset)


def u32(memory, offset):
    return memory.read_u32(ZERO_PAGE + offset)


def test_bzimage_zero_page(tmp_path, memory):
    image = bzimage(PAYLOAD, relocatable=1, kernel_alignment=0x200000)
    kernel = write(tmp_path, "bzImage", image)
    initrd = write(tmp_path, "initrd", b"INITRD" * 1000)
    info = load_kernel(kernel, memory, initrd=initrd, cmdline="console=ttyS0 quiet")

    # e820: count at 0x1e8, 20-byte entries (u64 addr, u64 size, u32 type) at 0x2d0
    assert u8(memory, 0x1E8) == 3
    assert memory.read(ZERO_PAGE + 0x2D0, 60) == (
        struct.pack("<QQI", 0, 0x9FC00, 1)
        + struct.pack("<QQI", 0x9FC00, 0x100000 - 0x9FC00, 2)
        + struct.pack("<QQI", 0x100000, (16 << 20) - 0x100000, 1))
    assert memory.read(ZERO_PAGE + 0x2D0 + 60, 20) == bytes(20)

    # command line
    assert u32(memory, 0x228) == 0x4000
    assert u32(memory, 0x0C8) == 0
    assert memory.read(0x4000, 20) == b"console=ttyS0 quiet\0"

    # initrd
    assert (u32(memory, 0x218), u32(memory, 0x21C)) == (info.initrd_gpa, 6000)
    assert (u32(memory, 0x0C0), u32(memory, 0x0C4)) == (0, 0)

    # header copied from the image; loader fields set
    assert u16(memory, 0x1FE) == 0xAA55
    assert memory.read(ZERO_PAGE + 0x202, 4) == b"HdrS"
    assert u16(memory, 0x206) == 0x020F
    assert u8(memory, 0x210) == 0xFF                       # type_of_loader
    assert u8(memory, 0x211) & 0x01                        # LOADED_HIGH
    assert u32(memory, 0x214) == info.kernel.load_start    # code32_start
    assert u32(memory, 0x230) == 0x200000                  # kernel_alignment
    assert u8(memory, 0x234) == 1                          # relocatable_kernel
    assert u16(memory, 0x236) == 0x01                      # xloadflags
    assert u32(memory, 0x238) == 2047                      # cmdline_size
    assert u8(memory, 0x1EF) == 0                          # sentinel stays clear
    assert memory.read(ZERO_PAGE + 0x26C, 0x2D0 - 0x26C) == bytes(0x2D0 - 0x26C)  # after hdr


def test_elf_gets_a_minimal_header(tmp_path, memory):
    load_kernel(write(tmp_path, "k.elf", elf(64)), memory, cmdline="x")
    assert u16(memory, 0x1FE) == 0xAA55
    assert memory.read(ZERO_PAGE + 0x202, 4) == b"HdrS"
    assert u16(memory, 0x206) == 0x020F
    assert u8(memory, 0x210) == 0xFF
    assert u8(memory, 0x211) == 0x01
    assert u32(memory, 0x228) == 0x4000
    assert (u32(memory, 0x218), u32(memory, 0x21C)) == (0, 0)
    assert u8(memory, 0x1E8) == 3
    assert memory.read(0x4000, 2) == b"x\0"


def test_initrd_goes_page_aligned_to_the_top_of_ram(tmp_path, memory):
    initrd = write(tmp_path, "initrd", b"R" * 5000)
    info = load_kernel(write(tmp_path, "k.elf", elf(64)), memory, initrd=initrd)
    assert info.initrd_gpa == ((16 << 20) - 5000) & ~0xFFF
    assert info.initrd_size == 5000
    assert memory.read(info.initrd_gpa, 5000) == b"R" * 5000


def test_initrd_stays_below_initrd_addr_max(tmp_path, memory):
    kernel = write(tmp_path, "bzImage", bzimage(PAYLOAD, initrd_addr_max=0xBFFFFF))
    info = load_kernel(kernel, memory, initrd=write(tmp_path, "initrd", b"R" * 5000))
    assert info.initrd_gpa % 4096 == 0
    assert info.initrd_gpa + 5000 <= 0xC00000
    assert info.initrd_gpa == (0xC00000 - 5000) & ~0xFFF


def test_initrd_that_does_not_fit(tmp_path, memory):
    kernel = write(tmp_path, "k.elf", elf(64))
    initrd = write(tmp_path, "big.img", bytes(15 * MiB))
    refusal(lambda: load_kernel(kernel, memory, initrd=initrd), initrd,
            "initrd of 15 MiB does not fit in guest RAM above the kernel (14.99 MiB free)")


def test_empty_initrd(tmp_path, memory):
    kernel = write(tmp_path, "k.elf", elf(64))
    initrd = write(tmp_path, "empty.img", b"")
    refusal(lambda: load_kernel(kernel, memory, initrd=initrd), initrd, "initrd file is empty")


def test_missing_initrd(tmp_path, memory):
    kernel = write(tmp_path, "k.elf", elf(64))
    initrd = tmp_path / "nope.img"
    refusal(lambda: load_kernel(kernel, memory, initrd=initrd), initrd,
            "cannot read initrd", "No such file")


def test_cmdline_too_long_for_pyvmm(tmp_path, memory):
    kernel = write(tmp_path, "k.elf", elf(64))
    load_kernel(kernel, memory, cmdline="a" * 4095)
    refusal(lambda: load_kernel(kernel, memory, cmdline="a" * 4096), kernel,
            "command line of 4096 bytes is too long: at most 4095 fit")


def test_cmdline_too_long_for_the_kernel(tmp_path, memory):
    kernel = write(tmp_path, "bzImage", bzimage(PAYLOAD, cmdline_size=255))
    load_kernel(kernel, memory, cmdline="a" * 255)
    assert memory.read(0x4000 + 255, 1) == b"\0"
    refusal(lambda: load_kernel(kernel, memory, cmdline="a" * 256), kernel,
            "command line of 256 bytes is too long: at most 255 fit")
