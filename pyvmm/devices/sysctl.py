"""System control port B (port 0x61): PIT counter 2 gate and output, speaker data.

Responsibility: the PC/AT port B bits that reach the i8254 (see pyvmm.devices.pit):
bit 0 drives counter 2's GATE, bit 5 reads counter 2's OUT. It owns no timer state.
Bit layout as in the IBM PC/AT Technical Reference ("Port B", 0x61) and QEMU's
hw/audio/pcspk.c:

  write: bit 0 timer 2 gate, bit 1 speaker data enable, bits 2-3 parity / channel
         check enables (stored, nothing ever fails);
  read:  bits 0-3 as written, bit 4 refresh request toggle, bit 5 timer 2 OUT,
         bits 6-7 (channel check / parity error) always 0.

Invariants: the refresh toggle (bit 4) flips on every read, so a guest polling it for
a change (Linux, BIOSes) always sees one; time comes only from the PIT's clock. The
speaker makes no sound: bit 1 is stored and read back. Save/restore carries the
written bits and the toggle; counter 2's gate is the PIT's own saved state.
"""

from pyvmm.migrate.state import StateFields

PORT_B = 0x61
GATE2 = 0x01
SPEAKER_DATA = 0x02
WRITABLE = 0x0F
REFRESH_TOGGLE = 0x10
OUT2 = 0x20


class SystemControlB:
    """Port 0x61, wired to counter 2 of ``pit`` (an I8254)."""

    name = "system control port B"
    ports = (PORT_B,)

    def __init__(self, pit):
        self.pit = pit
        self.value = 0
        self._refresh = 0  # counter 2's gate starts low, as bit 0 does

    def save(self):
        return {"value": self.value, "refresh": self._refresh}

    def restore(self, state):
        """Take the state ``save`` gave; checked in full before anything changes."""
        f = StateFields(state, self.name)
        value = f.uint("value", WRITABLE + 1)
        refresh = f.choice("refresh", (0, REFRESH_TOGGLE))
        f.done()
        self.value, self._refresh = value, refresh

    def io_read(self, port, size):
        self._refresh ^= REFRESH_TOGGLE
        out2 = OUT2 if self.pit.output(2) else 0
        return (self.value & WRITABLE) | self._refresh | out2

    def io_write(self, port, size, value):
        self.value = value & WRITABLE
        self.pit.set_gate(2, value & GATE2)
