"""Decoding the instruction that caused an exit (capstone), for qualifications,
traces and the lab's disassembler.

Reads instruction bytes at a guest-linear address through the page walker, so it
works with any guest paging mode. Results are cached per (CR3, linear address,
bytes): decoding is only paid once per instruction site.
"""

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as CX

from pyvmm.errors import GuestFault, GuestMemoryError
from pyvmm.mm.pagewalk import read_linear

_DIS = {bits: Cs(CS_ARCH_X86, mode) for bits, mode in ((16, CS_MODE_16), (32, CS_MODE_32), (64, CS_MODE_64))}
for _d in _DIS.values():
    _d.detail = True

# capstone register id -> SDM general-purpose register number (Table 28-3 order)
_GPR_NUM = {}
for _num, _names in enumerate((("RAX", "EAX", "AX"), ("RCX", "ECX", "CX"), ("RDX", "EDX", "DX"),
                               ("RBX", "EBX", "BX"), ("RSP", "ESP", "SP"), ("RBP", "EBP", "BP"),
                               ("RSI", "ESI", "SI"), ("RDI", "EDI", "DI"), ("R8", "R8D", "R8W"),
                               ("R9", "R9D", "R9W"), ("R10", "R10D", "R10W"), ("R11", "R11D", "R11W"),
                               ("R12", "R12D", "R12W"), ("R13", "R13D", "R13W"), ("R14", "R14D", "R14W"),
                               ("R15", "R15D", "R15W"))):
    for _n in _names:
        _GPR_NUM[getattr(CX, "X86_REG_" + _n)] = _num
_CR_NUM = {getattr(CX, f"X86_REG_CR{i}"): i for i in (0, 2, 3, 4, 8)}


class Insn:
    __slots__ = ("address", "size", "mnemonic", "op_str", "raw", "cs_insn")

    def __init__(self, address, size, mnemonic, op_str, raw, cs_insn):
        self.address, self.size, self.mnemonic, self.op_str = address, size, mnemonic, op_str
        self.raw, self.cs_insn = raw, cs_insn

    @property
    def text(self):
        return f"{self.mnemonic} {self.op_str}".strip()


_cache = {}


def fetch(mem, paging, address, length=15, tlb=None):
    """Up to ``length`` instruction bytes at ``address`` (fewer at an unmapped page end)."""
    try:
        return read_linear(mem, paging, address, length, fetch=True, tlb=tlb)
    except (GuestFault, GuestMemoryError):
        first = 0x1000 - (address & 0xFFF)
        if first >= length:
            raise
        return read_linear(mem, paging, address, first, fetch=True, tlb=tlb)


def decode(mem, paging, address, bits=64, tlb=None):
    """Decode the instruction at guest-linear ``address``; None if it is not decodable."""
    raw = fetch(mem, paging, address, tlb=tlb)
    key = (paging.cr3, address, raw, bits)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    insn = next(_DIS[bits].disasm(raw, address, 1), None)
    if insn is None:
        return None
    result = Insn(address, insn.size, insn.mnemonic, insn.op_str, raw[:insn.size], insn)
    if len(_cache) > 4096:
        _cache.clear()
    _cache[key] = result
    return result


def disassemble(mem, paging, address, count, bits=64, tlb=None):
    """Up to ``count`` instructions from ``address`` (stops at undecodable bytes)."""
    out = []
    for _ in range(count):
        insn = decode(mem, paging, address, bits, tlb)
        if insn is None:
            break
        out.append(insn)
        address += insn.size
    return out


def cr_operands(insn):
    """For mov to/from CRn: (cr number, gpr number, is_write_to_cr)."""
    ops = insn.cs_insn.operands
    if len(ops) != 2 or ops[0].type != CX.X86_OP_REG or ops[1].type != CX.X86_OP_REG:
        return None
    if ops[0].reg in _CR_NUM:
        return _CR_NUM[ops[0].reg], _GPR_NUM.get(ops[1].reg, 0), True
    if ops[1].reg in _CR_NUM:
        return _CR_NUM[ops[1].reg], _GPR_NUM.get(ops[0].reg, 0), False
    return None


def memory_operand_address(insn, regs):
    """Effective address of the first memory operand, from register values in ``regs``."""
    for op in insn.cs_insn.operands:
        if op.type == CX.X86_OP_MEM:
            m = op.mem
            addr = m.disp
            if m.base == CX.X86_REG_RIP:
                addr += insn.address + insn.size
            elif m.base:
                addr += _reg_value(insn, m.base, regs)
            if m.index:
                addr += _reg_value(insn, m.index, regs) * m.scale
            return addr & 0xFFFF_FFFF_FFFF_FFFF
    return None


def register_operand(insn, regs, index=0):
    """Value of operand ``index`` when it is a general register (None otherwise)."""
    op = insn.cs_insn.operands[index]
    return _reg_value(insn, op.reg, regs) if op.type == CX.X86_OP_REG else None


def _reg_value(insn, reg, regs):
    from pyvmm.cpu.exits import GPR_NAMES
    num = _GPR_NUM.get(reg)
    if num is None:
        raise ValueError(f"register {insn.cs_insn.reg_name(reg)} in an address")
    value = getattr(regs, GPR_NAMES[num])
    name = insn.cs_insn.reg_name(reg)
    if name.startswith("e") or name.endswith("d"):
        return value & 0xFFFFFFFF
    if len(name) == 2 or name.endswith("w"):          # ax..di, r8w..r15w
        return value & 0xFFFF
    return value


def io_form(raw):
    """(string, rep, immediate) for an IN/OUT/INS/OUTS instruction's bytes."""
    rep = False
    i = 0
    while i < len(raw) and raw[i] in (0xF2, 0xF3, 0x66, 0x67, 0x2E, 0x3E, 0x26, 0x64, 0x65, 0x36) or (
            i < len(raw) and 0x40 <= raw[i] <= 0x4F):
        rep |= raw[i] in (0xF2, 0xF3)
        i += 1
    op = raw[i] if i < len(raw) else 0
    return op in (0x6C, 0x6D, 0x6E, 0x6F), rep, op in (0xE4, 0xE5, 0xE6, 0xE7)
