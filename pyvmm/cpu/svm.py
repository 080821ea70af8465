"""AMD SVM structures: the VMCB layout and the #VMEXIT codes.

pyvmm runs guests in QEMU's emulation of AMD-V inside Unicorn: the engine executes
VMRUN once, and from then on every intercepted event arrives as an interrupt hook
with number 0x100 + exit code while the guest state stays loaded (Unicorn never
performs the #VMEXIT world switch). This module only knows the byte layout.

Source: AMD64 Architecture Programmer's Manual Vol. 2, Appendix B (Table B-1 VMCB
control area, Table B-2 state-save area) and Appendix C (SVM intercept exit codes).
"""

import struct

EXCP_VMEXIT = 0x100          # QEMU's EXCP_VMEXIT: Unicorn's interrupt number base

# ---- #VMEXIT codes (APM Vol. 2, Appendix C) ----
VMEXIT_CR0_READ = 0x000      # + n for CRn
VMEXIT_CR0_WRITE = 0x010     # + n for CRn
VMEXIT_EXCP_BASE = 0x040     # + vector
VMEXIT_INTR = 0x060
VMEXIT_VINTR = 0x064
VMEXIT_RDTSC = 0x06E
VMEXIT_CPUID = 0x072
VMEXIT_SWINT = 0x075
VMEXIT_HLT = 0x078
VMEXIT_INVLPG = 0x079
VMEXIT_IOIO = 0x07B
VMEXIT_MSR = 0x07C
VMEXIT_SHUTDOWN = 0x07F
VMEXIT_VMRUN = 0x080
VMEXIT_VMMCALL = 0x081
VMEXIT_WBINVD = 0x089
VMEXIT_NPF = 0x400

# Intercept vector 3/4 bit positions: bit (code - 0x60) of the 64-bit field at 0x00C.
def intercept_bit(code):
    if not 0x60 <= code < 0xA0:
        raise ValueError(f"exit code {code:#x} has no intercept-vector bit")
    return 1 << (code - 0x60)


# ---- control area (Table B-1) ----
CTRL_CR_INTERCEPTS = 0x000   # u16 CR reads, u16 CR writes
CTRL_EXCP_INTERCEPTS = 0x008  # u32
CTRL_INTERCEPTS = 0x00C      # u64 (vectors 3 and 4)
CTRL_IOPM_BASE = 0x040
CTRL_MSRPM_BASE = 0x048
CTRL_TSC_OFFSET = 0x050
CTRL_ASID = 0x058
CTRL_INT_CTL = 0x060
CTRL_EXITCODE = 0x070
CTRL_EXITINFO1 = 0x078
CTRL_EXITINFO2 = 0x080
CTRL_NP_ENABLE = 0x090
CTRL_EVENTINJ = 0x0A8
CTRL_NCR3 = 0x0B0

# ---- state-save area (Table B-2), offsets from the start of the VMCB ----
SAVE = 0x400
SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = (SAVE + i * 0x10 for i in range(6))
SEG_GDTR, SEG_LDTR, SEG_IDTR, SEG_TR = SAVE + 0x60, SAVE + 0x70, SAVE + 0x80, SAVE + 0x90
SAVE_CPL = SAVE + 0x0CB
SAVE_EFER = SAVE + 0x0D0
SAVE_CR4 = SAVE + 0x148
SAVE_CR3 = SAVE + 0x150
SAVE_CR0 = SAVE + 0x158
SAVE_DR7 = SAVE + 0x160
SAVE_DR6 = SAVE + 0x168
SAVE_RFLAGS = SAVE + 0x170
SAVE_RIP = SAVE + 0x178
SAVE_RSP = SAVE + 0x1D8
SAVE_RAX = SAVE + 0x1F8
SAVE_G_PAT = SAVE + 0x268
VMCB_SIZE = 0x1000

EFER_SVME = 1 << 12
MSR_EFER = 0xC0000080
MSR_VM_HSAVE_PA = 0xC0010117

IOPM_SIZE = 0x3000           # 12 KiB: one bit per port (+ 1 page for wide accesses)
MSRPM_SIZE = 0x2000          # 8 KiB: two bits (read, write) per MSR in three ranges
# MSR permission map ranges (APM Vol. 2, 15.11 "MSR Intercepts"): (first MSR, byte offset)
_MSRPM_RANGES = ((0x00000000, 0x000), (0xC0000000, 0x800), (0xC0010000, 0x1000))


def msrpm_position(msr):
    """(byte offset, bit of the read intercept) of an MSR in the MSR permission map;
    the write intercept is the next bit. None for MSRs outside the three ranges
    (those always intercept)."""
    for first, base in _MSRPM_RANGES:
        if first <= msr < first + 0x2000:
            bit = (msr - first) * 2
            return base + bit // 8, bit % 8
    return None


def pack_segment(selector, attrib, limit, base):
    """A VMCB segment register: u16 selector, u16 attributes, u32 limit, u64 base."""
    return struct.pack("<HHIQ", selector, attrib, limit & 0xFFFFFFFF, base)


def attrib_from_flags(flags):
    """VMCB 12-bit attributes from a descriptor's high dword (type..P, AVL..G)."""
    return ((flags >> 8) & 0xFF) | (((flags >> 20) & 0xF) << 8)


def flags_from_attrib(attrib):
    """Inverse of attrib_from_flags: descriptor high-dword flag bits."""
    return ((attrib & 0xFF) << 8) | (((attrib >> 8) & 0xF) << 20)
