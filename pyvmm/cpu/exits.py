"""VM exits as data: reasons, the Exit record, and qualification encoders.

Exit reasons are numbered as the Intel SDM Vol. 3C, Appendix C ("VMX Basic Exit
Reasons"); qualification layouts follow SDM Vol. 3C, section 28.2.1 (Table 28-3 for
control-register accesses, Table 28-5 for I/O instructions) and the VM-exit
interruption-information field of section 25.9.2 (Table 25-17).

Invariant: an Exit is immutable and carries no engine object; handlers read and
change guest registers through the vCPU, never through the Exit.
"""

import enum
from typing import NamedTuple


class ExitReason(enum.IntEnum):
    """Basic exit reasons (SDM Vol. 3C, Appendix C)."""
    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INTERRUPT_WINDOW = 7
    CPUID = 10
    HLT = 12
    INVLPG = 14
    RDTSC = 16
    VMCALL = 18
    CR_ACCESS = 28
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    PREEMPTION_TIMER = 52
    WBINVD = 54

    @property
    def sdm_name(self):
        return _SDM_NAMES[self]


_SDM_NAMES = {
    ExitReason.EXCEPTION_NMI: "Exception or non-maskable interrupt (NMI)",
    ExitReason.EXTERNAL_INTERRUPT: "External interrupt",
    ExitReason.TRIPLE_FAULT: "Triple fault",
    ExitReason.INTERRUPT_WINDOW: "Interrupt window",
    ExitReason.CPUID: "CPUID",
    ExitReason.HLT: "HLT",
    ExitReason.INVLPG: "INVLPG",
    ExitReason.RDTSC: "RDTSC",
    ExitReason.VMCALL: "VMCALL",
    ExitReason.CR_ACCESS: "Control-register accesses",
    ExitReason.IO_INSTRUCTION: "I/O instruction",
    ExitReason.RDMSR: "RDMSR",
    ExitReason.WRMSR: "WRMSR",
    ExitReason.EPT_VIOLATION: "EPT violation",
    ExitReason.EPT_MISCONFIG: "EPT misconfiguration",
    ExitReason.PREEMPTION_TIMER: "VMX-preemption timer expired",
    ExitReason.WBINVD: "WBINVD",
}

# Short names accepted by --break and printed in tables.
SHORT_NAMES = {
    "exception": ExitReason.EXCEPTION_NMI, "extint": ExitReason.EXTERNAL_INTERRUPT,
    "triple": ExitReason.TRIPLE_FAULT, "window": ExitReason.INTERRUPT_WINDOW,
    "cpuid": ExitReason.CPUID, "hlt": ExitReason.HLT, "invlpg": ExitReason.INVLPG,
    "rdtsc": ExitReason.RDTSC, "vmcall": ExitReason.VMCALL, "cr": ExitReason.CR_ACCESS,
    "io": ExitReason.IO_INSTRUCTION, "rdmsr": ExitReason.RDMSR, "wrmsr": ExitReason.WRMSR,
    "ept": ExitReason.EPT_VIOLATION, "eptmisconfig": ExitReason.EPT_MISCONFIG,
    "preempt": ExitReason.PREEMPTION_TIMER, "wbinvd": ExitReason.WBINVD,
}
SHORT_OF = {v: k for k, v in SHORT_NAMES.items()}


class Exit(NamedTuple):
    """One VM exit: the VMCS exit-information fields pyvmm fills.

    reason        basic exit reason
    qualification exit qualification (layout depends on the reason)
    rip           guest RIP of the instruction that exited (or that was interrupted)
    insn_len      VM-exit instruction length (0 when no instruction caused the exit)
    intr_info     VM-exit interruption information (exceptions, external interrupts)
    intr_error    VM-exit interruption error code (valid when intr_info bit 11 is set)
    gla           guest-linear address (#PF: the faulting address; INVLPG: the operand)
    gpa           guest-physical address (EPT violations)
    value         for OUT: the value written; for IN the handler returns the value
    seq           sequence number of this exit on its vCPU
    """
    reason: ExitReason
    qualification: int = 0
    rip: int = 0
    insn_len: int = 0
    intr_info: int = 0
    intr_error: int = 0
    gla: int = 0
    gpa: int = 0
    value: int = 0
    seq: int = 0


# ---- control-register access qualification (SDM Table 28-3) ----
CR_MOV_TO = 0
CR_MOV_FROM = 1
CR_CLTS = 2
CR_LMSW = 3

# General-purpose register numbering used by qualifications (SDM Table 28-3):
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def cr_qualification(cr, access, gpr=0, lmsw_data=0, lmsw_mem=False):
    """Encode: bits 3:0 CR number, 5:4 access type, 6 LMSW operand type,
    11:8 general-purpose register, 31:16 LMSW source data."""
    return ((cr & 0xF) | ((access & 3) << 4) | (int(lmsw_mem) << 6) | ((gpr & 0xF) << 8)
            | ((lmsw_data & 0xFFFF) << 16))


def decode_cr_qualification(q):
    return {"cr": q & 0xF, "access": (q >> 4) & 3, "lmsw_mem": bool(q & 0x40),
            "gpr": (q >> 8) & 0xF, "lmsw_data": (q >> 16) & 0xFFFF}


# ---- I/O instruction qualification (SDM Table 28-5) ----
_IO_SIZE_CODE = {1: 0, 2: 1, 4: 3}
IO_SIZE_OF_CODE = (1, 2, 0, 4, 0, 0, 0, 0)     # bits 2:0 -> access size (0: invalid)


def io_qualification(port, size, is_in, string=False, rep=False, imm=False):
    """Encode: bits 2:0 size-1 (0, 1 or 3), bit 3 direction (1 = IN), bit 4 string,
    bit 5 REP prefix, bit 6 operand encoding (1 = immediate), bits 31:16 port."""
    return (_IO_SIZE_CODE[size] | (int(is_in) << 3) | (int(string) << 4) | (int(rep) << 5)
            | (int(imm) << 6) | ((port & 0xFFFF) << 16))


def decode_io_qualification(q):
    return {"size": IO_SIZE_OF_CODE[q & 7], "in": bool(q & 8), "string": bool(q & 0x10),
            "rep": bool(q & 0x20), "imm": bool(q & 0x40), "port": (q >> 16) & 0xFFFF}


# ---- interruption information (SDM Table 25-17) ----
INTR_TYPE_EXTERNAL = 0
INTR_TYPE_NMI = 2
INTR_TYPE_HW_EXCEPTION = 3
INTR_TYPE_SW_INTERRUPT = 4
INTR_TYPE_PRIV_SW_EXCEPTION = 5
INTR_TYPE_SW_EXCEPTION = 6
INTR_INFO_VALID = 1 << 31
INTR_INFO_ERROR_VALID = 1 << 11


def intr_info(vector, kind, has_error=False):
    """Encode: bits 7:0 vector, 10:8 type, bit 11 error code valid, bit 31 valid."""
    return (vector & 0xFF) | ((kind & 7) << 8) | (INTR_INFO_ERROR_VALID if has_error else 0) | INTR_INFO_VALID


def decode_intr_info(info):
    return {"vector": info & 0xFF, "type": (info >> 8) & 7, "error_valid": bool(info & INTR_INFO_ERROR_VALID),
            "valid": bool(info & INTR_INFO_VALID)}


# Architectural exception vectors (SDM Vol. 3A, Table 6-1).
EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                   8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                   17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}
DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)
# Vectors that push an error code (SDM Vol. 3A, 6.13 and Table 6-1).
ERROR_CODE_VECTORS = frozenset({DF, TS, NP, SS, GP, PF, AC, 21})
