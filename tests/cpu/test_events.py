"""Event delivery through the guest IDT, on a pure-Python CPU (no engine).

The descriptor tables are built here byte by byte from the SDM layouts (Vol. 3A:
Figure 6-8 IDT gates, 6-7 64-bit gates, 7-11 32-bit TSS, 7-11/7-18 64-bit TSS), so the
tests check pyvmm's reading of them rather than repeating it.
"""
import struct

import pytest

from pyvmm.boot.entry import write_identity_page_tables
from pyvmm.cpu import events
from pyvmm.cpu.state import EFER_LMA, EFER_LME, SoftCpu, Table
from pyvmm.mm.memory import GuestMemory

GDT, IDT, TSS = 0x10000, 0x11000, 0x12000
KSTACK, ISTSTACK, USTACK = 0x20000, 0x30000, 0x40000
HANDLER = 0x50000
KCODE64, KDATA, UCODE64, UDATA, KCODE32, UCODE32, TSS_SEL = 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38


def seg_desc(base, limit, access, flags):
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40) | (((limit >> 16) & 0xF) << 48)
            | (flags << 52) | ((base >> 24) << 56))


def gdt_bytes():
    entries = [0,
               seg_desc(0, 0xFFFFF, 0x9A, 0xA),   # 0x08 kernel code 64 (L)
               seg_desc(0, 0xFFFFF, 0x92, 0xC),   # 0x10 kernel data
               seg_desc(0, 0xFFFFF, 0xFA, 0xA),   # 0x18 user code 64, DPL3
               seg_desc(0, 0xFFFFF, 0xF2, 0xC),   # 0x20 user data, DPL3
               seg_desc(0, 0xFFFFF, 0x9A, 0xC),   # 0x28 kernel code 32 (D)
               seg_desc(0, 0xFFFFF, 0xFA, 0xC)]   # 0x30 user code 32, DPL3
    return struct.pack("<7Q", *entries)


def gate64(handler, selector=KCODE64, dpl=0, ist=0, kind=0xE, present=True):
    lo = (handler & 0xFFFF) | (selector << 16) | (ist << 32) | (kind << 40) | (dpl << 45) | (int(present) << 47) \
        | (((handler >> 16) & 0xFFFF) << 48)
    return struct.pack("<QQ", lo, handler >> 32)


def gate32(handler, selector=KCODE32, dpl=0, kind=0xE, present=True):
    return struct.pack("<Q", (handler & 0xFFFF) | (selector << 16) | (kind << 40) | (dpl << 45)
                       | (int(present) << 47) | ((handler >> 16) << 48))


def seg(sel, raw):
    return events.descriptor_segment(sel, raw)


def place_cpu(cpu, cpl, gate_size, user_code, kernel_code):
    """Descriptor tables, and CS/SS/RSP/RIP/RFLAGS of code running at ``cpl``."""
    raw = struct.unpack_from("<7Q", gdt_bytes())
    cpu.tables["gdtr"] = Table(0, GDT, 7 * 8 - 1, 0)
    cpu.tables["idtr"] = Table(0, IDT, 256 * gate_size - 1, 0)
    cpu.tables["tr"] = Table(TSS_SEL, TSS, 0x67, 0)
    code, data, rsp = (user_code | 3, UDATA | 3, USTACK) if cpl == 3 else (kernel_code, KDATA, KSTACK - 0x800)
    cpu.segments["cs"], cpu.segments["ss"] = seg(code, raw[code >> 3]), seg(data, raw[data >> 3])
    cpu.regs.rsp, cpu.regs.rip, cpu.regs.rflags = rsp, 0x401234, 0x202


def machine64(cpl=3):
    mem = GuestMemory(16 << 20)
    write_identity_page_tables(mem)
    mem.write(GDT, gdt_bytes())
    # 64-bit TSS: RSP0 at +4, IST1 at +0x24
    mem.write(TSS + 4, struct.pack("<Q", KSTACK))
    mem.write(TSS + 0x24, struct.pack("<Q", ISTSTACK))
    cpu = SoftCpu()
    cpu.cr.update({0: 0x80050033, 3: 0x9000, 4: 0x20})
    cpu.msrs[0xC0000080] = EFER_LME | EFER_LMA
    place_cpu(cpu, cpl, 16, UCODE64, KCODE64)
    return cpu, mem


def test_64bit_fault_from_ring3_switches_to_rsp0_with_error_code():
    cpu, mem = machine64(cpl=3)
    mem.write(IDT + 13 * 16, gate64(HANDLER))
    events.deliver(cpu, mem, events.Event(13, events.HW_EXCEPTION, 0x18))
    assert cpu.regs.rip == HANDLER and cpu.cpl == 0
    assert cpu.segments["cs"].selector == KCODE64
    assert cpu.segments["ss"].selector == 0                 # NULL SS with RPL 0 in 64-bit mode
    frame = struct.unpack("<6Q", mem.read(cpu.regs.rsp, 48))
    # error code, RIP, CS, RFLAGS, RSP, SS: as SDM Figure 6-9 (IA-32e stack frame)
    assert frame == (0x18, 0x401234, UCODE64 | 3, 0x202, USTACK, UDATA | 3)
    assert cpu.regs.rsp == KSTACK - 48
    assert not cpu.regs.rflags & 0x200                     # interrupt gate clears IF


