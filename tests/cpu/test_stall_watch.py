"""The run loop's watch for engine runs that make no progress (vcpu._run_engine).

Under host load the CPU engine was seen returning at once, at the same RIP, on every
entry (the Linux boot hung about 1 run in 8); dropping its translated code let the
guest go on. These tests drive the policy with a fake engine: no guest needed.
"""
from types import SimpleNamespace

from pyvmm.cpu import vcpu as vcpu_mod
from pyvmm.cpu.vcpu import STALL_FLUSH_AFTER, STALL_STOP_AFTER, Vcpu


class FakeEngine:
    def __init__(self, vcpu, progress):
        self.vcpu, self.progress, self.kicks, self.flushes = vcpu, progress, 0, 0

    def run(self):
        step = self.progress(self)
        if step == "rip":
            self.vcpu.regs.rip += 2
        elif step == "exit":
            self.vcpu._v.nexits += 1
        elif step == "kick":
            self.kicks += 1

    def flush_translations(self):
        self.flushes += 1


def fake_vcpu(progress):
    stops = []
    v = SimpleNamespace(regs=SimpleNamespace(rip=0x1000), _v=SimpleNamespace(nexits=0), halted=False,
                        stopped=False, _stalls=0, stall_flushes=0,
                        request_stop=lambda status, reason: stops.append((status, reason)))
    v.engine = FakeEngine(v, progress)
    return v, stops


def test_runs_that_progress_never_flush():
    for step in ("rip", "exit", "kick"):
        v, stops = fake_vcpu(lambda e, s=step: s)
        for _ in range(50):
            Vcpu._run_engine(v)
        assert v.engine.flushes == 0 and v._stalls == 0 and not stops


def test_a_stalled_engine_gets_its_translated_code_dropped_and_then_goes_on():
    runs = []

    def progress(engine):
        runs.append(1)
        return "rip" if engine.flushes else None       # stuck until the code is retranslated
    v, stops = fake_vcpu(progress)
    for _ in range(STALL_FLUSH_AFTER + 5):
        Vcpu._run_engine(v)
    assert v.engine.flushes == 1 and v.stall_flushes == 1 and v._stalls == 0 and not stops
    assert v.regs.rip == 0x1000 + 2 * 5


def test_an_engine_that_never_progresses_stops_the_vm_with_the_reason():
    v, stops = fake_vcpu(lambda e: None)
    for _ in range(STALL_STOP_AFTER):
        Vcpu._run_engine(v)
    assert v.engine.flushes == STALL_STOP_AFTER // STALL_FLUSH_AFTER
    assert stops and stops[0][0] == 1 and "no progress at RIP 0x1000" in stops[0][1]


def test_halted_or_stopped_vcpus_are_not_stalls():
    v, stops = fake_vcpu(lambda e: None)
    v.halted = True
    for _ in range(10):
        Vcpu._run_engine(v)
    assert v.engine.flushes == 0 and not stops
    assert vcpu_mod.STALL_FLUSH_AFTER < vcpu_mod.STALL_STOP_AFTER
