"""Shared fixtures for the device tests: a fake clock and a small PC built on an IoBus."""

import pytest

from pyvmm.devices.bus import IoBus
from pyvmm.devices.irq import IrqLine
from pyvmm.devices.pic import PicPair
from pyvmm.devices.pit import I8254
from pyvmm.devices.sysctl import SystemControlB


class FakeClock:
    """A monotonic clock in ns that only moves when a test says so."""

    def __init__(self, ns=1_000_000_000):
        self.ns = ns

    def __call__(self):
        return self.ns

    def advance(self, ns):
        self.ns += ns
        return self.ns


class Pc:
    """PIC + PIT + port 0x61 on one bus, as the VMM wires them."""

    def __init__(self):
        self.clock = FakeClock()
        self.bus = IoBus()
        self.pic = PicPair()
        self.pit = I8254(self.clock, irq=IrqLine(self.pic, 0))
        self.port_b = SystemControlB(self.pit)
        for device in (self.pic, self.pit, self.port_b):
            self.bus.register(device)

    def outb(self, port, value):
        self.bus.write(port, 1, value)

    def inb(self, port):
        return self.bus.read(port, 1)

    def init_pic(self, master_base=0x20, slave_base=0x28, icw4=0x01, icw1=0x11):
        """The ICW sequence of Linux's init_8259A (arch/x86/kernel/i8259.c)."""
        self.outb(0x21, 0xFF)
        self.outb(0xA1, 0xFF)
        self.outb(0x20, icw1)          # ICW1: edge, cascade, ICW4 needed
        self.outb(0x21, master_base)   # ICW2
        self.outb(0x21, 0x04)          # ICW3: slave on IR2
        self.outb(0x21, icw4)          # ICW4: 8086 mode
        self.outb(0xA0, icw1)
        self.outb(0xA1, slave_base)
        self.outb(0xA1, 0x02)          # ICW3: slave identity 2
        self.outb(0xA1, icw4)

    def unmask(self, master=0x00, slave=0x00):
        self.outb(0x21, master)
        self.outb(0xA1, slave)

    def eoi(self, irq):
        if irq >= 8:
            self.outb(0xA0, 0x20)
        self.outb(0x20, 0x20)


@pytest.fixture
def pc():
    return Pc()


@pytest.fixture
def clock():
    return FakeClock()
