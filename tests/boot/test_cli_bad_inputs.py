"""Bad kernels and initrds through `pyvmm boot`: one line naming the file and the
problem, exit status 2, no traceback, and nothing run."""
import subprocess
import sys

import pytest

from bootimages import MiB, bzimage, elf, write


def pyvmm_boot(*args):
    return subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_refused(r, path, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("name,data,words", [
    ("truncated.elf", elf(64)[:30], ("ELF",)),
    ("corrupt.elf", b"\x7fELF" + bytes(60), ()),
    ("cut-in-segment.elf", elf(64, segments=[(0x100000, b"\xf4" * 4096, 0x1000)])[:200], ("trunc",)),
    ("huge.elf", elf(64, segments=[(0x100000, b"\xf4" * 64, 96 * MiB)]), ("MiB",)),
    ("old.bzimage", bzimage(version=0x0204), ("2.04",)),
    ("truncated.bzimage", bzimage()[:0x300], ("trunc",)),
    ("random.bin", bytes(range(256)) * 8, ("not an ELF or bzImage",)),
])
def test_bad_kernel(tmp_path, name, data, words):
    path = write(tmp_path, name, data)
    assert_refused(pyvmm_boot(path, "-m", "64M"), path, *words)


def test_initrd_that_does_not_fit(tmp_path):
    kernel = write(tmp_path, "k.elf", elf(64))
    initrd = write(tmp_path, "big.cpio", bytes(70 * MiB))
    assert_refused(pyvmm_boot(kernel, initrd, "-m", "64M"), initrd, "does not fit")


def test_missing_kernel(tmp_path):
    path = tmp_path / "nope.elf"
    assert_refused(pyvmm_boot(path), path, "No such file")


def test_bad_memory_size(tmp_path):
    kernel = write(tmp_path, "k.elf", elf(64))
    r = pyvmm_boot(kernel, "-m", "lots")
    assert r.returncode == 2 and "lots" in r.stderr and "Traceback" not in r.stderr


def test_garbage_code_stops_with_reason_and_last_exits(tmp_path):
    """A kernel whose entry point is garbage: #UD with no IDT -> #DF -> triple fault."""
    path = write(tmp_path, "garbage.elf", elf(64, segments=[(0x100000, b"\x0f\xff" * 32, 0x1000)]))
    r = pyvmm_boot(path)
    assert r.returncode == 1
    assert "triple fault" in r.stderr
    assert "last exits" in r.stderr
