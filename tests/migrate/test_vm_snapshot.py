"""Saving a running VM to a file and carrying on from it in a new Machine.

A guest is paused after N exits (an observer asks for the pause), saved with
Machine.save, and the file restored into a freshly built Machine (new engine) that
runs to the end: the console output of both halves together must be what an
uninterrupted run prints, in every MMU mode. Damaged files are refused whole.
"""

import pytest

from pyvmm.errors import ConfigError, MigrationError, MigrationStreamError
from pyvmm.machine import Machine, VmConfig
from pyvmm.migrate import snapshot

POWER_OFF = (0, "guest powered off (ACPI S5 via port 0x604 value 0x2000)")


def _machine(kernel, out, mmu="ept", cmdline=""):
    return Machine(VmConfig(kernel=f"guests/build/{kernel}.elf", console=out.append, mmu=mmu, cmdline=cmdline))


def _uninterrupted(kernel, mmu="ept"):
    out = []
    result = _machine(kernel, out, mmu).run()
    return b"".join(out), result


def _pause_after(machine, n):
    seen = [0]

    def observer(vcpu, ex, outcome, ns):
        seen[0] += 1
        if seen[0] == n:
            vcpu.request_pause()

    machine.add_observer(observer)
    return seen


def _split_run(kernel, n, path, mmu="ept"):
    out = []
    m = _machine(kernel, out, mmu)
    _pause_after(m, n)
    assert m.run() is None, "the guest ended before the pause"
    m.save(path)
    m.close()
    result = Machine.restore(path, console=out.append).run()
    return b"".join(out), result


@pytest.mark.parametrize("mmu,kernel,n", [("ept", "lab", 500), ("ept", "lab", 4000), ("shadow", "lab", 2500),
                                          ("direct", "exceptions", 1200), ("ept", "exceptions32", 3000)])
def test_restored_vm_finishes_with_the_same_output(tmp_path, mmu, kernel, n):
    expected = _uninterrupted(kernel, mmu)
    assert expected[1] == POWER_OFF
    assert _split_run(kernel, n, tmp_path / "vm.snap", mmu) == expected


def test_timer_guest_keeps_counting_ticks_across_a_restore(tmp_path):
    out, result = _split_run("timer", 20, tmp_path / "timer.snap")
    text = out.decode()
    assert result == POWER_OFF
    assert "timer: 50 ticks" in text and "FAIL" not in text
    assert "ok timer_ticks" in text


def test_a_vm_can_be_saved_twice_and_the_cpu_state_survives_exactly(tmp_path):
    out = []
    m = _machine("lab", out)
    _pause_after(m, 1500)
    assert m.run() is None
    first = m.vcpu.save()
    m.save(tmp_path / "a.snap")
    m.close()
    again = Machine.restore(tmp_path / "a.snap", console=out.append)
    second = again.vcpu.save()
    assert second["cpu"] == first["cpu"]
    assert second["controls"] == first["controls"] and second["halted"] == first["halted"]
    assert second["tsc"] >= first["tsc"]
    assert again.run() == POWER_OFF


def _saved(tmp_path):
    m = _machine("hello", [])
    _pause_after(m, 3)
    assert m.run() is None
    path = tmp_path / "hello.snap"
    m.save(path)
    m.close()
    return path


def test_damaged_files_are_refused_before_anything_is_built(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    data = path.read_bytes()
    built = []
    monkeypatch.setattr(Machine, "__init__", lambda self, config: built.append(config))
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(data[:len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    corrupted = tmp_path / "corrupted.snap"
    corrupted.write_bytes(bytes(flipped))
    for bad in (truncated, corrupted):
        with pytest.raises(MigrationStreamError) as err:
            Machine.restore(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(MigrationError):
        Machine.restore(tmp_path / "missing.snap")
    assert built == []
    assert path.read_bytes() == data


@pytest.mark.parametrize("field,path,value", [
    ("cpl", ("cpu", "cpl"), 7),
    ("rip", ("cpu", "rip"), -1),
    ("tr", ("cpu", "segments", "tr"), [0, 0, 0]),
    ("xmm", ("cpu", "xmm"), b"\0" * 3),
    ("kind", ("pending_event",), {"vector": 14, "kind": 9, "error_code": None, "cr2": None, "fault_rip": None}),
])
def test_a_bad_vcpu_field_is_refused_by_name(tmp_path, field, path, value):
    snap = snapshot.load_file(_saved(tmp_path))
    state = snap.vcpus[0]
    target = state
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(MigrationStreamError, match=field):
        Machine.from_snapshot(snap)


def test_saving_needs_a_paused_vm(tmp_path):
    m = _machine("hello", [])
    assert m.run() == POWER_OFF
    with pytest.raises(ConfigError, match="stopped"):
        m.save(tmp_path / "late.snap")
    assert not (tmp_path / "late.snap").exists()
