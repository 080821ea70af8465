"""A bzImage's compressed kernel (its payload): found, named, decompressed on the host.

Responsibility: given the protected-mode part of a bzImage and its setup header,
find the payload (payload_offset/payload_length, boot protocol 2.08+), tell its
compression by magic number, and decompress it to the kernel proper (vmlinux.bin, an
ELF file, plus the relocation table the build appends after it), the job the
kernel's own decompressor (arch/x86/boot/compressed) would do in the guest.

Why on the host: under Unicorn 2.1.4 a guest store to a page the TLB holds as
executable always takes the slow path (about 40 ns, README "Linux boot"), and the
decompressor writes its 50 MiB output through an identity map that is executable
everywhere: more than half of a Linux boot's time. Decompressing here takes 0.1 s.

Formats, by the two magic bytes Linux's own table uses (lib/decompress.c,
compressed_formats[]): gzip 1f 8b / 1f 9e, bzip2 42 5a, lzma 5d 00, xz fd 37,
lzo 89 4c, lz4 02 21, zstd 28 b5. gzip, bzip2, lzma and xz use Python's standard
library; lz4 (the legacy frame Linux writes) the C decoder in csrc/unlz4.c. lzo and
zstd are not decompressed here (``supported`` says so): the caller then leaves the
job to the guest.

Invariants:
- The build appends the decompressed size as 4 little-endian bytes to every payload
  (scripts/Makefile.lib, the *_with_size commands; for gzip it is the stream's own
  ISIZE trailer). The output must have exactly that size, and never more than
  ``limit`` bytes are produced: a corrupt or hostile payload gives a BadImageError,
  never unbounded memory.
- Nothing here touches guest memory.
"""

import bz2
import lzma
import struct
import zlib

from pyvmm.boot import setup_header as sh
from pyvmm.boot.image import mib
from pyvmm.errors import BadImageError

PAYLOAD_PROTOCOL = 0x0208        # payload_offset / payload_length appear in 2.08
SIZE_TRAILER = 4                 # the appended decompressed size, little-endian

# lib/decompress.c compressed_formats[]: magic -> name
MAGICS = {b"\x1f\x8b": "gzip", b"\x1f\x9e": "gzip", b"\x42\x5a": "bzip2", b"\x5d\x00": "lzma",
          b"\xfd\x37": "xz", b"\x89\x4c": "lzo", b"\x02\x21": "lz4", b"\x28\xb5": "zstd"}


def find(path, header, version, protected_mode):
    """(format name, payload bytes) of the bzImage whose setup header (the file's bytes
    up to the header's end) is ``header`` and whose protected-mode part is
    ``protected_mode``; None when the kernel's protocol predates payload_offset or the
    header names no payload (length 0: a kernel that is not compressed)."""
    end = len(header)
    if not (sh.has("payload_offset", version, end) and sh.has("payload_length", version, end)):
        return None
    offset, length = sh.get(header, "payload_offset"), sh.get(header, "payload_length")
    if length == 0:
        return None
    if length <= SIZE_TRAILER or offset + length > len(protected_mode):
        raise BadImageError(path, f"payload_offset {offset:#x} + payload_length {length:#x} lies outside "
                                  f"the protected-mode kernel ({len(protected_mode):#x} bytes)")
    payload = protected_mode[offset:offset + length]
    fmt = MAGICS.get(bytes(payload[:2]))
    if fmt is None:
        raise BadImageError(path, f"unknown payload compression (magic {bytes(payload[:4]).hex(' ')}; "
                                  f"Linux knows {', '.join(sorted(set(MAGICS.values())))})")
    return fmt, payload


def supported(fmt):
    """Whether pyvmm decompresses ``fmt`` on the host."""
    return fmt in _DECODERS


def decompress(path, fmt, payload, limit):
    """The kernel proper in ``payload`` (compressed with ``fmt``), at most ``limit`` bytes."""
    size = struct.unpack_from("<I", payload, len(payload) - SIZE_TRAILER)[0]
    if size > limit:
        raise BadImageError(path, f"the {fmt} payload says the kernel is {mib(size)} decompressed, "
                                  f"more than guest RAM ({mib(limit)})")
    stream = payload if fmt == "gzip" else payload[:len(payload) - SIZE_TRAILER]
    try:
        out = _DECODERS[fmt](stream, size)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
        raise BadImageError(path, f"corrupt {fmt} payload: {e}") from None
    if len(out) != size:
        raise BadImageError(path, f"the {fmt} payload decompressed to {len(out)} bytes but its size "
                                  f"field says {size}")
    return out


def _stream(decompressor, data, size):
    """Run a standard-library decompressor over ``data``, stopping one byte past ``size``
    so that an overlong stream is seen without being held in memory."""
    out = decompressor.decompress(data, max_length=size + 1)
    if len(out) <= size and not decompressor.eof:
        raise EOFError("the stream ends before its end marker")
    return out


def _gzip(data, size):
    return _stream(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), data, size)


def _bzip2(data, size):
    return _stream(bz2.BZ2Decompressor(), data, size)


def _lzma(data, size):
    return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), data, size)


def _xz(data, size):
    return _stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), data, size)


def _lz4(data, size):
    from pyvmm._unlz4 import ffi, lib
    out = bytearray(size + 1)       # one byte more than promised: an overlong frame shows
    got = lib.unlz4_legacy(ffi.from_buffer(data), len(data), ffi.from_buffer(out), len(out))
    if got < 0:
        raise ValueError({lib.UNLZ4_ERR_MAGIC: "no LZ4 legacy-frame magic number",
                          lib.UNLZ4_ERR_TRUNCATED: "a block runs past the end of the payload",
                          lib.UNLZ4_ERR_CORRUPT: "a malformed LZ4 block",
                          lib.UNLZ4_ERR_TOO_BIG: "more output than its size field says"}[got])
    del out[got:]
    return out


_DECODERS = {"gzip": _gzip, "bzip2": _bzip2, "lzma": _lzma, "xz": _xz, "lz4": _lz4}
