"""i8042 keyboard controller, driven the way Linux's i8042/atkbd/psmouse drivers drive it."""

import pytest

from pyvmm.devices.bus import IoBus
from pyvmm.devices.i8042 import I8042
from pyvmm.errors import MigrationStreamError

DATA, CMD = 0x60, 0x64
OBF, IBF, SYS, CMDDAT, KEYLOCK, AUXDATA, TIMEOUT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
KBDINT, AUXINT, KBDDIS, AUXDIS, XLATE = 0x01, 0x02, 0x10, 0x20, 0x40
# Linux's encoding (drivers/input/serio/i8042.h): bits 15-12 params out, 11-8 bytes in.
CTL_RCTR, CTL_WCTR, CTL_TEST = 0x0120, 0x1060, 0x01AA
KBD_DISABLE, KBD_ENABLE, KBD_TEST, KBD_LOOP = 0x00AD, 0x00AE, 0x01AB, 0x11D2
AUX_DISABLE, AUX_ENABLE, AUX_TEST, AUX_SEND, AUX_LOOP = 0x00A7, 0x00A8, 0x01A9, 0x10D4, 0x11D3
LINUX_POLLS = 10_000  # I8042_CTL_TIMEOUT: how often Linux polls before it gives up


class Guest:
    """A guest driver talking to the controller through the I/O bus, counting polls."""

    def __init__(self):
        self.bus = IoBus()
        self.irq1, self.irq12, self.resets = [], [], []
        self.dev = I8042(self.irq1.append, self.irq12.append, self.resets.append)
        self.bus.register(self.dev)
        self.status_reads = 0

    def inb(self, port):
        if port == CMD:
            self.status_reads += 1
        return self.bus.read(port, 1)

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def wait(self, bit, want):
        for _ in range(LINUX_POLLS):
            if bool(self.inb(CMD) & bit) == want:
                return True
        return False

    def command(self, command, params=()):
        """Linux's __i8042_command: returns the reply bytes, or None on an error."""
        params = list(params)
        assert self.wait(IBF, False)
        self.outb(CMD, command & 0xFF)
        for i in range((command >> 12) & 0xF):
            assert self.wait(IBF, False)
            self.outb(DATA, params[i])
        replies = []
        for _ in range((command >> 8) & 0xF):
            if not self.wait(OBF, True):
                return None
            if command == AUX_LOOP and not self.inb(CMD) & AUXDATA:
                return None
            replies.append(self.inb(DATA))
        return replies

    def flush(self):
        """Linux's i8042_flush: drain at most 16 bytes; True if the buffer emptied."""
        for _ in range(16):
            if not self.inb(CMD) & OBF:
                return True
            self.inb(DATA)
        return not self.inb(CMD) & OBF

    def kbd(self, byte, replies):
        """Send one byte to the keyboard and collect ``replies`` bytes."""
        self.outb(DATA, byte)
        got = []
        for _ in range(replies):
            assert self.wait(OBF, True), f"keyboard gave {got} for {byte:#x}"
            got.append(self.inb(DATA))
        return got


@pytest.fixture
def g():
    return Guest()


