"""bzImage kernels: placement, entry point, recorded header, refused images."""

import struct

from bootimages import MiB, bzimage, refusal, write
from pyvmm.boot.bzimage import load_bzimage
from pyvmm.mm.memory import GuestMemory

PAYLOAD = bytes(range(256)) * 16


def test_64_bit_kernel_at_1mib(tmp_path, memory):
    kernel = load_bzimage(write(tmp_path, "bz", bzimage(PAYLOAD)), memory)
    assert memory.read(0x100000, len(PAYLOAD)) == PAYLOAD
    assert (kernel.kind, kernel.entry_mode) == ("bzimage", "long64")
    assert kernel.entry == 0x100200                     # code32_start + 0x200
    assert (kernel.load_start, kernel.load_end) == (0x100000, 0x100000 + len(PAYLOAD))
    assert kernel.protocol == 0x020F
    assert kernel.cmdline_max == 2047
    assert kernel.initrd_addr_max == 0x7FFFFFFF
    assert kernel.kernel_alignment == 0x200000


def test_32_bit_kernel_enters_at_load_address(tmp_path, memory):
    kernel = load_bzimage(write(tmp_path, "bz", bzimage(PAYLOAD, xloadflags=0)), memory)
    assert (kernel.entry_mode, kernel.entry) == ("prot32", 0x100000)


def test_relocatable_kernel_goes_to_pref_address_when_it_fits(tmp_path):
    memory = GuestMemory(64 << 20)
    image = bzimage(PAYLOAD, relocatable=1, pref_address=0x1000000, init_size=8 * MiB)
    kernel = load_bzimage(write(tmp_path, "bz", image), memory)
    assert (kernel.load_start, kernel.entry) == (0x1000000, 0x1000200)
    assert memory.read(0x1000000, len(PAYLOAD)) == PAYLOAD
    assert kernel.reserved_end == 0x1000000 + 8 * MiB
    memory.close()


def test_relocatable_kernel_falls_back_to_1mib(tmp_path, memory):
    # pref_address 16 MiB + 8 MiB init_size does not fit in 16 MiB of RAM
    image = bzimage(PAYLOAD, relocatable=1, pref_address=0x1000000, init_size=8 * MiB)
    kernel = load_bzimage(write(tmp_path, "bz", image), memory)
    assert kernel.load_start == 0x100000
    # runtime start is 1 MiB aligned up to kernel_alignment (2 MiB), plus init_size
    assert kernel.reserved_end == 2 * MiB + 8 * MiB


def test_setup_sects_zero_means_four(tmp_path, memory):
    kernel = load_bzimage(write(tmp_path, "bz", bzimage(PAYLOAD, setup_sects=0)), memory)
    assert memory.read(0x100000, len(PAYLOAD)) == PAYLOAD   # payload found at 5 * 512
    assert kernel.load_end - kernel.load_start == len(PAYLOAD)


def test_setup_header_recorded_with_code32_start(tmp_path, memory):
    image = bzimage(PAYLOAD, header_length=0x6A)
    kernel = load_bzimage(write(tmp_path, "bz", image), memory)
    assert len(kernel.setup_header) == 0x202 + 0x6A - 0x1F1
    expected = bytearray(image[0x1F1:0x26C])
    struct.pack_into("<I", expected, 0x214 - 0x1F1, 0x100000)
    assert kernel.setup_header == bytes(expected)


def refused(tmp_path, memory, data, *words):
    path = write(tmp_path, "bad-bzImage", data)
    refusal(lambda: load_bzimage(path, memory), path, *words)


def test_protocol_2_04_is_refused(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD, version=0x0204),
            "boot protocol 2.04 is older than 2.06, which pyvmm needs")


def test_bad_boot_flag(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD, boot_flag=0x1234), "bad bzImage magic", "0xaa55")


def test_bad_header_magic(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD, magic=b"HdrZ"), "bad bzImage magic", "HdrS")


def test_truncated_in_setup(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD)[:1500], "truncated bzImage", "setup")


def test_truncated_payload(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD)[:-16], "truncated bzImage", "syssize")


def test_zimage_is_refused(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD, loadflags=0), "LOADED_HIGH")


def test_kernel_bigger_than_ram(tmp_path, memory):
    refused(tmp_path, memory, bzimage(bytes(17 * MiB)),
            "kernel of 17 MiB is larger than guest RAM (16 MiB)")


def test_init_size_bigger_than_ram(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD, init_size=32 * MiB), "init_size", "32 MiB", "16 MiB")


def test_init_size_past_end_of_ram(tmp_path, memory):
    refused(tmp_path, memory, bzimage(PAYLOAD, init_size=15 * MiB + 4096), "init_size", "from 0x100000")


def test_non_relocatable_kernel_runs_at_pref_address(tmp_path, memory):
    # boot.rst: a non-relocatable kernel moves itself to pref_address, so init_size counts from there
    refused(tmp_path, memory, bzimage(PAYLOAD, pref_address=0x1000000, init_size=MiB),
            "init_size", "from 0x1000000")
