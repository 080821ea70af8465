"""RTC/CMOS and power-control save/restore: the guest reads the same clock offset,
CMOS bytes and index latch; bad states are refused with the field named."""

import pytest

from pyvmm.devices.cmos import Mc146818
from pyvmm.devices.power import PowerControl
from tests.devices.statecheck import DELETE, refused_unchanged, through_stream, with_field

MIB = 1 << 20
T0 = 1_700_000_000          # 2023-11-14 22:13:20 UTC


def _read(rtc, reg):
    rtc.io_write(0x70, 1, reg)
    return rtc.io_read(0x71, 1)


def _set_clock(rtc):
    """The guest sets the clock to 2030-01-02 03:04:05 (BCD), writes a CMOS byte and
    leaves the index on register C with NMIs masked."""
    rtc.io_write(0x70, 1, 0x0B)
    rtc.io_write(0x71, 1, 0x82)                   # SET, 24 h, BCD
    for reg, value in ((0, 0x05), (2, 0x04), (4, 0x03), (7, 0x02), (8, 0x01), (9, 0x30), (0x32, 0x20)):
        rtc.io_write(0x70, 1, reg)
        rtc.io_write(0x71, 1, value)
    rtc.io_write(0x70, 1, 0x0B)
    rtc.io_write(0x71, 1, 0x12)                   # run, update interrupts on
    rtc.io_write(0x70, 1, 0x40)
    rtc.io_write(0x71, 1, 0x99)
    _read(rtc, 0x0C)                              # first C read: starts the update tracking
    rtc.io_write(0x70, 1, 0x8C)


def test_guest_clock_and_cmos_survive_a_restore_on_another_host():
    now = [T0]
    rtc = Mc146818(lambda: now[0], 64 * MIB)
    _set_clock(rtc)
    saved = through_stream(rtc.save())
    later = [T0 + 1]                              # the restoring host, a second on
    other = Mc146818(lambda: later[0], 16 * MIB)  # its own memory bytes get replaced
    other.restore(saved)
    assert other.nmi_disabled and other.io_read(0x71, 1) == 0x90      # C: UF + IRQF
    now[0] += 1
    assert rtc.io_read(0x71, 1) == 0x90
    for reg in (0, 2, 4, 7, 8, 9, 0x32, 0x40, 0x17, 0x18, 0x34, 0x35):
        assert _read(other, reg) == _read(rtc, reg)
    assert _read(other, 0) == 0x06                # 03:04:06, a second after the save


@pytest.mark.parametrize("field, value, match", [
    ("ram", bytes(127), r"RTC/CMOS state field 'ram': 127 bytes, expected 128"),
    ("index", 0x80, r"'index': 128 is outside 0..127"),
    ("offset", 1.5, r"'offset': 1.5 is not an integer"),
    ("nmi_disabled", DELETE, r"'nmi_disabled': missing"),
])
def test_bad_cmos_state_is_refused(field, value, match):
    rtc = Mc146818(lambda: T0, 64 * MIB)
    _set_clock(rtc)
    refused_unchanged(Mc146818(lambda: T0, 32 * MIB), with_field(rtc.save(), (field,), value), match)


def test_power_registers_survive_and_requests_are_not_replayed():
    events = []
    power = PowerControl(events.append)
    power.io_write(0x604, 2, 0x1C00)              # SLP_TYP 7 without SLP_EN: stored only
    power.io_write(0xCF9, 1, 0x02)
    other_events = []
    other = PowerControl(other_events.append)
    other.restore(through_stream(power.save()))
    assert other_events == []
    assert [other.io_read(p, 1) for p in (0x604, 0x605, 0xCF9)] == [power.io_read(p, 1) for p in (0x604, 0x605, 0xCF9)]
    other.io_write(0x605, 1, 0x20 | 0x1C)         # SLP_EN with the stored S5 type
    assert [e.kind for e in other_events] == ["poweroff"]


@pytest.mark.parametrize("state, match", [
    ({"pm1_control": 0x2000, "reset_control": 0}, r"'pm1_control': 0x2000 has SLP_EN set"),
    ({"pm1_control": 0, "reset_control": 0x04}, r"'reset_control': 0x04 has bits outside 0x0a"),
    ({"pm1_control": 0}, r"'reset_control': missing"),
])
def test_bad_power_state_is_refused(state, match):
    power = PowerControl(lambda e: None)
    power.io_write(0xCF9, 1, 0x08)
    refused_unchanged(power, state, match)
