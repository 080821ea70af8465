"""Loading Linux bzImage kernels into guest RAM (Documentation/arch/x86/boot.rst).

Responsibility: check a bzImage's setup header, choose where its protected-mode
kernel goes, copy it there, and report the entry point and the header fields the
zero page needs. pyvmm does not run the real-mode setup code: it enters the kernel
by the 32-bit or 64-bit boot protocol, so only the protected-mode part is loaded.
By default a 64-bit kernel's compressed payload is decompressed on the host instead
(payload.py) and the kernel proper is loaded at its link address and entered at
startup_64 with the same zero page, the state the kernel's decompressor would leave.

Invariants:
- Only boot protocol 2.06 or newer with LOADED_HIGH (a bzImage, not a zImage) is
  accepted; a field is read only if the kernel's protocol and header length have it
  (see ``setup_header.has``), otherwise boot.rst's default applies.
- The kernel is placed at pref_address when it is relocatable and everything it needs
  (image and init_size) fits in RAM there; otherwise at 1 MiB (``HIGH_MEMORY``).
  Its runtime start + init_size must fit in guest RAM.
- Guest RAM is written only after every check has passed (the decompressed kernel's
  too).
- ``LoadedKernel.setup_header`` is the file's header (0x1F1 up to 0x202 + the byte at
  0x201) with code32_start set to the load address, as boot.rst asks of a loader that
  loads a relocatable kernel elsewhere.
"""

from pyvmm.boot import payload
from pyvmm.boot import setup_header as sh
from pyvmm.boot.elf import check_elf, write_segments
from pyvmm.boot.image import LoadedKernel, check_fits, check_range, mib, read_image
from pyvmm.errors import BadImageError
from pyvmm.mm.layout import HIGH_MEMORY

MIN_PROTOCOL = 0x0206
SECTOR = 512
DEFAULT_SETUP_SECTS = 4            # "if this field is 0, the real value is 4"
KERNEL_64_ENTRY_OFFSET = 0x200     # XLF_KERNEL_64: "the legacy 64-bit entry point at 0x200"
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF   # protocols before 2.03
DEFAULT_CMDLINE_SIZE = 255             # protocols before 2.06


DECOMPRESS_MODES = ("host", "guest")


def load_bzimage(path, memory, data=None, decompress="host"):
    """Load the bzImage at ``path`` (its bytes ``data`` if already read) into ``memory``.

    ``decompress="host"``: a 64-bit kernel whose payload format pyvmm knows is
    decompressed here and its ELF segments loaded where they are linked to run, to be
    entered at startup_64 (see payload.py for why); otherwise, or with "guest", the
    protected-mode part is loaded and the kernel's own decompressor runs in the guest.
    """
    path = str(path)
    if data is None:
        data = read_image(path, "kernel")
    header, version, field, kernel = _split(path, data)
    long64 = field("xloadflags") & sh.XLF_KERNEL_64
    if decompress not in DECOMPRESS_MODES:
        raise ValueError(f"decompress must be one of {DECOMPRESS_MODES}, not {decompress!r}")
    if decompress == "host" and long64:
        found = payload.find(path, header, version, kernel)
        if found is not None and payload.supported(found[0]):
            return _load_decompressed(path, memory, header, version, field, *found)

    init_size = field("init_size")
    load, runtime_start = _place(path, memory, len(kernel), init_size, field("relocatable_kernel"),
                                 field("kernel_alignment"), field("pref_address"))
    memory.write(load, kernel)
    sh.put(header, "code32_start", load)
    return LoadedKernel(
        path=path, kind="bzimage",
        entry=load + KERNEL_64_ENTRY_OFFSET if long64 else load,
        entry_mode="long64" if long64 else "prot32",
        load_start=load, load_end=load + len(kernel),
        reserved_end=max(load + len(kernel), runtime_start + init_size),
        cmdline_max=field("cmdline_size", DEFAULT_CMDLINE_SIZE),
        initrd_addr_max=field("initrd_addr_max", DEFAULT_INITRD_ADDR_MAX),
        kernel_alignment=field("kernel_alignment"),
        protocol=version,
        setup_header=bytes(header[sh.START:]))


def read_payload(path, data):
    """(format, compressed payload) of the bzImage ``data``, or None (payload.find)."""
    header, version, _, kernel = _split(path, data)
    return payload.find(path, header, version, kernel)


