"""i8254 PIT driven through ports 0x40-0x43 and 0x61 with a fake clock."""

from pyvmm.devices.pit import I8254, PIT_HZ, ns_at_tick, tick_at

MS = 1_000_000
S = 1_000_000_000


class EdgeCounter:
    def __init__(self):
        self.level = 0
        self.rising = 0
        self.calls = []

    def __call__(self, level):
        self.calls.append(level)
        if level and not self.level:
            self.rising += 1
        self.level = level


def program(pc, counter, control, count, access="word"):
    pc.outb(0x43, control)
    if access in ("word", "lsb"):
        pc.outb(0x40 + counter, count & 0xFF)
    if access in ("word", "msb"):
        pc.outb(0x40 + counter, (count >> 8) & 0xFF)


def run_until(pc, end_ns, on_edge=None):
    """A VMM loop: sleep to each deadline, advance, take and EOI interrupts."""
    vectors = []
    while True:
        deadline = pc.pit.next_deadline_ns(pc.clock.ns)
        if deadline is None or deadline > end_ns:
            pc.clock.ns = end_ns
            pc.pit.advance(end_ns)
            break
        pc.clock.ns = deadline
        pc.pit.advance(deadline)
        while pc.pic.has_pending():
            vectors.append(pc.pic.acknowledge())
            pc.eoi(0)
    return vectors


def test_tick_conversion_round_trips():
    for tick in (0, 1, 11932, PIT_HZ, 10**12 + 7):
        assert tick_at(ns_at_tick(tick)) == tick
        assert tick_at(ns_at_tick(tick) - 1) == tick - 1 or tick == 0


def test_idle_until_programmed(pc):
    assert pc.pit.next_deadline_ns(pc.clock.ns) is None


def test_mode2_100hz_delivers_100_irq0_edges_per_second_as_vector_0x20(pc):
    pc.init_pic(0x20, 0x28)
    pc.unmask(master=0xFE, slave=0xFF)
    program(pc, 0, 0x34, 11932)                 # Linux: counter 0, lohi, mode 2
    start = pc.clock.ns
    vectors = run_until(pc, start + S)
    assert vectors == [0x20] * len(vectors)
    assert 99 <= len(vectors) <= 100
    assert pc.pit.irq_edges == len(vectors)
    assert pc.pit.missed_ticks == 0
    # The period is 11932 ticks: the next deadline is exactly one period on.
    first = pc.pit.next_deadline_ns(pc.clock.ns)
    pc.clock.ns = first
    pc.pit.advance(first)
    second = pc.pit.next_deadline_ns(first)
    assert tick_at(second) - tick_at(first) == 11932


def test_many_periods_at_once_are_coalesced_into_one_edge(pc):
    edges = EdgeCounter()
    pit = I8254(pc.clock, irq=edges)
    pc.bus = None
    pit.io_write(0x43, 1, 0x34)
    pit.io_write(0x40, 1, 11932 & 0xFF)
    pit.io_write(0x40, 1, 11932 >> 8)
    pit.advance(pc.clock.ns + S)
    assert edges.rising == 1
    assert pit.missed_ticks == 98 or pit.missed_ticks == 99
    assert pit.next_deadline_ns(pc.clock.ns + S) > pc.clock.ns + S


def test_deadline_is_now_when_an_edge_is_overdue(pc):
    program(pc, 0, 0x34, 1000)
    late = pc.clock.ns + 10 * MS
    assert pc.pit.next_deadline_ns(late) == late


def test_mode3_square_wave_edges_and_output_level(pc):
    edges = EdgeCounter()
    pit = I8254(pc.clock, irq=edges)
    pit.io_write(0x43, 1, 0x36)        # counter 0, lohi, mode 3
    pit.io_write(0x40, 1, 0x00)
    pit.io_write(0x40, 1, 0x00)        # 0 = 65536: 18.2 Hz
    t = pc.clock.ns
    for _ in range(50):
        t = pit.next_deadline_ns(t)
        pit.advance(t)
        # Half a period later OUT is low, then the next edge raises it again.
        pit.advance(t + ns_at_tick(40000) - ns_at_tick(0))
    assert edges.rising == 50
    assert edges.calls[:4] == [0, 1, 0, 1]  # OUT starts high


