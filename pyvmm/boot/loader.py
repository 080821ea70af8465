"""Booting a kernel file: the one entry point the VMM calls.

Responsibility: recognise the kernel's format (ELF or bzImage), hand it to that
format's loader, then place the initrd, write the zero page and command line, and
prepare the entry state, in that order; return all of it as a ``BootInfo``.

Invariants:
- Any problem with the kernel, initrd or command line is a ``BadImageError`` naming
  the offending file; nothing else escapes for bad input.
- The command line is checked before the initrd is read, so an impossible boot fails
  before guest RAM holds anything but the kernel.
"""

from dataclasses import dataclass

from pyvmm.boot import setup_header as sh
from pyvmm.boot.boot_params import encode_cmdline, write_boot_params
from pyvmm.boot.bzimage import load_bzimage
from pyvmm.boot.elf import ELF_MAGIC, load_elf
from pyvmm.boot.entry import EntryState, prepare_entry
from pyvmm.boot.image import LoadedKernel, read_image
from pyvmm.boot.initrd import load_initrd
from pyvmm.errors import BadImageError

__all__ = ["BootInfo", "EntryState", "LoadedKernel", "load_kernel", "probe"]

_HDRS_OFFSET = sh.FIELDS["header"].offset
_HDRS = sh.HEADER_MAGIC.to_bytes(4, "little")   # b"HdrS"


@dataclass
class BootInfo:
    """Everything pyvmm did to boot memory, and how to start the vCPU."""

    kernel: LoadedKernel
    entry: EntryState
    initrd_gpa: int          # 0 when there is no initrd
    initrd_size: int
    cmdline: str


def probe(data):
    """The loader for an image starting with ``data``, or None if it is neither format."""
    if data[:4] == ELF_MAGIC:
        return load_elf
    if data[_HDRS_OFFSET:_HDRS_OFFSET + 4] == _HDRS:
        return load_bzimage
    return None


def load_kernel(path, memory, initrd=None, cmdline="", decompress="host"):
    """Load kernel ``path`` (and ``initrd``) into ``memory`` and prepare its entry.

    ``decompress``: where a bzImage's payload is decompressed ("host" or "guest",
    see bzimage.load_bzimage)."""
    path = str(path)
    data = read_image(path, "kernel")
    loader = probe(data)
    if loader is None:
        start = data[:8].hex(" ") if data else "nothing: the file is empty"
        raise BadImageError(path, f"not an ELF or bzImage kernel (starts with {start})")
    kernel = load_bzimage(path, memory, data, decompress=decompress) if loader is load_bzimage \
        else loader(path, memory, data)
    encode_cmdline(kernel, cmdline)
    initrd_gpa, initrd_size = load_initrd(initrd, memory, kernel) if initrd is not None else (0, 0)
    write_boot_params(memory, kernel, cmdline, initrd_gpa, initrd_size)
    entry = prepare_entry(memory, kernel)
    return BootInfo(kernel=kernel, entry=entry, initrd_gpa=initrd_gpa, initrd_size=initrd_size,
                    cmdline=cmdline)
