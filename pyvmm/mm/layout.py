"""Guest-physical address layout used by pyvmm's loaders and platform.

All fixed addresses live here so that the boot code, the VMM and the tests agree.
The low-memory layout follows xhyve's kexec loader (GDT 0x2000, zero page 0x3000,
command line 0x4000, kernel at 1 MiB); kvmtool and Firecracker load similarly.
"""

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PAGE_SIZE = 4096

BOOT_GDT = 0x2000          # boot GDT (null, null, __BOOT_CS=0x10, __BOOT_DS=0x18)
ZERO_PAGE = 0x3000         # struct boot_params ("zero page"), ESI/RSI at entry
CMDLINE = 0x4000           # kernel command line, NUL terminated
CMDLINE_MAX = 0x1000       # bytes reserved for the command line (incl. NUL)
BOOT_STACK_TOP = 0x8000    # initial RSP for ELF kernels (stack grows down to 0x5000)
BOOT_PML4 = 0x9000         # identity page tables for 64-bit entry: PML4, PDPT, 4 PDs
BOOT_PT_END = 0xF000
BOOT_IDENTITY_MAP = 4 * GiB  # the 64-bit entry identity-maps this much with 2 MiB pages

EBDA_START = 0x9FC00       # top of conventional memory as reported in e820
LEGACY_HOLE_START = 0xA0000  # VGA/BIOS hole, reserved in e820
HIGH_MEMORY = 1 * MiB      # kernels load here (bzImage protected-mode code, ELF PT_LOAD)

BOOT_CS = 0x10             # Linux boot protocol __BOOT_CS
BOOT_DS = 0x18             # Linux boot protocol __BOOT_DS

MIN_RAM = 2 * MiB
MAX_RAM = 3 * GiB          # below the 32-bit PCI/APIC hole; pyvmm has no RAM above 4 GiB

# VMM-private memory (VMCB, host save area, I/O and MSR permission maps, host stub):
# outside guest RAM and outside the e820 map the guest is given, and below 2^40
# (the emulated CPU's physical-address width is 40 bits: above it PTEs are invalid).
VMM_PRIVATE_BASE = 0xFE_0000_0000
VMM_PRIVATE_SIZE = 64 * KiB
# The EPT-style table's pool (mm/ept.py): VMM-private too, sized by guest RAM.
EPT_POOL_BASE = VMM_PRIVATE_BASE + 1 * MiB
