"""VM snapshots: a whole VM (config, disks, vCPU, RAM, every platform device, PV state)
written to a file and read back restores a VM that behaves as the original; truncated,
corrupted, foreign and newer files are refused with a clear error and nothing is
restored; a failed save leaves no file."""

import io
import os
import struct
import zlib

import pytest

from pyvmm.devices.cmos import Mc146818
from pyvmm.devices.irq import IrqLine
from pyvmm.devices.pic import PicPair
from pyvmm.devices.pit import I8254
from pyvmm.devices.power import PowerControl
from pyvmm.devices.serial import Serial16550
from pyvmm.devices.sysctl import SystemControlB
from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate import snapshot as snapshot_mod
from pyvmm.migrate import stream as S
from pyvmm.migrate.snapshot import (Snapshot, load_file, read_snapshot, restore_devices,
                                    restore_memory, save_devices, save_file, write_snapshot)
from pyvmm.mm.layout import PAGE_SIZE
from pyvmm.mm.memory import GuestMemory

RAM = 2 << 20
CONFIG = {"kernel": "guests/build/hello.elf", "initrd": None, "cmdline": "console=ttyS0",
          "mmu": "ept", "exception_bitmap": 0, "rdtsc_exiting": False, "pv": False}
_BACKEND = {"state": 4, "error": None, "connect_error": None, "rings": {"ring-ref": [8, 70, 70]}, "port": 5,
            "served": [0, 1, 69]}
DISKS = [{"path": "/srv/disk.qcow2", "format": "qcow2", "readonly": False, "devid": 51712, "sectors": 8192,
          "backend": _BACKEND},
         {"path": "/srv/seed.img", "format": "raw", "readonly": True, "devid": 51728, "sectors": 2048,
          "backend": dict(_BACKEND, state=2, rings=None, port=None, served=[0, 0, 0])}]
VCPU = {"rip": 0xFFFF_FFFF_8100_0000, "rflags": 0x202, "cr3": 0x9000, "tsc_offset": -5,
        "fpu": b"\x7f" * 512, "pending_event": None}


class Clock:
    def __init__(self, ns):
        self.ns = ns

    def __call__(self):
        return self.ns


class Vm:
    """The stateful parts of a Machine, without the CPU engine: RAM and the platform
    devices wired as pyvmm.machine.Platform wires them, on fake clocks."""

    def __init__(self, clock_ns=10**9, wall=1_700_000_000):
        self.clock = Clock(clock_ns)
        self.memory = GuestMemory(RAM)
        self.out = []
        pic = PicPair()
        pit = I8254(self.clock, irq=IrqLine(pic, 0))
        self.devices = {"pic": pic, "pit": pit,
                        "serial": Serial16550(self.out.append, irq=IrqLine(pic, 4)),
                        "cmos": Mc146818(lambda: wall, RAM), "power": PowerControl(lambda e: None),
                        "sysctl": SystemControlB(pit)}

    def snapshot(self):
        return Snapshot(config=dict(CONFIG), ram_size=RAM, vcpus={0: dict(VCPU)},
                        devices=save_devices(self.devices), disks=[dict(d) for d in DISKS],
                        memory=self.memory.view)


def _running_vm():
    vm = Vm()
    d = vm.devices
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xEE),
                        (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01)):
        d["pic"].io_write(port, 1, value)
    d["pit"].io_write(0x43, 1, 0x34)
    d["pit"].io_write(0x40, 1, 0x9C)
    d["pit"].io_write(0x40, 1, 0x2E)
    vm.clock.ns += 25_000_000
    d["pit"].advance(vm.clock.ns)                 # IRQ 0 latched
    for port, value in ((0x3FB, 0x03), (0x3FA, 0xC7), (0x3FC, 0x0B), (0x3F9, 0x01)):
        d["serial"].io_write(port, 1, value)
    d["serial"].feed(b"typed ahead")              # IRQ 4 pending, bytes in the FIFO
    d["cmos"].io_write(0x70, 1, 0x0F)
    d["cmos"].io_write(0x71, 1, 0xAA)
    d["sysctl"].io_write(0x61, 1, 0x03)
    vm.memory.write(0x1000, b"kernel text")
    vm.memory.write(RAM - PAGE_SIZE, bytes(range(256)) * 16)
    return vm


def _saved(vm):
    out = io.BytesIO()
    write_snapshot(out, vm.snapshot())
    return out.getvalue()


