"""The PC's interrupt controller: a master/slave pair of Intel 8259A PICs.

Responsibility: latch interrupt requests from devices (IRQ 0..15), resolve priority
against the mask and the in-service registers, and hand the CPU side the vector of the
next interrupt (the INTA cycle). Guest programming goes through ports 0x20/0x21
(master) and 0xA0/0xA1 (slave); the slave's INT output is wired to master IR2.
References are to the Intel 8259A datasheet (order no. 231468).

Invariants:
- IRR, ISR and IMR are 8-bit masks per chip; an IRR bit is set by a 0->1 edge of the
  line in edge mode (and stays latched until the INTA cycle, as QEMU models it, even
  if the line falls), and follows the line level in level mode (ICW1.LTIM);
- the slave's INT output is recomputed after every change and drives master IR2 like
  any other line, so the cascade obeys the same edge/level rules;
- a request is "pending" only if it is unmasked and of strictly higher priority than
  every in-service level (except in special mask mode, and the master's cascade
  level in special fully nested mode);
- ``acknowledge`` with nothing to deliver returns the spurious vector (base + 7) and
  sets no ISR bit on that chip; a spurious IRQ 15 still sets master ISR bit 2, as the
  master has acknowledged its IR2 (datasheet, "Interrupt Sequence": default IR7).

Save/restore: ``PicPair.save()`` gives both chips' registers, command-sequence
position and input levels as plain values; ``restore`` checks every field before it
changes anything, so the same requests are pending afterwards.

Not modelled: MCS-80/85 mode (ICW4.uPM = 0 is accepted and behaves as 8086 mode),
buffered mode (ICW4.BUF, M/S) and the ICW3 wiring (the slave is always on IR2 and
always answers the master's IR2 acknowledge); ELCR (port 0x4D0/0x4D1) is not present.
"""

from pyvmm.errors import ConfigError
from pyvmm.migrate.state import StateFields

CASCADE_LINE = 2  # master IR2 carries the slave's INT (PC/AT wiring)

# ICW1 (write to the even port with D4 = 1), datasheet Figure 7.
ICW1_IC4 = 0x01    # ICW4 needed
ICW1_SNGL = 0x02   # single mode: no ICW3
ICW1_LTIM = 0x08   # level triggered mode
ICW1_SELECT = 0x10
# ICW4
ICW4_AEOI = 0x02   # automatic end of interrupt
ICW4_SFNM = 0x10   # special fully nested mode
# OCW3 (even port, D4 = 0, D3 = 1)
OCW3_SELECT = 0x08
OCW3_RR = 0x02     # read register command (with RIS: 0 IRR, 1 ISR)
OCW3_RIS = 0x01
OCW3_POLL = 0x04
OCW3_ESMM = 0x40   # enable special mask mode change (with SMM)
OCW3_SMM = 0x20


