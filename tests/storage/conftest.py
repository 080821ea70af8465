import json
import shutil
import subprocess

import pytest

HAVE_QEMU = shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-img/qemu-io not installed")


def qemu_img(*args, check=True):
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True, check=check)


def qemu_check(path):
    """qemu-img check --output json as a dict (exit status 0/2/3 all give a report)."""
    r = qemu_img("check", "--output", "json", path, check=False)
    assert r.returncode in (0, 2, 3), r.stderr
    return json.loads(r.stdout)


def qemu_io(path, *commands, fmt="qcow2"):
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    return subprocess.run(cmd + [str(path)], capture_output=True, text=True, check=True).stdout


def pattern(offset, length, seed=1):
    """Deterministic non-repeating bytes, different per offset."""
    import random
    return random.Random(offset * 7919 + seed).randbytes(length)


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
