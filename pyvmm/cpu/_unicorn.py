"""The CPU engine: Unicorn running the guest in QEMU's AMD-V (SVM) guest mode.

This is the only module that imports unicorn. It gives the rest of pyvmm:
- ``Engine``: guest RAM mapped zero-copy, the guest entered through VMRUN, exits
  delivered to ``Engine.on_exit(kind, a, b, c)`` by the C fast path
  (csrc/exitpath.c), register access through a frame (``Engine.regs``), control
  registers, MSRs, segment caches, descriptor tables: the CpuState interface of
  cpu/state.py;
- ``native_cpuid(leaf, subleaf)``: what the emulated CPU model answers.

Why SVM: Unicorn runs RDMSR/WRMSR, mov to CR0/CR3/CR4 and INVLPG at CPL0 without a
hook. Under QEMU's SVM emulation the same instructions are intercepted (MSR
permission map, CR write intercepts, INVLPG intercept), exceptions are intercepted
by vector before QEMU's double-fault bookkeeping runs (``cpu_vmexit`` resets
``old_exception``, so Unicorn issue #1883 never triggers), and nested paging is
available. Unicorn never performs the #VMEXIT world switch: an intercept reaches
the interrupt hook as 0x100 + exit code with the guest state still loaded, and
returning from the hook resumes the guest (see ../shared/unicorn-probes/p7_svm.py).
CPUID, IN/OUT and VMCALL use Unicorn's own instruction hooks, which are cheaper.

The guest-state area: segment caches (hidden base/limit/flags), the hflags word
(CPL, CS32/SS32/CS64) and the pending error code are not in Unicorn's register
API. They are read and written in a saved uc_context, at offsets found by
calibration the first time an engine is built (``_calibrate``), never assumed.

Invariants: the guest never sees VMM-private memory in its e820 map; the MSR
permission map always intercepts every MSR the guest touches (root mode lifts one
MSR's bits only while it accesses that MSR itself).
"""

import mmap
import os
import struct
import threading

os.environ.setdefault("UC_IGNORE_REG_BREAK", "1")

import unicorn  # noqa: E402
from unicorn import x86_const as X  # noqa: E402
from unicorn.unicorn_py3 import unicorn as _ucmod  # noqa: E402

from pyvmm import _exitpath  # noqa: E402
from pyvmm.cpu import msr, svm  # noqa: E402
from pyvmm.cpu import svm as svm_mod  # noqa: E402  (for code where "svm" is a parameter)
from pyvmm.cpu.state import DESC_B, DESC_L, CR0_PE, GPRS, SEG_NAMES, Segment, Table  # noqa: E402
from pyvmm.errors import EngineError  # noqa: E402
from pyvmm.mm.layout import EPT_POOL_BASE, VMM_PRIVATE_BASE, VMM_PRIVATE_SIZE  # noqa: E402

ffi, lib = _exitpath.ffi, _exitpath.lib

# Exit kinds from csrc/exitpath.h
PV_CPUID, PV_IN, PV_OUT, PV_INVALID, PV_INTR, PV_RDTSC, PV_SYSCALL = range(1, 8)

# Unicorn's helper_syscall adds the instruction length to RIP after the SYSCALL hook.
SYSCALL_HOOK_RIP_ADVANCE = 2
OUTSIDE_EXIT = -2   # pv_vcpu.reason between exits (csrc/exitpath.h PV_OUTSIDE_EXIT)
UNTIL = 0xFFFF_FFFF_FFFF_FFFF   # emu_start "until": a non-canonical address, never reached

# QEMU hflags bits (target/i386/cpu.h)
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_SVME = 1 << 20
HF_GUEST = 1 << 21

# VMM-private memory map (guest-physical, outside guest RAM)
VMCB = VMM_PRIVATE_BASE
HSAVE = VMM_PRIVATE_BASE + 0x1000
STUB = VMM_PRIVATE_BASE + 0x2000
MSRPM = VMM_PRIVATE_BASE + 0x4000
IOPM = VMM_PRIVATE_BASE + 0x8000
assert IOPM + svm.IOPM_SIZE <= VMM_PRIVATE_BASE + VMM_PRIVATE_SIZE

_SEG_REG = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
            "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_TABLE_REG = {"gdtr": X.UC_X86_REG_GDTR, "idtr": X.UC_X86_REG_IDTR,
              "ldtr": X.UC_X86_REG_LDTR, "tr": X.UC_X86_REG_TR}
_CR_INDEX = {0: 0, 2: 1, 3: 2, 4: 3}    # position in system_registers()
_CR_REG = {0: X.UC_X86_REG_CR0, 2: X.UC_X86_REG_CR2, 3: X.UC_X86_REG_CR3,
           4: X.UC_X86_REG_CR4, 8: X.UC_X86_REG_CR8}

# VMCB fields only a resumed guest needs (AMD64 APM Vol. 2, Appendix B: Table B-1
# offset 0x068 bit 0 INTERRUPT_SHADOW; Table B-2 offset 0x240 CR2).
CTRL_INT_STATE = 0x068
INT_STATE_SHADOW = 1
SAVE_CR2 = svm.SAVE + 0x240

# The MSRs the engine holds for the guest that VMRUN does not load (AMD64 APM Vol. 2,
# 15.5.1 and VMLOAD); saved and put back by capture_state / resume_state. FS/GS base
# travel with the segment caches, EFER with the VMCB.
STATE_MSRS = {"star": msr.STAR, "lstar": msr.LSTAR, "cstar": msr.CSTAR, "sfmask": msr.SFMASK,
              "kernel_gs_base": msr.KERNEL_GS_BASE, "tsc_aux": msr.TSC_AUX, "sysenter_cs": msr.SYSENTER_CS,
              "sysenter_esp": msr.SYSENTER_ESP, "sysenter_eip": msr.SYSENTER_EIP, "pat": msr.PAT}
STATE_SEGMENTS = SEG_NAMES + ("ldtr", "tr")     # the order of QEMU's caches (see _Layout)
XMM_REGS = 16

_SEGCACHE = struct.Struct("<IIQII")   # selector, pad, base, limit, flags (QEMU SegmentCache)

_bound = False