def _split(path, data):
    """Check the bzImage ``data``; return (its header bytes, protocol version,
    field(name, default=0) reading the header as the protocol allows, the
    protected-mode kernel's bytes)."""
    header, version = _check_header(path, data)
    end = len(header)

    def field(name, default=0):
        return sh.get(header, name) if sh.has(name, version, end) else default

    setup_size = ((field("setup_sects") or DEFAULT_SETUP_SECTS) + 1) * SECTOR
    if len(data) < setup_size:
        raise BadImageError(path, f"truncated bzImage: the file is {len(data)} bytes but its "
                                  f"setup code alone takes {setup_size}")
    if not field("loadflags") & sh.LOADED_HIGH:
        raise BadImageError(path, "loadflags lacks LOADED_HIGH: a zImage (loaded below 1 MiB) "
                                  "is not supported, only bzImage")
    kernel = data[setup_size:]
    expected = field("syssize") * 16
    if not kernel or len(kernel) < expected:
        raise BadImageError(path, f"truncated bzImage: the protected-mode kernel at offset "
                                  f"{setup_size:#x} has {len(kernel)} bytes, syssize says {expected}")
    return header, version, field, kernel


def _load_decompressed(path, memory, header, version, field, fmt, compressed):
    """Decompress the payload, load its ELF segments at their p_paddr, and enter at its
    e_entry (startup_64's physical address) in long mode, as the decompressor would
    after placing the kernel at its link address (no KASLR: loadflags stays without
    KASLR_FLAG, which tells the kernel so)."""
    vmlinux = payload.decompress(path, fmt, compressed, memory.size)
    try:
        image = check_elf(path, vmlinux, memory)
    except BadImageError as e:
        raise BadImageError(path, f"the kernel in its {fmt} payload: {e.problem}") from None
    if image.kind != "elf64":
        raise BadImageError(path, f"the kernel in its {fmt} payload is {image.kind}, but the setup "
                                  "header says it is 64-bit (XLF_KERNEL_64)")
    write_segments(memory, vmlinux, image.segments)
    sh.put(header, "code32_start", image.start)
    return LoadedKernel(
        path=path, kind="bzimage", entry=image.entry, entry_mode="long64",
        load_start=image.start, load_end=image.end, reserved_end=image.end,
        cmdline_max=field("cmdline_size", DEFAULT_CMDLINE_SIZE),
        initrd_addr_max=field("initrd_addr_max", DEFAULT_INITRD_ADDR_MAX),
        kernel_alignment=field("kernel_alignment"),
        protocol=version,
        setup_header=bytes(header[sh.START:]),
        decompressed=fmt)


def _place(path, memory, size, init_size, relocatable, alignment, pref_address):
    """Choose the load address; return it and the runtime start (boot.rst, init_size)."""
    check_fits(path, "kernel", size, memory)
    check_fits(path, "kernel's init_size (memory it needs to decompress)", init_size, memory)
    load = HIGH_MEMORY
    if relocatable and HIGH_MEMORY <= pref_address and \
            pref_address + max(size, init_size) <= memory.size:
        load = pref_address
    if relocatable:
        alignment = max(alignment, 1)
        runtime_start = -(-load // alignment) * alignment
    else:                       # "A non-relocatable kernel will ... run at this address"
        runtime_start = pref_address or load
    check_range(path, "kernel", load, load + size, memory)
    if runtime_start + init_size > memory.size:
        raise BadImageError(path, f"kernel needs {mib(init_size)} (init_size) from {runtime_start:#x} "
                                  f"but guest RAM is {mib(memory.size)}")
    return load, runtime_start


def _check_header(path, data):
    """Check magic numbers, protocol version and header length.

    Returns (the file's first bytes up to the header's end, as a bytearray; version).
    """
    if len(data) < sh.FIELDS["version"].end:
        raise BadImageError(path, f"truncated bzImage: the file is {len(data)} bytes, too short "
                                  "for a setup header")
    boot_flag = sh.get(data, "boot_flag")
    if boot_flag != sh.BOOT_FLAG:
        raise BadImageError(path, f"bad bzImage magic: boot_flag at 0x1fe is {boot_flag:#06x}, "
                                  f"expected {sh.BOOT_FLAG:#06x}")
    if sh.get(data, "header") != sh.HEADER_MAGIC:
        raise BadImageError(path, f"bad bzImage magic: {data[0x202:0x206]!r} at 0x202, expected 'HdrS'")
    version = sh.get(data, "version")
    if version < MIN_PROTOCOL:
        raise BadImageError(path, f"boot protocol {sh.version_text(version)} is older than "
                                  f"{sh.version_text(MIN_PROTOCOL)}, which pyvmm needs")
    end = sh.header_end(data)
    if not sh.FIELDS["version"].end <= end <= sh.BOOT_PARAMS_ROOM:
        raise BadImageError(path, f"setup header length byte at 0x201 says the header ends at {end:#x}, "
                                  f"outside {sh.FIELDS['version'].end:#x}..{sh.BOOT_PARAMS_ROOM:#x}")
    if end > len(data):
        raise BadImageError(path, f"truncated bzImage: the setup header ends at {end:#x} but the "
                                  f"file is {len(data)} bytes")
    return bytearray(data[:end]), version
