"""Guest physical memory: one host buffer holding guest RAM from GPA 0.

Responsibility: own the host memory that backs guest RAM and give bounds-checked,
little-endian access to it. The CPU engine maps the same buffer zero-copy
(``host_address``), so guest stores are visible here at once and host writes are
visible to the guest. Host writes do not invalidate code the engine has already
translated: root mode only writes data (interrupt frames, buffers) once the guest
runs; code it writes must be followed by the engine's ``flush_translations``.

Invariant: every access is checked against ``size``; an access outside RAM raises
GuestMemoryError naming the address, and nothing is written.
"""

import ctypes
import mmap
import struct

from pyvmm.errors import ConfigError, GuestMemoryError
from pyvmm.mm.layout import MAX_RAM, MIN_RAM, PAGE_SIZE

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def parse_size(text):
    """Parse a memory size like ``64M``, ``1G``, ``65536`` or ``512K`` into bytes."""
    s = str(text).strip().upper()
    if s.endswith("B"):
        s = s[:-1]
    mult = 1
    if s and s[-1] in "KMG":
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[s[-1]]
        s = s[:-1]
    try:
        value = int(s, 0) * mult
    except ValueError:
        raise ConfigError(f"memory size {text!r}: expected a number with an optional K, M or G suffix")
    return value


class GuestMemory:
    """Guest RAM: ``size`` bytes at guest-physical address 0."""

    def __init__(self, size):
        if size % PAGE_SIZE:
            raise ConfigError(f"guest RAM size {size:#x} is not a multiple of {PAGE_SIZE}")
        if not MIN_RAM <= size <= MAX_RAM:
            raise ConfigError(f"guest RAM size {size // 1024 // 1024} MiB is outside "
                              f"{MIN_RAM >> 20} MiB .. {MAX_RAM >> 20} MiB")
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._map)
        self._cbuf = (ctypes.c_char * size).from_buffer(self._map)
        self.host_address = ctypes.addressof(self._cbuf)

    def contains(self, gpa, length=1):
        return 0 <= gpa and length >= 0 and gpa + length <= self.size

    def _check(self, gpa, length):
        if not self.contains(gpa, length):
            raise GuestMemoryError(
                f"guest-physical access {gpa:#x}+{length:#x} is outside guest RAM (0..{self.size:#x})")

    def read(self, gpa, length):
        self._check(gpa, length)
        return bytes(self.view[gpa:gpa + length])

    def write(self, gpa, data):
        length = len(data)
        self._check(gpa, length)
        self.view[gpa:gpa + length] = data

    def fill(self, gpa, length, byte=0):
        self._check(gpa, length)
        self.view[gpa:gpa + length] = bytes([byte]) * length

    def read_u8(self, gpa):
        self._check(gpa, 1)
        return self.view[gpa]

    def read_u16(self, gpa):
        self._check(gpa, 2)
        return _U16.unpack_from(self.view, gpa)[0]

    def read_u32(self, gpa):
        self._check(gpa, 4)
        return _U32.unpack_from(self.view, gpa)[0]

    def read_u64(self, gpa):
        self._check(gpa, 8)
        return _U64.unpack_from(self.view, gpa)[0]

    def write_u8(self, gpa, value):
        self.write(gpa, bytes([value & 0xFF]))

    def write_u16(self, gpa, value):
        self.write(gpa, _U16.pack(value & 0xFFFF))

    def write_u32(self, gpa, value):
        self.write(gpa, _U32.pack(value & 0xFFFFFFFF))

    def write_u64(self, gpa, value):
        self.write(gpa, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def close(self):
        self.view.release()
        del self._cbuf
        self._map.close()