def _restore(data, clock_ns=7 * 10**9):
    snap = read_snapshot(io.BytesIO(data), "test.snap")
    vm = Vm(clock_ns)
    vm.memory.write(0x5000, b"stale bytes the loader left")
    restore_memory(vm.memory, snap)
    restore_devices(vm.devices, snap.devices)
    return vm, snap


def _behaviour(vm):
    """What the guest sees next: interrupt vectors in order, UART bytes, timer deadline."""
    d = vm.devices
    seen = [d["pic"].acknowledge()]
    d["pic"].io_write(0x20, 1, 0x20)
    seen.append(d["pic"].acknowledge())
    seen.append([d["serial"].io_read(0x3F8, 1) for _ in range(11)])
    seen.append(d["pit"].next_deadline_ns(vm.clock.ns) - vm.clock.ns)
    d["cmos"].io_write(0x70, 1, 0x0F)
    seen.append(d["cmos"].io_read(0x71, 1))
    return seen


def test_round_trip_restores_every_part():
    vm = _running_vm()
    data = _saved(vm)
    other, snap = _restore(data)
    assert snap.config == CONFIG and snap.disks == DISKS and snap.vcpus == {0: VCPU}
    assert snap.ram_size == RAM
    assert bytes(other.memory.view) == bytes(vm.memory.view)
    assert save_devices(other.devices) == save_devices(vm.devices)   # clocks differ: PIT is relative
    mine, theirs = _behaviour(other), _behaviour(vm)
    assert abs(mine.pop(3) - theirs.pop(3)) <= 839      # the timer phase, to one PIT tick
    assert mine == theirs


def test_zero_pages_are_not_written():
    vm = _running_vm()
    snap = read_snapshot(io.BytesIO(_saved(vm)))
    assert sorted(snap.pages) == [1, RAM // PAGE_SIZE - 1]
    assert len(_saved(vm)) < 3 * PAGE_SIZE + 4096


def test_save_file_and_load_file(tmp_path):
    vm = _running_vm()
    path = tmp_path / "vm.snap"
    save_file(path, vm.snapshot())
    assert load_file(path).pages == read_snapshot(io.BytesIO(_saved(vm))).pages
    assert os.listdir(tmp_path) == ["vm.snap"]


def test_a_failed_save_leaves_no_file(tmp_path):
    vm = _running_vm()
    snap = vm.snapshot()
    snap.devices["pit"] = {"not plain": object()}
    with pytest.raises(MigrationStreamError, match="cannot be written"):
        save_file(tmp_path / "vm.snap", snap)
    assert os.listdir(tmp_path) == []


def test_load_file_names_a_missing_file(tmp_path):
    with pytest.raises(MigrationError, match=r"nothing\.snap: No such file"):
        load_file(tmp_path / "nothing.snap")


# --- refused files: nothing is restored ---------------------------------------------

def _refused(data, match):
    with pytest.raises(MigrationStreamError, match=match):
        _restore(data)


def test_every_truncation_is_refused():
    data = _saved(_running_vm())
    for cut in list(range(0, 64)) + list(range(64, len(data), 997)) + [len(data) - 1]:
        _refused(data[:cut], "truncated")


def test_corrupted_bytes_are_refused():
    data = _saved(_running_vm())
    for offset in list(range(16, len(data), 1499)) + [len(data) - 2]:
        bad = bytearray(data)
        bad[offset] ^= 0x40
        _refused(bytes(bad), "crc32 mismatch|payload length .* over the limit|corrupted")


def test_a_newer_stream_version_is_refused():
    data = bytearray(_saved(_running_vm()))
    struct.pack_into("<I", data, 8, S.FORMAT_VERSION + 1)
    struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[:12])))
    _refused(bytes(data), f"version {S.FORMAT_VERSION + 1} is newer than this pyvmm reads")


def _records_with_config(**change):
    vm = _running_vm()
    records = list(snapshot_mod.snapshot_records(vm.snapshot()))
    config = S.decode_value(records[0].blob)
    config.update(change)
    records[0] = S.DeviceRecord(snapshot_mod.CONFIG, bytes(S.encode_value(config)))
    return records


def _stream(records):
    out = io.BytesIO()
    S.write_stream(out, records)
    return out.getvalue()


def test_a_newer_snapshot_format_is_refused():
    _refused(_stream(_records_with_config(format=snapshot_mod.SNAPSHOT_FORMAT + 1)),
             f"snapshot format {snapshot_mod.SNAPSHOT_FORMAT + 1} is newer than this pyvmm reads")


