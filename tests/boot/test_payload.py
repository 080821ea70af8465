"""A bzImage's payload decompressed on the host: the LZ4 legacy decoder (csrc/unlz4.c),
the standard-library formats, loading the kernel proper, and refusing bad payloads."""

import bz2
import gzip
import lzma
import os
import random
import shutil
import struct
import subprocess

import pytest

from bootimages import bzimage, elf, write
from pyvmm._unlz4 import ffi, lib
from pyvmm.boot import payload
from pyvmm.boot.bzimage import load_bzimage
from pyvmm.errors import BadImageError

MAGIC = struct.pack("<I", 0x184C2102)            # lz4 doc/lz4_Frame_format.md, legacy frame


def unlz4(frame, cap=1 << 20):
    out = bytearray(cap)
    n = lib.unlz4_legacy(ffi.from_buffer(frame), len(frame), ffi.from_buffer(out), cap)
    return n if n < 0 else bytes(out[:n])


def frame(*blocks):
    return MAGIC + b"".join(struct.pack("<I", len(b)) + b for b in blocks)


# ---- the LZ4 block format, sequence by sequence (lz4 doc/lz4_Block_format.md) ----

def test_literals_only():
    assert unlz4(frame(b"\x50hello")) == b"hello"


def test_match_copies_earlier_output():
    # 8 literals, then offset 8, match 4 + 4: the 8 bytes again; then 2 closing literals
    block = b"\x84abcdefgh\x08\x00" + b"\x20yz"
    assert unlz4(frame(block)) == b"abcdefgh" * 2 + b"yz"


def test_overlapping_match_repeats_the_last_bytes():
    # 'a', then offset 1, match nibble 15 + continuation byte 1 + 4 = 20 more 'a's
    block = b"\x1fa\x01\x00\x01" + b"\x10b"
    assert unlz4(frame(block)) == b"a" * 21 + b"b"


def test_long_literal_run_continues_over_255_bytes():
    text = bytes(range(256)) + bytes(44)             # 300 = 15 + 255 + 30
    assert unlz4(frame(b"\xf0\xff\x1e" + text)) == text


def test_blocks_are_concatenated_and_frames_may_follow_each_other():
    two = frame(b"\x30abc", b"\x30def") + frame(b"\x10g")[:4] + struct.pack("<I", 2) + b"\x10g"
    assert unlz4(two) == b"abcdefg"


@pytest.mark.parametrize("bad, error", [
    (b"\x02\x21\x4c\x19" + b"\0" * 8, "MAGIC"),                       # not the legacy magic
    (MAGIC + b"\x05\x00", "TRUNCATED"),                             # half a block size
    (MAGIC + struct.pack("<I", 99) + b"\x50hello", "TRUNCATED"),    # block past the input
    (frame(b"\x50hel"), "CORRUPT"),                                 # literals past the block
    (frame(b"\x14abcd\x00\x00"), "CORRUPT"),                        # offset 0
    (frame(b"\x14abcd\x05\x00"), "CORRUPT"),                        # offset before the block's output
    (frame(b"\x14abcd\x01"), "CORRUPT"),                            # half an offset
    (frame(b"\xf0\xff"), "CORRUPT"),                                # length continues past the block
])
def test_malformed_frames_are_refused(bad, error):
    assert unlz4(bad) == getattr(lib, "UNLZ4_ERR_" + error)


def test_output_never_exceeds_the_buffer():
    block = b"\x1fa\x01\x00\xff\xff\x10"                   # a match of 15 + 255 + 255 + 16 + 4 bytes
    assert unlz4(frame(block), cap=100) == lib.UNLZ4_ERR_TOO_BIG


def test_random_garbage_never_writes_outside_the_buffer():
    rng = random.Random(7)
    for _ in range(3000):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        n = unlz4(frame(body), cap=256)
        assert n in (lib.UNLZ4_ERR_CORRUPT, lib.UNLZ4_ERR_TOO_BIG) or len(n) <= 256


@pytest.mark.skipif(shutil.which("lz4") is None, reason="the lz4 command (Debian package lz4) is not installed")
def test_matches_the_lz4_tool_over_several_8_mib_blocks():
    rng = random.Random(3)
    words = [bytes(rng.randrange(256) for _ in range(rng.randrange(3, 40))) for _ in range(500)]
    data = b"".join(rng.choice(words) for _ in range(1_000_000)) + os.urandom(1 << 20)
    assert len(data) > 2 * 8 * (1 << 20)
    packed = subprocess.run(["lz4", "-l", "-9", "-c"], input=data, capture_output=True, check=True).stdout
    assert unlz4(packed, cap=len(data)) == data


