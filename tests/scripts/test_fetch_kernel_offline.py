"""scripts/fetch_kernel.py and scripts/debpkg.py without network or apt."""

import os
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
sys.path.insert(0, SCRIPTS)

import debpkg  # noqa: E402
import fetch_kernel  # noqa: E402


def fake_bzimage(path, version=0x020F, magic=b"HdrS"):
    head = bytearray(0x400)
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = magic
    struct.pack_into("<H", head, 0x206, version)
    path.write_bytes(bytes(head))
    return path


def test_bzimage_protocol(tmp_path):
    assert fetch_kernel.bzimage_protocol(fake_bzimage(tmp_path / "k")) == (2, 15)
    assert fetch_kernel.bzimage_protocol(fake_bzimage(tmp_path / "k", 0x0206)) == (2, 6)
    with pytest.raises(debpkg.FetchError, match="HdrS"):
        fetch_kernel.bzimage_protocol(fake_bzimage(tmp_path / "k", magic=b"\x7fELF"))
    (tmp_path / "short").write_bytes(b"MZ")
    with pytest.raises(debpkg.FetchError, match="not a bzImage"):
        fetch_kernel.bzimage_protocol(tmp_path / "short")


def test_parse_control_and_depends():
    text = ("Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\n"
            "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n"
            "Description: meta\n more text\n\nPackage: other\n")
    f = debpkg.parse_control(text)
    assert f["Version"] == "6.1.192-2" and f["Description"] == "meta\nmore text"
    assert "other" not in f.values()
    assert debpkg.parse_depends(f["Depends"]) == [[("linux-image-6.1.0-56-cloud-amd64",
                                                    "6.1.192-2")]]
    assert debpkg.parse_depends("kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120) "
                                "| linux-initramfs-tool, libc6:amd64") == [
        [("kmod", None)], [("linux-base", None)],
        [("initramfs-tools", None), ("linux-initramfs-tool", None)], [("libc6", None)]]


def test_deb_filename_escapes_epoch():
    assert debpkg.deb_filename("busybox-static", "1:1.35.0-4", "amd64") == \
        "busybox-static_1%3a1.35.0-4_amd64.deb"


def run_script(tmp_path, *args, path_env):
    env = dict(os.environ, PATH=path_env, PYVMM_LINUX_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, "fetch_kernel.py"), *args],
                          capture_output=True, text=True, env=env)


def test_cached_kernel_needs_no_apt(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    k = fake_bzimage(cache / "vmlinuz-6.1.0-99-cloud-amd64")
    debpkg.write_stamp(cache / "kernel.json", package="linux-image-6.1.0-99-cloud-amd64",
                       version="6.1.999-1", file=str(k), size=k.stat().st_size)
    p = run_script(tmp_path, path_env=str(tmp_path / "nothing"))  # no apt on PATH
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{k}\n"
    assert "boot protocol 2.15" in p.stderr


def test_missing_apt_is_one_line_exit_2(tmp_path):
    p = run_script(tmp_path, path_env=str(tmp_path / "nothing"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "not found" in p.stderr


def test_dest_overrides_env(tmp_path, monkeypatch):
    monkeypatch.setenv(debpkg.CACHE_ENV, str(tmp_path / "e"))
    assert debpkg.cache_dir(None) == (tmp_path / "e").resolve()
    assert debpkg.cache_dir(str(tmp_path / "d")) == (tmp_path / "d").resolve()


@pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v dpkg-deb"],
                                   capture_output=True).returncode != 0,
                    reason="dpkg-deb not installed")
def test_extract_member_from_a_local_deb(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-image-0.0.0-1-test\nVersion: 0.0.0-1\nArchitecture: all\n"
        "Maintainer: test <test@example.invalid>\nDescription: test kernel\n")
    (root / "boot").mkdir()
    (root / "boot" / "config-0.0.0-1-test").write_text("CONFIG_X=y\n")
    fake_bzimage(root / "boot" / "vmlinuz-0.0.0-1-test")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "boot-vmlinuz-decoy").write_text("no\n")
    deb = tmp_path / "k.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                    str(deb)], check=True, capture_output=True)
    out = tmp_path / "out"
    out.mkdir()
    want = lambda n: n.startswith("boot/vmlinuz-") and "/" not in n[5:]  # noqa: E731
    member, path = debpkg.extract_member(deb, want, out)
    assert member == "boot/vmlinuz-0.0.0-1-test"
    assert path == out / "vmlinuz-0.0.0-1-test"
    assert fetch_kernel.bzimage_protocol(path) == (2, 15)
    assert sorted(p.name for p in out.iterdir()) == ["vmlinuz-0.0.0-1-test"]
    with pytest.raises(debpkg.FetchError, match="no matching file"):
        debpkg.extract_member(deb, lambda n: n == "bin/busybox", out)