def test_linux_probe_sequence_needs_no_timeouts(g):
    # i8042_controller_check: the buffer drains.
    assert g.flush()
    # i8042_controller_selftest.
    assert g.command(CTL_TEST) == [0x55]
    # i8042_controller_init: read CTR twice, then write it with both ports off, no IRQs.
    ctr = g.command(CTL_RCTR)[0]
    assert g.command(CTL_RCTR) == [ctr]
    assert not ctr & XLATE  # Linux then runs the keyboard untranslated (i8042_direct)
    ctr = (ctr | KBDDIS | AUXDIS) & ~(KBDINT | AUXINT)
    assert g.command(CTL_WCTR, [ctr]) == []
    assert g.command(CTL_RCTR) == [ctr]
    # i8042_check_mux (i8042_set_mux_mode): echoes, and 0xA4 comes back unchanged: no MUX.
    for byte in (0xF0, 0x56, 0xA4):
        assert g.command(AUX_LOOP, [byte]) == [byte]
    # i8042_check_aux: loopback works, then the bit assignment test toggles CTR bit 5.
    assert g.flush()
    assert g.command(AUX_LOOP, [0x5A]) == [0x5A]
    assert g.command(AUX_DISABLE) == [] and g.command(CTL_RCTR)[0] & AUXDIS
    assert g.command(AUX_ENABLE) == [] and not g.command(CTL_RCTR)[0] & AUXDIS
    # AUX IRQ test: enable the port with AUXINT, loop 0xA5, expect IRQ 12 with it.
    ctr = (g.command(CTL_RCTR)[0] & ~AUXDIS) | AUXINT
    g.command(CTL_WCTR, [ctr])
    g.outb(CMD, 0xD3)
    g.outb(DATA, 0xA5)
    assert g.irq12 == [1]
    assert g.inb(CMD) & (OBF | AUXDATA) == OBF | AUXDATA
    assert g.inb(DATA) == 0xA5
    assert g.irq12 == [1, 0]
    # i8042_enable_kbd_port, then atkbd_probe: GETID, deactivate, set LEDs, enable.
    ctr = (ctr & ~KBDDIS) | KBDINT
    g.command(CTL_WCTR, [ctr])
    assert g.kbd(0xF2, 3) == [0xFA, 0xAB, 0x83]
    assert g.kbd(0xF5, 1) == [0xFA]
    assert g.kbd(0xED, 1) == [0xFA] and g.kbd(0x02, 1) == [0xFA]
    assert g.kbd(0xF4, 1) == [0xFA]
    # The whole probe took a few hundred polls, not the tens of thousands of timeouts.
    assert g.status_reads < 200
    assert not g.inb(CMD) & OBF
    assert g.dev.ignored_commands == 0 and g.resets == []


def test_status_register_bits(g):
    assert g.inb(CMD) == SYS | KEYLOCK  # nothing waiting, last write was no command
    g.outb(CMD, 0xAA)
    assert g.inb(CMD) == OBF | SYS | CMDDAT | KEYLOCK
    assert g.inb(DATA) == 0x55
    g.outb(CMD, 0x60)
    g.outb(DATA, 0)          # clear SYS in the CTR: status bit 2 follows it
    assert g.inb(CMD) == KEYLOCK
    assert g.inb(DATA) == 0x55  # an empty buffer reads its last byte again
    assert not g.inb(CMD) & OBF


def test_ctr_round_trip_and_controller_ram(g):
    for value in (0x00, 0x47, 0x7F):
        g.command(CTL_WCTR, [value])
        assert g.command(CTL_RCTR) == [value]
    g.command(CTL_WCTR, [0xFF])
    assert g.command(CTL_RCTR) == [0x7F]  # bit 7 is reserved
    g.command(0x1065, [0x99])  # RAM byte 5
    assert g.command(0x0125) == [0x99]
    assert g.command(CTL_RCTR) == [0x7F]


def test_interface_tests_and_kbd_enable_disable(g):
    assert g.command(KBD_TEST) == [0x00]
    assert g.command(AUX_TEST) == [0x00]
    g.command(KBD_ENABLE)
    assert not g.command(CTL_RCTR)[0] & KBDDIS
    g.command(KBD_DISABLE)
    assert g.command(CTL_RCTR)[0] & KBDDIS


def enable_kbd(g, irq=False):
    g.command(CTL_WCTR, [(g.command(CTL_RCTR)[0] & ~KBDDIS) | (KBDINT if irq else 0)])