def test_a_format_2_snapshot_with_disks_is_refused():
    """Format 2 never held a disk (its saves refused one); its DISK map had other keys."""
    _refused(_stream(_records_with_config(format=2)), "snapshot format 2 with DISK records")
    records = [r for r in _records_with_config(format=2) if not isinstance(r, S.DiskRecord)]
    assert snapshot_mod.read_snapshot(io.BytesIO(_stream(records))).disks == []


def test_a_format_1_snapshot_is_read_as_a_guest_without_pv():
    records = [r for r in _records_with_config(format=1) if not isinstance(r, S.DiskRecord)]
    config = S.decode_value(records[0].blob)
    del config["pv"]
    records[0] = S.DeviceRecord(snapshot_mod.CONFIG, bytes(S.encode_value(config)))
    snap = snapshot_mod.read_snapshot(io.BytesIO(_stream(records)))
    assert snap.config["pv"] is False
    _refused(_stream([r for r in _records_with_config(format=1) if not isinstance(r, S.DiskRecord)]),
             "snapshot format 1 with a 'pv' config field")


@pytest.mark.parametrize("change, match", [
    ({"ram_size": 12345}, r"RAM size 12345 is not a positive multiple of 4096"),
    ({"mmu": 7}, r"config state field 'mmu': a int, expected a string"),
    ({"cmdline": None}, r"'cmdline': a NoneType"),
    ({"smp": 4}, r"unknown field\(s\) 'smp'"),
])
def test_a_bad_config_is_refused(change, match):
    _refused(_stream(_records_with_config(**change)), match)


def test_a_live_migration_stream_is_not_a_snapshot():
    data = _stream([S.DeviceRecord("migration/begin", bytes(S.encode_value({"protocol": 1})))])
    _refused(data, r"not a VM snapshot \(the first record is migration/begin")


@pytest.mark.parametrize("extra, match", [
    (S.MemoryRecord((S.Page(RAM // PAGE_SIZE, S.PageEncoding.RAW, bytes(PAGE_SIZE)),)),
     r"page 0x200 is outside the 2097152-byte RAM"),
    (S.MemoryRecord((S.Page(1, S.PageEncoding.RAW, bytes(PAGE_SIZE)),)), r"page 0x1 appears twice"),
    (S.MemoryRecord((S.Page(3, S.PageEncoding.XBZRLE, b"\x00\x01a"),)), r"XBZRLE; a snapshot carries RAW"),
    (S.DeviceRecord("pic", bytes(S.encode_value({}))), r"device 'pic' appears twice"),
    (S.DeviceRecord("rtc2", b"\x42"), r"rtc2: state value: unknown state value kind 66"),
    (S.DeviceRecord("rtc2", bytes(S.encode_value([1]))), r"device 'rtc2' state is a list"),
    (S.VcpuRecord(0, {}), r"vCPU 0 appears twice"),
    (S.DiskRecord({"path": "/x", "format": "vmdk", "readonly": False}), r"'format': 'vmdk' is not one of"),
    (S.DeviceRecord("snapshot/config", b""), r"snapshot/config does not belong in a snapshot"),
])
def test_inconsistent_records_are_refused(extra, match):
    records = list(snapshot_mod.snapshot_records(_running_vm().snapshot()))
    _refused(_stream(records + [extra]), match)


def test_a_snapshot_without_vcpu_is_refused():
    records = [r for r in snapshot_mod.snapshot_records(_running_vm().snapshot())
               if not isinstance(r, S.VcpuRecord)]
    _refused(_stream(records), "holds no vCPU state")


def test_a_refused_device_state_restores_no_device():
    vm = _running_vm()
    snap = read_snapshot(io.BytesIO(_saved(vm)))
    snap.devices["sysctl"] = {"value": 0xFF, "refresh": 0}       # the last one restored is bad
    target = Vm(3 * 10**9)
    before = save_devices(target.devices)
    with pytest.raises(MigrationStreamError, match=r"system control port B state field 'value'"):
        restore_devices(target.devices, snap.devices)
    assert save_devices(target.devices) == before


def test_device_names_must_match_the_vm():
    snap = read_snapshot(io.BytesIO(_saved(_running_vm())))
    del snap.devices["cmos"]
    snap.devices["hpet"] = {}
    with pytest.raises(MigrationStreamError, match=r"missing \['cmos'\], unknown \['hpet'\]"):
        restore_devices(Vm().devices, snap.devices)


def test_ram_size_must_match_the_vm():
    snap = read_snapshot(io.BytesIO(_saved(_running_vm())))
    memory = GuestMemory(2 * RAM)
    with pytest.raises(MigrationError, match=r"snapshot RAM is 2097152 bytes, the VM has 4194304"):
        restore_memory(memory, snap)