class I8259:
    """One 8259A chip. ``master`` selects the cascade behaviour (SFNM applies to it)."""

    def __init__(self, name, master):
        self.name = name
        self.master = master
        self.levels = 0  # current level of the eight IR inputs
        self.reset()

    def reset(self):
        """The state after ICW1 (datasheet, "Initialization Command Words")."""
        self.irr = 0             # the edge-sense latches are reset
        self.isr = 0
        self.imr = 0
        self.base = 0
        self.icw1 = 0
        self.icw3 = 0
        self.icw4 = 0
        self.init_step = 0       # 0: operational; 2/3/4: expecting that ICW
        self.ltim = False
        self.aeoi = False
        self.sfnm = False
        self.rotate_on_aeoi = False
        self.lowest = 7          # the IR level with the lowest priority (rotation)
        self.special_mask = False
        self.read_isr = False
        self.poll = False


    # --- save / restore ---------------------------------------------------
    _MASKS = ("levels", "irr", "isr", "imr", "icw1", "icw3", "icw4")
    _FLAGS = ("ltim", "aeoi", "sfnm", "rotate_on_aeoi", "special_mask", "read_isr", "poll")

    def save(self):
        state = {name: getattr(self, name) for name in self._MASKS + self._FLAGS}
        state.update(base=self.base, init_step=self.init_step, lowest=self.lowest)
        return state

    def checked_state(self, state):
        """The attribute values ``state`` stands for; MigrationStreamError if any is bad."""
        fields = StateFields(state, self.name)
        values = {name: fields.uint(name, 0x100) for name in self._MASKS}
        values.update({name: fields.flag(name) for name in self._FLAGS})
        values["base"] = fields.uint("base", 0x100)
        if values["base"] & 7:
            fields.fail("base", f"{values['base']:#x} has bits 2-0 set (ICW2 keeps T7-T3 only)")
        values["init_step"] = fields.choice("init_step", (0, 2, 3, 4))
        values["lowest"] = fields.uint("lowest", 8)
        fields.done()
        return values

    # --- lines --------------------------------------------------------------
    def set_level(self, line, level):
        """Drive IR input ``line`` (0..7) to ``level``; edges latch into IRR."""
        bit = 1 << line
        if level:
            if self.ltim or not self.levels & bit:
                self.irr |= bit
            self.levels |= bit
        else:
            self.levels &= ~bit
            if self.ltim:
                self.irr &= ~bit

    # --- priority resolution -----------------------------------------------
    def _priority_order(self):
        """IR levels from highest to lowest priority (the one after ``lowest`` first)."""
        return [(self.lowest + 1 + i) & 7 for i in range(8)]

    def _highest(self, mask):
        for line in self._priority_order():
            if mask & (1 << line):
                return line
        return None

    def best_request(self):
        """The IR level this chip would present on INTA, or None (INT low)."""
        requests = self.irr & ~self.imr
        if not requests:
            return None
        blocking = self.isr
        if self.special_mask:
            # Special mask mode: a masked in-service level does not inhibit lower ones.
            blocking &= ~self.imr
        if self.master and self.sfnm:
            # Special fully nested: the cascade level may be re-requested by the slave.
            blocking &= ~(1 << CASCADE_LINE)
        for line in self._priority_order():
            bit = 1 << line
            if blocking & bit:
                return None  # an in-service level blocks itself and all below it
            if requests & bit:
                return line
        return None

    def intack(self, line):
        """INTA for IR ``line``: IRR -> ISR (or nothing in AEOI mode)."""
        bit = 1 << line
        if not self.ltim:
            self.irr &= ~bit  # level mode: the line itself keeps the request
        if self.aeoi:
            if self.rotate_on_aeoi:
                self.lowest = line
        else:
            self.isr |= bit

    # --- guest programming ------------------------------------------------
    def read(self, odd):
        if odd:
            return self.imr
        if self.poll:
            # OCW3 poll: the read is the acknowledge; I bit 7, W2-W0 the level.
            self.poll = False
            line = self.best_request()
            if line is None:
                return 0x00
            self.intack(line)
            return 0x80 | line
        return self.isr if self.read_isr else self.irr

    def write(self, odd, value):
        if odd:
            self._write_odd(value)
        elif value & ICW1_SELECT:
            self._icw1(value)
        elif value & OCW3_SELECT:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def _icw1(self, value):
        self.reset()
        self.icw1 = value
        self.ltim = bool(value & ICW1_LTIM)
        if self.ltim:
            self.irr = self.levels
        self.init_step = 2

    def _write_odd(self, value):
        step = self.init_step
        if step == 0:
            self.imr = value  # OCW1
        elif step == 2:
            self.base = value & 0xF8  # ICW2: T7-T3 in 8086 mode
            if not self.icw1 & ICW1_SNGL:
                self.init_step = 3
            else:
                self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif step == 3:
            self.icw3 = value
            self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        else:
            self.icw4 = value
            self.aeoi = bool(value & ICW4_AEOI)
            self.sfnm = bool(value & ICW4_SFNM)
            self.init_step = 0

    def _ocw2(self, value):
        # OCW2 bits R (7), SL (6), EOI (5); L2-L0 the level (datasheet Figure 8).
        command = value >> 5
        level = value & 7
        if command in (0b001, 0b101):      # non-specific EOI (and rotate)
            line = self._highest(self.isr)
            if line is not None:
                self.isr &= ~(1 << line)
                if command == 0b101:
                    self.lowest = line
        elif command in (0b011, 0b111):    # specific EOI (and rotate)
            self.isr &= ~(1 << level)
            if command == 0b111:
                self.lowest = level
        elif command == 0b110:             # set priority: level becomes lowest
            self.lowest = level
        elif command in (0b100, 0b000):    # set / clear rotate in AEOI mode
            self.rotate_on_aeoi = command == 0b100
        # 0b010: no operation

    def _ocw3(self, value):
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        self.poll = bool(value & OCW3_POLL)


