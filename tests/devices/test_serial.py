"""16550A UART at COM1, exercised the way Linux's 8250 driver probes and uses it."""

import pytest

from pyvmm.devices.bus import IoBus
from pyvmm.devices.irq import IrqLine
from pyvmm.devices.pic import PicPair
from pyvmm.devices.serial import Serial16550

BASE = 0x3F8
RBR = THR = DLL = BASE
IER = DLM = BASE + 1
IIR = FCR = BASE + 2
LCR, MCR, LSR, MSR, SCR = BASE + 3, BASE + 4, BASE + 5, BASE + 6, BASE + 7


class Machine:
    def __init__(self):
        self.out = []
        self.levels = []
        self.bus = IoBus()
        self.pic = PicPair()
        self.uart = Serial16550(self.out.append, irq=self._irq)
        self.bus.register(self.uart)
        self.bus.register(self.pic)

    def _irq(self, level):
        self.levels.append(level)
        self.pic.set_irq(4, level)

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)


@pytest.fixture
def m():
    return Machine()


def test_linux_8250_autoconfig_probe(m):
    # IER existence test (drivers/tty/serial/8250/8250_port.c, autoconfig).
    scratch = m.inb(IER)
    m.outb(IER, 0)
    assert m.inb(IER) & 0x0F == 0
    m.outb(IER, 0x0F)
    assert m.inb(IER) & 0x0F == 0x0F
    m.outb(IER, scratch)
    # Loopback test: MCR = LOOP | OUT2 | RTS must show DCD | CTS.
    save_mcr = m.inb(MCR)
    m.outb(MCR, 0x10 | 0x0A)
    assert m.inb(MSR) & 0xF0 == 0x90
    m.outb(MCR, save_mcr)
    # FIFO probe: IIR bits 7-6 = 3 means a 16550A.
    m.outb(FCR, 0x01)
    assert m.inb(IIR) >> 6 == 3
    # With DLAB set, offset 2 is still IIR (no EFR): non-zero.
    m.outb(LCR, 0x80)
    assert m.inb(IIR) != 0
    m.outb(LCR, 0xBF)
    assert m.inb(IIR) != 0
    # 16750 test: FCR bit 5 must not show in IIR bit 5.
    m.outb(LCR, 0)
    m.outb(FCR, 0x21)
    assert m.inb(IIR) >> 5 == 6
    # IER bits 7-4 (XScale UUE) do not stick.
    m.outb(IER, 0x40)
    assert m.inb(IER) & 0x40 == 0


def test_scratch_register_reads_back(m):
    for value in (0x00, 0x55, 0xAA, 0xFF):
        m.outb(SCR, value)
        assert m.inb(SCR) == value


def test_divisor_latch(m):
    m.outb(LCR, 0x83)
    m.outb(DLL, 0x01)
    m.outb(DLM, 0x00)
    m.outb(LCR, 0x03)
    assert m.uart.baud == 115200
    m.outb(LCR, 0x83)
    assert m.inb(DLL) == 0x01 and m.inb(DLM) == 0x00
    m.outb(DLL, 12)
    m.outb(LCR, 0x03)
    assert m.uart.baud == 9600
    assert m.inb(LCR) == 0x03


def test_transmit_goes_to_sink_and_lsr_is_always_empty(m):
    for byte in b"hi\n":
        assert m.inb(LSR) & 0x60 == 0x60
        m.outb(THR, byte)
    m.uart.flush()
    assert b"".join(m.out) == b"hi\n"
    assert all(len(chunk) == 1 for chunk in m.out)


def test_thre_interrupt_rules_from_serial8250_do_startup(m):
    # Enabling ETBEI with THR empty raises THRE; reading IIR clears it; re-enabling
    # raises it again (the UART_BUG_THRE test).
    m.outb(MCR, 0x0B)
    m.outb(IER, 0x02)
    assert m.inb(IIR) & 0x0F == 0x02
    assert m.inb(IIR) & 0x01 == 0x01
    m.outb(IER, 0)
    m.outb(IER, 0x02)
    assert m.inb(IIR) & 0x0F == 0x02
    # Writing THR clears it, and the transmitter empties at once: pending again.
    m.outb(THR, ord("x"))
    assert m.inb(IIR) & 0x0F == 0x02
    m.outb(IER, 0)
    assert m.levels[-1] == 0