def test_keyboard_reset_identify_and_arguments(g):
    enable_kbd(g)
    assert g.kbd(0xFF, 2) == [0xFA, 0xAA]
    assert g.kbd(0xF2, 3) == [0xFA, 0xAB, 0x83]
    assert g.kbd(0xEE, 1) == [0xEE]
    assert g.kbd(0xF0, 1) == [0xFA] and g.kbd(0x00, 2) == [0xFA, 2]
    assert g.kbd(0xF0, 1) == [0xFA] and g.kbd(0x03, 1) == [0xFA]
    assert g.kbd(0xF0, 1) == [0xFA] and g.kbd(0x00, 2) == [0xFA, 3]
    assert g.kbd(0xF0, 1) == [0xFA] and g.kbd(0x09, 1) == [0xFE]  # no set 9
    assert g.kbd(0xF3, 1) == [0xFA] and g.kbd(0x20, 1) == [0xFA]
    assert g.dev.kbd_typematic == 0x20
    assert g.kbd(0xED, 1) == [0xFA] and g.kbd(0x07, 1) == [0xFA]
    assert g.dev.kbd_leds == 0x07
    assert g.kbd(0xF5, 1) == [0xFA] and not g.dev.kbd_scanning
    assert g.kbd(0xFE, 1) == [0xFA]  # resend: the last byte it sent
    assert g.kbd(0xF4, 1) == [0xFA] and g.dev.kbd_scanning
    assert g.kbd(0xFF, 2) == [0xFA, 0xAA]
    assert (g.dev.kbd_leds, g.dev.kbd_scancode_set, g.dev.kbd_typematic) == (0, 2, 0x2B)
    assert g.kbd(0x42, 1) == [0xFA]  # anything else is acknowledged


