"""The control socket on a real Machine: pause, save, resume, migrate, quit, and the CLI.

In process: MachineTarget drives a spinning guest (no exits: pausing it needs the
forced kick) and a halting one (pausing it must wake the HLT wait), with the
events a control client would see. Through subprocesses: `pyvmm boot --control`,
`pyvmm ctl status|pause|save|quit`, then `pyvmm restore FILE` finishes the guest's
computation with the checksum an uninterrupted run prints; the same for a live
migration over loopback, in process and with `pyvmm receive`.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyvmm.control.machine_target import MachineTarget
from pyvmm.errors import PyvmmError
from pyvmm.machine import Machine, VmConfig
from pyvmm.migrate.receiver import open_listener

SPIN_ITERS = 40_000_000
# What `pyvmm boot guests/build/spin.elf --cmdline iters=40000000` prints when
# uninterrupted (measured; the Python model is in guests/spin.S).
SPIN_CHECKSUM = b"spin: checksum 0x83b405157aef07ea"


def _target(kernel, cmdline=""):
    out, events = [], []
    machine = Machine(VmConfig(kernel=f"guests/build/{kernel}.elf", cmdline=cmdline, console=out.append))
    target = MachineTarget(machine, emit=lambda name, data=None: events.append((name, data)))
    return target, out, events


def test_pause_save_resume_quit_a_spinning_guest(tmp_path):
    target, out, events = _target("spin", f"iters={SPIN_ITERS}")
    target.start()
    time.sleep(0.2)
    assert target.status()["status"] == "running"
    with pytest.raises(PyvmmError, match="pause it first"):
        target.save(str(tmp_path / "running.snap"))
    assert not (tmp_path / "running.snap").exists()
    target.pause()
    st = target.status()
    assert st["status"] == "paused" and st["exits"] > 0
    with pytest.raises(PyvmmError, match="is paused"):
        target.pause()
    saved = target.save(str(tmp_path / "spin.snap"))
    assert saved["bytes"] == os.path.getsize(tmp_path / "spin.snap") > 0
    target.resume()
    assert target.status()["status"] == "running"
    target.quit()
    assert target.wait(5) == (0, "quit through the control socket")
    assert [name for name, _ in events] == ["STOP", "RESUME", "SHUTDOWN"]
    with pytest.raises(PyvmmError, match="shut down"):
        target.resume()
    assert SPIN_CHECKSUM not in b"".join(out)       # it was stopped long before the end


def test_a_halting_guest_pauses_and_finishes_after_resume(tmp_path):
    target, out, events = _target("timer")
    target.start()
    time.sleep(0.15)
    target.pause()
    target.save(str(tmp_path / "timer.snap"))
    target.resume()
    status, reason = target.wait(10)
    text = b"".join(out).decode()
    assert status == 0 and "timer: 50 ticks" in text and "FAIL" not in text
    assert [name for name, _ in events] == ["STOP", "RESUME", "SHUTDOWN"]
    restored = Machine.restore(tmp_path / "timer.snap", console=out.append)
    assert restored.run()[0] == 0


def test_live_migration_over_loopback_carries_the_computation_on(tmp_path):
    target, out, events = _target("spin", f"iters={SPIN_ITERS}")
    listener = open_listener("127.0.0.1:0")
    received = []
    rx = threading.Thread(target=lambda: received.append(Machine.receive_migration(listener, console=out.append)))
    rx.start()
    target.start()
    time.sleep(0.2)
    target.migrate("127.0.0.1", listener.getsockname()[1])
    with pytest.raises(PyvmmError, match="migration is in progress|has shut down|is paused"):
        target.pause()
    assert target.wait(20) == (0, f"migrated to 127.0.0.1:{listener.getsockname()[1]}")
    rx.join(20)
    machine, stats = received[0]
    assert stats["status"] == "completed"
    statuses = [data["status"] for name, data in events if name == "MIGRATION"]
    assert statuses[0] == "setup" and statuses[-1] == "completed" and "active" in statuses
    assert target.info_migrate()["status"] == "completed"
    assert SPIN_CHECKSUM not in b"".join(out)
    assert machine.run() == (0, "guest powered off (ACPI S5 via port 0x604 value 0x2000)")
    assert b"".join(out) == b"spin: %d iterations\n" % SPIN_ITERS + SPIN_CHECKSUM + b"\n"


def test_a_failed_migration_leaves_the_vm_running():
    target, out, events = _target("spin", f"iters={SPIN_ITERS}")
    target.start()
    target.migrate("127.0.0.1", _free_port())
    deadline = time.monotonic() + 10
    while target.info_migrate()["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "cannot connect" in target.info_migrate()["error"]
    assert target.status()["status"] == "running"
    target.quit()
    assert target.wait(5)[0] == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pyvmm(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pyvmm.cli", *args], capture_output=True, timeout=60, **kw)


def _boot_spin_with_control(sock_path):
    """`pyvmm boot spin --control SOCKET`, returned once the socket exists."""
    boot = subprocess.Popen([sys.executable, "-m", "pyvmm.cli", "boot", "guests/build/spin.elf",
                             "--cmdline", f"iters={SPIN_ITERS}", "--control", sock_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return boot


def test_cli_boot_with_control_then_restore_carries_on(sock_path, tmp_path):
    snap = tmp_path / "vm.snap"
    boot = _boot_spin_with_control(sock_path)
    try:
        status = _pyvmm("ctl", sock_path, "status")
        assert status.returncode == 0 and b"status: running" in status.stdout
        assert _pyvmm("ctl", sock_path, "pause").stdout.startswith(b"paused")
        assert b"status: paused" in _pyvmm("ctl", sock_path, "status").stdout
        saved = _pyvmm("ctl", sock_path, "save", str(snap))
        assert saved.returncode == 0 and f"saved to {snap}".encode() in saved.stdout
        failed = _pyvmm("ctl", sock_path, "migrate", f"127.0.0.1:{_free_port()}")     # nobody listens
        assert failed.returncode == 1 and b"migration failed" in failed.stdout
        assert b"status: paused" in _pyvmm("ctl", sock_path, "status").stdout
        assert _pyvmm("ctl", sock_path, "quit").returncode == 0
        out, err = boot.communicate(timeout=20)
    finally:
        boot.kill()
    assert boot.returncode == 0 and b"quit through the control socket" in err
    assert SPIN_CHECKSUM not in out
    restored = _pyvmm("restore", str(snap), "--stats")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.rstrip().endswith(SPIN_CHECKSUM)
    assert b"IO_INSTRUCTION" in restored.stderr


def test_cli_restore_refuses_a_damaged_file(tmp_path):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"PYVMM" + b"\0" * 100)
    result = _pyvmm("restore", str(bad))
    assert result.returncode == 2
    assert str(bad).encode() in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_migrate_to_pyvmm_receive(sock_path):
    port = _free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "pyvmm.cli", "receive", "--listen", f"127.0.0.1:{port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    boot = _boot_spin_with_control(sock_path)
    try:
        time.sleep(0.3)                 # the receiver is listening by now
        migrated = _pyvmm("ctl", sock_path, "migrate", f"127.0.0.1:{port}")
        assert migrated.returncode == 0, migrated.stderr
        assert b"migration completed" in migrated.stdout
        src_out, src_err = boot.communicate(timeout=20)
        dst_out, dst_err = receiver.communicate(timeout=30)
    finally:
        boot.kill()
        receiver.kill()
    assert boot.returncode == 0 and b"migrated to 127.0.0.1" in src_err
    assert SPIN_CHECKSUM not in src_out
    assert receiver.returncode == 0 and b"received the VM" in dst_err
    assert dst_out.rstrip().endswith(SPIN_CHECKSUM)
