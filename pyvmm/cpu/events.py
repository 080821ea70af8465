"""Event delivery: root mode delivers interrupts and exceptions through the guest's IDT.

Unicorn never delivers an exception or interrupt itself, so pyvmm does what the CPU
does on event delivery (SDM Vol. 3A, 6.12 "Exception and interrupt handling" and
6.14 for IA-32e mode): read the gate, check it, pick the stack (same privilege, or
TSS.RSPn / SS0:ESP0 on a privilege change, or an IST stack), push the frame (with
the error code when the vector has one), load CS:RIP, and clear IF for interrupt
gates. Works in 64-bit and 32-bit protected mode on any CpuState (cpu/state.py).

A fault found while delivering (gate not present, bad selector, stack page not
mapped) raises GuestFault for that nested fault; ``deliver_event`` turns nested
faults into #DF and a fault while delivering #DF into TripleFault (SDM Vol. 3A,
Table 6-5), leaving the guest state as it was before the failed attempt.
"""

import struct

from pyvmm.cpu.exits import DF, ERROR_CODE_VECTORS, GP, NP, PF, SS, TS
from pyvmm.cpu.state import (CR0_PE, DESC_L, DESC_S, EFER_LMA, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF,
                             RFLAGS_TF, RFLAGS_VM, Segment)
from pyvmm.errors import GuestFault
from pyvmm.mm.pagewalk import Paging, read_linear, write_linear

# Event kinds (the interruption types of cpu/exits.py)
EXTERNAL, NMI_KIND, HW_EXCEPTION, SW_INTERRUPT, PRIV_SW_EXCEPTION, SW_EXCEPTION = 0, 2, 3, 4, 5, 6

CONTRIBUTORY = frozenset({0, TS, NP, SS, GP})


class TripleFault(Exception):
    """A fault while delivering #DF: the CPU shuts down."""

    def __init__(self, why):
        super().__init__(why)
        self.why = why


class Event:
    """A pending event (the VM-entry interruption-information field, as data).

    ``fault_rip``: for software interrupts, whose frame holds the address after the
    INT instruction, the address of the INT itself: a fault while delivering one is
    reported there (SDM Vol. 3A, 6.12.1.1)."""
    __slots__ = ("vector", "kind", "error_code", "cr2", "fault_rip")

    def __init__(self, vector, kind=HW_EXCEPTION, error_code=None, cr2=None, fault_rip=None):
        self.vector, self.kind, self.error_code, self.cr2 = vector, kind, error_code, cr2
        self.fault_rip = fault_rip

    def __repr__(self):
        ec = "" if self.error_code is None else f" error_code={self.error_code:#x}"
        return f"Event(vector={self.vector}, kind={self.kind}{ec})"


def _idt_fault(vector, kind):
    """Error code for a fault on an IDT entry: index << 3 | IDT bit | EXT bit."""
    ext = 1 if kind in (EXTERNAL, NMI_KIND, HW_EXCEPTION) else 0
    return (vector << 3) | 2 | ext


def read_descriptor(cpu, mem, paging, selector, fault_vector=GP):
    """Read a GDT/LDT descriptor; returns (Segment with flags, raw u64)."""
    index = selector & 0xFFF8
    if selector & 4:
        table = cpu.get_table("ldtr")
    else:
        table = cpu.get_table("gdtr")
    if index + 7 > table.limit or (selector & ~3) == 0:
        raise GuestFault(fault_vector, error_code=selector & 0xFFFC, why=f"selector {selector:#x} outside table")
    raw = struct.unpack("<Q", read_linear(mem, paging, table.base + index, 8))[0]
    return descriptor_segment(selector, raw), raw


def descriptor_segment(selector, raw):
    """A Segment (hidden-cache form) from an 8-byte descriptor."""
    lo, hi = raw & 0xFFFFFFFF, raw >> 32
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0x000F0000)
    if hi & (1 << 23):
        limit = (limit << 12) | 0xFFF
    return Segment(selector, base, limit, hi & 0x00F0FF00)


