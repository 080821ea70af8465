"""Model-specific registers: which exist, where their state lives, what is legal.

Every RDMSR/WRMSR of the guest exits (the SVM MSR permission map intercepts all),
and the handler asks this table. MSRs whose state is part of the CPU (EFER, the
SYSCALL and segment-base MSRs, PAT, TSC...) are read and written in the engine;
the rest are stored here. An MSR not in the table raises #GP(0), as hardware does
for a non-existent MSR; so do writes of reserved bits (SDM Vol. 4, Table 2-2 for
addresses and bit layouts; Vol. 3A 11.12.2 for the PAT memory types).
"""

from pyvmm.cpu.exits import GP
from pyvmm.errors import GuestFault

EFER = 0xC0000080
STAR, LSTAR, CSTAR, SFMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX = 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103
TSC = 0x10
SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP = 0x174, 0x175, 0x176
PAT = 0x277
MISC_ENABLE = 0x1A0
MTRRCAP, MTRR_DEF_TYPE = 0xFE, 0x2FF
MCG_CAP, MCG_STATUS = 0x179, 0x17A
# AMD family 17h (the EPYC model the guest is shown), APM Vol. 2 and BKDG/PPR:
AMD_SYSCFG, AMD_HWCR, AMD_NB_CFG = 0xC0010010, 0xC0010015, 0xC001001F
AMD_VM_CR, AMD_DE_CFG, AMD_LS_CFG = 0xC0010114, 0xC0011029, 0xC0011020

EFER_ALLOWED = 0x1 | 0x100 | 0x400 | 0x800 | 0x4000   # SCE, LME, LMA, NXE, FFXSR
ENGINE_MSRS = frozenset({EFER, STAR, LSTAR, CSTAR, SFMASK, FS_BASE, GS_BASE, KERNEL_GS_BASE,
                         TSC_AUX, TSC, SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP, PAT})
CANONICAL_MSRS = frozenset({LSTAR, CSTAR, FS_BASE, GS_BASE, KERNEL_GS_BASE, SYSENTER_ESP, SYSENTER_EIP})
_MTRR_VAR = range(0x200, 0x210)
_MTRR_FIXED = (0x250, 0x258, 0x259) + tuple(range(0x268, 0x270))


def _canonical(v):
    top = v >> 47
    return top == 0 or top == 0x1FFFF


class MsrTable:
    """The guest's MSRs. ``read(cpu, index)`` / ``write(cpu, index, value)`` raise
    GuestFault(#GP) exactly where hardware would."""

    def __init__(self):
        self.stored = {MISC_ENABLE: 1, MTRRCAP: 0x508, MTRR_DEF_TYPE: 0, MCG_CAP: 0, MCG_STATUS: 0,
                       AMD_SYSCFG: 0, AMD_HWCR: 0, AMD_NB_CFG: 0, AMD_DE_CFG: 0, AMD_LS_CFG: 0,
                       AMD_VM_CR: 0x10}          # VM_CR.SVMDIS: the guest cannot enable SVM
        for i in list(_MTRR_VAR) + list(_MTRR_FIXED):
            self.stored[i] = 0
        self.readonly = frozenset({MTRRCAP, MCG_CAP, AMD_VM_CR})

    def known(self, index):
        return index in ENGINE_MSRS or index in self.stored

    def read(self, cpu, index):
        if index in ENGINE_MSRS:
            return cpu.efer if index == EFER else cpu.get_msr(index)
        if index in self.stored:
            return self.stored[index]
        raise GuestFault(GP, error_code=0, why=f"RDMSR of unimplemented MSR {index:#x}")

    def write(self, cpu, index, value):
        value &= 0xFFFF_FFFF_FFFF_FFFF
        if index == EFER:
            if value & ~EFER_ALLOWED:
                raise GuestFault(GP, error_code=0, why=f"WRMSR EFER reserved bits {value:#x}")
            old = cpu.efer
            # LME may not change while paging is on (SDM Vol. 3A, 9.8.5); LMA is read-only.
            if (value ^ old) & 0x100 and cpu.get_cr(0) & (1 << 31):
                raise GuestFault(GP, error_code=0, why="WRMSR EFER.LME with paging enabled")
            value = (value & ~0x400) | (old & 0x400)
        elif index == PAT:
            for i in range(8):
                if (value >> (8 * i)) & 0xFF not in (0, 1, 4, 5, 6, 7):
                    raise GuestFault(GP, error_code=0, why=f"WRMSR PAT invalid memory type {value:#x}")
        elif index in CANONICAL_MSRS and not _canonical(value):
            raise GuestFault(GP, error_code=0, why=f"WRMSR {index:#x} non-canonical {value:#x}")
        if index in ENGINE_MSRS:
            cpu.set_msr(index, value)
            return
        if index in self.stored and index not in self.readonly:
            self.stored[index] = value
            return
        raise GuestFault(GP, error_code=0, why=f"WRMSR of {'read-only' if index in self.stored else 'unimplemented'} MSR {index:#x}")
