"""Every bundled guest runs to its own verdict under pyvmm.

Each guest prints "ok <check>" / "FAIL <check>: ..." lines and "<guest>: N checks
passed"; a failure ends through isa-debug-exit (status 3). These tests are the
trap model seen from inside a guest: every exit type, event delivery in 64-bit and
32-bit mode with privilege changes, the timer, the interrupt window.
"""
import re

import pytest


def checks_passed(text, guest):
    m = re.search(rf"^{guest}: (\d+) checks passed", text, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("name,minimum", [("lab", 120), ("exceptions", 100), ("exceptions32", 95),
                                          ("timer", 3)])
def test_guest_passes_all_its_checks(boot, name, minimum):
    status, reason, text, m = boot(name)
    failures = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert status == 0, f"{reason}; failures: {failures}"
    assert not failures
    assert checks_passed(text, name) >= minimum


def test_lab_sees_every_exit_type(boot):
    """With --mmu direct the guest's CR3 loads and INVLPGs exit too (with EPT they do not)."""
    from pyvmm.cpu.exits import ExitReason as R
    status, reason, text, m = boot("lab", mmu="direct",
                                   exception_bitmap=(1 << 0) | (1 << 3) | (1 << 6) | (1 << 13) | (1 << 14))
    assert status == 0, reason
    seen = set(m.vcpu.stats.count)
    for reason_ in (R.EXCEPTION_NMI, R.EXTERNAL_INTERRUPT, R.INTERRUPT_WINDOW, R.CPUID, R.HLT, R.INVLPG,
                    R.VMCALL, R.CR_ACCESS, R.IO_INSTRUCTION, R.RDMSR, R.WRMSR):
        assert reason_ in seen, f"{reason_.name} never exited"
    assert m.vcpu.irqs_injected >= 3          # HLT wake-up, the window, ring 3 spinning


def test_lab_with_rdtsc_exiting(boot):
    from pyvmm.cpu.exits import ExitReason as R
    status, reason, text, m = boot("lab", rdtsc_exiting=True)
    assert status == 0, reason
    assert m.vcpu.stats.count.get(R.RDTSC, 0) >= 2


def test_timer_counts_fifty_ticks(boot):
    status, reason, text, m = boot("timer")
    assert status == 0, reason
    assert "timer: 50 ticks" in text
    assert m.vcpu.irqs_injected >= 50


def test_spin_checksum_matches_python_model(boot):
    status, reason, text, m = boot("spin", cmdline="iters=1000")
    assert status == 0, reason
    assert "spin: checksum 0x92e38cd131685671" in text


def test_preemption_timer_exits_while_guest_spins(guest):
    from pyvmm.cpu.exits import ExitReason as R
    from pyvmm.machine import Machine, VmConfig
    m = Machine(VmConfig(kernel=guest("spin"), cmdline="iters=200000000", console=lambda b: None))
    m.vcpu.controls.preemption_timer_ns = 20_000_000
    seen = []

    def stop_after_three(vcpu, ex, res, ns):
        if ex.reason == R.PREEMPTION_TIMER:
            seen.append(ex)
            if len(seen) == 3:
                vcpu.request_stop(0, "three preemption-timer exits")
            vcpu.controls.preemption_timer_ns = 20_000_000   # re-arm, as a VMM would
    m.add_observer(stop_after_three)
    status, reason = m.run()
    assert len(seen) == 3 and reason == "three preemption-timer exits"


def test_exits_iterator_suspends_guest_in_each_exit(guest):
    from pyvmm.cpu.exits import ExitReason as R
    from pyvmm.machine import Machine, VmConfig
    out = bytearray()
    m = Machine(VmConfig(kernel=guest("hello"), console=out.extend))
    seqs = []
    for ex in m.exits():
        seqs.append(ex.seq)
        assert ex.reason == R.IO_INSTRUCTION
        if len(seqs) == 5:
            # the guest is suspended in exit #5: nothing after it has been printed yet
            assert b"Hello" not in out
    assert seqs == sorted(seqs) and len(seqs) > 50
    assert m.result[0] == 0 and b"Hello from the pyvmm hello guest!" in out
