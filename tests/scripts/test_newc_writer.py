"""scripts/newc.py: the newc cpio writer, read back by an independent parser (and by
cpio(1) when Debian's cpio is installed). No network."""

import gzip
import io
import os
import shutil
import stat
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts")
sys.path.insert(0, SCRIPTS)

from newc import CpioWriter, gzip_file  # noqa: E402

FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor",
          "devminor", "rdevmajor", "rdevminor", "namesize", "check")


def parse_newc(buf):
    """Minimal reader written from buffer-format.rst, independent of the writer.

    Returns (records, trailer_end): records are dicts with the 13 header fields, "name",
    "data", "offset" (of the header) and "data_offset".
    """
    records, off = [], 0
    while True:
        assert off % 4 == 0, f"header at {off} is not 4-byte aligned"
        assert buf[off:off + 6] == b"070701", f"bad magic at {off}: {buf[off:off + 6]!r}"
        hdr = buf[off + 6:off + 110]
        assert len(hdr) == 104, "truncated header"
        rec = {}
        for i, f in enumerate(FIELDS):
            text = hdr[i * 8:(i + 1) * 8]
            assert all(c in b"0123456789abcdefABCDEF" for c in text), (f, text)
            rec[f] = int(text, 16)
        name_end = off + 110 + rec["namesize"]
        raw = buf[off + 110:name_end]
        assert raw.endswith(b"\0") and b"\0" not in raw[:-1], raw
        rec["name"] = raw[:-1].decode()
        rec["offset"] = off
        data_off = (name_end + 3) & ~3
        assert buf[name_end:data_off] == b"\0" * (data_off - name_end), "name padding not NUL"
        rec["data_offset"] = data_off
        rec["data"] = buf[data_off:data_off + rec["filesize"]]
        assert len(rec["data"]) == rec["filesize"], "truncated data"
        end = data_off + rec["filesize"]
        nxt = (end + 3) & ~3
        assert buf[end:nxt] == b"\0" * (nxt - end), "data padding not NUL"
        off = nxt
        if rec["name"] == "TRAILER!!!":
            return records, rec, off
        records.append(rec)


def sample(order=None):
    """An archive with a dir, a file, a symlink and device nodes; ``order`` permutes adds."""
    adds = [
        lambda w: w.add_dir("/bin"),
        lambda w: w.add_dir("dev", 0o755),
        lambda w: w.add_dir("tmp", 0o1777),
        lambda w: w.add_file("/bin/hello", b"hello, world\n", 0o755),   # 13 bytes: padded
        lambda w: w.add_file("empty", b""),
        lambda w: w.add_symlink("bin/sh", "hello"),
        lambda w: w.add_device("/dev/console", "c", 5, 1, 0o600),
        lambda w: w.add_device("dev/ttyS0", "c", 4, 64, 0o660),
        lambda w: w.add_device("dev/sda", "b", 8, 0, 0o660),
    ]
    if order:
        adds = [adds[i] for i in order]
    buf = io.BytesIO()
    with CpioWriter(buf) as w:
        for add in adds:
            add(w)
    return buf.getvalue()