class PicPair:
    """Master and slave 8259A as wired in a PC/AT; the device the I/O bus and CPU see.

    CPU side: ``set_irq(line, level)`` from devices, ``has_pending()``,
    ``pending_vector()`` and ``acknowledge()`` (the INTA cycle) from the run loop.
    """

    name = "i8259 PIC pair"
    ports = (0x20, 0x21, 0xA0, 0xA1)

    def __init__(self):
        self.master = I8259("master 8259A", master=True)
        self.slave = I8259("slave 8259A", master=False)

    def reset(self):
        """Machine reset: both chips uninitialised (the input levels are kept)."""
        self.master.reset()
        self.slave.reset()


    # --- save / restore -----------------------------------------------------
    def save(self):
        """Both chips' state as plain values (see ``restore``)."""
        return {"master": self.master.save(), "slave": self.slave.save()}

    def restore(self, state):
        """Take the state ``save`` gave; all of it is checked before either chip changes."""
        fields = StateFields(state, self.name)
        master = self.master.checked_state(fields.raw("master"))
        slave = self.slave.checked_state(fields.raw("slave"))
        fields.done()
        for chip, values in ((self.master, master), (self.slave, slave)):
            for name, value in values.items():
                setattr(chip, name, value)

    # --- device side ----------------------------------------------------
    def set_irq(self, line, level):
        """Drive IRQ ``line`` (0..15) to ``level`` (an edge 0->1 requests it)."""
        if not 0 <= line <= 15:
            raise ConfigError(f"IRQ line {line}: the PIC pair has lines 0..15")
        if line < 8:
            if line == CASCADE_LINE and not self._single():
                raise ConfigError("IRQ 2 is the cascade from the slave PIC; a device on "
                                  "ISA IRQ 2 must be wired to IRQ 9 (PC/AT wiring)")
            self.master.set_level(line, level)
        else:
            self.slave.set_level(line - 8, level)
            self._cascade()

    # --- CPU side -------------------------------------------------------------
    def has_pending(self):
        """True when the master's INT output is asserted (an interrupt to deliver)."""
        return self.master.best_request() is not None

    def pending_vector(self):
        """The vector ``acknowledge`` would return now, or None if INT is low."""
        line = self.master.best_request()
        if line is None:
            return None
        if line == CASCADE_LINE and not self._single():
            slave_line = self.slave.best_request()
            return self.slave.base + (7 if slave_line is None else slave_line)
        return self.master.base + line

    def acknowledge(self):
        """The INTA cycle: move the winning request to in-service, return its vector.

        With nothing to deliver, this is the spurious case: vector base + 7 of the
        chip that had nothing (IRQ 7, or IRQ 15 with master IR2 in service).
        """
        master = self.master
        line = master.best_request()
        if line is None:
            return master.base + 7  # spurious IRQ 7: no ISR bit set
        master.intack(line)
        if line != CASCADE_LINE or self._single():
            return master.base + line
        slave_line = self.slave.best_request()
        if slave_line is None:
            vector = self.slave.base + 7  # spurious IRQ 15: master ISR2 stays set
        else:
            self.slave.intack(slave_line)
            vector = self.slave.base + slave_line
        self._cascade()
        return vector

    # --- guest side -----------------------------------------------------
    def io_read(self, port, size):
        chip = self.master if port < 0xA0 else self.slave
        value = chip.read(port & 1)
        self._cascade()  # a poll read acknowledges
        return value

    def io_write(self, port, size, value):
        chip = self.master if port < 0xA0 else self.slave
        chip.write(port & 1, value)
        self._cascade()

    def _single(self):
        return bool(self.master.icw1 & ICW1_SNGL)

    def _cascade(self):
        """Propagate the slave's INT output to master IR2."""
        if not self._single():
            self.master.set_level(CASCADE_LINE, self.slave.best_request() is not None)
