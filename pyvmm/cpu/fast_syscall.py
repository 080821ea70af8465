"""SYSCALL, done by root mode: Unicorn's SYSCALL only calls a hook.

What the CPU does for SYSCALL (SDM Vol. 2B, "SYSCALL"; AMD APM Vol. 3): #UD unless
EFER.SCE; in long mode RCX = the next RIP, R11 = RFLAGS, RFLAGS &= ~SFMASK, CS and SS
from STAR[47:32] (flat ring-0 code and data; CS is 64-bit), RIP = LSTAR (or CSTAR
when called from compatibility mode). In legacy mode ECX = next EIP, IF/VM/RF are
cleared and EIP = STAR[31:0]. SYSRET needs nothing from root mode: the engine runs it.

The hidden segment-cache values are the ones SYSCALL loads, not read from the GDT.
"""

from pyvmm.cpu.exits import UD
from pyvmm.cpu.msr import CSTAR, LSTAR, SFMASK, STAR
from pyvmm.cpu.state import EFER_LMA, EFER_SCE, RFLAGS_IF, RFLAGS_RF, RFLAGS_VM, Segment
from pyvmm.errors import GuestFault

# descriptor flag bits: G | P | S | code | readable | accessed (+ L for 64-bit code)
_CODE = (1 << 23) | (1 << 15) | (1 << 12) | (1 << 11) | (1 << 9) | (1 << 8)
_CODE64 = _CODE | (1 << 21)
_CODE32 = _CODE | (1 << 22)
# G | D/B | P | S | writable | accessed
_DATA = (1 << 23) | (1 << 22) | (1 << 15) | (1 << 12) | (1 << 9) | (1 << 8)


def emulate_syscall(cpu, regs, insn_len=2):
    """Perform SYSCALL at ``regs.rip`` (the instruction's address) on ``cpu``."""
    efer = cpu.efer
    if not efer & EFER_SCE:
        raise GuestFault(UD, why="SYSCALL with EFER.SCE clear")
    selector = (cpu.get_msr(STAR) >> 32) & 0xFFFC
    next_rip = regs.rip + insn_len
    if efer & EFER_LMA:
        target = cpu.get_msr(LSTAR if cpu.code_bits == 64 else CSTAR)
        regs.rcx = next_rip
        regs.r11 = regs.rflags & ~RFLAGS_RF
        regs.rflags &= ~(cpu.get_msr(SFMASK) | RFLAGS_RF) & 0xFFFF_FFFF_FFFF_FFFF
        code = _CODE64
    else:
        target = cpu.get_msr(STAR) & 0xFFFFFFFF
        regs.rcx = next_rip & 0xFFFFFFFF
        regs.rflags &= ~(RFLAGS_IF | RFLAGS_VM | RFLAGS_RF)
        code = _CODE32
    regs.rip = target
    cpu.set_segments({"ss": Segment(selector + 8, 0, 0xFFFFFFFF, _DATA),
                      "cs": Segment(selector, 0, 0xFFFFFFFF, code)})