def test_round_trip_fields():
    buf = sample()
    records, trailer, end = parse_newc(buf)
    by = {r["name"]: r for r in records}
    assert [r["name"] for r in records] == sorted(by)  # sorted, parents first
    assert set(by) == {"bin", "bin/hello", "bin/sh", "dev", "dev/console", "dev/sda",
                       "dev/ttyS0", "empty", "tmp"}

    assert by["bin"]["mode"] == stat.S_IFDIR | 0o755 and by["bin"]["nlink"] == 2
    assert by["tmp"]["mode"] == stat.S_IFDIR | 0o1777
    assert by["bin"]["filesize"] == 0

    f = by["bin/hello"]
    assert f["mode"] == stat.S_IFREG | 0o755 and f["nlink"] == 1
    assert f["filesize"] == 13 and f["data"] == b"hello, world\n"
    assert by["empty"]["mode"] == stat.S_IFREG | 0o644 and by["empty"]["filesize"] == 0

    ln = by["bin/sh"]
    assert stat.S_ISLNK(ln["mode"]) and stat.S_IMODE(ln["mode"]) == 0o777
    assert ln["data"] == b"hello" and ln["filesize"] == 5

    con = by["dev/console"]
    assert con["mode"] == stat.S_IFCHR | 0o600
    assert (con["rdevmajor"], con["rdevminor"]) == (5, 1) and con["filesize"] == 0
    assert (by["dev/ttyS0"]["rdevmajor"], by["dev/ttyS0"]["rdevminor"]) == (4, 64)
    assert by["dev/sda"]["mode"] == stat.S_IFBLK | 0o660
    assert (by["dev/sda"]["rdevmajor"], by["dev/sda"]["rdevminor"]) == (8, 0)

    for r in records:
        assert r["uid"] == r["gid"] == r["mtime"] == r["check"] == 0
        assert r["devmajor"] == r["devminor"] == 0
        assert r["data_offset"] % 4 == 0
        assert r["namesize"] == len(r["name"]) + 1
    assert sorted(r["ino"] for r in records) == list(range(1, len(records) + 1))

    assert trailer["filesize"] == 0 and trailer["namesize"] == len("TRAILER!!!") + 1
    assert end == len(buf) and len(buf) % 4 == 0


def test_deterministic_whatever_the_order():
    a = sample()
    assert a == sample()
    assert a == sample(order=[8, 7, 6, 5, 4, 3, 2, 1, 0])


def test_gzip_is_reproducible():
    def gz():
        out = io.BytesIO()
        with gzip_file(out) as g:
            g.write(sample())
        return out.getvalue()
    a = gz()
    assert a == gz()
    assert a[:2] == b"\x1f\x8b" and a[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    assert a[3] & 0x08 == 0  # FNAME flag clear: no file name stored
    assert gzip.decompress(a) == sample()


def test_rejects_bad_input():
    w = CpioWriter(io.BytesIO())
    w.add_dir("a")
    with pytest.raises(ValueError):
        w.add_dir("/a/")           # duplicate once normalized
    with pytest.raises(ValueError):
        w.add_file("a/../b", b"")
    with pytest.raises(ValueError):
        w.add_device("a/x", "p", 1, 1)
    with pytest.raises(ValueError):
        w.add_file("TRAILER!!!", b"")
    w.add_file("missing/parent", b"x")
    with pytest.raises(ValueError, match="parent directory missing is not in the archive"):
        w.close()
    # Without the check, an entry may go into a directory the kernel already has.
    buf = io.BytesIO()
    with CpioWriter(buf, check_parents=False) as w2:
        w2.add_file("root/file", b"x")
    assert [r["name"] for r in parse_newc(buf.getvalue())[0]] == ["root/file"]


def test_empty_archive_is_just_the_trailer():
    buf = io.BytesIO()
    CpioWriter(buf).close()
    records, trailer, end = parse_newc(buf.getvalue())
    assert records == [] and end == len(buf.getvalue()) == 124


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_cpio_tool_lists_it():
    out = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=sample(),
                         capture_output=True, check=True).stdout.decode()
    lines = {line.split()[-1] if " -> " not in line else line.split()[-3]: line
             for line in out.splitlines()}
    assert set(lines) == {"bin", "bin/hello", "bin/sh", "dev", "dev/console", "dev/sda",
                          "dev/ttyS0", "empty", "tmp"}
    assert lines["bin"].startswith("drwxr-xr-x")
    assert lines["tmp"].startswith("drwxrwxrwt")
    assert lines["bin/hello"].startswith("-rwxr-xr-x") and " 13 " in lines["bin/hello"]
    assert lines["bin/sh"].startswith("lrwxrwxrwx") and lines["bin/sh"].endswith("-> hello")
    assert lines["dev/console"].startswith("crw-------")
    assert " 5,   1 " in lines["dev/console"] or " 5, 1 " in lines["dev/console"]
    assert lines["dev/sda"].startswith("brw-rw----")
    assert "4,  64" in lines["dev/ttyS0"] or "4, 64" in lines["dev/ttyS0"]
