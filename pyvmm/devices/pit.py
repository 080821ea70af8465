"""The programmable interval timer: an Intel 8254 (ports 0x40-0x43), 1.193182 MHz.

Responsibility: the three counters as the guest programs them (control words, count
writes, counter latch and read-back commands, reads of the current count), and the
rising edges of counter 0's OUT, which drive IRQ 0. References are to the Intel 8254
datasheet (order no. 231164): "Control Word Format", "Read Operations", the mode
descriptions ("Mode 0 ... Mode 5") and "Gate" (Table 3).

Time: the device never reads a clock on its own initiative. Counter values are a pure
function of the time, in input-clock ticks: tick(t) = floor(t_ns * 1193182 / 1e9).
Port accesses take the time from the ``clock`` callable given at construction;
``advance(now_ns)`` is how the VMM lets IRQ 0 edges happen and ``next_deadline_ns``
tells it when the next one is due.

Invariants:
- a counter is "armed" once its count element (CE) holds a count and counts from tick
  ``start``; before that (or in modes 1/5 before a gate trigger) reads return the
  held value and OUT is at the mode's initial level;
- the number of rising OUT edges of counter 0 is a non-decreasing function of time
  between two reprogrammings; ``advance`` delivers at most one rising edge per call
  (the PIC latches one request anyway) and adds the rest to ``missed_ticks``: lost
  timer ticks are coalesced, as VMMs do;
- the IRQ 0 line is driven to counter 0's OUT level whenever it is sampled, so
  the PIC sees the same edges as on hardware at the resolution of the samples; the
  line starts at OUT 0's power-on level and ``irq`` is first called when it changes;
- the time seen by the device never goes backwards (earlier times are clamped).

Approximations (documented, not bugs):
- after power-on (no BIOS has run) every counter is in mode 3, LSB-then-MSB access,
  with no count loaded: nothing counts and no IRQ 0 is due until the guest programs
  counter 0 (the datasheet leaves the power-on state undefined);
- a count is loaded into the CE one tick after it is written (datasheet: "on the next
  CLK pulse"); reads in that tick return the old value;
- mode 3 with an odd count: OUT is high for (N+1)/2 and low for (N-1)/2 ticks as on
  the chip, but the count read back decrements by two throughout;
- modes 1 and 5 need a gate rising edge to start. Counter 0's gate is tied high,
  so in those modes counter 0 never fires (as on a PC); counter 2's gate is bit 0 of
  port 0x61 (pyvmm.devices.sysctl);
- BCD counting is supported: counts are decoded from BCD on write, a count of 0 is
  10000, and the value read back is encoded in BCD.

Save/restore: ``save()`` records every tick-valued field relative to the tick of the
save, and ``restore`` re-bases them on the tick of the restore (its own ``clock``),
so the timer keeps its phase: the next IRQ 0 edge is as far after the restore as it
was after the save, whatever the two hosts' monotonic clocks read.
"""

from pyvmm.migrate.state import StateFields

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
COUNTER_PORTS = (0x40, 0x41, 0x42)
CONTROL_PORT = 0x43

# Control word (port 0x43), datasheet "Control Word Format".
CW_SELECT_SHIFT = 6       # SC1 SC0: counter 0/1/2, 3 = read-back command
CW_ACCESS_SHIFT = 4       # RW1 RW0: 0 = counter latch, 1 = LSB, 2 = MSB, 3 = LSB then MSB
CW_MODE_SHIFT = 1         # M2 M1 M0
CW_BCD = 0x01
ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_WORD = 0, 1, 2, 3
# Read-back command (SC = 3): bits active low.
RB_NO_COUNT = 0x20
RB_NO_STATUS = 0x10
# Status byte: OUT, NULL COUNT, then the low six bits of the control word.
STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40


def tick_at(ns):
    """The input-clock tick count at time ``ns`` (floor)."""
    return ns * PIT_HZ // NS_PER_S


