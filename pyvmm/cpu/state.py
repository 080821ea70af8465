"""Guest CPU state as plain Python objects, and the interface root mode uses.

Handlers, event delivery and the page walker see the guest CPU only through this
interface (``CpuState``), implemented by the Unicorn engine (cpu/_unicorn.py) and by
``SoftCpu`` below, a pure-Python CPU state for unit tests and for labs that want to
run a handler without a guest.

Segment ``flags`` use the layout of a descriptor's high dword (SDM Vol. 3A, 3.4.5):
bits 8-11 type, 12 S, 13-14 DPL, 15 P, 20 AVL, 21 L, 22 D/B, 23 G.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
FRAME_REGS = GPRS + ("rip", "rflags")

# RFLAGS bits (SDM Vol. 1, 3.4.3)
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18

# Control register bits (SDM Vol. 3A, 2.5)
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_PSE, CR4_PAE, CR4_PGE, CR4_OSFXSR = 1 << 4, 1 << 5, 1 << 7, 1 << 9
CR4_SMEP, CR4_SMAP, CR4_PKE, CR4_LA57 = 1 << 20, 1 << 21, 1 << 22, 1 << 12
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11

SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
DESC_P = 1 << 15
DESC_S = 1 << 12
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23


class Segment(NamedTuple):
    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self):
        return (self.flags >> 13) & 3

    @property
    def present(self):
        return bool(self.flags & DESC_P)


class Table(NamedTuple):
    """A descriptor-table register (GDTR, IDTR) or system segment (LDTR, TR)."""
    selector: int
    base: int
    limit: int
    flags: int


@dataclass
class Registers:
    """General registers plus RIP and RFLAGS, as plain integers."""
    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rbp: int = 0
    rsp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = RFLAGS_FIXED
    cs: int = 0


@dataclass
class SoftCpu:
    """A CPU state held in Python: the CpuState interface without an engine.

    Attributes mirror what the engine offers: ``regs`` (Registers), control
    registers, MSRs, segments and descriptor tables. Used by unit tests of
    handlers and event delivery.
    """
    regs: Registers = field(default_factory=Registers)
    cr: dict = field(default_factory=lambda: {0: CR0_PE | CR0_ET, 2: 0, 3: 0, 4: 0, 8: 0})
    msrs: dict = field(default_factory=dict)
    segments: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    interrupt_shadow: bool = False
    tlb_flushes: list = field(default_factory=list)

    def __post_init__(self):
        for name in SEG_NAMES:
            self.segments.setdefault(name, Segment(0, 0, 0xFFFFFFFF, 0))
        for name in ("gdtr", "idtr", "ldtr", "tr"):
            self.tables.setdefault(name, Table(0, 0, 0, 0))

    def get_cr(self, n):
        return self.cr[n]

    def set_cr(self, n, value):
        self.cr[n] = value

    def get_msr(self, index):
        return self.msrs.get(index, 0)

    def set_msr(self, index, value):
        self.msrs[index] = value

    @property
    def efer(self):
        return self.msrs.get(0xC0000080, 0)

    def get_segment(self, name):
        return self.segments[name]

    def set_segments(self, changes):
        """changes: {name: Segment}; applied together (like a far transfer)."""
        self.segments.update(changes)

    def get_table(self, name):
        return self.tables[name]

    @property
    def cpl(self):
        return self.segments["cs"].selector & 3 if self.cr[0] & CR0_PE else 0

    @property
    def code_bits(self):
        cs = self.segments["cs"]
        if self.efer & EFER_LMA and cs.flags & DESC_L:
            return 64
        return 32 if cs.flags & DESC_B else 16

    def system_registers(self):
        return (self.cr[0], self.cr[2], self.cr[3], self.cr[4], self.efer, 0)

    def flush_tlb(self, address=None):
        self.tlb_flushes.append(address)

    def end_interrupt_shadow(self):
        self.interrupt_shadow = False
