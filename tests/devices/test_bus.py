"""IoBus: claims, overlaps, access splitting and unclaimed ports."""

import pytest

from pyvmm.devices.bus import IoBus
from pyvmm.errors import ConfigError


class ByteRegs:
    """A device with byte registers that remembers every access it got."""

    def __init__(self, name, base, count):
        self.name = name
        self.ports = range(base, base + count)
        self.regs = {port: port & 0xFF for port in self.ports}
        self.accesses = []

    def io_read(self, port, size):
        self.accesses.append(("r", port, size))
        return self.regs[port]

    def io_write(self, port, size, value):
        self.accesses.append(("w", port, size, value))
        self.regs[port] = value


class WideReg(ByteRegs):
    io_sizes = (1, 2, 4)

    def io_read(self, port, size):
        self.accesses.append(("r", port, size))
        return 0x1234567890  # wider than any access: the bus masks


def test_overlap_is_refused_naming_both_devices_and_the_port():
    bus = IoBus()
    bus.register(ByteRegs("uart", 0x3F8, 8))
    with pytest.raises(ConfigError) as info:
        bus.register(ByteRegs("other", 0x3FC, 8))
    message = str(info.value)
    assert "0x3fc" in message and "uart" in message and "other" in message
    # Nothing of the refused device was claimed.
    assert bus.device_at(0x400) is None


def test_register_defaults_to_the_device_ports_and_rejects_bad_ports():
    bus = IoBus()
    dev = ByteRegs("dev", 0x80, 2)
    bus.register(dev)
    assert bus.device_at(0x81) is dev
    with pytest.raises(ConfigError):
        bus.register(ByteRegs("huge", 0x10000, 1))


def test_byte_device_gets_wide_accesses_split_little_endian():
    bus = IoBus()
    dev = ByteRegs("dev", 0x100, 4)
    bus.register(dev)
    bus.write(0x100, 4, 0xAABBCCDD)
    assert dev.regs == {0x100: 0xDD, 0x101: 0xCC, 0x102: 0xBB, 0x103: 0xAA}
    assert all(access[2] == 1 for access in dev.accesses)
    assert bus.read(0x101, 2) == 0xBBCC
    assert bus.read(0x100, 4) == 0xAABBCCDD


def test_split_access_running_past_the_device_reads_ones_for_unclaimed_bytes():
    bus = IoBus()
    dev = ByteRegs("dev", 0x100, 2)
    bus.register(dev)
    assert bus.read(0x101, 2) == 0xFF01
    assert bus.unclaimed_reads == {0x102: 1}
    bus.write(0x101, 2, 0x5566)
    assert dev.regs[0x101] == 0x66
    assert bus.unclaimed_writes == {0x102: 1}


def test_wide_device_gets_the_whole_access_masked():
    bus = IoBus()
    dev = WideReg("wide", 0x604, 1)
    bus.register(dev)
    assert bus.read(0x604, 2) == 0x7890
    assert bus.read(0x604, 1) == 0x90
    bus.write(0x604, 2, 0x12345)
    assert dev.accesses[-1] == ("w", 0x604, 2, 0x2345)


def test_per_port_native_sizes():
    class Mixed(ByteRegs):
        io_sizes = {0x10: (1, 2)}

    bus = IoBus()
    dev = Mixed("mixed", 0x10, 4)
    bus.register(dev)
    bus.read(0x10, 2)
    bus.read(0x12, 2)
    assert dev.accesses == [("r", 0x10, 2), ("r", 0x12, 1), ("r", 0x13, 1)]


@pytest.mark.parametrize("size, ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_port_reads_all_ones_and_is_counted_once(size, ones):
    bus = IoBus()
    bus.register(ByteRegs("dev", 0xCF9, 1))
    # An access starting at an unclaimed port is unclaimed as a whole, even if a
    # later byte would land on a device (a dword at 0xCF8 is not a 0xCF9 write).
    assert bus.read(0xCF8, size) == ones
    bus.write(0xCF8, size, 0x0400)
    bus.write(0xCF8, size, 0x0400)
    assert bus.unclaimed_reads == {0xCF8: 1}
    assert bus.unclaimed_writes == {0xCF8: 2}
    assert bus.device_at(0xCF9).accesses == []


def test_bad_access_size_is_a_programming_error():
    with pytest.raises(ValueError):
        IoBus().read(0x80, 3)
