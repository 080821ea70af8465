"""Power, reset and exit requests on each port of docs/platform.md."""

import dataclasses

import pytest

from pyvmm.devices.bus import IoBus
from pyvmm.devices.power import PowerControl, PowerEvent


@pytest.fixture
def machine():
    events = []
    bus = IoBus()
    bus.register(PowerControl(events.append))
    return bus, events


def test_acpi_s5_with_the_qemu_value_powers_off(machine):
    bus, events = machine
    bus.write(0x604, 2, 0x2000)
    assert events == [PowerEvent("poweroff", 0, events[0].reason)]
    assert "0x604" in events[0].reason and "S5" in events[0].reason


@pytest.mark.parametrize("value", [(7 << 10) | 0x2000, (7 << 10) | 0x2000 | 1])
def test_acpi_s5_with_ich_slp_typ(machine, value):
    bus, events = machine
    bus.write(0x604, 2, value)
    assert [e.kind for e in events] == ["poweroff"]


def test_other_sleep_states_and_plain_writes_are_ignored(machine):
    bus, events = machine
    bus.write(0x604, 2, (1 << 10) | 0x2000)   # S3
    bus.write(0x604, 2, 0x0001)               # SCI_EN only
    assert events == []
    assert bus.read(0x604, 2) == 0x0001       # SLP_EN reads back as 0


def test_acpi_byte_writes_to_the_high_half(machine):
    bus, events = machine
    bus.write(0x605, 1, 0x20)
    assert [e.kind for e in events] == ["poweroff"]


@pytest.mark.parametrize("value", [0x06, 0x0E, 0x04])
def test_reset_control_register(machine, value):
    bus, events = machine
    bus.write(0xCF9, 1, 0x02)                 # Linux writes SYS_RST first
    assert events == []
    assert bus.read(0xCF9, 1) == 0x02
    bus.write(0xCF9, 1, value)
    assert [(e.kind, e.status) for e in events] == [("reset", 0)]
    assert "0xcf9" in events[0].reason


@pytest.mark.parametrize("size, value, status", [(1, 0x31, 0x63), (1, 0, 1), (2, 0x100, 0x201), (4, 3, 7)])
def test_isa_debug_exit(machine, size, value, status):
    bus, events = machine
    bus.write(0x501, size, value)
    assert [(e.kind, e.status) for e in events] == [("exit", status)]
    assert str(status) in events[0].reason


def test_power_event_is_frozen():
    event = PowerEvent("reset", 0, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = "poweroff"


def test_wide_access_at_a_byte_port_is_split(machine):
    bus, events = machine
    assert bus.read(0xCF9, 2) == 0xFF00      # 0xCFA is not the power device's
