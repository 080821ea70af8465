"""i8254 + port 0x61 save/restore: the restored timer keeps its phase relative to the
restore time (whatever the new host's monotonic clock reads), its latches and its
half-written counts; bad states are refused with the field named."""

import pytest

from pyvmm.devices.sysctl import SystemControlB
from tests.devices.conftest import Pc
from tests.devices.statecheck import DELETE, refused_unchanged, through_stream, with_field
from tests.devices.test_pit import MS, program, run_until

TICK_NS = 839          # one input-clock tick of 1.193182 MHz, rounded up


def _restored_copy(pc, origin_ns):
    """A second PC whose clock reads ``origin_ns``, restored from ``pc``'s saved state."""
    other = Pc()
    other.clock.ns = origin_ns
    for name in ("pic", "pit", "port_b"):
        getattr(other, name).restore(through_stream(getattr(pc, name).save()))
    return other


def _timeline(pc, start, steps):
    """(IRQ 0 vectors, counter 0 value, counter 2 OUT, ns to the next IRQ 0) after each
    of ``steps`` intervals of 3.3 ms from ``start``."""
    seen = []
    for i in range(1, steps + 1):
        vectors = run_until(pc, start + i * 3_300_000)
        pc.outb(0x43, 0x00)                       # latch counter 0
        count = pc.inb(0x40) | pc.inb(0x40) << 8
        seen.append((vectors, count, pc.inb(0x61) & 0x20, pc.pit.next_deadline_ns(pc.clock.ns) - pc.clock.ns))
    return seen


def _same_within_a_tick(restored, original):
    """The restored timeline is the original's, up to where the restore time falls inside
    one input-clock tick (838 ns): counts may read one lower or higher."""
    assert len(restored) == len(original)
    for (vec_r, count_r, out_r, due_r), (vec_o, count_o, out_o, due_o) in zip(restored, original):
        assert vec_r == vec_o and out_r == out_o
        assert abs(count_r - count_o) <= 1
        assert abs(due_r - due_o) <= TICK_NS


@pytest.mark.parametrize("origin", [5 * 10**9, 10**6, 7_777_777_777_777])
def test_timer_phase_continues_from_the_restore_time(pc, origin):
    pc.init_pic(0x20, 0x28)
    pc.unmask(master=0xFE, slave=0xFF)
    program(pc, 0, 0x34, 11932)                   # 100 Hz, mode 2
    pc.outb(0x61, 0x01)                           # gate counter 2
    program(pc, 2, 0xB6, 1193)                    # counter 2: ~1 kHz square wave
    run_until(pc, pc.clock.ns + 23 * MS + 417)    # part-way through a period
    other = _restored_copy(pc, origin)
    assert abs((other.pit.next_deadline_ns(origin) - origin)
               - (pc.pit.next_deadline_ns(pc.clock.ns) - pc.clock.ns)) <= TICK_NS
    _same_within_a_tick(_timeline(other, origin, 12), _timeline(pc, pc.clock.ns, 12))
    assert other.pit.irq_edges == pc.pit.irq_edges


def test_latches_and_half_written_counts_survive(pc):
    program(pc, 0, 0x30, 50000)                   # mode 0 one-shot
    pc.clock.advance(2 * MS)
    pc.outb(0x43, 0xC2)                           # read-back: latch count and status of counter 0
    pc.outb(0x43, 0xB0)                           # counter 2, lohi, mode 0 ...
    pc.outb(0x42, 0x34)                           # ... only the LSB written so far
    other = _restored_copy(pc, 42 * 10**9)
    for p in (pc, other):
        p.clock.advance(MS)
        p.outb(0x42, 0x12)                        # the MSB completes 0x1234
    reads = [[p.inb(0x40), p.inb(0x40), p.inb(0x40)] for p in (pc, other)]
    assert reads[0] == reads[1]
    assert other.pit.counters[2].initial == 0x1234


def test_a_missed_tick_backlog_is_kept(pc):
    pc.init_pic(0x20, 0x28)
    pc.unmask(master=0xFE, slave=0xFF)
    program(pc, 0, 0x34, 1193)                    # 1 kHz
    pc.clock.advance(10 * MS)
    pc.pit.advance(pc.clock.ns)                   # 10 periods: one edge, 9 coalesced
    other = _restored_copy(pc, 3 * 10**9)
    assert other.pit.missed_ticks == pc.pit.missed_ticks == 9
    assert other.pic.pending_vector() == pc.pic.pending_vector() == 0x20


def test_port_b_toggle_and_bits_survive(pc):
    pc.outb(0x61, 0x03)
    pc.inb(0x61)
    other = _restored_copy(pc, 10**9)
    assert [other.inb(0x61) for _ in range(3)] == [pc.inb(0x61) for _ in range(3)]


def _programmed(pc):
    program(pc, 0, 0x34, 11932)
    pc.clock.advance(MS)
    return pc.pit.save()


@pytest.mark.parametrize("path, value, match", [
    (("counters", 0, "reload"), 0, r"counter 0 state field 'reload': a count of 0"),
    (("counters", 0, "mode"), 3, r"counter 0 state field 'mode': 3 is not one of \[2\]"),
    (("counters", 1, "latched"), [1, 2, 3], r"counter 1 state field 'latched': 3 items"),
    (("counters", 2, "latched"), [256], r"'latched\[0\]': 256 is outside 0..255"),
    (("counters", 0, "initial"), 0x10001, r"'initial': 65537 is outside"),
    (("counters", 0, "start"), 1 << 63, r"'start': \d+ is outside"),
    (("counters", 2, "gate"), DELETE, r"counter 2 state field 'gate': missing"),
    (("counters",), [], r"'counters': 0 counters, the 8254 has 3"),
    (("line",), 2, r"i8254 PIT state field 'line': 2 is outside 0..1"),
])
def test_bad_state_is_refused_and_nothing_changes(pc, path, value, match):
    state = with_field(_programmed(pc), path, value)
    refused_unchanged(Pc().pit, state, match)


def test_port_b_bad_state_is_refused(pc):
    refused_unchanged(SystemControlB(pc.pit), {"value": 0x10, "refresh": 0}, r"'value': 16 is outside")
    refused_unchanged(SystemControlB(pc.pit), {"value": 1, "refresh": 1}, r"'refresh': 1 is not one of")
