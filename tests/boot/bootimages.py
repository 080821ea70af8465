"""Synthetic kernel images for the boot tests, built byte by byte with struct.

Offsets are written out literally (from the ELF spec, boot.rst and bootparam.h) rather
than taken from pyvmm, so the tests check pyvmm's offsets instead of repeating them.
"""

import struct

import pytest

from pyvmm.errors import BadImageError

EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_NOTE = 1, 4

MiB = 1 << 20


def elf(bits=64, machine=None, etype=ET_EXEC, entry=0x100000, segments=None, data_byte=1):
    """An ELF file. ``segments``: (paddr, file bytes, memsz[, p_type]) tuples."""
    if machine is None:
        machine = EM_X86_64 if bits == 64 else EM_386
    if segments is None:
        segments = [(0x100000, b"\xf4" * 64, 0x1000)]
    ehsize, phentsize = (64, 56) if bits == 64 else (52, 32)
    phoff = ehsize
    offset = phoff + phentsize * len(segments)
    phdrs, blobs = b"", b""
    for seg in segments:
        paddr, payload, memsz = seg[:3]
        ptype = seg[3] if len(seg) > 3 else PT_LOAD
        if bits == 64:
            # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
            phdrs += struct.pack("<IIQQQQQQ", ptype, 7, offset, paddr, paddr, len(payload), memsz, 16)
        else:
            # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
            phdrs += struct.pack("<IIIIIIII", ptype, offset, paddr, paddr, len(payload), memsz, 7, 16)
        blobs += payload
        offset += len(payload)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, data_byte, 1]) + bytes(9)
    if bits == 64:
        header = struct.pack("<16sHHIQQQIHHHHHH", ident, etype, machine, 1, entry, phoff, 0, 0,
                             ehsize, phentsize, len(segments), 64, 0, 0)
    else:
        header = struct.pack("<16sHHIIIIIHHHHHH", ident, etype, machine, 1, entry, phoff, 0, 0,
                             ehsize, phentsize, len(segments), 40, 0, 0)
    return header + phdrs + blobs


def bzimage(payload=b"\xf4" * 4096, version=0x020F, setup_sects=4, loadflags=0x01, xloadflags=0x01,
            relocatable=0, kernel_alignment=0x200000, pref_address=0x100000, init_size=0,
            initrd_addr_max=0x7FFFFFFF, cmdline_size=2047, boot_flag=0xAA55, magic=b"HdrS",
            syssize=None, header_length=0x6A, payload_offset=0, payload_length=0):
    """A bzImage: boot sector + setup sectors holding a setup header, then ``payload``."""
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    if syssize is None:
        syssize = (len(payload) + 15) // 16
        payload = payload + bytes(syssize * 16 - len(payload))
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<I", setup, 0x1F4, syssize)
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    struct.pack_into("<BB", setup, 0x200, 0xEB, header_length)
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x214, 0x100000)           # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    struct.pack_into("<B", setup, 0x234, relocatable)
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<II", setup, 0x248, payload_offset, payload_length)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refusal(call, path, *words):
    """Run ``call()``; check it raises one BadImageError naming ``path`` and saying ``words``."""
    with pytest.raises(BadImageError) as err:
        call()
    message = str(err.value)
    assert err.value.path == str(path)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message
