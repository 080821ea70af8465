"""Exit handlers called with fake state: no guest, no Unicorn."""
from types import SimpleNamespace

import pytest

from pyvmm.cpu import events
from pyvmm.cpu.cpuid import CpuidPolicy, SIGNATURE
from pyvmm.cpu.exits import (CR_MOV_TO, Exit, ExitReason, cr_qualification, decode_io_qualification,
                             io_qualification)
from pyvmm.cpu.handlers import EXIT_HANDLERS, Shutdown, handle_exit
from pyvmm.cpu.msr import MsrTable
from pyvmm.cpu.state import SoftCpu


def fake_vm(**kw):
    cpu = SoftCpu()
    cpu.msrs[0xC0000080] = 0x500
    injected = []
    vm = SimpleNamespace(cpu=cpu, regs=cpu.regs, handlers=dict(EXIT_HANDLERS), msrs=MsrTable(), long_mode=True,
                         cpuid=CpuidPolicy(lambda leaf, sub: (leaf, 0x11, 0x22, 0x200)),
                         inject=injected.append, injected=injected, halted=False, tracing=False,
                         tlb=SimpleNamespace(flushes=0))
    vm.tlb.flush = lambda address=None: setattr(vm.tlb, "flushes", vm.tlb.flushes + 1)
    vm.flush_tlb = lambda address=None: (vm.tlb.flush(address), vm.cpu.flush_tlb(address))
    vm.halt = lambda: setattr(vm, "halted", True)
    vars(vm).update(kw)
    return vm


def test_cpuid_handler_applies_policy():
    vm = fake_vm()
    vm.regs.rax, vm.regs.rcx = 1, 0
    handle_exit(vm, Exit(ExitReason.CPUID, rip=0x1000, insn_len=2))
    assert vm.regs.rcx & (1 << 31)          # hypervisor bit
    assert not vm.regs.rdx & (1 << 9)       # APIC hidden
    vm.regs.rax = 0x40000000
    handle_exit(vm, Exit(ExitReason.CPUID))
    sig = vm.regs.rbx.to_bytes(4, "little") + vm.regs.rcx.to_bytes(4, "little") + vm.regs.rdx.to_bytes(4, "little")
    assert sig == SIGNATURE and vm.regs.rax == 0x40000001


def test_student_handler_replaces_default():
    vm = fake_vm()
    vm.handlers[ExitReason.CPUID] = lambda vm, ex: (setattr(vm.regs, "rax", 0x5151), EXIT_HANDLERS[ExitReason.WBINVD](vm, ex))[1]
    handle_exit(vm, Exit(ExitReason.CPUID))
    assert vm.regs.rax == 0x5151


def test_rdmsr_unknown_injects_gp_and_does_not_advance():
    vm = fake_vm()
    vm.regs.rcx = 0x4B564DFF
    res = handle_exit(vm, Exit(ExitReason.RDMSR, insn_len=2))
    assert not res.advance
    assert vm.injected[0].vector == 13 and vm.injected[0].error_code == 0


def test_wrmsr_then_rdmsr_round_trip_and_pat_check():
    vm = fake_vm()
    vm.regs.rcx, vm.regs.rdx, vm.regs.rax = 0xC0000102, 0x7FFF, 0x9ABCDEF0
    assert handle_exit(vm, Exit(ExitReason.WRMSR, insn_len=2)).advance
    vm.regs.rax = vm.regs.rdx = 0
    handle_exit(vm, Exit(ExitReason.RDMSR, insn_len=2))
    assert (vm.regs.rdx, vm.regs.rax) == (0x7FFF, 0x9ABCDEF0)
    vm.regs.rcx, vm.regs.rdx, vm.regs.rax = 0x277, 0, 0x02          # memory type 2 is reserved
    res = handle_exit(vm, Exit(ExitReason.WRMSR, insn_len=2))
    assert not res.advance and vm.injected[-1].vector == 13