def test_thre_interrupt_reaches_the_pic_as_irq4(m):
    pic = m.pic
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                        (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0xEF)):
        m.outb(port, value)
    m.outb(MCR, 0x0B)
    m.outb(IER, 0x02)
    assert pic.acknowledge() == 0x24
    assert m.inb(IIR) == 0x02  # FIFOs off: bits 7-6 clear
    m.outb(0x20, 0x20)
    # The ISR writes the next byte: THRE rises again, a new edge.
    m.outb(THR, ord("a"))
    assert pic.pending_vector() == 0x24


def test_receive_data_available_and_fifo_trigger(m):
    m.outb(MCR, 0x08)      # OUT2: interrupts reach the PIC
    m.outb(FCR, 0xC7)      # enable + clear, trigger level 14
    m.outb(IER, 0x01)
    assert m.uart.rx_space() == 16
    assert m.uart.feed(b"ab") == 2
    assert m.inb(LSR) & 0x01
    assert m.inb(IIR) == 0xCC          # below the trigger: character timeout
    assert m.levels[-1] == 1
    m.uart.feed(b"c" * 12)
    assert m.inb(IIR) == 0xC4          # 14 bytes: received data available
    data = bytes(m.inb(RBR) for _ in range(14))
    assert data == b"ab" + b"c" * 12
    assert m.inb(IIR) == 0xC1
    assert not m.inb(LSR) & 0x01
    assert m.levels[-1] == 0


def test_overrun_sets_oe_and_line_status_interrupt(m):
    m.outb(FCR, 0x01)
    m.outb(IER, 0x05)
    m.uart.feed(bytes(range(20)))
    assert m.inb(IIR) & 0x0F == 0x06    # line status has the highest priority
    lsr = m.inb(LSR)
    assert lsr & 0x02 and lsr & 0x01
    assert not m.inb(LSR) & 0x02        # reading LSR clears OE
    assert bytes(m.inb(RBR) for _ in range(16)) == bytes(range(16))  # later ones lost
    assert m.uart.overruns == 4


def test_16450_mode_overrun_replaces_the_unread_byte(m):
    m.uart.feed(b"xy")
    assert m.inb(LSR) & 0x03 == 0x03
    assert m.inb(RBR) == ord("y")


def test_loopback_transmit_is_received_not_sent(m):
    m.outb(MCR, 0x10)
    m.outb(FCR, 0x07)
    m.outb(THR, 0x5A)
    assert m.out == []
    assert m.inb(LSR) & 0x01
    assert m.inb(RBR) == 0x5A
    assert m.uart.feed(b"z") == 0       # the serial input is disconnected
    m.outb(MCR, 0x00)
    assert m.uart.feed(b"z") == 1


def test_modem_status_deltas_in_loopback(m):
    m.outb(MCR, 0x10)
    m.inb(MSR)
    m.outb(IER, 0x08)
    m.outb(MCR, 0x10 | 0x01 | 0x04)     # DTR and OUT1 up
    assert m.inb(IIR) & 0x0F == 0x00
    msr = m.inb(MSR)
    assert msr & 0xF0 == 0x20 | 0x40 and msr & 0x02
    assert m.inb(IIR) & 0x01
    m.outb(MCR, 0x10)                   # RI falls: trailing edge
    assert m.inb(MSR) & 0x0F == 0x02 | 0x04


def test_normal_mode_msr_shows_a_connected_terminal(m):
    assert m.inb(MSR) & 0xF0 == 0xB0


def test_fcr_clear_receive_fifo(m):
    m.outb(FCR, 0x01)
    m.uart.feed(b"abc")
    m.outb(FCR, 0x03)
    assert not m.inb(LSR) & 0x01


def test_out2_gates_the_irq_line_and_loopback_disables_it(m):
    m.outb(MCR, 0x03)                   # DTR | RTS, OUT2 off
    m.outb(IER, 0x02)
    assert m.inb(IIR) & 0x0F == 0x02    # the interrupt is pending in the UART ...
    m.outb(IER, 0)
    m.outb(IER, 0x02)
    assert m.levels == []               # ... but never reached IRQ 4
    m.outb(MCR, 0x0B)
    assert m.levels == [1]
    m.outb(MCR, 0x1B)                   # loopback: the OUT2 pin is inactive
    assert m.levels == [1, 0]


def test_irq_line_wiring_helper():
    pic = PicPair()
    out = []
    uart = Serial16550(out.append, irq=IrqLine(pic, 4))
    uart.io_write(BASE + 4, 1, 0x08)
    uart.io_write(BASE + 1, 1, 0x02)
    assert pic.master.irr == 0x10