def ns_at_tick(tick):
    """The earliest time in ns at which ``tick_at`` reaches ``tick``."""
    return -(-tick * NS_PER_S // PIT_HZ)


def _from_bcd(value):
    return sum(((value >> (4 * i)) & 0xF) * 10 ** i for i in range(4))


def _to_bcd(value):
    return sum(((value // 10 ** i) % 10) << (4 * i) for i in range(4))


class Counter:
    """One 8254 counter: count register, count element, OUT and GATE."""

    def __init__(self, index, gate):
        self.index = index
        self.gate = gate
        self.control = (ACCESS_WORD << CW_ACCESS_SHIFT) | (3 << CW_MODE_SHIFT)
        self.mode = 3
        self.initial = None      # the count register (CR), None until written
        self.reload = 0          # the count the CE is cycling with
        self.prev_reload = None  # modes 2/3: the old count, until the deferred reload
        self.edge_at_start = False
        self.armed = False
        self.start = 0           # tick at which the CE (re)started from ``reload``
        self.paused_d = None     # frozen progress while the gate inhibits counting
        self.held = 0            # value read back while not armed
        self.null_count = False
        self.write_low = None    # LSB written, waiting for the MSB (word access)
        self.read_msb_next = False
        self.latched = []        # latched count bytes still to be read
        self.status = None       # latched status byte

    @property
    def access(self):
        return (self.control >> CW_ACCESS_SHIFT) & 3

    @property
    def bcd(self):
        return bool(self.control & CW_BCD)

    @property
    def modulus(self):
        return 10000 if self.bcd else 0x10000


    # --- save / restore ------------------------------------------------------
    _PLAIN = ("control", "mode", "initial", "reload", "prev_reload", "edge_at_start", "armed",
              "paused_d", "held", "null_count", "write_low", "read_msb_next", "status")

    def save(self, t):
        """Plain values; ``start`` is relative to tick ``t``."""
        state = {name: getattr(self, name) for name in self._PLAIN}
        state.update(gate=self.gate, start=self.start - t, latched=list(self.latched))
        return state

    def checked_state(self, state, t, name):
        """Attribute values for ``state`` restored at tick ``t``; MigrationStreamError if bad."""
        f = StateFields(state, name)
        v = {"gate": f.uint("gate", 2), "control": f.uint("control", 0x40)}
        mode = (v["control"] >> CW_MODE_SHIFT) & 7
        v["mode"] = f.choice("mode", (mode - 4 if mode >= 6 else mode,))
        modulus = 10000 if v["control"] & CW_BCD else 0x10000
        v["initial"] = f.optional_uint("initial", modulus + 1)
        v["reload"] = f.uint("reload", modulus + 1)
        v["prev_reload"] = f.optional_uint("prev_reload", modulus + 1)
        v["armed"] = f.flag("armed")
        if v["initial"] == 0 or v["prev_reload"] == 0 or (v["armed"] and not v["reload"]):
            f.fail("reload", "a count of 0 is stored as the maximum count")
        v["edge_at_start"] = f.flag("edge_at_start")
        v["start"] = t + f.integer("start", -(1 << 62), 1 << 62)
        v["paused_d"] = f.optional_uint("paused_d", 1 << 62)
        v["held"] = f.uint("held", 0x10000)
        v["null_count"] = f.flag("null_count")
        v["write_low"] = f.optional_uint("write_low", 0x100)
        v["read_msb_next"] = f.flag("read_msb_next")
        v["latched"] = f.uint_list("latched", 0x100, 2)
        v["status"] = f.optional_uint("status", 0x100)
        f.done()
        return v

    # --- pure functions of time ------------------------------------------------
    def _phase(self, t):
        """(N, d): the count the CE cycles with and the ticks done, or None if idle."""
        if not self.armed:
            return None
        d = self.paused_d if self.paused_d is not None else t - self.start
        if d >= 0:
            return self.reload, d
        if self.prev_reload is not None:
            return self.prev_reload, d + self.prev_reload
        return None  # loaded on the next CLK

    def value(self, t):
        """The count element at tick ``t``, as the guest would read it (binary)."""
        phase = self._phase(t)
        if phase is None:
            return self.held
        n, d = phase
        if self.mode == 2:
            v = n - d % n
        elif self.mode == 3:
            v = n - (2 * d) % n
        else:  # modes 0, 1, 4, 5 count down and wrap around
            v = n - d
        return v % self.modulus

    def out(self, t):
        """The OUT pin at tick ``t`` (1 high, 0 low)."""
        phase = self._phase(t)
        if phase is None:
            # Initial level after a control word: low in mode 0, high otherwise (also
            # modes 2/3 stopped by a low gate, which forces OUT high at once).
            return 0 if self.mode == 0 else 1
        n, d = phase
        if self.mode in (0, 1):
            return int(d >= n)
        if self.mode == 2:
            return int(d % n != n - 1)
        if self.mode == 3:
            return int(d % n < (n + 1) // 2)
        return int(d != n)  # modes 4, 5: low for one tick at terminal count

    def edges(self, t):
        """Rising OUT edges since the CE was last (re)started, up to tick ``t``."""
        if not self.armed:
            return 0
        d = self.paused_d if self.paused_d is not None else t - self.start
        if d < 0:
            return 0
        if self.mode in (2, 3):
            return d // self.reload + self.edge_at_start
        return int(d >= self._one_shot_edge())

    def next_edge(self, t):
        """The first tick after ``t`` with a rising OUT edge, or None."""
        if not self.armed or self.paused_d is not None:
            return None
        n = self.reload
        d = t - self.start
        if self.mode in (2, 3):
            if d < 0:
                return self.start if self.edge_at_start else self.start + n
            return self.start + (d // n + 1) * n
        edge = self.start + self._one_shot_edge()
        return edge if edge > t else None

    def _one_shot_edge(self):
        # Modes 0/1: OUT rises at terminal count; modes 4/5: one tick after it.
        return self.reload + (1 if self.mode in (4, 5) else 0)

    def null_count_at(self, t):
        return self.null_count and (not self.armed or t < self.start)

    # --- state changes -------------------------------------------------------
    def _disarm(self, t):
        self.held = self.value(t)
        self.armed = False
        self.paused_d = None
        self.prev_reload = None
        self.edge_at_start = False

    def _restart(self, t):
        """Load the CR into the CE on the next CLK and count from there."""
        self.armed = True
        self.reload = self.initial
        self.prev_reload = None
        self.edge_at_start = False
        self.start = t + 1
        self.paused_d = None
        if not self.gate and self.mode in (0, 4):
            self.paused_d = 0

    def write_control(self, t, control):
        self._disarm(t)
        mode = (control >> CW_MODE_SHIFT) & 7
        self.mode = mode - 4 if mode >= 6 else mode  # 6 and 7 are modes 2 and 3
        self.control = control & 0x3F
        self.initial = None
        self.null_count = True
        self.write_low = None
        self.read_msb_next = False

    def write_count_byte(self, t, value):
        access = self.access
        if access == ACCESS_WORD and self.write_low is None:
            self.write_low = value
            if self.mode == 0:
                self._disarm(t)  # mode 0: writing the first byte stops counting
            return
        if access == ACCESS_WORD:
            raw = self.write_low | (value << 8)
            self.write_low = None
        elif access == ACCESS_LSB:
            raw = value
        else:
            raw = value << 8
        if self.bcd:
            raw = _from_bcd(raw)
        self.initial = raw or self.modulus  # a count of 0 is the maximum count
        self.null_count = True
        self._load(t)

    def _load(self, t):
        mode = self.mode
        if mode in (1, 5):
            return  # the new count waits for the next gate trigger
        if mode in (2, 3) and self.armed and self.paused_d is None:
            # A new count during counting is loaded at the end of the current cycle.
            d = t - self.start
            if d >= 0:
                self.prev_reload = self.reload
                self.start += (d // self.reload + 1) * self.reload
                self.edge_at_start = True
            self.reload = self.initial
            return
        if mode in (2, 3) and not self.gate:
            self._disarm(t)  # loaded but stopped until a gate rising edge
            return
        self._restart(t)

    def set_gate(self, t, level):
        level = int(bool(level))
        if level == self.gate:
            return
        self.gate = level
        mode = self.mode
        if level:
            if mode in (1, 2, 3, 5):
                if self.initial is not None:
                    self._restart(t)  # trigger: reload the count
            elif self.armed and self.paused_d is not None:
                self.start = t + 1 - self.paused_d  # modes 0/4: resumes on the next CLK
                self.paused_d = None
        elif self.armed and mode in (2, 3):
            self._disarm(t)  # stopped, OUT high; the next rising edge reloads
        elif self.armed and mode in (0, 4) and self.paused_d is None:
            self.paused_d = t - self.start  # counting inhibited, the count is held

    def latch_count(self, t):
        if self.latched:
            return  # a second latch before the first is read is ignored
        value = self.value(t)
        if self.bcd:
            value = _to_bcd(value)
        access = self.access
        if access == ACCESS_LSB:
            self.latched = [value & 0xFF]
        elif access == ACCESS_MSB:
            self.latched = [value >> 8]
        else:
            self.latched = [value & 0xFF, value >> 8]

    def latch_status(self, t):
        if self.status is None:
            self.status = ((STATUS_OUT if self.out(t) else 0)
                           | (STATUS_NULL_COUNT if self.null_count_at(t) else 0)
                           | self.control)

    def read_byte(self, t):
        if self.status is not None:
            status, self.status = self.status, None
            return status
        if self.latched:
            return self.latched.pop(0)
        value = self.value(t)
        if self.bcd:
            value = _to_bcd(value)
        access = self.access
        if access == ACCESS_WORD:
            msb = self.read_msb_next
            self.read_msb_next = not msb
            return value >> 8 if msb else value & 0xFF
        return value >> 8 if access == ACCESS_MSB else value & 0xFF


class I8254:
    """The PIT as the I/O bus and the VMM see it.

    ``clock()`` returns the current time in ns (``time.monotonic_ns`` in real use);
    ``irq(level)`` drives IRQ 0 (e.g. ``IrqLine(pic, 0)``).
    """

    name = "i8254 PIT"
    ports = (0x40, 0x41, 0x42, 0x43)

    def __init__(self, clock, irq=None):
        self.clock = clock
        self.irq = irq
        self.counters = [Counter(0, 1), Counter(1, 1), Counter(2, 0)]
        self.missed_ticks = 0  # counter 0 periods coalesced into another edge
        self.irq_edges = 0     # rising edges delivered on IRQ 0
        self._tick = 0
        self._edges_seen = 0
        # IRQ 0 is at OUT 0's power-on level (high, mode 3); the PIC hears of the
        # line at its first change, so there is no phantom request at power-on.
        self._line = self.counters[0].out(0)

    # --- VMM side -----------------------------------------------------------
    def advance(self, now_ns):
        """Let time pass until ``now_ns``: deliver a due IRQ 0 edge, sample OUT 0."""
        self._catch_up(self._now(now_ns))

    def next_deadline_ns(self, now_ns):
        """When the next IRQ 0 rising edge is due (``now_ns`` if one already is)."""
        t = self._now(now_ns)
        counter0 = self.counters[0]
        if counter0.edges(t) > self._edges_seen:
            return now_ns
        edge = counter0.next_edge(t)
        return None if edge is None else max(now_ns, ns_at_tick(edge))


    # --- save / restore ---------------------------------------------------------
    def save(self):
        """The three counters and the IRQ 0 bookkeeping, timed relative to now."""
        t = self._now()
        return {"counters": [c.save(t) for c in self.counters], "missed_ticks": self.missed_ticks,
                "irq_edges": self.irq_edges, "edges_seen": self._edges_seen, "line": self._line}

    def restore(self, state):
        """Take the state ``save`` gave, re-based on this PIT's clock now; checked in full
        before anything changes. IRQ 0 is not driven: the PIC's saved state already
        holds the line level ``line`` records."""
        t = self._now()
        f = StateFields(state, self.name)
        saved = f.items("counters", 3)
        if len(saved) != 3:
            f.fail("counters", f"{len(saved)} counters, the 8254 has 3")
        counters = [c.checked_state(s, t, f"{self.name} counter {c.index}")
                    for c, s in zip(self.counters, saved)]
        values = {"missed_ticks": f.uint("missed_ticks", 1 << 64),
                  "irq_edges": f.uint("irq_edges", 1 << 64),
                  "_edges_seen": f.uint("edges_seen", 1 << 64), "_line": f.uint("line", 2)}
        f.done()
        for counter, attrs in zip(self.counters, counters):
            for name, value in attrs.items():
                setattr(counter, name, value)
        for name, value in values.items():
            setattr(self, name, value)

    # --- counter 2 wiring (port 0x61) --------------------------------------
    def set_gate(self, index, level):
        t = self._now()
        self._mutate(index, t, lambda counter: counter.set_gate(t, level))

    def gate(self, index):
        return self.counters[index].gate

    def output(self, index):
        """The OUT pin of counter ``index`` now."""
        return self.counters[index].out(self._now())

    # --- guest side ---------------------------------------------------------
    def io_read(self, port, size):
        if port == CONTROL_PORT:
            return 0  # the control word register cannot be read
        return self.counters[port - COUNTER_PORTS[0]].read_byte(self._now())

    def io_write(self, port, size, value):
        t = self._now()
        if port != CONTROL_PORT:
            index = port - COUNTER_PORTS[0]
            self._mutate(index, t, lambda counter: counter.write_count_byte(t, value))
            return
        select = value >> CW_SELECT_SHIFT
        if select == 3:
            self._read_back(t, value)
        elif (value >> CW_ACCESS_SHIFT) & 3 == ACCESS_LATCH:
            self.counters[select].latch_count(t)
        else:
            self._mutate(select, t, lambda counter: counter.write_control(t, value))

    def _read_back(self, t, command):
        for index, counter in enumerate(self.counters):
            if command & (2 << index):
                if not command & RB_NO_COUNT:
                    counter.latch_count(t)
                if not command & RB_NO_STATUS:
                    counter.latch_status(t)

    # --- internals -----------------------------------------------------------
    def _now(self, now_ns=None):
        t = tick_at(self.clock() if now_ns is None else now_ns)
        if t > self._tick:
            self._tick = t
        return self._tick

    def _mutate(self, index, t, change):
        """Apply ``change`` to a counter; for counter 0, settle IRQ 0 around it."""
        if index != 0:
            change(self.counters[index])
            return
        self._catch_up(t)
        change(self.counters[0])
        self._edges_seen = self.counters[0].edges(t)
        self._drive(self.counters[0].out(t))

    def _catch_up(self, t):
        counter0 = self.counters[0]
        edges = counter0.edges(t) - self._edges_seen
        if edges > 0:
            self._edges_seen += edges
            self.irq_edges += 1
            self.missed_ticks += edges - 1
            if self._line:
                self._drive(0)
            self._drive(1)
        self._drive(counter0.out(t))

    def _drive(self, level):
        if level != self._line:
            self._line = level
            if self.irq is not None:
                self.irq(level)