def test_mode0_one_shot_fires_once(pc):
    edges = EdgeCounter()
    pit = I8254(pc.clock, irq=edges)
    pit.io_write(0x43, 1, 0x30)        # counter 0, lohi, mode 0
    pit.io_write(0x40, 1, 0xE8)
    pit.io_write(0x40, 1, 0x03)        # 1000 ticks
    assert edges.level == 0            # OUT low while counting
    deadline = pit.next_deadline_ns(pc.clock.ns)
    assert tick_at(deadline) - tick_at(pc.clock.ns) == 1001  # loaded on the next CLK
    pit.advance(deadline - 1)
    assert edges.rising == 0
    pit.advance(deadline)
    assert edges.rising == 1 and edges.level == 1
    assert pit.next_deadline_ns(deadline) is None
    pit.advance(deadline + S)
    assert edges.rising == 1
    pit.io_write(0x43, 1, 0x30)        # a control word sets OUT low again
    assert edges.level == 0


def test_mode4_oneshot_as_linux_programs_it(pc):
    pc.init_pic()
    pc.unmask()
    program(pc, 0, 0x38, 0xFFFF)       # Linux pit_set_oneshot
    # pit_next_event writes only the count: restarts the one-shot.
    pc.outb(0x40, 100 & 0xFF)
    pc.outb(0x40, 0)
    deadline = pc.pit.next_deadline_ns(pc.clock.ns)
    assert tick_at(deadline) - tick_at(pc.clock.ns) == 102
    pc.clock.ns = deadline
    pc.pit.advance(deadline)
    assert pc.pic.acknowledge() == 0x20
    assert pc.pit.next_deadline_ns(deadline) is None


def test_counter_latch_reads_a_stable_value(pc):
    program(pc, 0, 0x34, 10000)
    pc.clock.advance(ns_at_tick(1001))     # 1000 ticks after the load
    pc.outb(0x43, 0x00)                    # latch counter 0
    pc.clock.advance(ns_at_tick(500))
    value = pc.inb(0x40) | pc.inb(0x40) << 8
    assert value == 9000
    live = pc.inb(0x40) | pc.inb(0x40) << 8
    assert 8490 <= live <= 8500


def test_second_latch_before_read_is_ignored(pc):
    program(pc, 1, 0x74, 5000)
    pc.clock.advance(ns_at_tick(101))
    pc.outb(0x43, 0x40)
    pc.clock.advance(ns_at_tick(100))
    pc.outb(0x43, 0x40)
    assert pc.inb(0x41) | pc.inb(0x41) << 8 == 4900


def test_lsb_only_and_msb_only_access(pc):
    program(pc, 2, 0x90, 200, access="lsb")   # counter 2, LSB only, mode 0
    pc.outb(0x61, 0x01)                       # gate 2 high
    pc.clock.advance(ns_at_tick(51))
    assert pc.inb(0x42) == 150
    program(pc, 1, 0x60, 0x3000, access="msb")  # counter 1, MSB only, mode 0
    pc.clock.advance(ns_at_tick(0x101))
    assert pc.inb(0x41) == 0x2F


def test_read_back_status_and_count(pc):
    program(pc, 0, 0x34, 1000)
    pc.outb(0x43, 0xC2)           # read-back: count and status of counter 0
    status = pc.inb(0x40)
    assert status & 0x3F == 0x34
    assert status & 0x40          # null count: not loaded yet
    assert status & 0x80          # mode 2: OUT high
    pc.inb(0x40), pc.inb(0x40)
    pc.clock.advance(ns_at_tick(11))
    pc.outb(0x43, 0xE2)           # status only
    assert pc.inb(0x40) == 0x80 | 0x34
    pc.outb(0x43, 0xD2)           # count only
    assert pc.inb(0x40) | pc.inb(0x40) << 8 == 990


def test_count_zero_is_65536(pc):
    program(pc, 0, 0x34, 0)
    deadline = pc.pit.next_deadline_ns(pc.clock.ns)
    assert tick_at(deadline) - tick_at(pc.clock.ns) == 65537
    pc.clock.advance(ns_at_tick(2))
    assert pc.inb(0x40) | pc.inb(0x40) << 8 == 65535


def test_bcd_counting(pc):
    program(pc, 1, 0x71, 0x1000)      # counter 1, lohi, mode 0, BCD count 1000
    pc.clock.advance(ns_at_tick(3))
    assert pc.inb(0x41) | pc.inb(0x41) << 8 == 0x0998


