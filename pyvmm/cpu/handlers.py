"""The exit-handler table: one plain function per exit reason.

``EXIT_HANDLERS[reason](vm, exit) -> Resume | ToUser | Shutdown``, the way Linux's
kvm_vmx_exit_handlers[] maps reasons to functions. A handler sees the guest through
``vm`` (a Vcpu, or any object with the same attributes: ``regs``, ``cpu``, ``mem``,
``io``, ``cpuid``, ``msrs``, ``hypercalls``, ``controls``, ``tracing`` (build
notes only when it is true), and the methods
``inject``, ``halt``, ``paging``), never through Unicorn, so tests call handlers
with fake state.

Conventions: for exits on CPUID and port I/O the instruction completes on its own
after the handler (IN takes ``Resume.value``); for the other instruction exits a
Resume advances RIP by the instruction length unless ``advance=False`` (a fault
was injected instead). Notes say what the handler did, for traces.
"""

from pyvmm.cpu import events
from pyvmm.cpu.exits import (DB, PF, CR_CLTS, CR_MOV_FROM, CR_MOV_TO, EXCEPTION_NAMES, GP, GPR_NAMES,
                             IO_SIZE_OF_CODE, ExitReason, decode_cr_qualification, decode_intr_info)
from pyvmm.cpu.state import (CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, RFLAGS_IF, RFLAGS_TF)
from pyvmm.errors import GuestFault
from pyvmm.mm import ept
from pyvmm.mm.shadow import ShadowUnsupported


class Resume:
    __slots__ = ("note", "value", "advance")

    def __init__(self, note=None, value=0, advance=True):
        self.note, self.value, self.advance = note, value, advance

    def describe(self):
        return self.note() if callable(self.note) else (self.note or "resumed")


RESUME = Resume()          # a shared outcome for handlers with nothing to report


class ToUser(Resume):
    """Resume after handing the exit to the user (the lab's stepper or a caller)."""


class Shutdown:
    __slots__ = ("status", "reason")

    def __init__(self, status, reason):
        self.status, self.reason = status, reason

    def describe(self):
        return f"stop VM: {self.reason}"

    advance = False
    value = 0


def handle_cpuid(vm, ex):
    regs = vm.regs
    leaf, sub = regs.rax & 0xFFFFFFFF, regs.rcx & 0xFFFFFFFF
    a, b, c, d = vm.cpuid.query(leaf, sub)
    regs.rax, regs.rbx, regs.rcx, regs.rdx = a, b, c, d
    if not vm.tracing:
        return RESUME
    return Resume(f"CPUID leaf {leaf:#x}.{sub:x} -> eax={a:#x} ebx={b:#x} ecx={c:#x} edx={d:#x}")


def handle_io(vm, ex):
    q = ex.qualification                      # SDM Table 28-5, see exits.io_qualification
    port, size = q >> 16, IO_SIZE_OF_CODE[q & 7]
    if q & 8:                                 # IN
        value = vm.io.read(port, size)
        if not vm.tracing:
            return Resume(value=value)
        return Resume(f"IN {port:#x}/{size} <- {value:#x} ({_device_name(vm, port)})", value=value)
    value = ex.value & ((1 << (8 * size)) - 1)
    vm.io.write(port, size, value)
    if not vm.tracing:
        return RESUME
    return Resume(f"OUT {port:#x}/{size} {value:#x} -> {_device_name(vm, port)}")


def _device_name(vm, port):
    dev = vm.io.device_at(port)
    return dev.name if dev is not None else "no device"


def handle_hlt(vm, ex):
    if not vm.regs.rflags & RFLAGS_IF:
        if getattr(vm, "halt_is_poweroff", False):
            return Shutdown(0, "guest halted for good (HLT with interrupts disabled, "
                               "how Linux powers off without ACPI)")
        return Shutdown(1, "guest halted with interrupts disabled (HLT with IF=0: nothing can wake it)")
    vm.halt()
    return Resume("vCPU halted until the next interrupt")