def _bind():
    global _bound
    if not _bound:
        regs = [getattr(X, "UC_X86_REG_" + r.upper()) for r in GPRS + ("rip", "rflags", "cs")]
        insns = [X.UC_X86_INS_CPUID, X.UC_X86_INS_IN, X.UC_X86_INS_OUT, X.UC_X86_INS_SYSCALL, X.UC_X86_INS_RDTSC]
        err = lib.pv_bind(_ucmod.uclib._name.encode(), ffi.new("int[]", regs), ffi.new("int[]", insns),
                          X.UC_X86_REG_MSR)
        if err != ffi.NULL:
            raise EngineError(f"cannot bind the exit fast path to libunicorn: {ffi.string(err).decode()}")
        _bound = True


@ffi.def_extern(onerror=lambda exc, val, tb: _hook_error(exc, val, tb))
def pv_exit(v, kind, a, b, c):
    engine = ffi.from_handle(v.handle)
    # Instruction hooks run inside a translated block; interrupts (exceptions and
    # intercepts) and invalid instructions reach the hook outside one.
    engine.in_block = kind != PV_INTR and kind != PV_INVALID
    try:
        return engine.on_exit(kind, a, b, c)
    finally:
        engine.in_block = False


_pending_errors = {}


def _hook_error(exc, val, tb):
    # An exception escaped root-mode code during an exit: stop the guest and let
    # Engine.run re-raise it (a VMM bug must not be swallowed by the C callback).
    for engine in list(_pending_errors):
        if _pending_errors[engine] is None:
            _pending_errors[engine] = val.with_traceback(tb)
            engine.kick()
    return 0


def _new_uc():
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_EPYC)
    return uc


def _host_stub(vmcb, rcx=0, rdx=0):
    """Host code run once: enable EFER.SVME, set VM_HSAVE_PA, VMRUN the guest.
    VMRUN does not load RCX and RDX, which the stub uses for RDMSR/WRMSR: they are
    set to the guest's values (``rcx``, ``rdx``) just before it.

    Hand-assembled (no assembler at run time):
        mov ecx, 0xC0000080 ; rdmsr ; or eax, 0x1000 ; wrmsr
        jmp +0              ; end the TB so VMRUN is translated with SVME set
        mov ecx, 0xC0010117 ; mov eax, HSAVE(lo) ; mov edx, HSAVE(hi) ; wrmsr
        mov rcx, rcx ; mov rdx, rdx (imm64) ; mov rax, VMCB ; vmrun ; hlt
    """
    code = b"\xb9" + struct.pack("<I", svm.MSR_EFER) + b"\x0f\x32"
    code += b"\x0d" + struct.pack("<I", svm.EFER_SVME) + b"\x0f\x30"
    code += b"\xeb\x00"
    code += b"\xb9" + struct.pack("<I", svm.MSR_VM_HSAVE_PA)
    code += b"\xb8" + struct.pack("<I", HSAVE & 0xFFFFFFFF) + b"\xba" + struct.pack("<I", HSAVE >> 32)
    code += b"\x0f\x30"
    code += b"\x48\xb9" + struct.pack("<Q", rcx) + b"\x48\xba" + struct.pack("<Q", rdx)
    code += b"\x48\xb8" + struct.pack("<Q", vmcb) + b"\x0f\x01\xd8\xf4"
    return code


class GuestEntry:
    """What VMRUN loads: the guest's first state and the intercept controls."""

    def __init__(self, *, rip, rsp, rflags, cr0, cr3, cr4, efer, gdt, idt, cs, ds, gprs=None,
                 cr_read=0, cr_write=0, exceptions=0, intercepts=0, nested_cr3=None,
                 segments=None, cpl=0, cr2=0, interrupt_shadow=False):
        self.rip, self.rsp, self.rflags = rip, rsp, rflags
        self.cr0, self.cr3, self.cr4, self.efer = cr0, cr3, cr4, efer
        self.gdt, self.idt = gdt, idt          # (base, limit)
        self.cs, self.ds = cs, ds              # (selector, base, limit, vmcb attrib)
        self.gprs = gprs or {}
        self.cr_read, self.cr_write = cr_read, cr_write
        self.exceptions, self.intercepts = exceptions, intercepts
        self.nested_cr3 = nested_cr3           # host-physical root of the EPT-style table, or None
        # A resumed guest (Engine.resume_state): its own ES/SS/DS ({name: (selector,
        # base, limit, vmcb attrib)}, overriding ``ds``), CPL, CR2 and STI/MOV SS shadow.
        self.segments = segments or {}
        self.cpl, self.cr2, self.interrupt_shadow = cpl, cr2, interrupt_shadow


