"""The vCPU: the run loop, exits turned into Exit records, event injection, timers.

Root mode is this module: the engine (cpu/_unicorn.py) calls ``_on_exit`` from inside
the guest's execution for every trap; ``_on_exit`` classifies it into an Exit
(cpu/exits.py), dispatches it through the handler table (cpu/handlers.py), records
statistics, lets observers (trace, the lab stepper) see it, and delivers any event
the handler queued. The run loop around ``Engine.run`` handles what happens
between slices of guest execution: timer interrupts from the PIT through the PIC,
the interrupt window, HLT (sleep until the next interrupt), the preemption timer,
and pause requests (run() returns between slices with the vCPU intact, for
``save()``; ``restore()`` puts a saved vCPU into a fresh engine).

Invariants: an event is delivered only at an instruction boundary outside a
translated block (in the loop, or in an exception/intercept exit); exits taken in
the middle of a block (CPUID, port I/O) only queue events and ask the engine to
stop. The guest never sees the VMM's exceptions: a bug in root mode stops the VM
with the reason.
"""

import collections
import threading
import time

from pyvmm.cpu import events
from pyvmm.cpu.fast_syscall import emulate_syscall
from pyvmm.cpu._unicorn import SYSCALL_HOOK_RIP_ADVANCE, OUTSIDE_EXIT, PV_CPUID, PV_IN, PV_INTR, PV_INVALID, PV_OUT, PV_RDTSC, PV_SYSCALL
from pyvmm.cpu import svm
from pyvmm.cpu.decode import cr_operands, decode, io_form, memory_operand_address, register_operand
from pyvmm.cpu.ioperm import io_allowed
from pyvmm.cpu.exits import (BP, CR_CLTS, CR_MOV_FROM, DB, GP, CR_LMSW, CR_MOV_TO, ERROR_CODE_VECTORS, OF, PF, UD, Exit, ExitReason,
                             cr_qualification, intr_info, io_qualification, INTR_TYPE_HW_EXCEPTION,
                             INTR_TYPE_SW_EXCEPTION)
from pyvmm.cpu.handlers import EXIT_HANDLERS, Shutdown, handle_cpuid, handle_exit
from pyvmm.cpu.state import EFER_LMA, GPRS, RFLAGS_IF
from pyvmm.cpu._unicorn import STATE_MSRS, STATE_SEGMENTS, XMM_REGS
from pyvmm.errors import ConfigError, GuestFault, GuestMemoryError, MigrationStreamError
from pyvmm.migrate.state import StateFields
from pyvmm.mm import ept
from pyvmm.mm.layout import PAGE_SIZE
from pyvmm.mm.pagewalk import Paging, TranslationCache, read_linear, write_linear
from pyvmm.mm.shadow import ShadowedCpu, ShadowUnsupported

_perf = time.perf_counter_ns
_R = ExitReason
_REASONS = frozenset(int(r) for r in ExitReason)
_new_exit = tuple.__new__
VMCALL_BYTES = (b"\x0f\x01\xc1", b"\x0f\x01\xd9")     # VMCALL (Intel), VMMCALL (AMD)
WINDOW_POLL_NS = 200_000
# A run of the engine that ends with no exit, no kick and RIP unchanged made no progress.
# Seen under host load (Linux boot, about 1 run in 8): the engine then returns at once on
# every entry at the same RIP, and dropping its translated code lets the guest go on.
STALL_FLUSH_AFTER = 3            # such runs in a row before translated code is dropped
STALL_STOP_AFTER = 300           # ... and before the VM is stopped with the reason
SLICE_FORCE_AFTER_NS = 200_000   # run_slice: a spinning guest is stopped this soon after its slice


class ExitStats:
    """Exits by reason: count and time spent in root mode (ns), kept by the C exit
    path (csrc/exitpath.c) so that exits it serves alone are counted too."""

    def __init__(self, vstate):
        self._v = vstate

    @property
    def count(self):
        return {_R(r): n for r, n in enumerate(self._v.reason_count) if n and r in _REASONS}

    @property
    def ns(self):
        return {_R(r): self._v.reason_ns[r] for r, n in enumerate(self._v.reason_count) if n and r in _REASONS}

    def rows(self):
        ns = self.ns
        return sorted(((r, n, ns[r] / n) for r, n in self.count.items()), key=lambda row: -row[1])

    @property
    def total(self):
        return sum(self.count.values())


class Ticker(threading.Thread):
    """A host timer: kicks the engine out of guest mode at a deadline (the way a
    host timer interrupt causes an external-interrupt VM exit).

    At the deadline it kicks softly (the engine stops at the guest's next exit);
    if the run loop has not re-armed it FORCE_AFTER_NS later, the guest is
    spinning without exits and the kick is forced (uc_emu_stop from this thread),
    and repeated every FORCE_AFTER_NS: a forced kick can be lost too (Unicorn
    ignores uc_emu_stop just before emu_start has really started)."""

    FORCE_AFTER_NS = 2_000_000

    def __init__(self, engine):
        super().__init__(name="pyvmm-ticker", daemon=True)
        self.engine = engine
        self._cond = threading.Condition()
        self._deadline = None
        self._quit = False
        self.fired = False

    def arm(self, deadline_ns):
        with self._cond:
            self._deadline = deadline_ns
            self.fired = False
            self._cond.notify()

    def stop(self):
        with self._cond:
            self._quit = True
            self._cond.notify()

    def run(self):
        with self._cond:
            while not self._quit:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                delay = (self._deadline - time.monotonic_ns()) / 1e9
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self.engine.kick(force=self.fired)
                self.fired = True
                self._deadline = time.monotonic_ns() + self.FORCE_AFTER_NS


