"""Loading ELF kernels (vmlinux, small test kernels) into guest RAM.

Responsibility: check that an ELF file is an x86 kernel pyvmm can enter (ELFCLASS64 +
EM_X86_64 entered in long mode, ELFCLASS32 + EM_386 entered in protected mode; ET_EXEC,
little-endian) and copy each PT_LOAD segment to its p_paddr: p_filesz bytes from the
file, the rest of p_memsz zeroed.

Invariants:
- Guest RAM is written only after every check has passed: a refused image leaves RAM
  as it was.
- Every problem is a ``BadImageError(path, one line)``; pyelftools exceptions never
  escape.
- Loaded segments lie inside guest RAM, above the boot area (see ``image``), and the
  entry point e_entry (a physical address, as in Linux's vmlinux) is inside one.
"""

import io
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from pyvmm.boot.image import LoadedKernel, check_fits, check_range, read_image
from pyvmm.errors import BadImageError
from pyvmm.mm.layout import CMDLINE_MAX

ELF_MAGIC = b"\x7fELF"
_EI_CLASS, _EI_DATA = 4, 5
_ELFDATA2LSB = 1

# ELF class byte -> (bits, header size, program header size, machine, kind, entry mode)
_CLASSES = {
    1: (32, 52, 32, "EM_386", "elf32", "prot32"),
    2: (64, 64, 56, "EM_X86_64", "elf64", "long64"),
}

PF_X = 1                 # p_flags: the segment is executable (ELF gABI, "Segment Permissions")

# Linux's default for kernels that do not say (boot protocol 2.03+ value), used for ELF.
ELF_INITRD_ADDR_MAX = 0x7FFFFFFF


@dataclass(frozen=True)
class _Segment:
    index: int
    offset: int
    paddr: int
    filesz: int
    memsz: int
    flags: int = 0           # p_flags: PF_X 1, PF_W 2, PF_R 4 (ELF gABI)

    @property
    def end(self):
        return self.paddr + self.memsz


def load_elf(path, memory, data=None):
    """Load the ELF kernel at ``path`` (its bytes ``data`` if already read) into ``memory``."""
    path = str(path)
    if data is None:
        data = read_image(path, "kernel")
    image = check_elf(path, data, memory)
    write_segments(memory, data, image.segments)
    return LoadedKernel(path=path, kind=image.kind, entry=image.entry, entry_mode=image.entry_mode,
                        load_start=image.start, load_end=image.end, reserved_end=image.end,
                        cmdline_max=CMDLINE_MAX - 1, initrd_addr_max=ELF_INITRD_ADDR_MAX,
                        executable=tuple((s.paddr, s.end) for s in image.segments if s.flags & PF_X))


@dataclass(frozen=True)
class ElfImage:
    """An ELF kernel checked against guest RAM, not yet written to it."""

    kind: str
    entry_mode: str
    entry: int
    segments: tuple

    @property
    def start(self):
        return min(s.paddr for s in self.segments)

    @property
    def end(self):
        return max(s.end for s in self.segments)


def check_elf(path, data, memory):
    """Every check ``load_elf`` makes on the ELF kernel ``data`` before writing RAM."""
    kind, entry_mode, elf = _open(path, data)
    image = ElfImage(kind, entry_mode, elf["e_entry"], tuple(_load_segments(path, elf, data)))
    check_fits(path, "kernel", image.end - image.start, memory)
    for s in image.segments:
        check_range(path, f"PT_LOAD segment {s.index}", s.paddr, s.end, memory)
    if not any(s.paddr <= image.entry < s.end for s in image.segments):
        raise BadImageError(path, f"entry point {image.entry:#x} is not inside any PT_LOAD segment")
    return image


def write_segments(memory, data, segments):
    """Copy each checked segment to its p_paddr: p_filesz bytes of ``data``, the rest zeroed."""
    for s in segments:
        memory.write(s.paddr, data[s.offset:s.offset + s.filesz])
        memory.fill(s.paddr + s.filesz, s.memsz - s.filesz)


def _open(path, data):
    """Check the ELF identification and header; return (kind, entry mode, ELFFile)."""
    if data[:4] != ELF_MAGIC:
        raise BadImageError(path, f"not an ELF file (magic {data[:4].hex(' ')}, expected 7f 45 4c 46)")
    if len(data) <= _EI_DATA:
        raise BadImageError(path, f"truncated ELF header: the file is only {len(data)} bytes")
    if data[_EI_CLASS] not in _CLASSES:
        raise BadImageError(path, f"unknown ELF class {data[_EI_CLASS]} (expected 1, ELFCLASS32, "
                                  "or 2, ELFCLASS64)")
    bits, ehsize, phentsize, machine, kind, entry_mode = _CLASSES[data[_EI_CLASS]]
    if data[_EI_DATA] != _ELFDATA2LSB:
        raise BadImageError(path, "not a little-endian ELF file (x86 kernels are ELFDATA2LSB)")
    if len(data) < ehsize:
        raise BadImageError(path, f"truncated ELF header: the file is {len(data)} bytes, "
                                  f"an ELFCLASS{bits} header needs {ehsize}")
    try:
        elf = ELFFile(io.BytesIO(data))
    except (ELFError, ConstructError) as e:
        raise BadImageError(path, f"malformed ELF header: {e}") from None

    if elf["e_machine"] != machine:
        raise BadImageError(path, f"ELFCLASS{bits} file for machine {elf['e_machine']}: pyvmm loads "
                                  f"ELFCLASS{bits} kernels built for {machine}")
    if elf["e_type"] != "ET_EXEC":
        raise BadImageError(path, f"ELF type {elf['e_type']}: pyvmm loads only executable "
                                  "(ET_EXEC) kernels")
    phoff, phnum = elf["e_phoff"], elf["e_phnum"]
    if phnum and elf["e_phentsize"] != phentsize:
        raise BadImageError(path, f"program header entries are {elf['e_phentsize']} bytes, "
                                  f"ELFCLASS{bits} needs {phentsize}")
    if phoff + phnum * phentsize > len(data):
        raise BadImageError(path, f"truncated: the program headers end at "
                                  f"{phoff + phnum * phentsize:#x} but the file is {len(data):#x} bytes")
    return kind, entry_mode, elf


def _load_segments(path, elf, data):
    """The non-empty PT_LOAD segments, each checked against the file."""
    segments = []
    try:
        headers = [seg.header for seg in elf.iter_segments()]
    except (ELFError, ConstructError) as e:
        raise BadImageError(path, f"malformed ELF program headers: {e}") from None
    for index, ph in enumerate(headers):
        if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
            continue
        seg = _Segment(index, ph["p_offset"], ph["p_paddr"], ph["p_filesz"], ph["p_memsz"], ph["p_flags"])
        if seg.memsz < seg.filesz:
            raise BadImageError(path, f"PT_LOAD segment {index}: p_memsz {seg.memsz:#x} is smaller "
                                      f"than p_filesz {seg.filesz:#x}")
        if seg.offset + seg.filesz > len(data):
            raise BadImageError(path, f"truncated: PT_LOAD segment {index} needs file bytes "
                                      f"{seg.offset:#x}..{seg.offset + seg.filesz:#x} but the file "
                                      f"is {len(data):#x} bytes")
        segments.append(seg)
    if not segments:
        raise BadImageError(path, "no PT_LOAD segment: the ELF file has nothing to load")
    return segments
