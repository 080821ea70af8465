"""What a kernel loader reports, and the placement rules every kernel loader obeys.

Responsibility: define ``LoadedKernel`` (the result of loading any kernel format) and
the checks shared by the ELF and bzImage loaders: reading an image file, and keeping a
kernel inside guest RAM and out of pyvmm's low boot area.

Invariants:
- Every failure is a ``BadImageError`` naming the file and saying, in one line, what is
  wrong; sizes in messages are in MiB.
- A loaded kernel lies in [``BOOT_AREA_END``, guest RAM end): it never overwrites the
  boot GDT, zero page, command line, boot stack or boot page tables.
"""

from dataclasses import dataclass
from typing import Literal, Optional

from pyvmm.errors import BadImageError
from pyvmm.mm.layout import BOOT_PT_END, MiB

# pyvmm's low boot area: boot GDT, zero page, command line, boot stack and boot page
# tables all live below 64 KiB (see pyvmm.mm.layout); kernels must stay above it.
BOOT_AREA_END = 0x10000
assert BOOT_PT_END <= BOOT_AREA_END


@dataclass
class LoadedKernel:
    """A kernel copied into guest RAM, and what the rest of the boot needs to know of it."""

    path: str
    kind: Literal["elf64", "elf32", "bzimage"]
    entry: int                      # guest-physical entry point (RIP/EIP)
    entry_mode: Literal["long64", "prot32"]
    load_start: int                 # first guest-physical byte written
    load_end: int                   # one past the last byte written (bss included)
    reserved_end: int               # one past the memory the kernel needs before it reads
                                    # the e820 map (bzImage: runtime start + init_size)
    cmdline_max: int                # longest command line it accepts, NUL excluded
    initrd_addr_max: int            # highest guest-physical byte an initrd may occupy
    kernel_alignment: int = 0       # bzImage: alignment it wants (relocatable kernels)
    protocol: int = 0               # bzImage: boot protocol version (e.g. 0x020F)
    setup_header: Optional[bytes] = None  # bzImage: header bytes for boot_params from 0x1F1
    decompressed: Optional[str] = None    # bzImage: payload format pyvmm decompressed on the host
                                          # (None: the kernel's decompressor runs in the guest)
    executable: tuple = ()          # ELF: (start, end) of each PF_X segment


def mib(nbytes):
    """``nbytes`` as a short MiB figure for messages: 16 MiB, 0.5 MiB, 14.99 MiB.

    Rounded down to 1/100 MiB, so a figure never claims more than there is.
    """
    hundredths = nbytes * 100 // MiB
    if nbytes and not hundredths:
        return f"{nbytes} bytes"
    text = f"{hundredths // 100}.{hundredths % 100:02d}".rstrip("0").rstrip(".")
    return f"{text} MiB"


def read_image(path, what):
    """The bytes of file ``path``; ``what`` ("kernel", "initrd") names it in errors."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImageError(path, f"cannot read {what}: {e.strerror or e}") from None


def check_fits(path, what, size, memory):
    """Refuse ``what`` of ``size`` bytes when guest RAM could never hold it."""
    if size > memory.size:
        raise BadImageError(path, f"{what} of {mib(size)} is larger than guest RAM ({mib(memory.size)})")


def check_range(path, what, start, end, memory):
    """Refuse ``what`` at [start, end) if it leaves guest RAM or touches the boot area."""
    where = f"{what} at {start:#x}..{end:#x}"
    if start < BOOT_AREA_END:
        raise BadImageError(path, f"{where} overlaps pyvmm's boot area below {BOOT_AREA_END:#x} "
                                  "(GDT, zero page, command line, stack, page tables)")
    if end > memory.size:
        raise BadImageError(path, f"{where} lies outside guest RAM ({mib(memory.size)}, "
                                  f"ending at {memory.size:#x})")
