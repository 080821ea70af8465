"""The Xen PV boot: a kernel's Xen ELF notes, the start-of-day region and start_info.

Responsibility: for ``pyvmm boot --pv`` read the kernel's Xen ELF notes
(xen/include/public/elfnote.h: ENTRY, HYPERCALL_PAGE, VIRT_BASE, PADDR_OFFSET ...),
load its PT_LOAD segments (boot/elf.py), fill its hypercall page, lay out the
bootstrap region xen.h describes ("Start-of-day memory layout") and, once the VMM
has made the event channels, write ``start_info_t`` into it byte for byte.

The bootstrap region follows the kernel image, each element page aligned, in xen.h's
order: initrd (``mod_start``/``mod_len``), the page-frame list (``mfn_list``: pfn ->
mfn, the identity here), ``start_info``, the xenstore ring page, the console ring
page, then what pyvmm adds: the shared_info page (Xen keeps it outside the guest and
the guest maps it; pyvmm places it in a guest frame and ``start_info.shared_info`` is
its address), the grant-table frames (what GNTTABOP_setup_table hands out), and the
bootstrap stack; the region ends on a 4 MiB boundary as xen.h asks. The bootstrap
page tables are the VMM's identity tables at BOOT_PML4 (``pt_base``/``nr_pt_frames``),
below the kernel.

Those tables map the kernel by its segments' permissions: execute-disable (NX, with
EFER.NXE on, as Xen runs PV guests) everywhere but the pages of its PF_X PT_LOAD
segments, which get 4 KiB page tables after BOOT_PT_END (``map_no_execute``). Why:
Unicorn sends every store to a page its TLB holds executable down a slow path (about
8x a store to an NX page); a guest whose data is executable, as it was on the plain
2 MiB identity map, pays that on every store (blkfront building a 1 MiB request: 22
us of ~160).

Invariants:
- a kernel without the notes a PV boot needs (ENTRY and HYPERCALL_PAGE) is refused
  with a ``BadImageError`` naming the file, before guest RAM is written;
- guest-physical = pseudo-physical = machine here, and virtual = physical: only
  VIRT_BASE 0 (and PADDR_OFFSET 0, the default with notes) are accepted;
- every element of the region lies inside guest RAM (else BadImageError).
"""

import struct
from dataclasses import dataclass, field
from typing import Optional

from pyvmm.boot.elf import _open as open_elf, load_elf
from pyvmm.boot.entry import IDENTITY_PD, LARGE_PAGE, PTE_PRESENT, PTE_WRITABLE, prepare_entry
from pyvmm.boot.image import mib, read_image
from pyvmm.cpu.state import EFER_NXE
from pyvmm.errors import BadImageError
from pyvmm.mm.layout import BOOT_IDENTITY_MAP, BOOT_PML4, BOOT_PT_END, MiB, PAGE_SIZE
from pyvmm.mm.pagewalk import PTE_NX
from pyvmm.pv import abi

XEN_NOTE_NAME = b"Xen"
START_INFO_MAGIC = b"xen-3.0-x86_64"      # xen.h: "xen-<version>-<platform>"
HYPERCALL_STUB_SIZE = 32                  # one stub per hypercall number, 128 in the page
HYPERCALL_IRET = 23                       # __HYPERVISOR_iret: PV-only, its stub is UD2
GRANT_FRAMES = 4                          # grant-table frames a PV guest may use
STACK_PAGES = 4                           # the bootstrap stack (16 KiB)
REGION_ALIGN = 4 * MiB                    # xen.h: the region ends on a 4 MiB boundary

# Note types whose descriptor is a number (elfnote.h: "numeric" notes).
_NUMERIC = {abi.XEN_ELFNOTE_ENTRY: "entry", abi.XEN_ELFNOTE_HYPERCALL_PAGE: "hypercall_page",
            abi.XEN_ELFNOTE_VIRT_BASE: "virt_base", abi.XEN_ELFNOTE_PADDR_OFFSET: "paddr_offset",
            abi.XEN_ELFNOTE_HV_START_LOW: "hv_start_low", abi.XEN_ELFNOTE_INIT_P2M: "init_p2m"}
# Note types whose descriptor is a NUL-terminated string.
_STRING = {abi.XEN_ELFNOTE_GUEST_OS: "guest_os", abi.XEN_ELFNOTE_GUEST_VERSION: "guest_version",
           abi.XEN_ELFNOTE_XEN_VERSION: "xen_version", abi.XEN_ELFNOTE_LOADER: "loader",
           abi.XEN_ELFNOTE_FEATURES: "features", abi.XEN_ELFNOTE_PAE_MODE: "pae_mode"}


