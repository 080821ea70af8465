"""The Linux x86 setup header (struct setup_header): field names, offsets and flags.

Responsibility: say where each setup-header field lives and read or write it in a
buffer laid out like struct boot_params. Nothing here touches guest memory or files.

Invariants:
- Offsets are absolute offsets in struct boot_params, taken from
  arch/x86/include/uapi/asm/bootparam.h (``struct setup_header hdr; /* 0x1f1 */``)
  and the table in Documentation/arch/x86/boot.rst. Because a bzImage file starts
  with the same 0x1F1 bytes of boot sector before its header, the same offsets are
  valid in the first sector of a bzImage file.
- A field exists only if the kernel's protocol version is at least ``since`` and the
  header (which ends at 0x202 + the byte at 0x201) reaches the field's last byte.
"""

import struct
from dataclasses import dataclass

START = 0x1F1             # boot_params.hdr
END = 0x26C               # end of the protocol 2.15 header (after kernel_info_offset)
BOOT_PARAMS_ROOM = 0x290  # boot_params.edd_mbr_sig_buffer: no header may reach past it
JUMP_LENGTH = 0x201       # the jump's displacement byte: header ends at 0x202 + it

BOOT_FLAG = 0xAA55          # boot_flag (0x1FE)
HEADER_MAGIC = 0x53726448   # "HdrS" (0x202)
PROTOCOL_2_15 = 0x020F      # the version pyvmm claims in the header it makes for ELF kernels

# loadflags (bootparam.h)
LOADED_HIGH = 1 << 0
CAN_USE_HEAP = 1 << 7
# xloadflags (bootparam.h)
XLF_KERNEL_64 = 1 << 0

TYPE_OF_LOADER_UNDEFINED = 0xFF   # boot.rst: "Otherwise, enter 0xFF here"


@dataclass(frozen=True)
class Field:
    offset: int   # in struct boot_params
    fmt: str      # struct format of the field (little-endian)
    since: int    # boot protocol version that introduced it

    @property
    def end(self):
        return self.offset + struct.calcsize("<" + self.fmt)


FIELDS = {
    "setup_sects": Field(0x1F1, "B", 0x0000),
    "root_flags": Field(0x1F2, "H", 0x0000),
    "syssize": Field(0x1F4, "I", 0x0204),
    "ram_size": Field(0x1F8, "H", 0x0000),
    "vid_mode": Field(0x1FA, "H", 0x0000),
    "root_dev": Field(0x1FC, "H", 0x0000),
    "boot_flag": Field(0x1FE, "H", 0x0000),
    "jump": Field(0x200, "H", 0x0200),
    "header": Field(0x202, "I", 0x0200),
    "version": Field(0x206, "H", 0x0200),
    "realmode_swtch": Field(0x208, "I", 0x0200),
    "start_sys_seg": Field(0x20C, "H", 0x0200),
    "kernel_version": Field(0x20E, "H", 0x0200),
    "type_of_loader": Field(0x210, "B", 0x0200),
    "loadflags": Field(0x211, "B", 0x0200),
    "setup_move_size": Field(0x212, "H", 0x0200),
    "code32_start": Field(0x214, "I", 0x0200),
    "ramdisk_image": Field(0x218, "I", 0x0200),
    "ramdisk_size": Field(0x21C, "I", 0x0200),
    "bootsect_kludge": Field(0x220, "I", 0x0200),
    "heap_end_ptr": Field(0x224, "H", 0x0201),
    "ext_loader_ver": Field(0x226, "B", 0x0202),
    "ext_loader_type": Field(0x227, "B", 0x0202),
    "cmd_line_ptr": Field(0x228, "I", 0x0202),
    "initrd_addr_max": Field(0x22C, "I", 0x0203),
    "kernel_alignment": Field(0x230, "I", 0x0205),
    "relocatable_kernel": Field(0x234, "B", 0x0205),
    "min_alignment": Field(0x235, "B", 0x020A),
    "xloadflags": Field(0x236, "H", 0x020C),
    "cmdline_size": Field(0x238, "I", 0x0206),
    "hardware_subarch": Field(0x23C, "I", 0x0207),
    "hardware_subarch_data": Field(0x240, "Q", 0x0207),
    "payload_offset": Field(0x248, "I", 0x0208),
    "payload_length": Field(0x24C, "I", 0x0208),
    "setup_data": Field(0x250, "Q", 0x0209),
    "pref_address": Field(0x258, "Q", 0x020A),
    "init_size": Field(0x260, "I", 0x020A),
    "handover_offset": Field(0x264, "I", 0x020B),
    "kernel_info_offset": Field(0x268, "I", 0x020F),
}


def get(buf, name):
    """Read field ``name`` from ``buf`` (laid out like struct boot_params)."""
    field = FIELDS[name]
    return struct.unpack_from("<" + field.fmt, buf, field.offset)[0]


def put(buf, name, value):
    """Write field ``name`` into the bytearray ``buf`` (laid out like struct boot_params)."""
    field = FIELDS[name]
    struct.pack_into("<" + field.fmt, buf, field.offset, value)


def header_end(buf):
    """End offset of the header in ``buf``: 0x202 + the jump's displacement byte."""
    return 0x202 + buf[JUMP_LENGTH]


def has(name, version, end):
    """Whether a kernel with protocol ``version`` and header ending at ``end`` has the field."""
    field = FIELDS[name]
    return version >= field.since and field.end <= end


def version_text(version):
    """A protocol version as boot.rst writes it: 0x0206 -> "2.06"."""
    return f"{version >> 8}.{version & 0xFF:02d}"
