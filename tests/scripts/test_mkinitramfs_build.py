"""scripts/mkinitramfs.py built around a stand-in busybox (no network, no apt)."""

import gzip
import os
import stat
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mkinitramfs  # noqa: E402
from test_newc_writer import parse_newc  # noqa: E402

FAKE_BUSYBOX = b"\x7fELF" + bytes(range(256)) * 3 + b"xyz"  # odd size: exercises padding


def members(gz_bytes):
    records, _, end = parse_newc(gzip.decompress(gz_bytes))
    return {r["name"]: r for r in records}


def test_layout():
    m = members(mkinitramfs.build(FAKE_BUSYBOX))
    assert set(m) == {
        "bin", "bin/busybox", "bin/cat", "bin/echo", "bin/mount", "bin/poweroff", "bin/sh",
        "bin/sleep", "bin/uname", "dev", "dev/console", "dev/null", "dev/ttyS0", "init",
        "proc", "sys", "tmp"}
    assert m["bin/busybox"]["data"] == FAKE_BUSYBOX
    assert m["bin/busybox"]["mode"] == stat.S_IFREG | 0o755
    for a in ("sh", "mount", "echo", "cat", "poweroff", "sleep", "uname"):
        assert stat.S_ISLNK(m[f"bin/{a}"]["mode"]) and m[f"bin/{a}"]["data"] == b"busybox"
    devs = {n: (stat.S_ISCHR(r["mode"]), r["rdevmajor"], r["rdevminor"])
            for n, r in m.items() if n.startswith("dev/")}
    assert devs == {"dev/console": (True, 5, 1), "dev/ttyS0": (True, 4, 64),
                    "dev/null": (True, 1, 3)}
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        assert stat.S_ISDIR(m[d]["mode"])
    assert stat.S_IMODE(m["tmp"]["mode"]) == 0o1777
    assert m["init"]["mode"] == stat.S_IFREG | 0o755
    assert all(r["uid"] == r["gid"] == r["mtime"] == 0 for r in m.values())


def test_init_script():
    init = members(mkinitramfs.build(FAKE_BUSYBOX))["init"]["data"].decode()
    lines = init.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "mount -t proc proc /proc" in lines and "mount -t sysfs sysfs /sys" in lines
    assert "echo PYVMM-INIT-OK" in lines
    assert any("uname -r" in l for l in lines) and any("/proc/cmdline" in l for l in lines)
    assert lines.index("echo PYVMM-INIT-OK") < lines.index("poweroff -f")


def test_marker_and_extra():
    init = mkinitramfs.init_script("HELLO there", "echo one\necho two\n")
    lines = init.splitlines()
    assert "echo 'HELLO there'" in lines
    assert lines.index("echo one") < lines.index("echo two") < lines.index("poweroff -f")
    assert lines.index("echo 'HELLO there'") < lines.index("echo one")


def test_deterministic():
    a = mkinitramfs.build(FAKE_BUSYBOX, "M", "true")
    assert a == mkinitramfs.build(FAKE_BUSYBOX, "M", "true")
    assert a[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert a != mkinitramfs.build(FAKE_BUSYBOX, "N", "true")


def test_cli_with_local_busybox(tmp_path):
    bb = tmp_path / "busybox"
    bb.write_bytes(FAKE_BUSYBOX)
    outs = []
    for name in ("a.cpio.gz", "b.cpio.gz"):
        out = tmp_path / name
        p = subprocess.run(
            [sys.executable, os.path.join(SCRIPTS, "mkinitramfs.py"), "--busybox", str(bb),
             "--out", str(out), "--marker", "MARK", "--init-extra", "echo extra"],
            capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(out.resolve())
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    init = members(outs[0])["init"]["data"].decode()
    assert "echo MARK" in init and "echo extra" in init


def test_cli_bad_busybox(tmp_path):
    bb = tmp_path / "busybox"
    bb.write_bytes(b"#!/bin/sh\n")
    p = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "mkinitramfs.py"), "--busybox", str(bb),
         "--out", str(tmp_path / "x.gz")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "not an ELF" in p.stderr