def test_64bit_ist_stack_and_trap_gate_keeps_if():
    cpu, mem = machine64(cpl=0)
    mem.write(IDT + 3 * 16, gate64(HANDLER, ist=1, kind=0xF, dpl=3))
    events.deliver(cpu, mem, events.Event(3, events.SW_EXCEPTION))
    assert cpu.regs.rsp == ISTSTACK - 40 and cpu.regs.rflags & 0x200


def test_64bit_int_n_from_ring3_through_dpl0_gate_is_gp():
    cpu, mem = machine64(cpl=3)
    mem.write(IDT + 0x81 * 16, gate64(HANDLER, dpl=0))
    with pytest.raises(events.GuestFault) as f:
        events.deliver(cpu, mem, events.Event(0x81, events.SW_INTERRUPT))
    assert f.value.vector == 13 and f.value.error_code == 0x81 * 8 + 2
    assert cpu.regs.rip == 0x401234                         # nothing changed


def test_not_present_gate_escalates_to_double_fault_then_triple():
    cpu, mem = machine64(cpl=0)
    mem.write(IDT + 13 * 16, gate64(HANDLER, present=False))
    mem.write(IDT + 8 * 16, gate64(HANDLER + 0x100, ist=1))
    delivered = events.deliver_event(cpu, mem, events.Event(13, events.HW_EXCEPTION, 0))
    assert delivered.vector == 8 and cpu.regs.rip == HANDLER + 0x100
    frame = struct.unpack("<Q", mem.read(cpu.regs.rsp, 8))
    assert frame == (0,)                                     # #DF error code is 0
    cpu2, mem2 = machine64(cpl=0)
    mem2.write(IDT + 13 * 16, gate64(HANDLER, present=False))
    with pytest.raises(events.TripleFault):
        events.deliver_event(cpu2, mem2, events.Event(13, events.HW_EXCEPTION, 0))


def test_page_fault_sets_cr2_only_when_delivered():
    cpu, mem = machine64(cpl=0)
    mem.write(IDT + 14 * 16, gate64(HANDLER))
    events.deliver(cpu, mem, events.Event(14, events.HW_EXCEPTION, 0x6, cr2=0xDEAD000))
    assert cpu.cr[2] == 0xDEAD000


def machine32(cpl=3):
    mem = GuestMemory(16 << 20)
    mem.write(GDT, gdt_bytes())
    mem.write(TSS + 4, struct.pack("<II", KSTACK, KDATA))   # ESP0, SS0
    cpu = SoftCpu()
    cpu.cr.update({0: 0x11})
    place_cpu(cpu, cpl, 8, UCODE32, KCODE32)
    return cpu, mem


def test_32bit_interrupt_from_ring3_uses_ss0_esp0():
    cpu, mem = machine32(cpl=3)
    mem.write(IDT + 0x20 * 8, gate32(HANDLER))
    events.deliver(cpu, mem, events.Event(0x20, events.EXTERNAL))
    assert cpu.regs.rip == HANDLER and cpu.cpl == 0
    assert cpu.segments["ss"].selector == KDATA
    # EIP, CS, EFLAGS, ESP, SS (no error code for an external interrupt)
    assert struct.unpack("<5I", mem.read(cpu.regs.rsp, 20)) == (0x401234, UCODE32 | 3, 0x202, USTACK, UDATA | 3)
    assert cpu.regs.rsp == KSTACK - 20


def test_32bit_same_privilege_fault_pushes_error_code_only():
    cpu, mem = machine32(cpl=0)
    mem.write(IDT + 14 * 8, gate32(HANDLER))
    events.deliver(cpu, mem, events.Event(14, events.HW_EXCEPTION, 2, cr2=0x1000))
    assert struct.unpack("<4I", mem.read(cpu.regs.rsp, 16)) == (2, 0x401234, KCODE32, 0x202)
    assert cpu.regs.rsp == KSTACK - 0x800 - 16 and cpu.cr[2] == 0x1000


def test_32bit_bad_ss0_is_invalid_tss():
    cpu, mem = machine32(cpl=3)
    mem.write(TSS + 8, struct.pack("<I", UDATA | 3))        # SS0 with DPL 3: invalid
    mem.write(IDT + 0x20 * 8, gate32(HANDLER))
    with pytest.raises(events.GuestFault) as f:
        events.deliver(cpu, mem, events.Event(0x20, events.EXTERNAL))
    assert f.value.vector == 10
