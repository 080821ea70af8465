"""The Linux zero page (struct boot_params) and the command line it points to.

Responsibility: write the 4096-byte struct boot_params at ``ZERO_PAGE`` (setup header,
e820 map, command line and initrd pointers) and the NUL-terminated command line at
``CMDLINE``, the way Documentation/arch/x86/boot.rst ("32-bit/64-bit boot protocol")
and Documentation/arch/x86/zero-page.rst ask of a boot loader.

Invariants:
- Offsets are those of arch/x86/include/uapi/asm/bootparam.h (struct boot_params,
  struct boot_e820_entry); setup-header offsets come from ``setup_header``.
- The page is built zeroed and written whole: every field pyvmm does not set is 0, as
  boot.rst requires ("allocated and initialized to all zero").
- The setup header is the kernel's own (bzImage) or a minimal protocol 2.15 header
  (ELF kernels); pyvmm then writes the loader fields: type_of_loader 0xFF, loadflags,
  cmd_line_ptr, ramdisk_image/size and their ext_ high halves.
- The e820 map is the one docs/platform.md promises: RAM 0..0x9FC00, reserved
  0x9FC00..1 MiB, RAM 1 MiB..end of guest RAM.
- A command line that does not fit (longer than the kernel's cmdline_size or than
  pyvmm's CMDLINE_MAX - 1 bytes) is refused with a ``BadImageError`` naming the kernel.
"""

import struct

from pyvmm.boot import setup_header as sh
from pyvmm.errors import BadImageError
from pyvmm.mm.layout import CMDLINE, CMDLINE_MAX, EBDA_START, HIGH_MEMORY, PAGE_SIZE, ZERO_PAGE

ZERO_PAGE_SIZE = PAGE_SIZE

# struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
EXT_RAMDISK_IMAGE = 0x0C0   # __u32 ext_ramdisk_image  /* 0x0c0 */
EXT_RAMDISK_SIZE = 0x0C4    # __u32 ext_ramdisk_size   /* 0x0c4 */
EXT_CMD_LINE_PTR = 0x0C8    # __u32 ext_cmd_line_ptr   /* 0x0c8 */
E820_ENTRIES = 0x1E8        # __u8  e820_entries       /* 0x1e8 */
E820_TABLE = 0x2D0          # struct boot_e820_entry e820_table[128] /* 0x2d0 */
E820_MAX_ENTRIES_ZEROPAGE = 128
E820_ENTRY = struct.Struct("<QQI")   # struct boot_e820_entry { u64 addr; u64 size; u32 type; } packed

E820_TYPE_RAM = 1
E820_TYPE_RESERVED = 2


def e820_map(ram_size):
    """The guest's memory map as (addr, size, type) entries (docs/platform.md)."""
    return [
        (0, EBDA_START, E820_TYPE_RAM),
        (EBDA_START, HIGH_MEMORY - EBDA_START, E820_TYPE_RESERVED),
        (HIGH_MEMORY, ram_size - HIGH_MEMORY, E820_TYPE_RAM),
    ]


def encode_cmdline(kernel, cmdline):
    """The command line as the NUL-terminated bytes to store; refuse one that cannot be."""
    raw = cmdline.encode("utf-8")
    if b"\0" in raw:
        raise BadImageError(kernel.path, "the command line contains a NUL character")
    limit = min(kernel.cmdline_max, CMDLINE_MAX - 1)
    if len(raw) > limit:
        raise BadImageError(kernel.path, f"command line of {len(raw)} bytes is too long: at most "
                                         f"{limit} fit (the kernel's cmdline_size and pyvmm's "
                                         f"{CMDLINE_MAX}-byte buffer, NUL included, both limit it)")
    return raw + b"\0"


def write_boot_params(memory, kernel, cmdline="", initrd_gpa=0, initrd_size=0):
    """Write the command line at CMDLINE and struct boot_params at ZERO_PAGE for ``kernel``."""
    line = encode_cmdline(kernel, cmdline)
    page = bytearray(ZERO_PAGE_SIZE)
    header = kernel.setup_header if kernel.setup_header is not None else minimal_setup_header(kernel)
    page[sh.START:sh.START + len(header)] = header

    sh.put(page, "type_of_loader", sh.TYPE_OF_LOADER_UNDEFINED)
    # LOADED_HIGH: the kernel is at 1 MiB or above. No CAN_USE_HEAP: the real-mode
    # setup code (the only heap user) never runs.
    sh.put(page, "loadflags", (sh.get(page, "loadflags") | sh.LOADED_HIGH) & ~sh.CAN_USE_HEAP)
    sh.put(page, "cmd_line_ptr", CMDLINE & 0xFFFFFFFF)
    struct.pack_into("<I", page, EXT_CMD_LINE_PTR, CMDLINE >> 32)
    sh.put(page, "ramdisk_image", initrd_gpa & 0xFFFFFFFF)
    sh.put(page, "ramdisk_size", initrd_size & 0xFFFFFFFF)
    struct.pack_into("<II", page, EXT_RAMDISK_IMAGE, initrd_gpa >> 32, initrd_size >> 32)

    entries = e820_map(memory.size)
    page[E820_ENTRIES] = len(entries)
    for i, entry in enumerate(entries):
        E820_ENTRY.pack_into(page, E820_TABLE + i * E820_ENTRY.size, *entry)

    memory.write(CMDLINE, line)
    memory.write(ZERO_PAGE, bytes(page))


def minimal_setup_header(kernel):
    """A protocol 2.15 setup header for a kernel that brings none (ELF), from 0x1F1."""
    buf = bytearray(sh.END)
    sh.put(buf, "boot_flag", sh.BOOT_FLAG)
    sh.put(buf, "jump", 0xEB | (sh.END - 0x202) << 8)   # jmp short: its length byte ends the header
    sh.put(buf, "header", sh.HEADER_MAGIC)
    sh.put(buf, "version", sh.PROTOCOL_2_15)
    sh.put(buf, "loadflags", sh.LOADED_HIGH)
    sh.put(buf, "initrd_addr_max", kernel.initrd_addr_max)
    sh.put(buf, "cmdline_size", kernel.cmdline_max)
    return bytes(buf[sh.START:])