# ---- payloads inside a bzImage ----

KERNEL_PADDR = 0x200000
KERNEL_CODE = b"\x90" * 0x1000 + b"\xf4"
VMLINUX = elf(entry=KERNEL_PADDR + 0x40, segments=[(KERNEL_PADDR, KERNEL_CODE, 0x3000)])
SIZE = struct.pack("<I", len(VMLINUX))

COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d),                           # ISIZE is the stream's own trailer
    "bzip2": lambda d: bz2.compress(d) + SIZE,
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE) + SIZE,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + SIZE,
    "lz4": lambda d: frame(b"\xf0" + bytes([255] * ((len(d) - 15) // 255)) + bytes([(len(d) - 15) % 255]) + d)
    + SIZE,
}


def compressed_bzimage(packed, decompressor=b"\xf4" * 512, **kw):
    """A bzImage whose protected-mode part is a stand-in decompressor and ``packed``."""
    return bzimage(decompressor + packed, payload_offset=len(decompressor), payload_length=len(packed),
                   pref_address=0x800000, relocatable=1, init_size=0x400000, **kw)


@pytest.mark.parametrize("fmt", sorted(COMPRESSORS))
def test_host_decompression_loads_the_kernel_proper(tmp_path, memory, fmt):
    path = write(tmp_path, "bz", compressed_bzimage(COMPRESSORS[fmt](VMLINUX)))
    kernel = load_bzimage(path, memory)
    assert kernel.decompressed == fmt
    assert (kernel.kind, kernel.entry_mode, kernel.entry) == ("bzimage", "long64", KERNEL_PADDR + 0x40)
    assert memory.read(KERNEL_PADDR, len(KERNEL_CODE)) == KERNEL_CODE
    assert memory.read(KERNEL_PADDR + len(KERNEL_CODE), 0x3000 - len(KERNEL_CODE)) == bytes(0x3000 - len(KERNEL_CODE))
    assert kernel.reserved_end == KERNEL_PADDR + 0x3000
    assert memory.read(0x800000, 512) == bytes(512)           # the decompressor is not loaded


def test_guest_decompression_loads_the_protected_mode_part(tmp_path, memory):
    image = compressed_bzimage(COMPRESSORS["gzip"](VMLINUX))
    kernel = load_bzimage(write(tmp_path, "bz", image), memory, decompress="guest")
    assert kernel.decompressed is None
    assert kernel.entry == kernel.load_start + 0x200
    assert memory.read(kernel.load_start, 512) == b"\xf4" * 512


def test_formats_pyvmm_does_not_decompress_run_the_guest_decompressor(tmp_path, memory):
    zstd = b"\x28\xb5\x2f\xfd" + bytes(60) + SIZE
    kernel = load_bzimage(write(tmp_path, "bz", compressed_bzimage(zstd)), memory)
    assert kernel.decompressed is None and not payload.supported("zstd")


def test_32_bit_kernels_run_their_own_decompressor(tmp_path, memory):
    image = compressed_bzimage(COMPRESSORS["gzip"](VMLINUX), xloadflags=0)
    assert load_bzimage(write(tmp_path, "bz", image), memory).decompressed is None


@pytest.mark.parametrize("packed, words", [
    (COMPRESSORS["xz"](VMLINUX)[:-40] + SIZE, "corrupt xz payload"),
    (COMPRESSORS["bzip2"](VMLINUX)[:-4] + struct.pack("<I", len(VMLINUX) + 1), "size field says"),
    (COMPRESSORS["lz4"](VMLINUX)[:-4] + struct.pack("<I", 1 << 30), "more than guest RAM"),
    (COMPRESSORS["gzip"](b"not an ELF kernel at all"), "the kernel in its gzip payload: not an ELF file"),
    (COMPRESSORS["gzip"](elf(bits=32, entry=0x200000, segments=[(0x200000, b"\xf4", 16)])),
     "is elf32, but the setup header says it is 64-bit"),
    (b"\x37\x7a" + bytes(30), "unknown payload compression"),
])
def test_bad_payloads_are_refused_and_leave_ram_alone(tmp_path, memory, packed, words):
    path = write(tmp_path, "bz", compressed_bzimage(packed))
    with pytest.raises(BadImageError, match=words):
        load_bzimage(path, memory)
    assert memory.read(KERNEL_PADDR, 16) == bytes(16)


def test_payload_outside_the_kernel_is_refused(tmp_path, memory):
    image = bzimage(b"\xf4" * 1024, payload_offset=512, payload_length=4096)
    with pytest.raises(BadImageError, match="lies outside the protected-mode kernel"):
        load_bzimage(write(tmp_path, "bz", image), memory)