def test_mode2_new_count_is_loaded_at_the_end_of_the_period(pc):
    edges = EdgeCounter()
    pit = I8254(pc.clock, irq=edges)
    pit.io_write(0x43, 1, 0x34)
    pit.io_write(0x40, 1, 1000 & 0xFF)
    pit.io_write(0x40, 1, 1000 >> 8)
    t0 = tick_at(pc.clock.ns)
    pc.clock.ns = ns_at_tick(t0 + 301)
    pit.io_write(0x40, 1, 500 & 0xFF)
    pit.io_write(0x40, 1, 500 >> 8)
    assert tick_at(pit.next_deadline_ns(pc.clock.ns)) == t0 + 1001
    assert pit.io_read(0x40, 1) | pit.io_read(0x40, 1) << 8 == 700
    pit.advance(ns_at_tick(t0 + 1001))
    assert tick_at(pit.next_deadline_ns(pc.clock.ns)) == t0 + 1501
    assert edges.rising == 1


def test_linux_pit_calibration_polls_out2_on_port_61(pc):
    # arch/x86/kernel/tsc.c pit_calibrate_tsc: gate high, speaker off, mode 0.
    pc.outb(0x61, (pc.inb(0x61) & ~0x02) | 0x01)
    pc.outb(0x43, 0xB0)
    latch = PIT_HZ // 20                      # 50 ms
    pc.outb(0x42, latch & 0xFF)
    pc.outb(0x42, latch >> 8)
    assert not pc.inb(0x61) & 0x20
    polls = 0
    while not pc.inb(0x61) & 0x20:
        pc.clock.advance(MS)
        polls += 1
    assert 49 <= polls <= 51


def test_gate_low_holds_counter2_and_port_61_bits(pc):
    program(pc, 2, 0xB0, 1000)                # gate 2 is low after reset
    pc.clock.advance(ns_at_tick(500))
    assert pc.inb(0x42) | pc.inb(0x42) << 8 == 1000
    pc.outb(0x61, 0x03)                       # counting starts on the next CLK
    pc.clock.advance(ns_at_tick(100))
    assert pc.inb(0x42) | pc.inb(0x42) << 8 == 901
    pc.outb(0x61, 0x02)                       # pause
    pc.clock.advance(ns_at_tick(5000))
    assert pc.inb(0x42) | pc.inb(0x42) << 8 == 901
    assert pc.inb(0x61) & 0x0F == 0x02


def test_port_61_refresh_bit_toggles_on_every_read(pc):
    reads = [pc.inb(0x61) & 0x10 for _ in range(4)]
    assert reads[0] != reads[1] and reads[1] != reads[2] and reads[0] == reads[2]
    assert pc.inb(0x61) & 0xC0 == 0


def test_mode1_triggered_by_gate_on_counter2(pc):
    program(pc, 2, 0xB2, 100)                  # counter 2, lohi, mode 1
    assert pc.inb(0x61) & 0x20                 # OUT high until triggered
    pc.outb(0x61, 0x01)                        # gate rising edge: trigger
    pc.clock.advance(ns_at_tick(50))
    assert not pc.inb(0x61) & 0x20
    pc.clock.advance(ns_at_tick(60))
    assert pc.inb(0x61) & 0x20


def test_modes_1_and_5_never_fire_on_counter0(pc):
    program(pc, 0, 0x32, 100)
    assert pc.pit.next_deadline_ns(pc.clock.ns) is None
    program(pc, 0, 0x3A, 100)
    assert pc.pit.next_deadline_ns(pc.clock.ns) is None


def test_time_never_goes_backwards(pc):
    program(pc, 0, 0x34, 1000)
    pc.pit.advance(pc.clock.ns + 10 * MS)
    edges = pc.pit.irq_edges
    pc.pit.advance(pc.clock.ns)       # an older time changes nothing
    assert pc.pit.irq_edges == edges


def test_masked_irq0_ticks_collapse_into_one_pending_request(pc):
    pc.init_pic()
    pc.unmask(master=0x01)
    program(pc, 0, 0x34, 11932)
    assert run_until(pc, pc.clock.ns + S // 10) == []
    assert pc.pit.irq_edges >= 9
    pc.unmask(master=0x00)
    assert pc.pic.acknowledge() == 0x20
    assert not pc.pic.has_pending()