class Vcpu:
    """One virtual CPU of a Machine."""

    def __init__(self, engine, mem, platform, cpuid, msrs, hypercalls, controls, console_write):
        self.engine = engine
        self.cpu = engine
        self.regs = engine.regs
        self.mem = mem
        self.platform = platform
        self.io = platform.io
        self.cpuid = cpuid
        self.msrs = msrs
        self.hypercalls = hypercalls
        self.controls = controls
        self.console_write = console_write
        self.handlers = dict(EXIT_HANDLERS)
        self.observers = []
        self.tracing = False           # True while observers want handler notes
        self.fast_paths = True         # let the C path serve CPUID from the policy table
        self._v = engine.vstate
        self.stats = ExitStats(self._v)
        self.halted = False
        self.stopped = False
        self.status = None
        self.reason = None
        self.last_exits = collections.deque(maxlen=16)   # the last (Exit, outcome) pairs
        self._stalls = 0                 # engine runs in a row without progress (_run_engine)
        self.stall_flushes = 0           # translated code dropped because of them
        self.events_delivered = 0
        self.syscalls = 0
        # HLT with interrupts disabled: for Linux that is how `poweroff` ends without
        # ACPI (kernel_halt -> stop_this_cpu), so Machine sets this for Linux kernels.
        self.halt_is_poweroff = False
        self.irqs_injected = 0
        self._io_forms = {}
        self._rewind = None             # CPU state to restore before a pending fault
        self.tlb = TranslationCache()   # root mode's TLB for reading guest-linear memory
        # The MMU mode (mm/ept.py EptMmu, or None when the guest's tables are the
        # engine's own). With EPT, CR3 loads and INVLPG do not exit, so root mode's
        # TLB cannot see them and is dropped whenever the guest has run.
        self.mmu = None
        self._flush_root_tlb = False
        self._mmu_vectors = 0
        self._ticker = Ticker(engine)
        self._preempt_deadline = None
        self._window_wanted = False
        self._tsc_base = time.monotonic_ns()
        self._started = False
        self.pause_requested = False    # request_pause(): leave run() between slices
        self.paused = False             # run() returned on a pause request
        # The PV platform (pv/pv_platform.py) of a `--pv` guest, or None: with it this
        # vCPU is the calling vCPU of pv/hypercall.py's PvVcpu protocol (vCPU 0).
        self.pv = None
        self._hypercall_page = None     # guest address of a PV guest's hypercall page (set_pv)
        self.vcpu_id = 0
        # A scheduled slice (run_slice, pv/hypervisor.py): its end (host ns) arms the
        # host timer; a kick or SCHEDOP_yield ends it early.
        self._slice_end = None
        self._slice_over = False
        engine.on_exit = self._on_exit
        engine.set_cpuid_table(cpuid.table())

    # ---- services for handlers ----
    @property
    def long_mode(self):
        return bool(self.cpu.efer & EFER_LMA)

    def paging(self):
        cr0, _, cr3, cr4, efer, _ = self.cpu.system_registers()
        return Paging(cr0, cr3, cr4, efer)

    def read_linear(self, vaddr, length):
        return read_linear(self.mem, self.paging(), vaddr, length, user=self.cpu.cpl == 3, tlb=self.tlb)

    def write_linear(self, vaddr, data):
        write_linear(self.mem, self.paging(), vaddr, data, user=self.cpu.cpl == 3)

    def flush_tlb(self, address=None):
        """INVLPG or a CR write: the guest's TLB and root mode's are flushed."""
        self.tlb.flush(address)
        self.cpu.flush_tlb(address)

    def inject(self, event):
        """Queue an event for delivery at the next possible point (entry)."""
        self.controls.entry_event = event

    def halt(self):
        self.halted = True

    def guest_tsc(self):
        return (time.monotonic_ns() - self._tsc_base) * 2 + self.controls.tsc_offset   # a 2 GHz TSC

    def request_stop(self, status, reason):
        if not self.stopped:
            self.stopped, self.status, self.reason = True, status, reason
        self.engine.kick()

    # ---- the PvVcpu protocol (pv/hypercall.py) for a --pv guest ----
    def set_pv(self, pv, hypercall_page=None):
        """Make this vCPU the guest domain's vCPU 0 on PV platform ``pv``. A SYSCALL
        inside ``hypercall_page`` (its guest address, boot/pvboot.py's stubs) is a
        hypercall, as in a 64-bit Xen PV kernel."""
        self.pv = pv
        self._hypercall_page = hypercall_page
        pv.guest.on_upcall = self._on_upcall
        # A grant of another domain mapped into this guest's RAM (pv/foreign_map.py).
        from pyvmm.pv.foreign_map import ForeignFrames     # pv imports cpu: not at module load
        self.foreign = ForeignFrames(self, pv.guest)
        self.foreign.install()

    @property
    def domain(self):
        return self.pv.guest if self.pv is not None else None

    @property
    def domains(self):
        return self.pv.domains if self.pv is not None else None

    def _on_upcall(self, vcpu_id):
        """An event became pending: inside an exit, leave guest mode so it is delivered now."""
        if self.engine.in_exit:
            self.engine.stop_from_exit()

    def load_cr3(self, value):
        self.cpu.set_cr(3, value)
        self.tlb.flush()

    def system_time_ns(self):
        return self.pv.system_time_ns()

    def set_timer(self, deadline_ns):
        self.pv.set_timer(deadline_ns)
        self._arm_timer(time.monotonic_ns())

    def yield_cpu(self):
        self.engine.stop_from_exit()        # alone: the guest runs on; scheduled: the slice ends
        if self._slice_end is not None:
            self._slice_over = True

    def block(self):
        self.halted = True                  # _wait_for_interrupt: until an upcall is due

    def poll(self, ports, deadline_ns):
        self.pv.start_poll(ports, deadline_ns)
        self.halted = True

    def frames_removed(self, gfns):
        """Ballooned-out frames: gone from the EPT-style table (a later access stops the VM)."""
        if self.mmu is not None and self.mmu.mode == "ept":
            for gfn in gfns:
                self.mmu.table.unmap(gfn * PAGE_SIZE, PAGE_SIZE)
        self.flush_tlb()

    def frames_added(self, gfns):
        if self.mmu is not None and self.mmu.mode == "ept":
            for gfn in gfns:
                self.mmu.table.map(gfn * PAGE_SIZE, PAGE_SIZE, ept.RWX, large=False)
        self.flush_tlb()

    # ---- the exit path ----
    def _on_exit(self, kind, a, b, c):
        """Called by the engine for every trap; returns the IN value / handled flag."""
        if self.stopped:                # the VM is stopping: let nothing else happen
            self.engine.stop_from_exit()
            return 0
        if self._rewind is not None:    # an I/O fault is being undone (see _io_fault)
            return self._ignored_exit(kind, b)
        try:
            self.engine.invalidate()      # the guest ran since the last look at CRs/EFER
            if self._flush_root_tlb:
                self.tlb.flush()
            regs = self.regs
            v = self._v
            seq = v.seq = v.seq + 1
            in_block = True
            if kind == PV_CPUID:
                ex = _new_exit(Exit, (_R.CPUID, 0, regs.rip, 2, 0, 0, 0, 0, 0, seq))
            elif kind == PV_IN or kind == PV_OUT:
                rip = regs.rip
                cpl = regs.cs & 3
                if cpl and cpl > (regs.rflags >> 12) & 3 and not self._io_permitted(a, b, cpl):
                    return self._io_fault(rip, kind, b)
                form = self._io_forms.get(rip)
                if form is None:
                    form = self._io_forms[rip] = self._decode_io(rip)
                q = io_qualification(a, b, kind == PV_IN, *form[:3])
                ex = _new_exit(Exit, (_R.IO_INSTRUCTION, q, rip, form[3], 0, 0, 0, 0, c, seq))
                value = self._dispatch(ex, True)
                if a in self.platform.timer_ports and kind == PV_OUT:
                    self._arm_timer(time.monotonic_ns())     # the guest reprogrammed a timer
                # A device may have raised an interrupt (a UART's THRE after a write):
                # leave guest mode so it is injected now, not at the next timer tick.
                if self.platform.pic.has_pending() and (regs.rflags & RFLAGS_IF or not self._window_wanted):
                    self.engine.stop_from_exit()
                return value
            elif kind == PV_INTR:
                in_block = False
                ex = self._classify_intr(a)
            elif kind == PV_INVALID:
                in_block = False
                ex = self._classify_ud(None)
            elif kind == PV_RDTSC:
                ex = Exit(_R.RDTSC, 0, regs.rip, 2, seq=seq)
            elif kind == PV_SYSCALL:
                page = self._hypercall_page
                if page is not None and page <= regs.rip < page + PAGE_SIZE:
                    # A hypercall stub's SYSCALL: a VMCALL exit to the handlers, RIP
                    # past the SYSCALL when it completes; the engine adds the SYSCALL's
                    # length after its hook, so that much is taken off first.
                    self._dispatch(_new_exit(Exit, (_R.VMCALL, 0, regs.rip, SYSCALL_HOOK_RIP_ADVANCE,
                                                    0, 0, 0, 0, 0, seq)), False)
                    regs.rip -= SYSCALL_HOOK_RIP_ADVANCE
                    return 0
                self._syscall()
                return 0
            else:
                raise AssertionError(f"unknown exit kind {kind}")
            if ex is None:
                return 1
            return self._dispatch(ex, in_block)
        except Exception as e:                      # a root-mode bug: stop, keep the reason
            import traceback
            self.request_stop(3, f"VMM error while handling an exit: {e!r}")
            self.crash_traceback = traceback.format_exc()
            return 0

    def _dispatch(self, ex, in_block):
        """Handle one exit inside an engine hook (the C path accounts its time)."""
        v = self._v
        v.reason = ex.reason
        observers = self.observers
        if observers:
            t0 = _perf()
        handler = self.handlers.get(ex.reason)
        res = handler(self, ex) if handler is not None else handle_exit(self, ex)
        if not in_block and res.advance and ex.insn_len:
            self.regs.rip = (self.regs.rip + ex.insn_len) & 0xFFFF_FFFF_FFFF_FFFF
            self.engine.end_interrupt_shadow()
        self.last_exits.append((ex, res))
        if observers:
            t1 = _perf()
            for observer in observers:
                observer(self, ex, res, t1 - t0)
            v.observer_ns += _perf() - t1
        if res.__class__ is Shutdown:
            self.request_stop(res.status, res.reason)
        elif self.controls.entry_event is not None:
            if in_block:
                self.engine.stop_from_exit()
            else:
                self._deliver_pending()
        if self.halted or self.stopped:
            self.engine.stop_from_exit()
        return res.value

    def _syscall(self):
        """SYSCALL does not exit on hardware: root mode performs it (fast_syscall.py).
        The engine adds the instruction length to RIP after its hook returns."""
        self.syscalls += 1
        try:
            emulate_syscall(self.cpu, self.regs)
        except GuestFault as fault:                  # RIP stays at the SYSCALL: it faults
            self.inject(events.Event(fault.vector, events.HW_EXCEPTION))
            self.engine.stop_from_exit()
        self.regs.rip -= SYSCALL_HOOK_RIP_ADVANCE

    def _io_permitted(self, port, size, cpl):
        return io_allowed(self.cpu, self.mem, self.paging(), port, size, cpl, self.regs.rflags, self.tlb)

    def _io_fault(self, rip, kind, size):
        """CPL > IOPL and the TSS bitmap denies the port: #GP(0) at the instruction.

        Unicorn cannot abort an instruction from its I/O hook (it skips the I/O
        permission check entirely, and the rest of the translated block runs after
        the hook). So the CPU state is saved here, before the instruction takes
        effect; the device is not touched; every exit until the engine stops is
        ignored; and the saved state is restored before #GP is delivered. Stores to
        memory made by the rest of the block cannot be undone."""
        self._rewind = self.engine.snapshot()
        self.inject(events.Event(GP, events.HW_EXCEPTION, 0))
        self.engine.stop_from_exit()
        return self._ignored_exit(kind, size)

    def _ignored_exit(self, kind, size):
        """What an exit returns while a rewind is pending: nothing changes."""
        self.engine.stop_from_exit()
        if kind == PV_IN:
            return self.regs.rax & ((1 << (8 * size)) - 1)
        return 1 if kind == PV_INVALID else 0

    def _decode_io(self, rip):
        """(string, rep, immediate, length) of the I/O instruction at ``rip``."""
        insn = self._insn(rip)
        if insn is None:
            return (False, False, False, 1)
        return io_form(insn.raw) + (insn.size,)

    def _bits(self):
        return self.cpu.code_bits

    def _insn(self, rip):
        try:
            return decode(self.mem, self.paging(), rip, self._bits(), self.tlb)
        except (GuestFault, GuestMemoryError):
            return None

    def _classify_intr(self, intno):
        regs, seq = self.regs, self._v.seq
        rip = regs.rip
        if intno < svm.EXCP_VMEXIT:
            return self._software_interrupt(intno)
        code = intno - svm.EXCP_VMEXIT
        if svm.VMEXIT_EXCP_BASE <= code < svm.VMEXIT_EXCP_BASE + 32:
            vector = code - svm.VMEXIT_EXCP_BASE
            if vector == UD:
                return self._classify_ud(rip)
            err = self.engine.error_code() if vector in ERROR_CODE_VECTORS else None
            cr2 = self.engine.exit_info2() if vector == PF else None
            if ((self.controls.exception_bitmap | self._mmu_vectors) & (1 << vector)
                    or vector == DB and self.mmu is not None and self.mmu.stepping):
                return Exit(_R.EXCEPTION_NMI, cr2 or 0, rip, 0, intr_info(vector, INTR_TYPE_HW_EXCEPTION, err is not None),
                            err or 0, gla=cr2 or 0, seq=seq)
            self.inject(events.Event(vector, events.HW_EXCEPTION, err, cr2))
            self._deliver_pending()
            return None
        if svm.VMEXIT_CR0_READ <= code < svm.VMEXIT_CR0_READ + 16:      # CR3 reads (shadow paging)
            insn = self._insn(rip)
            ops = cr_operands(insn) if insn is not None else None
            if ops is None:
                self.request_stop(1, f"cannot decode the CR read at RIP {rip:#x}")
                return None
            return Exit(_R.CR_ACCESS, cr_qualification(ops[0], CR_MOV_FROM, ops[1]), rip, insn.size, seq=seq)
        if svm.VMEXIT_CR0_WRITE <= code < svm.VMEXIT_CR0_WRITE + 16:
            insn = self._insn(rip)
            if insn is None:
                self.request_stop(1, f"cannot decode the CR write at RIP {rip:#x}")
                return None
            if insn.mnemonic == "clts":
                q = cr_qualification(0, CR_CLTS)
            elif insn.mnemonic == "lmsw":
                source = register_operand(insn, regs)
                q = cr_qualification(0, CR_LMSW, lmsw_data=(source or 0) & 0xFFFF, lmsw_mem=source is None)
            else:
                cr, gpr, _ = cr_operands(insn)
                q = cr_qualification(cr, CR_MOV_TO, gpr)
            return Exit(_R.CR_ACCESS, q, rip, insn.size, seq=seq)
        if code == svm.VMEXIT_MSR:
            is_write = self.engine.error_code() == 1
            return Exit(_R.WRMSR if is_write else _R.RDMSR, 0, rip, 2, seq=seq)
        if code == svm.VMEXIT_HLT:
            return Exit(_R.HLT, 0, rip, 1, seq=seq)
        if code == svm.VMEXIT_INVLPG:
            insn = self._insn(rip)
            gla = memory_operand_address(insn, regs) if insn is not None else 0
            return Exit(_R.INVLPG, gla, rip, insn.size if insn else 3, gla=gla, seq=seq)
        if code == svm.VMEXIT_NPF:
            return self._ept_violation(rip, seq)
        if code == svm.VMEXIT_SHUTDOWN:
            return Exit(_R.TRIPLE_FAULT, 0, rip, 0, seq=seq)
        if code == svm.VMEXIT_WBINVD:
            return Exit(_R.WBINVD, 0, rip, 2, seq=seq)
        if code == svm.VMEXIT_VMMCALL:
            return Exit(_R.VMCALL, 0, rip, 3, seq=seq)
        self.request_stop(1, f"unexpected intercept (SVM exit code {code:#x}) at RIP {rip:#x}")
        return None

    def _ept_violation(self, rip, seq):
        """AMD's nested page fault as an EPT violation: EXITINFO2 is the guest-physical
        address; EXITINFO1 arrives through QEMU's 32-bit error_code, so its bits 32-33
        (final address or guest page walk) are lost: guest page-table reads are
        reported as writes, as QEMU's walker does them."""
        info1 = self.engine.error_code() & 0xFFFF_FFFF
        gpa = self.engine.exit_info2()
        access, _ = ept.access_of_npf(info1)
        found = self.mmu.table.perms(gpa) if self.mmu is not None else 0
        return Exit(_R.EPT_VIOLATION, ept.qualification(access, found), rip, 0, gpa=gpa, value=info1, seq=seq)

    def set_mmu(self, mmu):
        """EPT: CR3 loads and INVLPG do not exit, so root mode's TLB is dropped at every
        exit. Shadow: the guest's CR3 is virtual (``ShadowedCpu``), and #PF and #DB
        always exit, for the shadow MMU to look at first."""
        self.mmu = mmu
        mode = mmu.mode if mmu is not None else None
        self._flush_root_tlb = mode in ("ept", "shadow")
        self._mmu_vectors = (1 << PF) | (1 << DB) if mode == "shadow" else 0
        self.cpu = ShadowedCpu(self.engine, mmu) if mode == "shadow" else self.engine

    def _classify_ud(self, rip):
        rip = self.regs.rip if rip is None else rip
        try:
            raw = read_linear(self.mem, self.paging(), rip, 3, fetch=True, tlb=self.tlb)
        except (GuestFault, GuestMemoryError):
            raw = b""
        if raw in VMCALL_BYTES:
            return Exit(_R.VMCALL, 0, rip, 3, seq=self._v.seq)
        if self.controls.exception_bitmap & (1 << UD):
            return Exit(_R.EXCEPTION_NMI, 0, rip, 0, intr_info(UD, INTR_TYPE_HW_EXCEPTION), seq=self._v.seq)
        self.inject(events.Event(UD, events.HW_EXCEPTION))
        self._deliver_pending()
        return None

    def _software_interrupt(self, vector):
        """INT n / INT3 / INTO: Unicorn reports them with RIP already past the
        instruction. Hardware delivers them without an exit, except #BP/#OF when
        the exception bitmap says so (SDM Vol. 3C, 25.2)."""
        rip = self.regs.rip
        self.engine.end_software_interrupt()
        try:
            prev = read_linear(self.mem, self.paging(), rip - 2, 2, fetch=True, tlb=self.tlb)
        except (GuestFault, GuestMemoryError):
            prev = b"\0\0"
        if prev[1] == 0xCC and vector == BP:
            kind, length = events.SW_EXCEPTION, 1
        elif prev[1] == 0xCE and vector == OF:
            kind, length = events.SW_EXCEPTION, 1
        else:
            kind, length = events.SW_INTERRUPT, 2
        if kind == events.SW_EXCEPTION and self.controls.exception_bitmap & (1 << vector):
            return Exit(_R.EXCEPTION_NMI, 0, rip - length, length, intr_info(vector, INTR_TYPE_SW_EXCEPTION),
                        seq=self._v.seq)
        self.inject(events.Event(vector, kind, fault_rip=rip - length))
        self._deliver_pending()
        return None

    def _deliver_pending(self):
        event = self.controls.entry_event
        if event is None:
            return
        self.controls.entry_event = None
        try:
            events.deliver_event(self.cpu, self.mem, event)
            self.events_delivered += 1
        except events.TripleFault as tf:
            res = self._loop_exit(_R.TRIPLE_FAULT)
            if res.__class__ is Shutdown:
                self.reason = f"{res.reason}: {tf.why}"

    def _loop_exit(self, reason):
        """An exit the run loop raises itself (not inside an engine hook): numbered,
        dispatched and accounted like the others."""
        v = self._v
        v.seq += 1
        outside = not self.engine.in_exit
        if outside:
            v.observer_ns = 0
        t0 = _perf()
        self._dispatch(Exit(reason, 0, self.regs.rip, 0, seq=v.seq), False)
        if outside:                      # inside a hook, the C path accounts this time
            self.engine.account(reason, _perf() - t0 - v.observer_ns)
            v.reason = OUTSIDE_EXIT
        return self.last_exits[-1][1]

    # ---- the run loop ----
    def run(self):
        """Run until the guest stops; returns (status, reason)."""
        if not self._started:
            self._ticker.start()
            self._started = True
        self.paused = False
        try:
            while not self.stopped:
                if self.pause_requested:
                    self.pause_requested, self.paused = False, True
                    return None, None
                if self.halted and not self._wait_for_interrupt():
                    continue            # stopped, or a pause request: decided above
                self._enter()
                if self.stopped:
                    break
                self._run_engine()
                self._after_slice()
        finally:
            self._ticker.arm(None)
        return self.status, self.reason

    def _run_engine(self):
        """One slice of guest execution, watching for runs that make no progress
        (STALL_FLUSH_AFTER): the engine's translated code is dropped and the run retried."""
        regs, v, engine = self.regs, self._v, self.engine
        rip, exits, kicks = regs.rip, v.nexits, engine.kicks
        engine.run()
        if regs.rip != rip or v.nexits != exits or engine.kicks != kicks or self.halted or self.stopped:
            self._stalls = 0
            return
        self._stalls += 1
        if self._stalls % STALL_FLUSH_AFTER == 0:
            engine.flush_translations()
            self.stall_flushes += 1
        if self._stalls >= STALL_STOP_AFTER:
            self.request_stop(1, f"the CPU engine made no progress at RIP {rip:#x} in {self._stalls} runs, "
                                 "even with its translated code dropped")

    def _enter(self):
        if self._rewind is not None:
            self.engine.restore_snapshot(self._rewind)
            self._rewind = None
        self.tracing = bool(self.observers)
        self.engine.set_fast_cpuid(self.fast_paths and self.handlers.get(_R.CPUID) is handle_cpuid
                                   and not self.observers)
        now = time.monotonic_ns()
        self.platform.tick(now)
        if self.pv is not None:
            self.pv.tick(now)
        if self.controls.entry_event is not None:
            self._deliver_pending()
        else:
            self._inject_irq()
        if self.controls.preemption_timer_ns is not None and self._preempt_deadline is None:
            self._preempt_deadline = now + self.controls.preemption_timer_ns
        self._arm_timer(now)

    def _arm_timer(self, now):
        """Arm the host timer for the earliest of: the next PIT edge, the preemption
        timer, and (while an interrupt waits for IF=1) a poll of the window."""
        deadline = self._device_deadline(now)
        for d in (self._preempt_deadline, now + WINDOW_POLL_NS if self._window_wanted else None,
                  self._slice_end):
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        self._ticker.arm(deadline)

    def _device_deadline(self, now):
        """The next PIT edge or PV timer/poll deadline (host ns), or None."""
        deadline = self.platform.next_deadline(now)
        pv = self.pv.next_deadline() if self.pv is not None else None
        return pv if deadline is None or (pv is not None and pv < deadline) else deadline

    def _inject_irq(self):
        pic = self.platform.pic
        upcall = self.pv.upcall_vector() if self.pv is not None else None
        if not pic.has_pending() and upcall is None:
            self._close_window()
            return
        if self.regs.rflags & RFLAGS_IF and not self.engine.interrupt_shadow:
            if self._window_wanted or self.controls.interrupt_window_exiting:
                self._close_window()
                self._loop_exit(_R.INTERRUPT_WINDOW)
                if self.stopped:
                    return
            if pic.has_pending():
                vector = pic.acknowledge()
                self.irqs_injected += 1
            else:                       # the PV upcall (pv_platform.py: Xen's callback vector)
                vector = upcall
                self.pv.upcalls += 1
                self.pv.update_time(self.vcpu_id)
            self.inject(events.Event(vector, events.EXTERNAL))
            self._deliver_pending()
        elif not self._window_wanted:
            # Watch instruction by instruction (a fresh budget per window) ...
            self._window_wanted = True
            self.engine.set_window_exiting(True)
        elif self.engine.window_expired:
            # ... and when the budget is spent, let the host timer poll every
            # WINDOW_POLL_NS while the guest runs at full speed.
            self.engine.set_window_exiting(False)

    def _close_window(self):
        self._window_wanted = False
        self.engine.set_window_exiting(False)

    def _after_slice(self):
        if self.stopped:
            return
        now = time.monotonic_ns()
        if self._preempt_deadline is not None and now >= self._preempt_deadline:
            self._preempt_deadline = None
            self._loop_exit(_R.PREEMPTION_TIMER)
        elif self._ticker.fired:
            self._ticker.fired = False
            self.platform.tick(now)
            upcall = self.pv is not None and self.pv.tick(now)
            if (self.platform.pic.has_pending() or upcall) and not self._window_wanted:
                self._loop_exit(_R.EXTERNAL_INTERRUPT)

    def _woken(self, now):
        """A halted vCPU: fire what is due at ``now``; True (and no longer halted) if an
        interrupt or a PV wake-up (pv_platform.wakes) is there."""
        pv = self.pv
        self.platform.tick(now)
        if pv is not None:
            pv.tick(now)
        if self.platform.pic.has_pending() or (pv is not None and pv.wakes(now)):
            if pv is not None:
                pv.update_time(self.vcpu_id)
            self.halted = False
            return True
        return False

    def _wait_for_interrupt(self):
        """HLT: sleep until an interrupt is pending. False if none can ever come."""
        while not self.stopped and not self.pause_requested:
            now = time.monotonic_ns()
            if self._woken(now):
                return True
            deadline = self._device_deadline(now)
            if deadline is None and not self.platform.can_wake():
                self.request_stop(1, "guest halted with no interrupt source armed: nothing can wake it")
                return False
            wait_ns = 10_000_000 if deadline is None else max(0, deadline - now)
            self.platform.wait(wait_ns / 1e9)
        return False

    # ---- one slice at a time, for pv/scheduler.py's CreditScheduler ----
    def run_slice(self, max_ns):
        """Run the guest for at most ``max_ns`` (the host timer ends the slice; a guest
        that spins without exits overruns by up to Ticker.FORCE_AFTER_NS). Returns
        (used ns, "runnable" | "blocked" | "stopped"); a halted vCPU that nothing wakes
        now returns "blocked" at once and ``wake_deadline_ns`` says when it wakes."""
        if not self._started:
            self._ticker.start()
            self._started = True
        start = time.monotonic_ns()
        self._slice_end = start + max_ns
        self._slice_over = False
        # A slice must end near its time even for a guest that spins without exits.
        self._ticker.FORCE_AFTER_NS = SLICE_FORCE_AFTER_NS
        state = "stopped"
        try:
            while not self.stopped:
                if self.halted and not self._woken(time.monotonic_ns()):
                    state = "blocked"
                    break
                self._enter()
                if self.stopped:
                    break
                self._run_engine()
                self._after_slice()
                if self.stopped:
                    break
                if self._slice_over or time.monotonic_ns() >= self._slice_end:
                    state = "blocked" if self.halted else "runnable"
                    break
        finally:
            self._slice_end = None
            self._ticker.arm(None)
            del self._ticker.FORCE_AFTER_NS
        return time.monotonic_ns() - start, state

    def kick(self):
        """End the running slice early (the scheduler preempts for a woken vCPU). Any thread."""
        self._slice_over = True
        self.engine.kick()

    @property
    def wake_deadline_ns(self):
        """A blocked vCPU wakes by itself at this host time (its PIT edge, PV timer or
        poll timeout), or None: only an event or interrupt wakes it."""
        return self._device_deadline(time.monotonic_ns())

    # ---- the vCPU as plain values (VM snapshots; docs/migration-stream.md) ----
    def request_pause(self):
        """Make run() return at the next point between guest slices, with the vCPU
        intact (``paused`` set); run() again resumes. Thread-safe."""
        self.pause_requested = True
        self.platform.wake()
        self.engine.kick()

    def save(self):
        """The vCPU's state as plain values; call while run() is not running. A
        rewind pending for a fault is applied first (as the next entry would)."""
        if self._rewind is not None:
            self.engine.restore_snapshot(self._rewind)
            self._rewind = None
        if not self.engine.entered:
            raise ConfigError("the vCPU has not entered the guest yet: there is no CPU state to save")
        cpu = self.engine.capture_state()
        cpu["cr3"] = self.cpu.get_cr(3)            # the guest's CR3 (not the shadow root)
        ev = self.controls.entry_event
        c = self.controls
        return {
            "cpu": cpu,
            "pending_event": None if ev is None else {
                "vector": ev.vector, "kind": ev.kind, "error_code": ev.error_code, "cr2": ev.cr2,
                "fault_rip": ev.fault_rip},
            "controls": {"exception_bitmap": c.exception_bitmap, "rdtsc_exiting": c.rdtsc_exiting,
                         "interrupt_window_exiting": c.interrupt_window_exiting,
                         "preemption_timer_ns": c.preemption_timer_ns},
            "halted": self.halted,
            "tsc": self.guest_tsc(),
        }

    def restore(self, state, entry_controls):
        """Put the vCPU of a freshly built VM into ``state`` (a ``save()`` value): all
        of it is checked first (MigrationStreamError naming the field), then the
        engine is set to VMRUN into it with ``entry_controls`` (the intercepts of the
        VM's MMU mode: cr_read, cr_write, exceptions, intercepts, nested_cr3)."""
        cpu, event, controls, halted, tsc = check_vcpu_state(state)
        engine_cr3 = cpu["cr3"]
        if self.mmu is not None and self.mmu.mode == "shadow":
            try:
                self.mmu.check_paging(cpu["cr0"], cpu["cr4"], cpu["efer"])
            except ShadowUnsupported as e:
                raise MigrationStreamError(f"vCPU state: paging mode not supported by shadow paging: {e}") from None
            engine_cr3 = self.mmu.load_cr3(cpu["cr3"])
        self.engine.resume_state(cpu, cr3=engine_cr3, **entry_controls)
        self.tlb.flush(None)
        c = self.controls
        c.exception_bitmap, c.rdtsc_exiting = controls["exception_bitmap"], controls["rdtsc_exiting"]
        c.interrupt_window_exiting = controls["interrupt_window_exiting"]
        c.preemption_timer_ns = controls["preemption_timer_ns"]
        c.entry_event = None if event is None else events.Event(
            event["vector"], event["kind"], event["error_code"], event["cr2"], event["fault_rip"])
        self.halted = halted
        # The guest's TSC carries on from where it was saved.
        c.tsc_offset = 0
        c.tsc_offset = tsc - self.guest_tsc()

    def close(self):
        self._ticker.stop()


