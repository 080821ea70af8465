"""Bundled guests booted under pyvmm: what a user sees."""
import subprocess
import sys


def test_hello_prints_and_powers_off(boot):
    status, reason, text, m = boot("hello", cmdline="console=ttyS0 answer=42")
    assert status == 0, reason
    assert "Hello from the pyvmm hello guest!" in text
    assert "answer=42" in text
    assert "powered off" in reason
    assert m.vcpu.stats.count  # it exited at least for its port I/O


def test_hello32_boots_in_protected_mode(boot):
    status, reason, text, _ = boot("hello32")
    assert status == 0, reason
    assert "Hello from the pyvmm hello guest!" in text


def test_crash_guest_triple_faults(boot):
    status, reason, text, m = boot("crash")
    assert status == 1
    assert "triple fault" in reason
    assert "about to triple fault" in text
    assert m.vcpu.last_exits[-1][0].reason.name == "TRIPLE_FAULT"


def test_cli_boot_default_guest_exit_status_zero():
    r = subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", "--stats"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Hello from the pyvmm hello guest!" in r.stdout
    assert "IO_INSTRUCTION(30)" in r.stderr


def test_cli_bad_kernel_one_line_exit_2(tmp_path):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"\x7fELF" + b"\x02" * 10)   # truncated ELF header
    r = subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_trace_json_lines(guest):
    import json
    r = subprocess.run([sys.executable, "-m", "pyvmm.cli", "trace", guest("hello"), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert recs and recs[0]["reason"] == "IO_INSTRUCTION" and recs[0]["reason_number"] == 30
    assert all("insn" in rec and "action" in rec for rec in recs)
    assert any(rec["insn"].startswith("out") for rec in recs)