@dataclass
class XenNotes:
    """The Xen ELF notes of a kernel (numbers are virtual addresses where elfnote.h says so)."""

    entry: Optional[int] = None
    hypercall_page: Optional[int] = None
    virt_base: int = 0
    paddr_offset: int = 0
    hv_start_low: Optional[int] = None
    init_p2m: Optional[int] = None
    guest_os: str = ""
    guest_version: str = ""
    xen_version: str = ""
    loader: str = ""
    features: str = ""
    pae_mode: str = ""


def _note_records(path, data, offset, size):
    """(name, type, desc) of each note in ``data[offset:offset+size]`` (ELF note format)."""
    end = offset + size
    if end > len(data):
        raise BadImageError(path, f"truncated: a PT_NOTE segment ends at {end:#x} but the file is "
                                  f"{len(data):#x} bytes")
    pos = offset
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + (-(-namesz // 4) * 4)
        next_at = desc_at + (-(-descsz // 4) * 4)
        if next_at > end:
            raise BadImageError(path, f"malformed ELF note at file offset {pos:#x}: name {namesz} and "
                                      f"descriptor {descsz} bytes run past its PT_NOTE segment")
        yield data[name_at:name_at + namesz].rstrip(b"\0"), ntype, data[desc_at:desc_at + descsz]
        pos = next_at


def read_xen_notes(path, elf, data):
    """The Xen notes of the opened ELF file ``elf``; BadImageError if it has none."""
    notes = XenNotes()
    found = False
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        for name, ntype, desc in _note_records(path, data, seg["p_offset"], seg["p_filesz"]):
            if name != XEN_NOTE_NAME:
                continue
            found = True
            if ntype in _NUMERIC:
                if len(desc) not in (1, 2, 4, 8):
                    raise BadImageError(path, f"Xen ELF note {ntype} ({_NUMERIC[ntype]}) has a "
                                              f"{len(desc)}-byte value; numbers are 1, 2, 4 or 8 bytes")
                setattr(notes, _NUMERIC[ntype], int.from_bytes(desc, "little"))
            elif ntype in _STRING:
                setattr(notes, _STRING[ntype], desc.split(b"\0", 1)[0].decode("ascii", "replace"))
    if not found:
        raise BadImageError(path, "no Xen ELF notes (a PT_NOTE with name \"Xen\", elfnote.h): not a "
                                  "paravirtual kernel; boot it without --pv")
    for what in ("entry", "hypercall_page"):
        if getattr(notes, what) is None:
            raise BadImageError(path, f"the Xen ELF notes lack XEN_ELFNOTE_{what.upper()}, which a PV "
                                      "boot needs")
    if notes.virt_base or notes.paddr_offset:
        raise BadImageError(path, f"VIRT_BASE {notes.virt_base:#x} / PADDR_OFFSET {notes.paddr_offset:#x}: "
                                  "pyvmm runs PV kernels on its identity map and needs both 0")
    if notes.loader and notes.loader != "generic":
        raise BadImageError(path, f"XEN_ELFNOTE_LOADER {notes.loader!r}: pyvmm has only the "
                                  "'generic' loader")
    return notes


# Xen's stub for a 64-bit PV kernel (xen/arch/x86/pv/hypercall.c, the ring-3 kernel's
# hypercall page): push %rcx; push %r11; mov $n, %eax; syscall; pop %r11; pop %rcx; ret.
HYPERCALL_STUB_HEAD = b"\x51\x41\x53\xb8"      # push %rcx (51), push %r11 (41 53), mov $imm32, %eax (b8)
HYPERCALL_STUB_TAIL = b"\x0f\x05\x41\x5b\x59\xc3"  # syscall (0f 05), pop %r11 (41 5b), pop %rcx (59), ret (c3)
HYPERCALL_SYSCALL_OFFSET = len(HYPERCALL_STUB_HEAD) + 4   # where the SYSCALL is in each stub


def hypercall_page():
    """The 4 KiB hypercall page: stub ``n`` at ``32 * n`` is Xen's 64-bit PV stub
    ``push %rcx; push %r11; mov $n, %eax; syscall; pop %r11; pop %rcx; ret``, the rest
    of each stub int3 (cc); __HYPERVISOR_iret's stub is ud2 (0f 0b), since pyvmm has
    no iret hypercall. A SYSCALL inside this page is a hypercall (cpu/vcpu.py):
    Unicorn reaches root mode through its cheap SYSCALL instruction hook, where VMCALL
    would cost an intercepted exception (README, "Paravirtual guests")."""
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for nr in range(PAGE_SIZE // HYPERCALL_STUB_SIZE):
        at = nr * HYPERCALL_STUB_SIZE
        if nr == HYPERCALL_IRET:
            page[at:at + 2] = b"\x0f\x0b"
            continue
        stub = HYPERCALL_STUB_HEAD + nr.to_bytes(4, "little") + HYPERCALL_STUB_TAIL
        page[at:at + len(stub)] = stub
    return bytes(page)


@dataclass
class PvLayout:
    """Where the bootstrap elements are (guest-physical = virtual addresses)."""

    nr_pages: int
    image_end: int
    mod_start: int = 0
    mod_len: int = 0
    mfn_list: int = 0
    start_info: int = 0
    store_page: int = 0
    console_page: int = 0
    shared_info: int = 0
    grant_frames: list = field(default_factory=list)   # gfns
    stack_top: int = 0
    region_end: int = 0
    nr_pt_frames: int = (BOOT_PT_END - BOOT_PML4) // PAGE_SIZE   # the bootstrap page tables

    @property
    def store_gfn(self):
        return self.store_page // PAGE_SIZE

    @property
    def console_gfn(self):
        return self.console_page // PAGE_SIZE

    @property
    def shared_info_gfn(self):
        return self.shared_info // PAGE_SIZE


def plan_layout(path, memory_size, image_end, initrd_len):
    """The bootstrap region after a kernel ending at ``image_end``; BadImageError if RAM is short."""
    nr_pages = memory_size // PAGE_SIZE
    at = -(-image_end // PAGE_SIZE) * PAGE_SIZE

    def take(nbytes):
        nonlocal at
        start = at
        at += -(-nbytes // PAGE_SIZE) * PAGE_SIZE
        return start

    lay = PvLayout(nr_pages=nr_pages, image_end=image_end)
    if initrd_len:
        lay.mod_start, lay.mod_len = take(initrd_len), initrd_len
    lay.mfn_list = take(8 * nr_pages)
    lay.start_info = take(PAGE_SIZE)
    lay.store_page = take(PAGE_SIZE)
    lay.console_page = take(PAGE_SIZE)
    lay.shared_info = take(PAGE_SIZE)
    lay.grant_frames = [take(PAGE_SIZE) // PAGE_SIZE for _ in range(GRANT_FRAMES)]
    take(STACK_PAGES * PAGE_SIZE)
    lay.stack_top = at
    lay.region_end = -(-at // REGION_ALIGN) * REGION_ALIGN
    if lay.region_end > memory_size:
        raise BadImageError(path, f"the PV bootstrap region (kernel, initrd, frame list, start_info, "
                                  f"rings, stack) ends at {lay.region_end:#x}, beyond guest RAM "
                                  f"({mib(memory_size)})")
    return lay


@dataclass
class PvBootInfo:
    """What ``load_pv_kernel`` did; ``kernel``/``entry`` as boot.loader.BootInfo has them."""

    kernel: object
    entry: object
    notes: XenNotes
    layout: PvLayout
    cmdline: str


def load_pv_kernel(path, memory, initrd=None, cmdline=""):
    """Load PV kernel ``path`` (and ``initrd``) into ``memory``: its segments, hypercall page,
    page-frame list and entry state (RSI = start_info, RSP = the bootstrap stack).
    start_info itself is written later by ``write_start_info``."""
    path = str(path)
    data = read_image(path, "kernel")
    kind, _, elf = open_elf(path, data)        # load_elf's header checks, before anything is loaded
    if kind != "elf64":
        raise BadImageError(path, "a 32-bit ELF kernel: pyvmm boots x86-64 PV kernels only")
    notes = read_xen_notes(path, elf, data)
    encoded = cmdline.encode()
    if len(encoded) >= abi.MAX_GUEST_CMDLINE:
        raise BadImageError(path, f"command line of {len(encoded)} bytes: start_info holds at most "
                                  f"{abi.MAX_GUEST_CMDLINE - 1}")
    initrd_data = read_image(initrd, "initrd") if initrd is not None else b""
    if initrd is not None and not initrd_data:
        raise BadImageError(initrd, "initrd file is empty")
    kernel = load_elf(path, memory, data)
    try:
        lay = plan_layout(path, memory.size, kernel.load_end, len(initrd_data))
        page = notes.hypercall_page
        if page % PAGE_SIZE or not kernel.load_start <= page < kernel.load_end:
            raise BadImageError(path, f"XEN_ELFNOTE_HYPERCALL_PAGE {page:#x} is not a page-aligned "
                                      f"address inside the image ({kernel.load_start:#x}..{kernel.load_end:#x})")
        if not kernel.load_start <= notes.entry < kernel.load_end:
            raise BadImageError(path, f"XEN_ELFNOTE_ENTRY {notes.entry:#x} is outside the image "
                                      f"({kernel.load_start:#x}..{kernel.load_end:#x})")
    except BadImageError:
        memory.fill(kernel.load_start, kernel.load_end - kernel.load_start)
        raise
    memory.write(page, hypercall_page())
    if initrd_data:
        memory.write(lay.mod_start, initrd_data)
    memory.write(lay.mfn_list, struct.pack(f"<{lay.nr_pages}Q", *range(lay.nr_pages)))
    entry = prepare_entry(memory, kernel)
    lay.nr_pt_frames = map_no_execute(memory, kernel.executable, kernel.load_start)
    entry.efer |= EFER_NXE
    entry.rip, entry.rsp, entry.rsi = notes.entry, lay.stack_top, lay.start_info
    return PvBootInfo(kernel=kernel, entry=entry, notes=notes, layout=lay, cmdline=cmdline)


def map_no_execute(memory, executable, tables_end):
    """Make the identity map (entry.write_identity_page_tables: 2 MiB pages) NX but
    on the pages of ``executable`` ((start, end) ranges): a 2 MiB page holding any of
    them gets a 4 KiB page table, placed from BOOT_PT_END on below ``tables_end``, with
    NX on its other pages; every other 2 MiB page gets NX. Past the room for tables, a
    2 MiB page with executable pages stays executable whole. Returns the number of
    page-table frames from BOOT_PML4 on (start_info's nr_pt_frames). Nothing else
    changes: every page stays present and writable."""
    count = BOOT_IDENTITY_MAP // LARGE_PAGE
    pdes = list(struct.unpack(f"<{count}Q", memory.read(IDENTITY_PD, count * 8)))
    code = {page for start, end in executable for page in range(start // PAGE_SIZE, -(-end // PAGE_SIZE))}
    per_large = LARGE_PAGE // PAGE_SIZE
    with_code = {page // per_large for page in code}
    table = BOOT_PT_END
    for large in range(count):
        first = large * per_large
        if large not in with_code:
            pdes[large] |= PTE_NX
        elif table + PAGE_SIZE <= tables_end:
            memory.write(table, struct.pack(f"<{per_large}Q", *(
                page * PAGE_SIZE | PTE_PRESENT | PTE_WRITABLE | (0 if page in code else PTE_NX)
                for page in range(first, first + per_large))))
            pdes[large] = table | PTE_PRESENT | PTE_WRITABLE
            table += PAGE_SIZE
    memory.write(IDENTITY_PD, struct.pack(f"<{count}Q", *pdes))
    return (table - BOOT_PML4) // PAGE_SIZE


def start_info_bytes(layout, cmdline, store_evtchn, console_evtchn, flags=0):
    """``start_info_t`` (xen.h) for ``layout`` with the guest's ring event channels."""
    return abi.start_info.pack(
        magic=START_INFO_MAGIC.ljust(32, b"\0"), nr_pages=layout.nr_pages, shared_info=layout.shared_info,
        flags=flags, store_mfn=layout.store_gfn, store_evtchn=store_evtchn,
        console={"domU": {"mfn": layout.console_gfn, "evtchn": console_evtchn}},
        pt_base=BOOT_PML4, nr_pt_frames=layout.nr_pt_frames, mfn_list=layout.mfn_list,
        mod_start=layout.mod_start, mod_len=layout.mod_len,
        cmd_line=cmdline.encode().ljust(abi.MAX_GUEST_CMDLINE, b"\0"))


def write_start_info(memory, boot, store_evtchn, console_evtchn, flags=0):
    """Write start_info for ``boot`` (a PvBootInfo) into its page."""
    memory.write(boot.layout.start_info, start_info_bytes(boot.layout, boot.cmdline, store_evtchn,
                                                          console_evtchn, flags))