U64 = 1 << 64
EVENT_KINDS = (events.EXTERNAL, events.NMI_KIND, events.HW_EXCEPTION, events.SW_INTERRUPT,
               events.PRIV_SW_EXCEPTION, events.SW_EXCEPTION)


def check_vcpu_state(state):
    """(cpu, pending event, controls, halted, tsc) of a ``Vcpu.save()`` value, every
    field type- and range-checked; MigrationStreamError names the first bad one."""
    top = StateFields(state, "vCPU")
    f = StateFields(top.raw("cpu"), "vCPU cpu")
    cpu = {}
    g = StateFields(f.raw("gprs"), "vCPU gprs")
    cpu["gprs"] = {name: g.uint(name, U64) for name in GPRS}
    g.done()
    for name in ("rip", "rflags", "cr0", "cr2", "cr3", "cr4", "efer"):
        cpu[name] = f.uint(name, U64)
    cpu["cpl"] = f.uint("cpl", 4)
    cpu["interrupt_shadow"] = f.flag("interrupt_shadow")
    segs = StateFields(f.raw("segments"), "vCPU segments")
    cpu["segments"] = {}
    for name in STATE_SEGMENTS:
        sel, base, limit, flags = _int_list(segs, name, (1 << 16, U64, 1 << 32, 1 << 32))
        cpu["segments"][name] = [sel, base, limit, flags]
    segs.done()
    cpu["gdtr"] = _int_list(f, "gdtr", (U64, 1 << 16))
    cpu["idtr"] = _int_list(f, "idtr", (U64, 1 << 16))
    m = StateFields(f.raw("msrs"), "vCPU msrs")
    cpu["msrs"] = {name: m.uint(name, U64) for name in STATE_MSRS}
    m.done()
    cpu["xmm"] = f.blob("xmm", size=16 * XMM_REGS)
    cpu["mxcsr"] = f.uint("mxcsr", 1 << 32)
    f.done()
    raw_event = top.raw("pending_event")
    event = None
    if raw_event is not None:
        e = StateFields(raw_event, "vCPU pending_event")
        event = {"vector": e.uint("vector", 256), "kind": e.choice("kind", EVENT_KINDS),
                 "error_code": e.optional_uint("error_code", 1 << 32), "cr2": e.optional_uint("cr2", U64),
                 "fault_rip": e.optional_uint("fault_rip", U64)}
        e.done()
    c = StateFields(top.raw("controls"), "vCPU controls")
    controls = {"exception_bitmap": c.uint("exception_bitmap", 1 << 32), "rdtsc_exiting": c.flag("rdtsc_exiting"),
                "interrupt_window_exiting": c.flag("interrupt_window_exiting"),
                "preemption_timer_ns": c.optional_uint("preemption_timer_ns", U64)}
    c.done()
    halted = top.flag("halted")
    tsc = top.uint("tsc", U64)
    top.done()
    return cpu, event, controls, halted, tsc


def _int_list(fields, name, limits):
    value = fields.items(name, len(limits))
    if len(value) != len(limits):
        fields.fail(name, f"{len(value)} items, expected {len(limits)}")
    for i, (v, limit) in enumerate(zip(value, limits)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
            fields.fail(f"{name}[{i}]", f"{v!r} is not an integer in 0..{limit - 1}")
    return list(value)