def _write_vmcb(uc, entry):
    """VMCB, permission maps, host stub and host paging for one VMRUN of ``entry``."""
    uc.mem_write(MSRPM, b"\xff" * svm.MSRPM_SIZE)      # intercept every MSR
    uc.mem_write(IOPM, b"\x00" * svm.IOPM_SIZE)        # port I/O goes to Unicorn's hooks
    ctl = bytearray(svm.SAVE)
    struct.pack_into("<HH", ctl, svm.CTRL_CR_INTERCEPTS, entry.cr_read, entry.cr_write)
    struct.pack_into("<I", ctl, svm.CTRL_EXCP_INTERCEPTS, entry.exceptions)
    struct.pack_into("<Q", ctl, svm.CTRL_INTERCEPTS, entry.intercepts)
    struct.pack_into("<QQ", ctl, svm.CTRL_IOPM_BASE, IOPM, MSRPM)
    struct.pack_into("<I", ctl, svm.CTRL_ASID, 1)
    if entry.nested_cr3 is not None:
        struct.pack_into("<Q", ctl, svm.CTRL_NP_ENABLE, 1)
        struct.pack_into("<Q", ctl, svm.CTRL_NCR3, entry.nested_cr3)
    vmcb = ctl + bytearray(svm.VMCB_SIZE - svm.SAVE)

    def seg(off, selector, attrib, limit, base):
        vmcb[off:off + 16] = svm.pack_segment(selector, attrib, limit, base)

    sel, base, limit, attrib = entry.cs
    seg(svm.SEG_CS, sel, attrib, limit, base)
    for name, off in (("es", svm.SEG_ES), ("ss", svm.SEG_SS), ("ds", svm.SEG_DS), ("fs", svm.SEG_FS),
                      ("gs", svm.SEG_GS)):
        sel, base, limit, attrib = entry.segments.get(name, entry.ds)
        seg(off, sel, attrib, limit, base)
    seg(svm.SEG_GDTR, 0, 0, entry.gdt[1], entry.gdt[0])
    seg(svm.SEG_IDTR, 0, 0, entry.idt[1], entry.idt[0])
    seg(svm.SEG_TR, 0, 0x8B, 0, 0)      # an empty busy TSS until the guest loads its own
    vmcb[svm.SAVE_CPL] = entry.cpl
    struct.pack_into("<Q", vmcb, CTRL_INT_STATE, INT_STATE_SHADOW if entry.interrupt_shadow else 0)
    struct.pack_into("<Q", vmcb, SAVE_CR2, entry.cr2)
    struct.pack_into("<Q", vmcb, svm.SAVE_EFER, entry.efer | svm.EFER_SVME)
    struct.pack_into("<QQQ", vmcb, svm.SAVE_CR4, entry.cr4, entry.cr3, entry.cr0)
    struct.pack_into("<QQ", vmcb, svm.SAVE_RFLAGS, entry.rflags, entry.rip)
    struct.pack_into("<Q", vmcb, svm.SAVE_RSP, entry.rsp)
    struct.pack_into("<Q", vmcb, svm.SAVE_RAX, entry.gprs.get("rax", 0))
    struct.pack_into("<Q", vmcb, svm.SAVE_G_PAT, 0x0007040600070406)   # power-on PAT
    uc.mem_write(VMCB, bytes(vmcb))
    uc.mem_write(STUB, _host_stub(VMCB, entry.gprs.get("rcx", 0), entry.gprs.get("rdx", 0)))
    _host_paging(uc)


def _host_paging(uc):
    """Host state for the stub: 64-bit ring 0 on private page tables that map the
    private area 1:1 with one 2 MiB page (the stub lives there)."""
    pml4, pdpt, pd = (VMM_PRIVATE_BASE + off for off in (0xB000, 0xC000, 0xE000))
    for table in (pml4, pdpt, pd):
        uc.mem_write(table, b"\0" * 4096)
    uc.mem_write(pml4 + ((VMM_PRIVATE_BASE >> 39) & 511) * 8, struct.pack("<Q", pdpt | 3))
    uc.mem_write(pdpt + ((VMM_PRIVATE_BASE >> 30) & 511) * 8, struct.pack("<Q", pd | 3))
    uc.mem_write(pd + ((VMM_PRIVATE_BASE >> 21) & 511) * 8, struct.pack("<Q", VMM_PRIVATE_BASE | 0x83))
    gdt = VMM_PRIVATE_BASE + 0xD000
    uc.mem_write(gdt, struct.pack("<3Q", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, 23, 0))
    uc.reg_write(X.UC_X86_REG_CR3, pml4)
    uc.reg_write(X.UC_X86_REG_CR4, 0x20)
    # LME | LMA | NXE: the host's NXE makes NX legal in the nested table (QEMU's
    # nested_pg_mode takes it from the host EFER at VMRUN).
    uc.reg_write(X.UC_X86_REG_MSR, (svm.MSR_EFER, 0xD00))
    uc.reg_write(X.UC_X86_REG_CR0, 0x80000011)
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    uc.reg_write(X.UC_X86_REG_RSP, VMM_PRIVATE_BASE + 0xA000)


