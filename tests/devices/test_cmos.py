"""MC146818 RTC/CMOS through ports 0x70/0x71."""

import calendar

import pytest

from pyvmm.devices.bus import IoBus
from pyvmm.devices.cmos import Mc146818
from pyvmm.mm.layout import GiB, MiB

# Tuesday 2024-03-05 21:07:09 UTC
FIXED = calendar.timegm((2024, 3, 5, 21, 7, 9))


class Wall:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def make(t=FIXED, ram=64 * MiB):
    wall = Wall(t)
    bus = IoBus()
    rtc = Mc146818(wall, ram)
    bus.register(rtc)

    def read(reg):
        bus.write(0x70, 1, reg)
        return bus.read(0x71, 1)

    def write(reg, value):
        bus.write(0x70, 1, reg)
        bus.write(0x71, 1, value)

    return rtc, wall, read, write


def time_regs(read):
    return [read(r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)]


def test_bcd_time_by_default():
    rtc, wall, read, write = make()
    assert read(0x0B) & 0x06 == 0x02          # BCD, 24-hour
    assert time_regs(read) == [0x09, 0x07, 0x21, 0x03, 0x05, 0x03, 0x24, 0x20]


def test_binary_time_when_dm_set():
    rtc, wall, read, write = make()
    write(0x0B, 0x06)
    assert time_regs(read) == [9, 7, 21, 3, 5, 3, 24, 20]


@pytest.mark.parametrize("hour, bcd, binary", [
    (0, 0x12, 12), (1, 0x01, 1), (11, 0x11, 11), (12, 0x92, 0x80 | 12), (21, 0x89, 0x80 | 9)])
def test_12_hour_mode(hour, bcd, binary):
    rtc, wall, read, write = make(calendar.timegm((2024, 3, 5, hour, 0, 0)))
    write(0x0B, 0x00)
    assert read(4) == bcd
    write(0x0B, 0x04)
    assert read(4) == binary


def test_time_follows_the_wall_clock():
    rtc, wall, read, write = make()
    wall.t += 60
    assert read(2) == 0x08
    assert read(0) == 0x09


def test_uip_only_in_the_last_2ms_of_a_second():
    rtc, wall, read, write = make()
    assert not read(0x0A) & 0x80              # whole seconds: never
    wall.t = FIXED + 0.999
    assert read(0x0A) & 0x80
    wall.t = FIXED + 0.5
    assert read(0x0A) == 0x26


def test_guest_sets_the_clock_with_set_bit_like_hwclock():
    rtc, wall, read, write = make()
    write(0x0B, 0x82)                          # SET, 24h, BCD
    wall.t += 5
    assert read(0) == 0x09                     # frozen while SET
    for reg, value in ((0, 0x30), (2, 0x45), (4, 0x10), (7, 0x01), (8, 0x01), (9, 0x99), (0x32, 0x19)):
        write(reg, value)
    write(0x0B, 0x02)
    assert time_regs(read)[:3] == [0x30, 0x45, 0x10]
    assert read(9) == 0x99 and read(0x32) == 0x19
    wall.t += 2
    assert read(0) == 0x32
    assert rtc.offset == calendar.timegm((1999, 1, 1, 10, 45, 30)) - (FIXED + 5)


def test_single_register_write_without_set_and_bad_dates_ignored():
    rtc, wall, read, write = make()
    write(2, 0x30)
    assert read(2) == 0x30 and read(4) == 0x21
    write(8, 0x13)                             # month 13: ignored
    assert read(8) == 0x03


def test_register_c_clears_on_read_and_d_reports_valid():
    rtc, wall, read, write = make()
    assert read(0x0D) == 0x80
    write(0x0D, 0)
    assert read(0x0D) == 0x80
    assert read(0x0C) == 0
    wall.t += 1
    write(0x0B, 0x12)                          # UIE
    assert read(0x0C) == 0x90                  # IRQF | UF
    assert read(0x0C) == 0


def test_alarm_flag():
    rtc, wall, read, write = make()
    read(0x0C)
    write(1, 0x11)                             # second 11 (BCD)
    write(3, 0xC0)                             # any minute
    write(5, 0xC0)                             # any hour
    wall.t = FIXED + 1
    assert read(0x0C) == 0x10                  # :10, an update, no alarm
    wall.t = FIXED + 2
    write(0x0B, 0x22)                          # AIE
    assert read(0x0C) == 0x80 | 0x20 | 0x10


def test_nmi_bit_of_the_index_port():
    rtc, wall, read, write = make()
    assert not rtc.nmi_disabled
    read(0x80 | 0x0D)
    assert rtc.nmi_disabled
    assert rtc.index == 0x0D
    read(0x0D)
    assert not rtc.nmi_disabled


def test_cmos_ram_reads_back():
    rtc, wall, read, write = make()
    write(0x40, 0x5A)
    write(0x7F, 0xA5)
    assert read(0x40) == 0x5A and read(0x7F) == 0xA5


@pytest.mark.parametrize("ram, ext, above16", [
    (64 * MiB, 63 * 1024, (48 * MiB) // (64 * 1024)),
    (8 * MiB, 7 * 1024, 0),
    (3 * GiB, 0xFFFF, (3 * GiB - 16 * MiB) // (64 * 1024)),
])
def test_memory_size_bytes(ram, ext, above16):
    rtc, wall, read, write = make(ram=ram)
    assert read(0x15) | read(0x16) << 8 == 640
    assert read(0x17) | read(0x18) << 8 == ext
    assert read(0x30) | read(0x31) << 8 == ext
    assert read(0x34) | read(0x35) << 8 == above16
    assert read(0x2E) << 8 | read(0x2F) == sum(read(r) for r in range(0x10, 0x2E))
