"""`pyvmm bench ... --json` prints the documented shape (numbers are measured in bench/,
here only that every figure comes with its reference)."""
import json
import subprocess
import sys


def bench(*args):
    r = subprocess.run([sys.executable, "-m", "pyvmm.cli", "bench", *args, "--json", "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_exits_json_has_every_exit_and_its_floor():
    result = bench("exits", "--iters", "300")
    assert set(result) == {"cpuid", "vmcall", "inl_pio", "outl_pio", "rdmsr", "wrmsr", "mov_to_cr3"}
    for name, row in result.items():
        assert isinstance(row["exit_ns"], int) and isinstance(row["floor_ns"], int), name
        assert row["floor"]
    assert "python_exit_ns" in result["cpuid"]


def test_bench_guest_speed_json():
    result = bench("guest-speed", "--iters", "200000")
    assert result["pyvmm_s"] > 0 and result["bare_unicorn_s"] > 0 and result["speed_vs_bare"] > 0