def test_cr4_reserved_bit_gp_and_valid_write():
    vm = fake_vm()
    vm.cpu.cr[4] = 0x20
    vm.regs.rax = 0x20 | (1 << 31)
    res = handle_exit(vm, Exit(ExitReason.CR_ACCESS, cr_qualification(4, CR_MOV_TO, 0), insn_len=3))
    assert not res.advance and vm.injected[-1].vector == 13 and vm.cpu.cr[4] == 0x20
    vm.regs.rax = 0x20 | 0x80
    res = handle_exit(vm, Exit(ExitReason.CR_ACCESS, cr_qualification(4, CR_MOV_TO, 0), insn_len=3))
    assert res.advance and vm.cpu.cr[4] == 0xA0 and vm.tlb.flushes == 1


def test_hlt_with_interrupts_off_stops_vm():
    vm = fake_vm()
    vm.regs.rflags = 0x2
    assert isinstance(handle_exit(vm, Exit(ExitReason.HLT, insn_len=1)), Shutdown)
    vm.regs.rflags = 0x202
    handle_exit(vm, Exit(ExitReason.HLT, insn_len=1))
    assert vm.halted


def test_unhandled_reason_stops_with_reason():
    vm = fake_vm()
    res = handle_exit(vm, Exit(ExitReason.EPT_MISCONFIG, rip=0x1234))
    assert isinstance(res, Shutdown) and "EPT_MISCONFIG" in res.reason


@pytest.mark.parametrize("size", [1, 2, 4])
def test_io_qualification_round_trip(size):
    q = io_qualification(0x3F8, size, True, string=True, rep=True, imm=False)
    assert decode_io_qualification(q) == {"size": size, "in": True, "string": True, "rep": True, "imm": False,
                                          "port": 0x3F8}


def test_exception_handler_reflects_with_error_code():
    from pyvmm.cpu.exits import intr_info, INTR_TYPE_HW_EXCEPTION
    vm = fake_vm()
    ex = Exit(ExitReason.EXCEPTION_NMI, 0x5000, 0x1000, 0, intr_info(14, INTR_TYPE_HW_EXCEPTION, True), 2, gla=0x5000)
    res = handle_exit(vm, ex)
    ev = vm.injected[0]
    assert (ev.vector, ev.kind, ev.error_code, ev.cr2) == (14, events.HW_EXCEPTION, 2, 0x5000) and not res.advance


def test_io_handler_reads_and_writes_the_bus():
    from pyvmm.devices.bus import IoBus
    from pyvmm.devices.serial import Serial16550
    out = bytearray()
    bus = IoBus()
    bus.register(Serial16550(out.extend))
    vm = fake_vm(io=bus)
    handle_exit(vm, Exit(ExitReason.IO_INSTRUCTION, io_qualification(0x3FF, 1, False), value=0x5A))
    res = handle_exit(vm, Exit(ExitReason.IO_INSTRUCTION, io_qualification(0x3FF, 1, True)))
    assert res.value == 0x5A                                   # scratch register reads back
    handle_exit(vm, Exit(ExitReason.IO_INSTRUCTION, io_qualification(0x3F8, 1, False), value=0x41))
    assert out == b"A"
    res = handle_exit(vm, Exit(ExitReason.IO_INSTRUCTION, io_qualification(0x1234, 4, True)))
    assert res.value == 0xFFFFFFFF                             # nobody there: all ones


