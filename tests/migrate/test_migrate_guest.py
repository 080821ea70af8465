"""The memory-writing guest (guests/memdirty.S) moved while it runs: live migration over
loopback TCP and save + restore, through the CLI as a user does it.

The guest rewrites pages of an 8 MiB-based region at a set rate and folds every word it
overwrites into a running checksum it prints once a round, so a page lost or delivered
stale by the move changes every line after it. Its output depends only on its command
line; the tests compare the source's console output followed by the destination's with
an unmigrated run, and the unmigrated run with the Python model of the guest.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pyvmm.machine import Machine, VmConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNEL = os.path.join(ROOT, "guests", "build", "memdirty.elf")
# 4 MiB region (1024 pages), 97 pages a 100 ms round, 16 rounds: the writes wrap around
# the region, so later checksums read back pages written before the move.
ARGS = {"mem": 4, "rate": 4000, "round_ms": 100, "rounds": 16}
CMDLINE = " ".join(f"{k}={v}" for k, v in ARGS.items())


def model_output(mem, rate, round_ms, rounds):
    """What guests/memdirty.S prints, computed as its comment describes."""
    a, c, m = 6364136223846793005, 1442695040888963407, 2 ** 64 - 1
    words = [0] * (mem * 256 * 512)
    per_round = rate * round_ms // 4096
    x, s, k = 0x9E3779B97F4A7C15, 0, 0
    lines = [f"memdirty: {mem} MiB at 0x800000, {rate} kB/s, {per_round} pages per round of "
             f"{round_ms} ms, {rounds} rounds"]
    for r in range(1, rounds + 1):
        for _ in range(per_round):
            base = (k % (mem * 256)) * 512
            k += 1
            for i in range(base, base + 512):
                x = (x * a + c) & m
                s = (((s << 5) | (s >> 59)) & m) ^ words[i] ^ x
                words[i] = x
        lines.append(f"memdirty: round {r} checksum {s:#x}")
    lines.append(f"memdirty: {k} pages written, checksum {s:#x}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def unmigrated():
    """The console output of one uninterrupted run (in process)."""
    out = []
    machine = Machine(VmConfig(kernel=KERNEL, cmdline=CMDLINE, console=out.append))
    assert machine.run() == (0, "guest powered off (ACPI S5 via port 0x604 value 0x2000)")
    return b"".join(out)


def test_unmigrated_run_prints_what_the_python_model_computes(unmigrated):
    assert unmigrated == model_output(**ARGS)


def test_idle_guest_writes_nothing_and_keeps_its_checksum():
    out = []
    machine = Machine(VmConfig(kernel=KERNEL, cmdline="rate=0 round_ms=20 rounds=3", console=out.append))
    assert machine.run()[0] == 0
    assert b"".join(out) == model_output(mem=8, rate=0, round_ms=20, rounds=3)


@pytest.mark.parametrize("cmdline, problem", [
    ("mem=100", b"is not inside RAM"),              # 8 + 100 MiB in a 64 MiB VM
    ("mem=0", b"mem= must be at least 1"),
    ("round_ms=15", b"a positive multiple of 10"),
])
def test_bad_command_line_fails_with_a_message(cmdline, problem):
    out = []
    machine = Machine(VmConfig(kernel=KERNEL, cmdline=cmdline, console=out.append))
    status, _ = machine.run()
    assert status == 3 and problem in b"".join(out)       # isa-debug-exit code 1


# ---- through the CLI ----

@pytest.fixture
def sock_path():
    with tempfile.TemporaryDirectory(prefix="pvmig") as d:   # AF_UNIX paths are short
        yield f"{d}/ctl.sock"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pyvmm(*args):
    return subprocess.run([sys.executable, "-m", "pyvmm.cli", *args], capture_output=True, timeout=60,
                          cwd=ROOT)


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "pyvmm.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)


def _boot_with_control(sock_path):
    boot = _popen("boot", KERNEL, "--cmdline", CMDLINE, "--control", sock_path)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)                       # a few rounds in: the move happens mid-run
    return boot


def _assert_moved_mid_run(source_out, dest_out, unmigrated):
    assert b"checksum" in source_out and source_out != unmigrated   # some rounds ran here ...
    assert dest_out and b"pages written" in dest_out                 # ... the rest there
    assert source_out + dest_out == unmigrated


def test_live_migration_mid_run_continues_with_identical_output(sock_path, unmigrated):
    port = _free_port()
    receiver = _popen("receive", "--listen", f"127.0.0.1:{port}")
    boot = _boot_with_control(sock_path)
    try:
        migrated = _pyvmm("ctl", sock_path, "migrate", f"127.0.0.1:{port}")
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert b"migration completed" in migrated.stdout
        src_out, src_err = boot.communicate(timeout=30)
        dst_out, dst_err = receiver.communicate(timeout=30)
    finally:
        boot.kill()
        receiver.kill()
    assert boot.returncode == 0 and b"migrated to 127.0.0.1" in src_err
    assert receiver.returncode == 0 and b"received the VM" in dst_err, dst_err
    _assert_moved_mid_run(src_out, dst_out, unmigrated)


def test_save_and_restore_mid_run_continues_with_identical_output(sock_path, tmp_path, unmigrated):
    snap = tmp_path / "memdirty.snap"
    boot = _boot_with_control(sock_path)
    try:
        assert _pyvmm("ctl", sock_path, "pause").returncode == 0
        saved = _pyvmm("ctl", sock_path, "save", str(snap))
        assert saved.returncode == 0, saved.stdout + saved.stderr
        assert _pyvmm("ctl", sock_path, "quit").returncode == 0
        src_out, src_err = boot.communicate(timeout=30)
    finally:
        boot.kill()
    assert boot.returncode == 0, src_err
    restored = _pyvmm("restore", str(snap))
    assert restored.returncode == 0, restored.stderr
    _assert_moved_mid_run(src_out, restored.stdout, unmigrated)
