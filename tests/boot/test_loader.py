"""load_kernel: format probing and file-level errors."""

from bootimages import bzimage, elf, refusal, write
from pyvmm.boot import load_kernel
from pyvmm.boot.image import mib


def refused(path, memory, *words):
    return refusal(lambda: load_kernel(path, memory), path, *words)


def test_dispatches_by_format(tmp_path, memory):
    assert load_kernel(write(tmp_path, "a", elf(32)), memory).kernel.kind == "elf32"
    assert load_kernel(write(tmp_path, "b", elf(64)), memory).kernel.kind == "elf64"
    assert load_kernel(write(tmp_path, "c", bzimage()), memory).kernel.kind == "bzimage"


def test_boot_info(tmp_path, memory):
    info = load_kernel(write(tmp_path, "k", elf(64)), memory, cmdline="root=/dev/vda")
    assert (info.initrd_gpa, info.initrd_size, info.cmdline) == (0, 0, "root=/dev/vda")
    assert info.entry.rip == info.kernel.entry == 0x100000


def test_missing_file(tmp_path, memory):
    refused(tmp_path / "vmlinux", memory, "cannot read kernel", "No such file")


def test_directory(tmp_path, memory):
    refused(tmp_path, memory, "cannot read kernel")


def test_neither_elf_nor_bzimage(tmp_path, memory):
    refused(write(tmp_path, "pe.exe", b"MZ\x90\x00" + bytes(2000)), memory,
            "not an ELF or bzImage kernel (starts with 4d 5a 90 00")


def test_empty_file(tmp_path, memory):
    refused(write(tmp_path, "empty", b""), memory, "not an ELF or bzImage kernel", "empty")


def test_truncated_elf_through_load_kernel(tmp_path, memory):
    refused(write(tmp_path, "cut.elf", elf(64)[:30]), memory, "truncated ELF header")


def test_old_bzimage_through_load_kernel(tmp_path, memory):
    refused(write(tmp_path, "old", bzimage(version=0x0204)), memory,
            "boot protocol 2.04 is older than 2.06")


def test_sizes_in_messages():
    assert [mib(16 << 20), mib(1 << 19), mib((15 << 20) - 4096), mib(100)] == \
        ["16 MiB", "0.5 MiB", "14.99 MiB", "100 bytes"]