class Engine:
    """One vCPU on one Unicorn engine, with guest RAM from ``memory``."""

    def __init__(self, memory, nested_pool_size=0):
        _bind()
        self.memory = memory
        self.uc = uc = _new_uc()
        uc.mem_map_ptr(0, memory.size, unicorn.UC_PROT_ALL, memory.host_address)
        # VMM-private memory is host memory too, so root mode can flip MSR permission
        # bits without a call into the engine.
        self._private = mmap.mmap(-1, VMM_PRIVATE_SIZE)
        self._private_buf = ffi.from_buffer(self._private)
        uc.mem_map_ptr(VMM_PRIVATE_BASE, VMM_PRIVATE_SIZE, unicorn.UC_PROT_ALL,
                       int(ffi.cast("uintptr_t", self._private_buf)))
        self._msrpm = ffi.cast("uint8_t *", self._private_buf) + (MSRPM - VMM_PRIVATE_BASE)
        # The pool of the EPT-style table (mm/ept.py writes it, the CPU walks it).
        self.nested_pool = None
        if nested_pool_size:
            self.nested_pool = mmap.mmap(-1, nested_pool_size)
            self._nested_buf = ffi.from_buffer(self.nested_pool)
            uc.mem_map_ptr(EPT_POOL_BASE, nested_pool_size, unicorn.UC_PROT_ALL,
                           int(ffi.cast("uintptr_t", self._nested_buf)))
        self.nested_pool_base = EPT_POOL_BASE
        self._msr_value = ffi.new("uint64_t *")
        self._sys = None                # (cr0, cr2, cr3, cr4, efer, hflags) of the current exit
        self.layout = _calibrate()
        self._v = ffi.new("pv_vcpu *")
        self._handle = ffi.new_handle(self)
        self._v.handle = self._handle
        self._v.uc = ffi.cast("void *", uc._uch.value)
        self._v.reason = OUTSIDE_EXIT
        err = lib.pv_attach(self._v, 0)
        if err:
            raise EngineError(f"cannot install the exit hooks (uc_err {err})")
        self.regs = self._v.f           # the register frame (cffi struct: .rax ... .rflags)
        self._ctx = ffi.buffer(lib.pv_ctx_bytes(self._v), self._v.ctx_size)
        self._start = None              # where the next run starts (the stub before entry)
        self._lock = threading.Lock()
        self._running = False
        self._kicked = False
        self.on_exit = None             # callable(kind, a, b, c) -> int, set by the Vcpu
        self.kicks = 0                  # kick() calls: a run they ended may have made no progress
        # True while an exit from an instruction hook (inside a translated block) is
        # handled (pv_exit sets it). Changing the engine's memory map or dropping translated
        # code there corrupts the block being run (measured: a grant unmap from a
        # SYSCALL-hook hypercall left the guest with a #GP), so such changes wait in
        # _deferred, the engine stops after the hook, and run() makes them first.
        self.in_block = False
        self._deferred = []
        _pending_errors[self] = None

    # ---- life cycle ----
    def enter(self, entry):
        """Write the VMCB for ``entry`` and arrange for the next run to VMRUN it."""
        _write_vmcb(self.uc, entry)
        for name in GPRS:
            if name != "rax":
                setattr(self.regs, name, entry.gprs.get(name, 0))
        lib.pv_write_frame(self._v)
        self._start = STUB

    @property
    def entered(self):
        return self._start is not None and self._start != STUB

    def run(self):
        """Run the guest until something stops it (kick, HLT, an exit that asks to stop).

        Registers changed in ``regs`` outside an exit are written first; on return
        ``regs`` holds the guest's registers again.
        """
        if self._start is None:
            raise EngineError("the guest was never entered (call enter first)")
        while self._deferred:
            self._deferred.pop(0)()
        lib.pv_write_frame(self._v)
        start = self._start if self._start == STUB else self.regs.rip
        with self._lock:
            if self._kicked:
                self._kicked = False
                lib.pv_read_frame(self._v)
                return
            self._running = True
        try:
            self.uc.emu_start(start, UNTIL)
        except unicorn.UcError as e:
            lib.pv_read_frame(self._v)
            raise EngineError(f"the CPU engine stopped: {e} at RIP {self.regs.rip:#x}") from None
        finally:
            with self._lock:
                self._running = False
                self._kicked = False
                self._v.kick_pending = 0
        self._start = 0
        self._sys = None
        lib.pv_read_frame(self._v)
        err = _pending_errors.get(self)
        if err is not None:
            _pending_errors[self] = None
            raise err

    def kick(self, force=False):
        """Make run() return soon (thread-safe). A kick before run() starts makes the
        next run() return at once, so a wake-up is never lost.

        A soft kick (the default) asks the C exit path to stop at the guest's next
        exit, where the CPU state is consistent. ``force`` stops the engine from this
        thread with uc_emu_stop, for guests that spin without exits: measured here,
        asynchronous stops while Linux patches its own code (alternatives) left it
        with corrupted stacks, so they are the fallback, not the rule."""
        with self._lock:
            self.kicks += 1
            if not self._running:
                self._kicked = True
            elif force:
                lib.pv_stop(self._v)
            else:
                self._v.kick_pending = 1

    def stop_from_exit(self):
        """Called inside an exit: return from run() after this exit completes."""
        lib.pv_stop(self._v)

    def close(self):
        lib.pv_detach(self._v)
        _pending_errors.pop(self, None)
        self.uc = None

    # ---- registers and state ----
    def system_registers(self):
        """(cr0, cr2, cr3, cr4, efer, hflags), read once per exit from the CPU context."""
        sys_ = self._sys
        if sys_ is None:
            ctx = self._ctx_save()
            lay = self.layout
            cr0, _, cr2, cr3, cr4 = struct.unpack_from("<5Q", ctx, lay.cr)
            efer = struct.unpack_from("<Q", ctx, lay.efer)[0] & ~svm.EFER_SVME
            sys_ = self._sys = (cr0, cr2, cr3, cr4, efer, struct.unpack_from("<I", ctx, lay.hflags)[0])
        return sys_

    def invalidate(self):
        """Forget cached system registers (the guest ran, or root mode changed them)."""
        self._sys = None

    def get_cr(self, n):
        if n == 8:
            return self.uc.reg_read(X.UC_X86_REG_CR8)
        return self.system_registers()[_CR_INDEX[n]]

    def set_cr(self, n, value):
        self.uc.reg_write(_CR_REG[n], value)
        self._sys = None

    def _msr(self, index, value=0, write=False):
        pos = svm.msrpm_position(index)
        byte = self._msrpm + pos[0] if pos is not None else ffi.NULL
        self._msr_value[0] = value
        if lib.pv_msr_access(self._v, byte, index, self._msr_value, int(write)):
            raise EngineError(f"the engine refused {'WRMSR' if write else 'RDMSR'} {index:#x}")
        return self._msr_value[0]

    def get_msr(self, index):
        return self._msr(index)

    def set_msr(self, index, value):
        self._msr(index, value, write=True)
        self._sys = None

    @property
    def efer(self):
        return self.system_registers()[4]

    def get_table(self, name):
        return Table(*self.uc.reg_read(_TABLE_REG[name]))

    def _ctx_save(self):
        if lib.pv_ctx_save(self._v):
            raise EngineError("uc_context_save failed")
        return self._ctx

    def get_segment(self, name):
        ctx = self._ctx_save()
        sel, _, base, limit, flags = _SEGCACHE.unpack_from(ctx, self.layout.seg(name))
        return Segment(sel, base, limit, flags)

    def hflags(self):
        return self.system_registers()[5]

    @property
    def cpl(self):
        return self.hflags() & HF_CPL_MASK

    @property
    def code_bits(self):
        """Operand size of the current code segment: 64, 32 or 16."""
        hf = self.hflags()
        return 64 if hf & HF_CS64 else 32 if hf & HF_CS32 else 16

    @property
    def interrupt_shadow(self):
        return bool(self.hflags() & HF_INHIBIT_IRQ)

    def end_interrupt_shadow(self):
        """Root mode completed an instruction for the guest: an STI/MOV SS shadow
        covering it is over (what KVM's skip_emulated_instruction does too)."""
        if self.hflags() & HF_INHIBIT_IRQ:
            ctx = self._open_context()
            hf = struct.unpack_from("<I", ctx, self.layout.hflags)[0]
            struct.pack_into("<I", ctx, self.layout.hflags, hf & ~HF_INHIBIT_IRQ)
            self._commit_context()

    def _open_context(self):
        """The CPU context to edit: registers changed in the frame are written first,
        so the context holds them. Finish with _commit_context."""
        lib.pv_write_frame(self._v)
        return self._ctx_save()

    def _commit_context(self):
        """Load the edited context into the engine."""
        self._sys = None
        if lib.pv_ctx_restore(self._v):
            raise EngineError("uc_context_restore failed")

    def snapshot(self):
        """The whole CPU state (registers, segment caches, control registers), for
        undoing what the engine runs after an exit that must not complete."""
        return bytes(self._open_context())

    def restore_snapshot(self, blob):
        self._ctx[:] = blob
        self._commit_context()
        lib.pv_read_frame(self._v)

    # ---- the whole guest CPU as plain values (VM snapshots) ----
    def capture_state(self):
        """The guest's CPU state as plain values, taken outside guest execution
        (between runs): registers, control registers and EFER (CR3 as the engine
        holds it), segment caches with their hidden parts, descriptor tables, the
        MSRs of STATE_MSRS, CPL, the interrupt shadow, SSE registers and MXCSR."""
        ctx = self._open_context()
        lay = self.layout
        cr0, _, cr2, cr3, cr4 = struct.unpack_from("<5Q", ctx, lay.cr)
        efer = struct.unpack_from("<Q", ctx, lay.efer)[0] & ~svm.EFER_SVME
        hflags = struct.unpack_from("<I", ctx, lay.hflags)[0]
        segments = {}
        for i, name in enumerate(STATE_SEGMENTS):
            sel, _, base, limit, flags = _SEGCACHE.unpack_from(ctx, lay.segs + i * _SEGCACHE.size)
            segments[name] = [sel, base, limit, flags]
        regs = self.regs
        xmm = b"".join(self.uc.reg_read(getattr(X, f"UC_X86_REG_XMM{i}")).to_bytes(16, "little")
                       for i in range(XMM_REGS))
        return {
            "gprs": {name: getattr(regs, name) for name in GPRS},
            "rip": regs.rip, "rflags": regs.rflags,
            "cr0": cr0, "cr2": cr2, "cr3": cr3, "cr4": cr4, "efer": efer,
            "cpl": hflags & HF_CPL_MASK, "interrupt_shadow": bool(hflags & HF_INHIBIT_IRQ),
            "segments": segments,
            "gdtr": list(self.get_table("gdtr")[1:3]), "idtr": list(self.get_table("idtr")[1:3]),
            "msrs": {name: self.get_msr(index) for name, index in STATE_MSRS.items()},
            "xmm": xmm, "mxcsr": self.uc.reg_read(X.UC_X86_REG_MXCSR),
        }

    def resume_state(self, state, *, cr3, cr_read, cr_write, exceptions, intercepts, nested_cr3):
        """Arrange for the next run to VMRUN straight into ``state`` (a checked
        capture_state() value) with the given intercept controls: VMRUN loads what
        the VMCB carries (ES/CS/SS/DS, CPL, CRs, EFER, RFLAGS, RIP, RSP, RAX, the
        interrupt shadow); the MSRs and SSE registers are loaded into the engine
        first, where the host stub and VMRUN leave them alone; the segment caches
        are written once the guest is entered (VMRUN runs here, not in run()).
        ``cr3`` is what the engine runs on (the shadow root under shadow paging)."""
        segs = state["segments"]

        def vmcb_seg(name):
            sel, base, limit, flags = segs[name]
            return sel, base, limit, svm.attrib_from_flags(flags)

        gdtr, idtr = state["gdtr"], state["idtr"]
        self.enter(GuestEntry(
            rip=state["rip"], rsp=state["gprs"]["rsp"], rflags=state["rflags"], cr0=state["cr0"], cr3=cr3,
            cr4=state["cr4"], efer=state["efer"], gdt=(gdtr[0], gdtr[1]), idt=(idtr[0], idtr[1]),
            cs=vmcb_seg("cs"), ds=vmcb_seg("ds"), gprs=dict(state["gprs"]),
            segments={n: vmcb_seg(n) for n in ("es", "ss", "ds", "fs", "gs")},
            cpl=state["cpl"], cr2=state["cr2"], interrupt_shadow=state["interrupt_shadow"],
            cr_read=cr_read, cr_write=cr_write, exceptions=exceptions, intercepts=intercepts,
            nested_cr3=nested_cr3))
        for name, index in STATE_MSRS.items():
            self.uc.reg_write(X.UC_X86_REG_MSR, (index, state["msrs"][name]))
        xmm = state["xmm"]
        for i in range(XMM_REGS):
            self.uc.reg_write(getattr(X, f"UC_X86_REG_XMM{i}"), int.from_bytes(xmm[16 * i:16 * i + 16], "little"))
        self.uc.reg_write(X.UC_X86_REG_MXCSR, state["mxcsr"])
        # VMRUN now, stopping before the guest's first instruction: root mode may
        # deliver an event before the first run, and that must land on the guest's
        # state, not on the host stub's (which VMRUN would then overwrite).
        # (Not emu_start's "until": Unicorn stops there by imitating HLT, which leaves
        # the CPU halted.) A code hook on the guest's RIP stops before it executes.
        rip = state["rip"]
        hook = self.uc.hook_add(unicorn.UC_HOOK_CODE, lambda uc, address, size, ud: uc.emu_stop(), None, rip, rip)
        try:
            self.uc.emu_start(STUB, UNTIL)
        except unicorn.UcError as e:
            raise EngineError(f"VMRUN into the restored state failed: {e}") from None
        finally:
            self.uc.hook_del(hook)
            self.uc.ctl_flush_tb()          # no translated block keeps the hook's call
        self._start = 0
        self._sys = None
        lib.pv_read_frame(self._v)
        if self.regs.rip != state["rip"] or not self.hflags() & HF_GUEST:
            raise EngineError(f"VMRUN into the restored state stopped at {self.regs.rip:#x}, "
                              f"not at the guest's RIP {state['rip']:#x}")
        # Every segment cache exactly as saved: VMRUN does not load FS, GS, LDTR and
        # TR, and rebuilds the others' flags from VMCB attributes (without limit 19:16).
        ctx = self._open_context()
        for i, name in enumerate(STATE_SEGMENTS):
            sel, base, limit, flags = segs[name]
            _SEGCACHE.pack_into(ctx, self.layout.segs + i * _SEGCACHE.size, sel, 0, base, limit, flags)
        self._commit_context()

    def end_software_interrupt(self):
        """After an INT n / INT3 exit: clear QEMU's exception_is_int. Unicorn moves RIP
        to exception_next_eip before every interrupt hook while that flag is set, and
        an SVM intercept does not reset it, so a stale flag would send the next
        intercepted exception to the INT's return address."""
        ctx = self._open_context()
        off = self.layout.error_code + 4
        if struct.unpack_from("<i", ctx, off)[0]:
            struct.pack_into("<i", ctx, off, 0)
            self._commit_context()

    def error_code(self):
        """The error code of the exception being intercepted (SVM EXITINFO1)."""
        return struct.unpack_from("<I", self._ctx_save(), self.layout.error_code)[0]

    def exit_info2(self):
        return struct.unpack("<Q", self.uc.mem_read(VMCB + svm.CTRL_EXITINFO2, 8))[0]

    def set_segments(self, changes):
        """Load segment caches (CS and SS possibly changing CPL) the way QEMU's
        cpu_x86_load_seg_cache does, in one write of the guest-state area.
        ``changes``: {name: Segment}; SS is applied before CS, as hardware does in
        interrupt delivery."""
        cr0 = self.get_cr(0)
        ctx = self._open_context()
        lay = self.layout
        hflags = struct.unpack_from("<I", ctx, lay.hflags)[0]
        order = [n for n in ("ss", "es", "ds", "fs", "gs", "cs") if n in changes]
        segs = {n: Segment(*(_SEGCACHE.unpack_from(ctx, lay.seg(n))[i] for i in (0, 2, 3, 4)))
                for n in SEG_NAMES}
        for name in order:
            seg = changes[name]
            segs[name] = seg
            _SEGCACHE.pack_into(ctx, lay.seg(name), seg.selector, 0, seg.base, seg.limit, seg.flags)
            if name == "cs":
                if hflags & HF_LMA and seg.flags & DESC_L:
                    hflags |= HF_CS32 | HF_SS32 | HF_CS64
                else:
                    hflags = (hflags & ~(HF_CS32 | HF_CS64)) | (HF_CS32 if seg.flags & DESC_B else 0)
            if name == "ss":
                hflags = (hflags & ~HF_CPL_MASK) | ((seg.flags >> 13) & 3)
            new = HF_SS32 if segs["ss"].flags & DESC_B else 0
            if not hflags & HF_CS64 and (not cr0 & CR0_PE or not hflags & HF_CS32
                                         or segs["ds"].base | segs["es"].base | segs["ss"].base):
                new |= HF_ADDSEG       # segment bases must be added to addresses
            hflags = (hflags & ~(HF_SS32 | HF_ADDSEG)) | new
        struct.pack_into("<I", ctx, lay.hflags, hflags)
        self._commit_context()

    def flush_tlb(self, address=None):
        if self.uc is not None:            # a closed engine has no TLB left to flush
            self.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)

    def place_host_page(self, hpa, host_address, writable=True):
        """Make the 4 KiB of host memory at ``host_address`` (another domain's RAM, a
        granted frame) the engine's page at host-physical ``hpa``, zero-copy, or remove
        the page at ``hpa`` when ``host_address`` is None. ``hpa`` must lie outside
        guest RAM and VMM-private memory (a window the caller owns); the caller points
        a second-level entry there and flushes the TLB, and keeps the host memory alive
        while the page is placed. A page placed read-only refuses writes in the engine
        too, beneath the second-level table's own permissions."""
        if hpa % 0x1000 or hpa < self.memory.size:
            raise EngineError(f"host page {hpa:#x}: not page aligned or inside guest RAM")

        def place():
            try:
                if host_address is None:
                    self.uc.mem_unmap(hpa, 0x1000)
                else:
                    prot = unicorn.UC_PROT_ALL if writable else unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
                    self.uc.mem_map_ptr(hpa, 0x1000, prot, host_address)
            except unicorn.UcError as e:
                what = "remove" if host_address is None else f"place host memory {host_address:#x} at"
                raise EngineError(f"cannot {what} host page {hpa:#x}: {e}") from None
        self._outside_block(place)

    def _outside_block(self, change):
        """Make ``change`` to the engine now, or, inside a translated block
        (``in_block``), when the engine has stopped after this exit (run() does it
        before the guest runs again)."""
        if self.in_block:
            self._deferred.append(change)
            lib.pv_stop(self._v)
        else:
            change()

    def flush_translations(self):
        """Drop all translated code: needed after root mode writes guest code.
        (Unicorn's per-range removal takes guest-virtual addresses and walks the
        guest's page tables, which root mode must not do behind the guest.)"""
        self.uc.ctl_flush_tb()

    def set_rdtsc_exiting(self, on):
        if lib.pv_set_rdtsc_exiting(self._v, int(bool(on))):
            raise EngineError("cannot change the RDTSC hook")

    # ---- exit accounting and the in-VMM CPUID table (see csrc/exitpath.c) ----
    @property
    def vstate(self):
        """The C exit state: seq, reason, reason_count[], reason_ns[], observer_ns."""
        return self._v

    @property
    def in_exit(self):
        """True while the engine is inside an exit hook (the C path accounts it)."""
        return self._v.reason != OUTSIDE_EXIT

    def account(self, reason, ns):
        lib.pv_account(self._v, int(reason), ns)

    def set_cpuid_table(self, entries):
        """entries: iterable of (leaf, subleaf or None for any, eax, ebx, ecx, edx)."""
        entries = list(entries)[:len(self._v.cpuid)]
        for i, (leaf, sub, a, b, c, d) in enumerate(entries):
            e = self._v.cpuid[i]
            e.leaf, e.subleaf, e.any_subleaf = leaf, sub or 0, int(sub is None)
            e.eax, e.ebx, e.ecx, e.edx = a, b, c, d
        self._v.ncpuid = len(entries)

    WINDOW_FLUSH = 0x2000      # bytes of code at RIP retranslated when the window hook goes in

    def set_window_exiting(self, on):
        """Stop the guest as soon as it can take an interrupt (see pv_window in
        csrc/exitpath.c). A code hook only reaches blocks translated after it, so the
        code at RIP (guest-virtual, as Unicorn's TB removal expects) is retranslated;
        code further away is caught by root mode's polling instead. Removing the hook
        needs no flush: translated blocks look the hook list up as they run."""
        on = bool(on)
        if on != bool(self._v.window_hook):
            if lib.pv_window(self._v, int(on)):
                raise EngineError("cannot change the interrupt-window hook")
            if on:
                page = self.regs.rip & ~0xFFF
                self.uc.ctl_remove_cache(page, page + self.WINDOW_FLUSH)

    @property
    def window_expired(self):
        """The window hook gave up (budget spent with IF still 0)."""
        return bool(self._v.window_expired)

    def set_fast_cpuid(self, on):
        self._v.fast_cpuid = int(bool(on))