def handle_vmcall(vm, ex):
    regs = vm.regs
    number = regs.rax
    args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8)
    result = vm.hypercalls.call(vm, number, args)
    if isinstance(result, Shutdown):
        return result
    regs.rax = result & 0xFFFF_FFFF_FFFF_FFFF
    name = vm.hypercalls.name(number)
    return Resume(lambda: f"hypercall {name}({number}) -> {result}")


def _inject_fault(vm, fault, what):
    """The instruction faults instead of completing: queue the fault, do not advance."""
    vm.inject(events.Event(fault.vector, events.HW_EXCEPTION, fault.error_code))
    return Resume(f"{what}: {EXCEPTION_NAMES.get(fault.vector, fault.vector)} injected ({fault.why})",
                  advance=False)


def handle_rdmsr(vm, ex):
    regs = vm.regs
    index = regs.rcx & 0xFFFFFFFF
    try:
        value = vm.msrs.read(vm.cpu, index)
    except GuestFault as fault:
        return _inject_fault(vm, fault, f"RDMSR {index:#x}")
    regs.rax, regs.rdx = value & 0xFFFFFFFF, value >> 32
    return Resume(lambda: f"RDMSR {index:#x} -> {value:#x}")


def handle_wrmsr(vm, ex):
    regs = vm.regs
    index = regs.rcx & 0xFFFFFFFF
    value = (regs.rdx & 0xFFFFFFFF) << 32 | (regs.rax & 0xFFFFFFFF)
    try:
        vm.msrs.write(vm.cpu, index, value)
    except GuestFault as fault:
        return _inject_fault(vm, fault, f"WRMSR {index:#x}")
    return Resume(lambda: f"WRMSR {index:#x} <- {value:#x}")


CR0_RESERVED = 0xFFFF_FFFF_1FFA_FFC0
CR4_RESERVED = ~0x0000_0000_017F_7FFF & 0xFFFF_FFFF_FFFF_FFFF   # bits the emulated CPU knows


def check_cr_write(cpu, cr, value):
    """Raise GuestFault(#GP) for a mov to CR that hardware refuses (SDM Vol. 3A, 2.5 and
    Vol. 2B 'MOV - Move to/from Control Registers')."""
    efer = cpu.efer
    if cr == 0:
        if value & CR0_RESERVED:
            raise GuestFault(GP, 0, why=f"CR0 reserved bits in {value:#x}")
        if value & CR0_PG and not value & CR0_PE:
            raise GuestFault(GP, 0, why="CR0.PG without CR0.PE")
        if value & CR0_NW and not value & CR0_CD:
            raise GuestFault(GP, 0, why="CR0.NW without CR0.CD")
        if value & CR0_PG and efer & EFER_LME and not cpu.get_cr(4) & CR4_PAE:
            raise GuestFault(GP, 0, why="paging in long mode without CR4.PAE")
    elif cr == 4:
        if value & CR4_RESERVED:
            raise GuestFault(GP, 0, why=f"CR4 reserved bits in {value:#x}")
        if efer & EFER_LMA and not value & CR4_PAE:
            raise GuestFault(GP, 0, why="clearing CR4.PAE in long mode")
    elif cr == 3:
        if efer & EFER_LMA and value & ~0x000F_FFFF_FFFF_FFFF & ~(1 << 63):
            raise GuestFault(GP, 0, why=f"CR3 reserved bits in {value:#x}")


