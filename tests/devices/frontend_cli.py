"""The CLI refusing a frontend guest's device argument, as the blkfront and netfront
tests both check it: exit status 2, nothing on stdout, one "pyvmm: " line naming the
problem on stderr."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def assert_boot_refused(kernel, option, arg, problem):
    result = subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", kernel, option, arg],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("pyvmm: ") and problem in line