# ---- calibration of the guest-state area (uc_context) ----

class _Layout:
    def __init__(self, segs, hflags, error_code, cr, efer):
        self.segs, self.hflags, self.error_code, self.cr, self.efer = segs, hflags, error_code, cr, efer

    def seg(self, name):
        return self.segs + SEG_NAMES.index(name) * _SEGCACHE.size


_layout = None
_calib_lock = threading.Lock()


def _find(blob, packed, what):
    off = blob.find(packed)
    if off < 0 or blob.find(packed, off + 1) >= 0:
        raise EngineError(f"calibration: cannot locate {what} in the CPU context")
    return off


def _calibrate():
    """Find the segment caches, hflags and error_code in a uc_context blob.

    Writes distinctive values through Unicorn's register API and looks for them;
    then checks the finding against a guest entered through VMRUN that takes
    intercepted exceptions with known error codes.
    """
    global _layout
    with _calib_lock:
        if _layout is not None:
            return _layout
        uc = _new_uc()
        uc.mem_map(0, 2 << 20)
        uc.reg_write(X.UC_X86_REG_TR, (0x48, 0x7A5A3000, 0x67, 0x8B00))
        ctx = bytes(uc.context_save())
        tr_base = _find(ctx, struct.pack("<QII", 0x7A5A3000, 0x67, 0x8B00), "TR cache")
        tr = tr_base - 8
        segs = tr - 7 * _SEGCACHE.size                 # ES..GS, LDT, then TR
        uc.reg_write(X.UC_X86_REG_FS_BASE, 0x1F5B_A5E0_0012_3400)
        ctx = bytes(uc.context_save())
        fs_base = struct.unpack_from("<Q", ctx, segs + 4 * _SEGCACHE.size + 8)[0]
        if fs_base != 0x1F5B_A5E0_0012_3400:
            raise EngineError("calibration: segment caches are not where TR suggests")
        hflags = segs - 8
        uc.reg_write(X.UC_X86_REG_CR3, 0x7A5A_7000)
        uc.reg_write(X.UC_X86_REG_CR2, 0x5151_F000)
        uc.reg_write(X.UC_X86_REG_MSR, (svm.MSR_EFER, 0xD01))
        ctx = bytes(uc.context_save())
        cr = _find(ctx, struct.pack("<Q", 0x7A5A_7000), "CR3") - 3 * 8      # cr[0..4]
        if struct.unpack_from("<Q", ctx, cr + 2 * 8)[0] != 0x5151_F000:
            raise EngineError("calibration: CR2 is not next to CR3 in the CPU context")
        efer = _find(ctx, struct.pack("<Q", 0xD01), "EFER")
        error_code = _calibrate_error_code(hflags)
        _layout = _Layout(segs, hflags, error_code, cr, efer)
        return _layout