def handle_cr_access(vm, ex):
    q = decode_cr_qualification(ex.qualification)
    cr, gpr = q["cr"], GPR_NAMES[q["gpr"]]
    regs = vm.regs
    if q["access"] == CR_MOV_FROM:
        value = vm.cpu.get_cr(cr)
        setattr(regs, gpr, value)
        return Resume(lambda: f"mov {gpr}, cr{cr} -> {value:#x}")
    if q["access"] == CR_MOV_TO:
        value = getattr(regs, gpr)
        if not vm.long_mode:
            value &= 0xFFFFFFFF
    elif q["access"] == CR_CLTS:
        value = vm.cpu.get_cr(0) & ~8
    else:                              # LMSW: only PE, MP, EM, TS; PE cannot be cleared
        old = vm.cpu.get_cr(0)
        value = (old & ~0xE) | (q["lmsw_data"] & 0xF) | (old & 1)
    try:
        check_cr_write(vm.cpu, cr, value)
    except GuestFault as fault:
        return _inject_fault(vm, fault, f"mov cr{cr}, {value:#x}")
    try:
        vm.cpu.set_cr(cr, value)    # the engine flushes its TLB as the CPU would
    except ShadowUnsupported as e:
        return Shutdown(1, str(e))
    vm.tlb.flush()
    if not vm.tracing:
        return RESUME
    return Resume(f"mov cr{cr}, {gpr} <- {value:#x}")


def _shadow_mmu(vm):
    """The vCPU's shadow MMU, or None in the other MMU modes."""
    mmu = getattr(vm, "mmu", None)
    return mmu if mmu is not None and mmu.mode == "shadow" else None


def handle_invlpg(vm, ex):
    if _shadow_mmu(vm) is not None:
        dropped = vm.mmu.invlpg(ex.gla)
        vm.flush_tlb(ex.gla)
        return Resume(lambda: f"INVLPG {ex.gla:#x}: " + ("shadow entry and TLB entry dropped" if dropped
                                                         else "no shadow entry; TLB entry dropped"))
    vm.flush_tlb(ex.gla)
    return Resume(lambda: f"INVLPG {ex.gla:#x}: TLB entry dropped")


def handle_ept_violation(vm, ex):
    """EPT violations the VMM caused itself (dirty logging) or that a PC answers
    without memory (beyond RAM: all ones, writes dropped) are resolved by the MMU and
    the instruction runs again; any other stops the VM: the guest touched
    guest-physical memory it has no right to."""
    access = ex.qualification & (ept.QUAL_READ | ept.QUAL_WRITE | ept.QUAL_FETCH)
    kind = {ept.QUAL_READ: "read", ept.QUAL_WRITE: "write", ept.QUAL_FETCH: "fetch"}[access]
    found = ex.qualification >> 3 & ept.RWX      # QUAL_READABLE/WRITABLE/EXECUTABLE
    mmu = vm.mmu
    note = mmu.on_violation(ex.gpa, access, found) if mmu is not None else None
    if note is None:
        return Shutdown(1, f"EPT violation: {kind} at guest-physical {ex.gpa:#x} (RIP {ex.rip:#x}), "
                           f"permissions {ept.perms_name(found)}: no memory the guest may use there")
    if not vm.mem.contains(ex.gpa):
        if mmu.stepping:
            _begin_mmu_step(vm)
        vm.flush_tlb()                           # the page beyond RAM now maps another VMM page
    return Resume(lambda: f"EPT violation ({kind} at {ex.gpa:#x}): {note}", advance=False)


def handle_rdtsc(vm, ex):
    tsc = vm.guest_tsc()
    vm.regs.rax, vm.regs.rdx = tsc & 0xFFFFFFFF, (tsc >> 32) & 0xFFFFFFFF
    return Resume(lambda: f"RDTSC -> {tsc}")


def handle_shadow_page_fault(vm, ex):
    """#PF under shadow paging: the shadow MMU fills the translation from the guest's
    tables (the instruction runs again), or the fault is the guest's own and is
    reflected, or a page-table write through itself is single-stepped (TF)."""
    mmu = vm.mmu
    out = mmu.on_page_fault(vm.paging(), ex.gla, ex.intr_error, vm.mem, ex.rip)
    if out.flush:
        vm.flush_tlb()
    if out.kind == "stop":
        return Shutdown(1, f"shadow MMU: {out.note} (RIP {ex.rip:#x})")
    if out.kind == "reflect":
        _end_mmu_step(vm)
        fault = out.fault
        vm.inject(events.Event(fault.vector, events.HW_EXCEPTION, fault.error_code, fault.cr2))
    elif out.kind == "step":
        _begin_mmu_step(vm)
    return Resume(out.note, advance=False)


