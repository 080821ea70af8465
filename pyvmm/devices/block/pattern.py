"""The data pattern the blkfront guest writes (guests/blkfront.c), computed on the host.

Responsibility: the bytes sector ``s`` holds after the guest wrote its pattern with
``seed``, so a test or a benchmark can check the image through another reader
(``qemu-img convert``, the raw file) without trusting the guest's own check.

Invariant: identical to the guest's ``pattern_word``: sector ``s`` is 64 little-endian
64-bit words, word ``i`` = ``seed << 48 ^ s << 6 ^ i`` (mod 2**64); so no two sectors
of one seed, and no two words of a sector, are alike.
"""

import struct

__all__ = ["SECTOR_SIZE", "sector_pattern", "pattern"]

SECTOR_SIZE = 512
_WORDS = SECTOR_SIZE // 8
_SECTOR = struct.Struct(f"<{_WORDS}Q")
_MASK = (1 << 64) - 1


def sector_pattern(seed, sector):
    """The 512 bytes of ``sector``."""
    base = ((seed << 48) ^ (sector << 6)) & _MASK
    return _SECTOR.pack(*(base ^ i for i in range(_WORDS)))


def pattern(seed, first_sector, count):
    """The bytes of sectors ``first_sector`` .. ``first_sector + count - 1``."""
    return b"".join(sector_pattern(seed, s) for s in range(first_sector, first_sector + count))