def _calibrate_error_code(hflags_off):
    """Run a tiny guest in SVM guest mode that takes intercepted #GP with two
    different error codes; the offset holding both is env->error_code."""
    uc = _new_uc()
    uc.mem_map(0, 2 << 20)
    uc.mem_map(VMM_PRIVATE_BASE, VMM_PRIVATE_SIZE)
    # identity map 0..1 GiB with 2 MiB pages at 0x10000
    uc.mem_write(0x10000, struct.pack("<Q", 0x11000 | 3))
    uc.mem_write(0x11000, struct.pack("<Q", 0x12000 | 3))
    uc.mem_write(0x12000, struct.pack("<512Q", *[(i << 21) | 0x83 for i in range(512)]))
    uc.mem_write(0x2000, struct.pack("<4Q", 0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF))
    # guest: mov ds, [0x1000] (#GP(0x48): beyond the GDT limit)
    #        mov ds, [0x1002] (#GP(0x50)) ; hlt      (selectors come from memory so no
    #        general register holds the error code)
    #        int 0x30 (a software interrupt: sets exception_is_int and exception_next_eip)
    uc.mem_write(0x1000, struct.pack("<HH", 0x48, 0x50))
    uc.mem_write(0x100000, b"\x8e\x1c\x25\x00\x10\x00\x00\x8e\x1c\x25\x02\x10\x00\x00\xcd\x30\xf4")
    entry = GuestEntry(rip=0x100000, rsp=0x8000, rflags=2, cr0=0x80000011, cr3=0x10000, cr4=0x20,
                       efer=0x500, gdt=(0x2000, 31), idt=(0, 0), cs=(0x10, 0, 0xFFFFFFFF, 0xA9B),
                       ds=(0x18, 0, 0xFFFFFFFF, 0xC93), exceptions=1 << 13,
                       intercepts=svm.intercept_bit(svm.VMEXIT_HLT) | svm.intercept_bit(svm.VMEXIT_VMRUN))
    _write_vmcb(uc, entry)
    blobs, guest_flags, soft = [], [], []

    def intr(uc_, intno, ud):
        if intno == 0x30:
            soft.append(bytes(uc_.context_save()))
        elif intno == svm.EXCP_VMEXIT + svm.VMEXIT_EXCP_BASE + 13:
            blob = bytes(uc_.context_save())
            blobs.append(blob)
            guest_flags.append(struct.unpack_from("<I", blob, hflags_off)[0])
            uc_.reg_write(X.UC_X86_REG_RIP, uc_.reg_read(X.UC_X86_REG_RIP) + 7)
        else:
            uc_.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, intr)
    uc.emu_start(STUB, UNTIL, timeout=5_000_000)
    if len(blobs) != 2:
        raise EngineError(f"calibration guest took {len(blobs)} #GP exits instead of 2")
    for hf in guest_flags:
        if not (hf & HF_GUEST and hf & HF_CS64 and hf & HF_LMA):
            raise EngineError(f"calibration: hflags {hf:#x} at the assumed offset do not show SVM guest mode")
    a, b = blobs
    cands = [o for o in range(0, len(a) - 3, 4)
             if struct.unpack_from("<I", a, o)[0] == 0x48 and struct.unpack_from("<I", b, o)[0] == 0x50]
    if len(cands) != 1:
        raise EngineError(f"calibration: error_code offset ambiguous ({cands})")
    error_code = cands[0]
    # QEMU keeps exception_is_int (int) and exception_next_eip (target_ulong) right
    # after error_code; check that on the software interrupt.
    if len(soft) != 1:
        raise EngineError("calibration guest did not take its INT 0x30")
    is_int, next_eip = struct.unpack_from("<iQ", soft[0], error_code + 4)[0], \
        struct.unpack_from("<Q", soft[0], error_code + 8)[0]
    if is_int != 1 or next_eip != 0x100010:
        raise EngineError(f"calibration: exception_is_int/next_eip not after error_code ({is_int}, {next_eip:#x})")
    return error_code