def deliver(cpu, mem, event):
    """Deliver one event through the guest IDT. Raises GuestFault on a nested fault;
    nothing in the guest changes unless delivery succeeds."""
    cr0 = cpu.get_cr(0)
    if not cr0 & CR0_PE:
        raise GuestFault(GP, error_code=0, why="real-mode event delivery is not supported")
    if event.vector == PF and event.cr2 is not None:
        pass                      # CR2 is written only once delivery is sure to succeed
    paging = Paging(cr0, cpu.get_cr(3), cpu.get_cr(4), cpu.efer)
    long_mode = bool(paging.efer & EFER_LMA)
    regs = cpu.regs
    vector, kind = event.vector, event.kind
    idtr = cpu.get_table("idtr")
    gate_size = 16 if long_mode else 8
    if vector * gate_size + gate_size - 1 > idtr.limit:
        raise GuestFault(GP, error_code=_idt_fault(vector, kind), why=f"vector {vector} beyond IDT limit")
    raw = read_linear(mem, paging, idtr.base + vector * gate_size, gate_size)
    lo, hi = struct.unpack_from("<II", raw)
    gate_type = (hi >> 8) & 0xF
    gate_dpl = (hi >> 13) & 3
    present = bool(hi & (1 << 15))
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
    selector = lo >> 16
    if long_mode:
        offset |= struct.unpack_from("<I", raw, 8)[0] << 32
        ist = (hi >> 0) & 7
        valid_types = (0xE, 0xF)
    else:
        ist = 0
        valid_types = (0xE, 0xF, 0x6, 0x7)
    if gate_type not in valid_types:
        if gate_type == 0x5 and not long_mode:
            raise GuestFault(GP, error_code=_idt_fault(vector, kind), why="task gates are not supported")
        raise GuestFault(GP, error_code=_idt_fault(vector, kind), why=f"IDT entry {vector} has type {gate_type:#x}")
    cpl = cpu.cpl
    if kind in (SW_INTERRUPT, SW_EXCEPTION, PRIV_SW_EXCEPTION) and kind != PRIV_SW_EXCEPTION and gate_dpl < cpl:
        raise GuestFault(GP, error_code=_idt_fault(vector, kind), why=f"INT {vector} gate DPL {gate_dpl} < CPL {cpl}")
    if not present:
        raise GuestFault(NP, error_code=_idt_fault(vector, kind), why=f"IDT entry {vector} not present")
    cs_seg, _ = read_descriptor(cpu, mem, paging, selector)
    ext = 1 if kind in (EXTERNAL, NMI_KIND, HW_EXCEPTION) else 0
    if not (cs_seg.flags & DESC_S) or not (cs_seg.flags & (1 << 11)):
        raise GuestFault(GP, error_code=(selector & 0xFFFC) | ext, why=f"gate selector {selector:#x} is not code")
    dpl = cs_seg.dpl
    if dpl > cpl:
        raise GuestFault(GP, error_code=(selector & 0xFFFC) | ext, why="gate code segment DPL > CPL")
    if not cs_seg.present:
        raise GuestFault(NP, error_code=(selector & 0xFFFC) | ext, why=f"code segment {selector:#x} not present")
    if long_mode and not cs_seg.flags & DESC_L:
        raise GuestFault(GP, error_code=(selector & 0xFFFC) | ext, why="64-bit gate to a non-64-bit segment")
    conforming = bool(cs_seg.flags & (1 << 10))
    new_cpl = cpl if conforming else dpl
    rflags = regs.rflags
    old_ss = cpu.get_segment("ss")
    old_cs = cpu.get_segment("cs")
    has_error = event.vector in ERROR_CODE_VECTORS and kind == HW_EXCEPTION
    error = (event.error_code or 0) if has_error else None
    tr = cpu.get_table("tr")
    new_ss = None
    if long_mode:
        if ist:
            rsp = _read_tss(mem, paging, tr, 0x24 + (ist - 1) * 8, 8, vector, kind)
        elif new_cpl < cpl:
            rsp = _read_tss(mem, paging, tr, 4 + new_cpl * 8, 8, vector, kind)
        else:
            rsp = regs.rsp
        if new_cpl < cpl:
            new_ss = Segment(new_cpl, 0, 0, new_cpl << 13)     # NULL SS with RPL = new CPL
        rsp &= ~0xF
        frame = [old_ss.selector, regs.rsp, rflags, old_cs.selector, regs.rip]
        if error is not None:
            frame.append(error)
        rsp -= 8 * len(frame)
        data = struct.pack("<%dQ" % len(frame), *reversed(frame))
    else:
        width = 4 if gate_type in (0xE, 0xF) else 2
        fmt = "<%d" + ("I" if width == 4 else "H")
        if new_cpl < cpl:
            esp = _read_tss(mem, paging, tr, 4 + new_cpl * 8, 4, vector, kind)
            ss_sel = _read_tss(mem, paging, tr, 8 + new_cpl * 8, 2, vector, kind)
            new_ss, _ = read_descriptor(cpu, mem, paging, ss_sel, fault_vector=TS)
            if new_ss.dpl != new_cpl or (ss_sel & 3) != new_cpl or not new_ss.present:
                raise GuestFault(TS, error_code=ss_sel & 0xFFFC, why=f"TSS SS{new_cpl} {ss_sel:#x} invalid")
            frame = [old_ss.selector, regs.rsp & 0xFFFFFFFF]
            stack_base = new_ss.base
            rsp = esp
        else:
            frame = []
            stack_base = old_ss.base
            rsp = regs.rsp & 0xFFFFFFFF
        frame += [rflags & 0xFFFFFFFF, old_cs.selector, regs.rip & 0xFFFFFFFF]
        if error is not None:
            frame.append(error)
        rsp = (rsp - width * len(frame)) & 0xFFFFFFFF
        data = struct.pack(fmt % len(frame), *reversed(frame))
        push_at = stack_base + rsp
    try:
        write_linear(mem, paging, (rsp if long_mode else push_at), data, user=new_cpl == 3)
    except GuestFault as f:
        raise GuestFault(SS if f.vector != PF else PF, error_code=f.error_code if f.vector == PF else 0,
                         cr2=f.cr2, why="stack push during delivery faulted") from None
    # Commit: nothing above changed the guest; now load the new state.
    if event.vector == PF and event.cr2 is not None and kind == HW_EXCEPTION:
        cpu.set_cr(2, event.cr2)
    new_cs = Segment((selector & 0xFFFC) | new_cpl, cs_seg.base, cs_seg.limit, cs_seg.flags)
    rflags &= ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    if gate_type in (0xE, 0x6):
        rflags &= ~RFLAGS_IF
    regs.rip = offset if long_mode else offset & 0xFFFFFFFF
    regs.rsp = rsp if long_mode else (regs.rsp & ~0xFFFFFFFF) | rsp
    regs.rflags = rflags
    changes = {"cs": new_cs}
    if new_ss is not None:
        changes["ss"] = new_ss
    cpu.set_segments(changes)