def _begin_mmu_step(vm):
    """Single-step the instruction at RIP (TF) for the MMU: the #DB it ends with exits
    while ``vm.mmu.stepping``, and ``_end_mmu_step`` finishes."""
    mmu = vm.mmu
    if mmu.step_guest_tf is None:
        mmu.step_guest_tf = bool(vm.regs.rflags & RFLAGS_TF)
        vm.regs.rflags |= RFLAGS_TF


def _end_mmu_step(vm):
    """Finish an MMU single step (a shadowed page-table write, a write beyond RAM);
    True if the guest set TF itself (then the #DB is the guest's too)."""
    mmu = vm.mmu
    if not mmu.step_done():
        return False
    guest_tf, mmu.step_guest_tf = mmu.step_guest_tf, None
    if not guest_tf:
        vm.regs.rflags &= ~RFLAGS_TF
    vm.flush_tlb()
    return bool(guest_tf)


def handle_exception(vm, ex):
    info = decode_intr_info(ex.intr_info)
    vector = info["vector"]
    if vector == PF and _shadow_mmu(vm) is not None:
        return handle_shadow_page_fault(vm, ex)
    if vector == DB and getattr(vm.mmu, "stepping", False) and not _end_mmu_step(vm):
        return Resume("single-stepped write done: " + ("the shadow pages derived from it dropped"
                                                      if vm.mmu.mode == "shadow" else "the page beyond RAM reads all ones again"),
                      advance=False)
    error = ex.intr_error if info["error_valid"] else None
    cr2 = ex.gla if vector == 14 else None
    vm.inject(events.Event(vector, info["type"], error, cr2))
    name = EXCEPTION_NAMES.get(vector, f"vector {vector}")
    return Resume(lambda: f"{name} reflected to the guest's IDT" + (f" (error code {error:#x})" if error is not None else ""),
                  advance=False)


def handle_external_interrupt(vm, ex):
    return Resume(lambda: "host timer: devices updated", advance=False)


def handle_interrupt_window(vm, ex):
    return Resume("guest can take interrupts: pending IRQ injected at entry", advance=False)


def handle_triple_fault(vm, ex):
    return Shutdown(1, "triple fault (the guest could not deliver a fault, nor #DF)")


def handle_preemption_timer(vm, ex):
    return Resume("preemption timer expired", advance=False)


def handle_wbinvd(vm, ex):
    return Resume("WBINVD: caches are coherent here, nothing to do")


EXIT_HANDLERS = {
    ExitReason.EXCEPTION_NMI: handle_exception,
    ExitReason.EXTERNAL_INTERRUPT: handle_external_interrupt,
    ExitReason.TRIPLE_FAULT: handle_triple_fault,
    ExitReason.INTERRUPT_WINDOW: handle_interrupt_window,
    ExitReason.CPUID: handle_cpuid,
    ExitReason.HLT: handle_hlt,
    ExitReason.INVLPG: handle_invlpg,
    ExitReason.RDTSC: handle_rdtsc,
    ExitReason.VMCALL: handle_vmcall,
    ExitReason.CR_ACCESS: handle_cr_access,
    ExitReason.IO_INSTRUCTION: handle_io,
    ExitReason.RDMSR: handle_rdmsr,
    ExitReason.WRMSR: handle_wrmsr,
    ExitReason.PREEMPTION_TIMER: handle_preemption_timer,
    ExitReason.WBINVD: handle_wbinvd,
    ExitReason.EPT_VIOLATION: handle_ept_violation,
}


def handle_exit(vm, ex):
    """Dispatch one exit through ``vm.handlers`` (a copy of EXIT_HANDLERS a user may
    change); an exit without a handler stops the VM with the reason."""
    handler = vm.handlers.get(ex.reason)
    if handler is None:
        return Shutdown(1, f"unhandled exit {ex.reason.name} ({int(ex.reason)}) at RIP {ex.rip:#x}")
    return handler(vm, ex)