def native_cpuid_leaves():
    """The (leaf, subleaf or None) keys the emulated model answers."""
    return list(_native_cpuid_table())


def native_cpuid(leaf, subleaf=0):
    """What the emulated CPU model (QEMU's EPYC) answers for CPUID, before policy.

    Every leaf is queried once per process, in one scratch engine, before any guest
    runs: running a second engine inside a guest's exit hook would disturb QEMU's
    per-thread state (current_cpu, the TCG context) of the running one. Leaves the
    model does not have read as zeros, as on AMD processors."""
    table = _native_cpuid_table()
    return table.get((leaf, subleaf)) or table.get((leaf, None)) or (0, 0, 0, 0)


_cpuid_table = None
_CPUID_SUBLEAVES = 16          # subleaves queried for leaves that depend on ECX


def _native_cpuid_table():
    global _cpuid_table
    with _calib_lock:
        if _cpuid_table is None:
            from pyvmm.cpu.cpuid import SUBLEAF_LEAVES
            uc = _new_uc()
            uc.mem_map(0, 0x1000)
            uc.mem_write(0, b"\x0f\xa2")                   # cpuid

            def query(leaf, sub):
                uc.reg_write(X.UC_X86_REG_RAX, leaf)
                uc.reg_write(X.UC_X86_REG_RCX, sub)
                uc.emu_start(0, 2)
                return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (
                    X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))

            table = {}
            for base in (0, 0x80000000):
                top = min(query(base, 0)[0], base + 0x40)
                for leaf in range(base, top + 1):
                    if leaf in SUBLEAF_LEAVES:
                        for sub in range(_CPUID_SUBLEAVES):
                            table[(leaf, sub)] = query(leaf, sub)
                    else:
                        table[(leaf, None)] = query(leaf, 0)
            _cpuid_table = table
    return _cpuid_table


