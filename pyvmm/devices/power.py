"""Machine power control: the ports through which a guest resets or stops the machine.

Responsibility: recognise the guest's reset / power-off / exit requests on the ports
of docs/platform.md and report each one, once per request write, as a ``PowerEvent``
through ``on_power(event)``. What to do about it (stop the CPU, rebuild the machine,
exit with a status) is the VMM's business; this module keeps no machine state.

Ports and what they accept:
- 0x604-0x605, ACPI PM1a control (QEMU's PIIX4 PM layout; ACPI spec, "PM1 Control
  Registers"): a write with SLP_EN (bit 13) set and SLP_TYP (bits 12:10) in
  ``s5_sleep_types`` powers off. The default accepts SLP_TYP 0 (QEMU's _S5, so the
  plain 0x2000 of docs/platform.md) and 7 (the _S5 of Intel ICH chipsets). SLP_EN
  with any other SLP_TYP (S1-S4) is ignored: pyvmm has no sleep states. The register
  is 16 bits wide; byte writes update one half. SLP_EN reads back as 0.
- 0xCF9, reset control register (Intel ICH/PIIX4 "RST_CNT"): a write with RST_CPU
  (bit 2) set resets; Linux writes 0x06 (soft) or 0x0E (full) after 0x02. Bits 1 and
  3 (SYS_RST, FULL_RST) are stored and read back; RST_CPU reads as 0.
- (The i8042's reset command 0xFE on port 0x64 is the keyboard controller's own:
  devices/i8042.py reports it through the same ``on_power``.)
- 0x501, QEMU's isa-debug-exit: a write of v (any size) stops the VM with exit status
  (v << 1) | 1, reported in full (the VMM truncates to 8 bits if it exits with it).
  Reads return 0.

Invariant: every request write produces exactly one event; events are immutable.
Save/restore carries the two readable registers (PM1a control without SLP_EN, the
stored RST_CNT bits); requests already reported are not replayed.
"""

from dataclasses import dataclass

from pyvmm.migrate.state import StateFields

PM1A_CNT = 0x604
SLP_EN = 1 << 13
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 7
DEFAULT_S5_SLEEP_TYPES = (0, 7)
RESET_CONTROL = 0xCF9
RST_CPU = 0x04
RST_CNT_STORED = 0x0A       # SYS_RST | FULL_RST
DEBUG_EXIT = 0x501


@dataclass(frozen=True)
class PowerEvent:
    """What the guest asked for: kind "poweroff", "reset" or "exit"."""

    kind: str
    status: int
    reason: str


class PowerControl:
    """The power/reset ports; ``on_power(PowerEvent)`` is called for each request."""

    name = "power and reset control"
    ports = (DEBUG_EXIT, PM1A_CNT, PM1A_CNT + 1, RESET_CONTROL)
    io_sizes = {DEBUG_EXIT: (1, 2, 4), PM1A_CNT: (1, 2, 4)}  # the others are byte ports

    def __init__(self, on_power, s5_sleep_types=DEFAULT_S5_SLEEP_TYPES):
        self.on_power = on_power
        self.s5_sleep_types = frozenset(s5_sleep_types)
        self.pm1_control = 0
        self.reset_control = 0

    def save(self):
        return {"pm1_control": self.pm1_control, "reset_control": self.reset_control}

    def restore(self, state):
        """Take the state ``save`` gave; checked in full before anything changes."""
        f = StateFields(state, self.name)
        pm1 = f.uint("pm1_control", 0x10000)
        if pm1 & SLP_EN:
            f.fail("pm1_control", f"{pm1:#06x} has SLP_EN set, which is never stored")
        reset = f.uint("reset_control", 0x100)
        if reset & ~RST_CNT_STORED:
            f.fail("reset_control", f"{reset:#04x} has bits outside {RST_CNT_STORED:#04x}")
        f.done()
        self.pm1_control, self.reset_control = pm1, reset

    def io_read(self, port, size):
        if port in (PM1A_CNT, PM1A_CNT + 1):
            return (self.pm1_control & ~SLP_EN) >> (8 * (port - PM1A_CNT))
        if port == RESET_CONTROL:
            return self.reset_control
        return 0  # debug exit

    def io_write(self, port, size, value):
        if port in (PM1A_CNT, PM1A_CNT + 1):
            self._write_pm1_control(port, size, value)
        elif port == RESET_CONTROL:
            self.reset_control = value & RST_CNT_STORED
            if value & RST_CPU:
                self._report("reset", 0, f"guest reset the machine (port {port:#x} value {value & 0xFF:#04x})")
        elif port == DEBUG_EXIT:
            status = (value << 1) | 1
            self._report("exit", status, f"guest exited with status {status} "
                                         f"(isa-debug-exit port {port:#x} value {value:#x})")

    def _write_pm1_control(self, port, size, value):
        shift = 8 * (port - PM1A_CNT)
        mask = ((1 << (8 * size)) - 1) << shift & 0xFFFF
        self.pm1_control = (self.pm1_control & ~mask) | ((value << shift) & mask)
        control = self.pm1_control
        if not control & SLP_EN:
            return
        self.pm1_control = control & ~SLP_EN  # SLP_EN is write-only
        sleep_type = (control >> SLP_TYP_SHIFT) & SLP_TYP_MASK
        if sleep_type in self.s5_sleep_types:
            self._report("poweroff", 0, f"guest powered off (ACPI S5 via port {PM1A_CNT:#x} "
                                        f"value {control:#06x})")

    def _report(self, kind, status, reason):
        self.on_power(PowerEvent(kind, status, reason))