def _read_tss(mem, paging, tr, offset, size, vector, kind):
    if offset + size - 1 > tr.limit:
        raise GuestFault(TS, error_code=tr.selector & 0xFFFC, why=f"TSS offset {offset:#x} beyond its limit")
    data = read_linear(mem, paging, tr.base + offset, size)
    return int.from_bytes(data, "little")


def deliver_event(cpu, mem, event):
    """Deliver ``event``, escalating nested faults the way the CPU does:
    contributory-or-#PF during contributory-or-#PF -> #DF; any fault during #DF ->
    TripleFault. Returns the event that was finally delivered."""
    current = event
    while True:
        try:
            deliver(cpu, mem, current)
            return current
        except GuestFault as nested:
            if current.fault_rip is not None:
                cpu.regs.rip = current.fault_rip
            if current.vector == DF and current.kind == HW_EXCEPTION:
                raise TripleFault(f"fault {nested.vector} ({nested.why}) while delivering #DF") from None
            first_bad = current.kind == HW_EXCEPTION and (current.vector in CONTRIBUTORY or current.vector == PF)
            second_bad = nested.vector in CONTRIBUTORY or nested.vector == PF
            if first_bad and second_bad and not (current.vector in CONTRIBUTORY and nested.vector == PF):
                current = Event(DF, HW_EXCEPTION, 0)
            else:
                current = Event(nested.vector, HW_EXCEPTION, nested.error_code, nested.cr2)
