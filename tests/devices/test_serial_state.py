"""16550A save/restore: the restored UART hands the guest the same FIFO bytes, line and
interrupt status, and raises IRQ 4 exactly when the original would."""

import pytest

from pyvmm.devices.serial import Serial16550
from tests.devices.statecheck import DELETE, refused_unchanged, through_stream, with_field
from tests.devices.test_serial import IER, IIR, LCR, LSR, MCR, MSR, RBR, SCR, Machine


def _busy(m):
    """Linux-style setup, 9600 8N1, FIFO trigger 8, RX and line-status interrupts on, with
    six unread bytes and a pending overrun in a 16450-mode history."""
    bus = m.bus
    bus.write(LCR, 1, 0x80)
    bus.write(RBR, 1, 12)                         # divisor 12: 9600 baud
    bus.write(LCR, 1, 0x03)
    bus.write(0x3FA, 1, 0x87)                     # FIFO on, clear, trigger 8
    bus.write(MCR, 1, 0x0B)                       # DTR, RTS, OUT2
    bus.write(IER, 1, 0x07)
    bus.write(SCR, 1, 0x5A)
    m.uart.feed(b"hello!")
    return m.uart


def _guest_view(m):
    bus = m.bus
    seen = [bus.read(IIR, 1), bus.read(LSR, 1), bus.read(MSR, 1), bus.read(SCR, 1)]
    m.uart.feed(b"ab")                            # 8 bytes: the trigger level
    seen.append(bus.read(IIR, 1))
    seen += [bus.read(RBR, 1) for _ in range(9)]  # the ninth read repeats the last byte
    m.uart.feed(bytes(range(20)))                 # overflows the 16-byte FIFO
    seen += [bus.read(IIR, 1), bus.read(LSR, 1), bus.read(IIR, 1)]
    bus.write(0x3F8, 1, ord("x"))
    seen.append(bus.read(IIR, 1))
    return seen, m.out, m.levels, m.pic.pending_vector()


def _restored(m):
    other = Machine()
    other.pic.restore(through_stream(m.pic.save()))
    other.uart.restore(through_stream(m.uart.save()))
    return other


def test_restored_uart_behaves_as_the_original():
    m = Machine()
    m.pic.io_write(0x20, 1, 0x11)
    for v in (0x20, 0x04, 0x01, 0x00):
        m.pic.io_write(0x21, 1, v)
    _busy(m)
    other = _restored(m)
    assert other.uart.save() == m.uart.save()
    assert other.levels == []                     # restore raises no interrupt of its own
    m.levels.clear()
    m.out.clear()
    assert _guest_view(other) == _guest_view(m)


def test_loopback_and_16450_mode_survive():
    m = Machine()
    m.bus.write(MCR, 1, 0x1F)                     # loopback, all outputs on
    m.bus.write(0x3F8, 1, 0x41)                   # received through the loop
    m.bus.write(0x3F8, 1, 0x42)                   # 16450 mode: replaces it, overrun
    other = _restored(m)
    for u in (m, other):
        assert u.bus.read(LSR, 1) & 0x03 == 0x03
        assert u.bus.read(RBR, 1) == 0x42
        assert u.uart.feed(b"z") == 0             # the input stays disconnected
    assert other.bus.read(MSR, 1) == m.bus.read(MSR, 1)


@pytest.mark.parametrize("path, value, match", [
    (("rx",), bytes(17), r"COM1\) state field 'rx': 17 bytes, at most 16 allowed"),
    (("rx_trigger",), 3, r"'rx_trigger': 3 is not one of \[1, 4, 8, 14\]"),
    (("ier",), 0x10, r"'ier': 0x10 has bits outside 0xf"),
    (("divisor",), 1 << 16, r"'divisor': 65536 is outside"),
    (("rx",), "hello", r"'rx': a str, expected bytes"),
    (("thr_ipending",), DELETE, r"'thr_ipending': missing"),
])
def test_bad_state_is_refused_and_nothing_changes(path, value, match):
    m = Machine()
    state = with_field(_busy(m).save(), path, value)
    refused_unchanged(Serial16550(lambda b: None), state, match)


def test_a_full_fifo_needs_fifo_mode():
    state = with_field(_busy(Machine()).save(), ("fifo_enabled",), False)
    refused_unchanged(Serial16550(lambda b: None), state, r"'rx': 6 bytes, at most 1 allowed")
