"""`pyvmm step`: the lab mode, driven from stdin the way a lab sheet or a test does."""
import subprocess
import sys


def step(guest, script, *extra):
    return subprocess.run([sys.executable, "-m", "pyvmm.cli", "step", guest, *extra], input=script,
                          capture_output=True, text=True, timeout=120)


def test_step_stops_at_io_and_shows_state(guest):
    r = step(guest("hello"), "regs\ndisas\nnext\npmem 0x4000 16\nexits\nc\n", "--cmdline", "lab=1", "--break", "io")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "exit #1: IO_INSTRUCTION (30, I/O instruction)" in out
    assert "exit #2: IO_INSTRUCTION" in out and "exit #3" not in out      # stopped twice, then continued
    assert "rip=" in out and "cr3=0x9000" in out                           # regs
    assert "=> 0x" in out and "out dx, al" in out                          # disas marks RIP
    assert "6c 61 62 3d 31" in out                                         # "lab=1" at the cmdline page
    assert "IO_INSTRUCTION(30)" in out                                     # exits table
    assert "Hello from the pyvmm hello guest!" in out


def test_step_quit_stops_the_vm_nonzero(guest):
    r = step(guest("hello"), "quit\n")
    assert r.returncode == 1
    assert "stopped by the user" in r.stderr
    assert "Hello from" not in r.stdout


def test_step_bad_break_name_exit_2(guest):
    r = step(guest("hello"), "", "--break", "cpuid,nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr and "Traceback" not in r.stderr


def test_step_bad_command_does_not_stop(guest):
    r = step(guest("hello"), "frobnicate\nmem zz\ncontinue\n")
    assert r.returncode == 0
    assert "unknown command 'frobnicate'" in r.stdout
    assert "mem:" in r.stdout