def test_keyboard_replies_wait_while_its_interface_is_disabled(g):
    g.outb(DATA, 0xF2)                # the initial CTR has the keyboard interface off
    assert not g.inb(CMD) & OBF
    assert g.command(CTL_RCTR)[0] & KBDDIS  # controller replies still flow
    g.command(KBD_ENABLE)
    assert [g.inb(DATA) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    assert not g.inb(CMD) & OBF


def test_keyboard_buffer_is_bounded(g):
    for _ in range(40):
        g.outb(DATA, 0xF2)
    assert len(g.dev.kbd_queue) == 16 and g.dev.kbd_overruns == 40 * 3 - 16
    g.command(KBD_ENABLE)
    assert g.flush()


def test_irq1_follows_ctr_bit_0(g):
    enable_kbd(g, irq=False)
    assert g.kbd(0xF4, 1) == [0xFA]
    assert g.irq1 == []
    enable_kbd(g, irq=True)
    g.outb(DATA, 0xF2)
    assert g.irq1 == [1]
    got = []
    for _ in range(3):
        got.append(g.inb(DATA))
    assert got == [0xFA, 0xAB, 0x83]
    assert g.irq1 == [1, 0, 1, 0, 1, 0]  # one edge per byte
    g.outb(CMD, 0xD2)                    # keyboard loopback is keyboard data
    g.outb(DATA, 0x1C)
    assert g.irq1[-1] == 1 and g.irq12 == []
    assert not g.inb(CMD) & AUXDATA and g.inb(DATA) == 0x1C
    assert g.irq1[-1] == 0


def test_controller_replies_raise_irq1_but_not_irq12(g):
    g.command(CTL_WCTR, [KBDINT | AUXINT | SYS])
    g.irq1.clear()
    g.outb(CMD, 0xAA)
    assert g.irq1 == [1] and g.irq12 == []
    g.inb(DATA)
    assert g.irq1 == [1, 0]


def test_irq12_follows_ctr_bit_1(g):
    g.command(CTL_WCTR, [SYS])
    assert g.command(AUX_LOOP, [0x33]) == [0x33]
    assert g.irq12 == []
    g.command(CTL_WCTR, [SYS | AUXINT])
    g.outb(CMD, 0xD3)
    g.outb(DATA, 0x44)
    assert g.irq12 == [1] and g.irq1 == []
    # Clearing AUXINT while the byte waits drops the line.
    g.command(CTL_WCTR, [SYS])
    assert g.irq12 == [1, 0]


def test_aux_device_absent_answers_with_timeout(g):
    g.command(CTL_WCTR, [SYS | AUXINT])
    assert g.command(AUX_SEND, [0xF2]) == []   # psmouse's GETID
    assert g.irq12 == [1]
    assert g.inb(CMD) & (OBF | AUXDATA | TIMEOUT) == OBF | AUXDATA | TIMEOUT
    assert g.inb(DATA) == 0xFE
    assert not g.inb(CMD) & TIMEOUT


def test_command_0xfe_requests_one_reset(g):
    g.outb(CMD, 0xFE)
    assert len(g.resets) == 1
    event = g.resets[0]
    assert event.kind == "reset" and "0xfe" in event.reason
    g.outb(CMD, 0xFF)  # pulses no line
    g.outb(CMD, 0xFC)  # pulses lines 0 and 1
    assert len(g.resets) == 2


def test_output_port_write_with_reset_line_low_resets(g):
    assert g.command(0x01D0) == [0xCF]
    g.command(0x10D1, [0xDF])
    assert g.resets == [] and g.command(0x01D0) == [0xDF]
    g.command(0x10D1, [0xDE])
    assert len(g.resets) == 1 and "0xde" in g.resets[0].reason


def test_garbage_leaves_the_device_usable(g):
    for byte in range(256):
        if byte & 0xF0 == 0xF0 and not byte & 1:
            continue  # those reset the machine
        g.outb(CMD, byte)
        g.outb(DATA, byte ^ 0x5A)
    for byte in range(256):
        g.outb(DATA, byte)
    assert len(g.dev.out) <= 16 and len(g.dev.kbd_queue) <= 16
    assert g.dev.ignored_commands > 0 and g.resets == []
    # Flush, restore a sane CTR, and the probe steps still work.
    g.command(CTL_WCTR, [SYS])
    while g.inb(CMD) & OBF:
        g.inb(DATA)
    assert g.command(CTL_TEST) == [0x55]
    g.command(CTL_WCTR, [SYS | KBDINT])
    assert g.command(CTL_RCTR) == [SYS | KBDINT]
    assert g.flush()
    assert g.kbd(0xFF, 2) == [0xFA, 0xAA]


def test_a_command_cancels_a_pending_data_byte(g):
    g.outb(CMD, 0x60)          # waits for the new CTR ...
    g.outb(CMD, 0xAA)          # ... but a command comes instead
    assert g.inb(DATA) == 0x55
    before = g.command(CTL_RCTR)
    enable_kbd(g)
    g.flush()
    g.outb(CMD, 0xD4)
    g.outb(CMD, 0x20)
    g.outb(DATA, 0xF2)         # goes to the keyboard, not the aux port
    assert g.inb(DATA) == g.dev.ctr
    assert [g.inb(DATA) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    assert before[0] == 0x34


def test_save_restore_round_trip_keeps_queued_bytes_and_irq(g):
    g.command(CTL_WCTR, [SYS | KBDINT])
    g.outb(DATA, 0xF2)
    g.outb(DATA, 0xED)                  # waits for the LED argument
    g.outb(CMD, 0x60)                   # waits for the CTR
    state = g.dev.save()
    other = Guest()
    other.dev.restore(state)
    assert other.irq1 == [1]
    assert other.dev.save() == state
    other.outb(DATA, SYS | KBDINT)      # completes the pending CTR write
    assert [other.inb(DATA) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    assert other.kbd(0x04, 1) == [0xFA]  # LED argument
    assert other.dev.kbd_leds == 0x04


@pytest.mark.parametrize("field, value", [
    ("ram", [0] * 31), ("ram", [256] + [0] * 31), ("out", [[1, 2, 3]]), ("out", [[0x100, 0]]),
    ("out", [[0, 0x80]]), ("out", [[0, 0]] * 17), ("pending_command", 0xAA),
    ("pending_command", "x"), ("kbd_argument_for", 0xF4), ("kbd_queue", [0] * 17),
    ("kbd_scancode_set", 4), ("last_read", -1), ("kbd_scanning", 1), ("output_port", None),
])
def test_restore_refuses_bad_state_and_changes_nothing(g, field, value):
    g.command(CTL_WCTR, [0x47])
    before = g.dev.save()
    state = dict(before, **{field: value})
    with pytest.raises(MigrationStreamError, match=field):
        g.dev.restore(state)
    assert g.dev.save() == before


def test_restore_refuses_missing_field(g):
    state = g.dev.save()
    del state["kbd_leds"]
    with pytest.raises(MigrationStreamError, match="kbd_leds"):
        g.dev.restore(state)


def test_queued_controller_bytes_give_one_edge_each(g):
    g.command(CTL_WCTR, [SYS | KBDINT])
    g.inb(DATA)
    g.irq1.clear()
    g.outb(CMD, 0xAA)
    g.outb(CMD, 0x20)
    assert [g.inb(DATA), g.inb(DATA)] == [0x55, SYS | KBDINT]
    assert g.irq1 == [1, 0, 1, 0]