def test_vmcall_dispatches_xen_numbering():
    from pyvmm.pv.hypercall import Hypercalls
    vm = fake_vm(hypercalls=Hypercalls(0x1), read_linear=lambda a, n: b"abc"[:n], console_write=None)
    written = []
    vm.console_write = written.append
    vm.regs.rax, vm.regs.rdi = 17, 0
    handle_exit(vm, Exit(ExitReason.VMCALL, insn_len=3))
    assert vm.regs.rax == 1
    vm.regs.rax = 999
    handle_exit(vm, Exit(ExitReason.VMCALL, insn_len=3))
    assert vm.regs.rax == (-38) & 0xFFFFFFFFFFFFFFFF           # -ENOSYS
    vm.regs.rax, vm.regs.rdi, vm.regs.rsi, vm.regs.rdx = 18, 0, 3, 0x1000
    handle_exit(vm, Exit(ExitReason.VMCALL, insn_len=3))
    assert vm.regs.rax == 3 and written == [b"abc"]
    vm.regs.rax, vm.regs.rdi, vm.regs.rsi = 18, 0, 1 << 40     # a huge count is refused
    handle_exit(vm, Exit(ExitReason.VMCALL, insn_len=3))
    assert vm.regs.rax == (-22) & 0xFFFFFFFFFFFFFFFF


def test_sched_op_shutdown_poweroff_stops_cleanly():
    from pyvmm.pv.hypercall import Hypercalls
    vm = fake_vm(hypercalls=Hypercalls(0x1), read_linear=lambda a, n: b"\0\0\0\0")
    vm.regs.rax, vm.regs.rdi, vm.regs.rsi = 29, 2, 0x2000
    res = handle_exit(vm, Exit(ExitReason.VMCALL, insn_len=3))
    assert isinstance(res, Shutdown) and res.status == 0


def test_invlpg_flushes_the_address():
    vm = fake_vm()
    handle_exit(vm, Exit(ExitReason.INVLPG, 0x7000, insn_len=3, gla=0x7000))
    assert vm.cpu.tlb_flushes == [0x7000] and vm.tlb.flushes == 1


def test_rdtsc_splits_the_counter():
    vm = fake_vm(guest_tsc=lambda: 0x1_2345_6789)
    handle_exit(vm, Exit(ExitReason.RDTSC, insn_len=2))
    assert (vm.regs.rdx, vm.regs.rax) == (1, 0x2345_6789)


@pytest.mark.parametrize("reason", [ExitReason.EXTERNAL_INTERRUPT, ExitReason.INTERRUPT_WINDOW,
                                    ExitReason.PREEMPTION_TIMER])
def test_asynchronous_exits_resume_without_advancing(reason):
    res = handle_exit(fake_vm(), Exit(reason, rip=0x1000))
    assert not isinstance(res, Shutdown) and not res.advance


def test_triple_fault_stops_the_vm():
    res = handle_exit(fake_vm(), Exit(ExitReason.TRIPLE_FAULT))
    assert isinstance(res, Shutdown) and res.status == 1 and "triple fault" in res.reason


def test_wbinvd_completes():
    assert handle_exit(fake_vm(), Exit(ExitReason.WBINVD, insn_len=2)).advance


def test_fault_notes_are_readable_when_tracing():
    vm = fake_vm(tracing=True)
    vm.regs.rcx = 0x4B564DFF
    res = handle_exit(vm, Exit(ExitReason.RDMSR, insn_len=2))
    assert "#GP injected" in res.describe() and "0x4b564dff" in res.describe()


@pytest.mark.parametrize("code,reg,value", [(b"\x0f\x01\xf3", "rbx", 0x1234_000B), (b"\x0f\x01\xf0", "rax", 0x9)])
def test_lmsw_register_source_is_the_named_16_bit_register(code, reg, value):
    from pyvmm.cpu.decode import decode, register_operand
    from pyvmm.mm.memory import GuestMemory
    from pyvmm.mm.pagewalk import Paging
    mem = GuestMemory(2 << 20)
    mem.write(0x1000, code)
    insn = decode(mem, Paging(0x11, 0, 0, 0), 0x1000, 64)
    regs = fake_vm().regs
    regs.rax, regs.rbx = 0x5555_0001, 0
    setattr(regs, reg, value)
    assert insn.mnemonic == "lmsw" and register_operand(insn, regs) == value & 0xFFFF