# ---- the floor: bare Unicorn with hooks that only return ----

class BareRunner:
    """Bare Unicorn running a guest image, for the reference ("floor") measurements
    of pyvmm's benchmarks: the same guest memory and entry state, Unicorn's Python
    binding, and hooks that only return (CPUID and IN/OUT hooks that return a value,
    an invalid-opcode hook that steps over VMCALL). With ``svm=True`` the guest runs
    in SVM guest mode with MSR, CR-write and HLT intercepts whose hook only steps
    over the instruction: the least a trap of RDMSR/WRMSR/mov to CR3 can cost here.

    The run ends when the guest writes the power-off port (0x604) or halts.
    """

    def __init__(self, memory, entry, svm=False):
        self.uc = uc = _new_uc()
        uc.mem_map_ptr(0, memory.size, unicorn.UC_PROT_ALL, memory.host_address)
        self.start = entry.rip
        if svm:
            uc.mem_map(VMM_PRIVATE_BASE, VMM_PRIVATE_SIZE)
            _write_vmcb(uc, entry)
            uc.reg_write(X.UC_X86_REG_RSI, entry.gprs.get("rsi", 0))
            self.start = STUB
        else:
            uc.reg_write(X.UC_X86_REG_GDTR, (0, entry.gdt[0], entry.gdt[1], 0))
            uc.reg_write(X.UC_X86_REG_CR3, entry.cr3)
            uc.reg_write(X.UC_X86_REG_CR4, entry.cr4)
            uc.reg_write(X.UC_X86_REG_MSR, (svm_mod.MSR_EFER, entry.efer))
            uc.reg_write(X.UC_X86_REG_CR0, entry.cr0)
            uc.reg_write(X.UC_X86_REG_CS, entry.cs[0])
            uc.reg_write(X.UC_X86_REG_SS, entry.ds[0])
            uc.reg_write(X.UC_X86_REG_DS, entry.ds[0])
            uc.reg_write(X.UC_X86_REG_RSP, entry.rsp)
            uc.reg_write(X.UC_X86_REG_RSI, entry.gprs.get("rsi", 0))
        uc.hook_add(unicorn.UC_HOOK_INSN, lambda uc_, ud: 1, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(unicorn.UC_HOOK_INSN, lambda uc_, port, size, ud: 0xFFFFFFFF, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(unicorn.UC_HOOK_INSN_INVALID, self._invalid)
        uc.hook_add(unicorn.UC_HOOK_INTR, self._intr)

    def _out(self, uc, port, size, value, ud):
        if port == 0x604:
            uc.emu_stop()

    def _invalid(self, uc, ud):
        uc.reg_write(X.UC_X86_REG_RIP, uc.reg_read(X.UC_X86_REG_RIP) + 3)     # VMCALL
        return True

    def _intr(self, uc, intno, ud):
        code = intno - svm_mod.EXCP_VMEXIT
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        if code == svm_mod.VMEXIT_MSR:
            uc.reg_write(X.UC_X86_REG_RIP, rip + 2)
        elif svm_mod.VMEXIT_CR0_WRITE <= code < svm_mod.VMEXIT_CR0_WRITE + 16:
            uc.reg_write(X.UC_X86_REG_RIP, rip + 3)                           # mov crN, r64
        elif code == svm_mod.VMEXIT_EXCP_BASE + 6:
            self._invalid(uc, None)                                           # VMCALL as #UD
        else:
            uc.emu_stop()

    def run(self):
        self.uc.emu_start(self.start, UNTIL)

    def close(self):
        self.uc = None
