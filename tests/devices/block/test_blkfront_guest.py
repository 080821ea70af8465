"""The blkfront guest on `--disk` images, end to end: handshake, I/O through grants and the
ring, and what QEMU's tools then see in the file (qemu-img is the oracle, not the guest)."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from pyvmm.devices.block import Blkback
from pyvmm.devices.block.pattern import SECTOR_SIZE, pattern
from pyvmm.devices.block.vbd import DiskSpec, vbd_devid
from pyvmm.devices.xenbus import XenbusState, read_state
from pyvmm.errors import BadImageError, ConfigError
from pyvmm.machine import Machine, VmConfig

from ..frontend_cli import assert_boot_refused

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BLKFRONT = os.path.join(ROOT, "guests", "build", "blkfront.elf")
DISK_MIB = 4
DISK_SECTORS = DISK_MIB * 2048
FILL = 0x5A                         # what the disk holds before the guest runs
START, COUNT, SEED = 100, 1500, 7   # an odd range: partial pages at both ends
DISCARDED = 16                      # the guest discards the last 16 sectors of its range
POWEROFF = (0, "guest powered off (SCHEDOP_shutdown poweroff)")

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="needs qemu-img and qemu-io (qemu-utils)")


def qemu(*args):
    return subprocess.run(list(args), capture_output=True, text=True, check=True)


def make_disk(tmp_path, fmt, name="disk"):
    """A DISK_MIB image made by qemu-img, every byte FILL (written by qemu-io)."""
    path = tmp_path / f"{name}.{fmt}"
    qemu("qemu-img", "create", "-q", "-f", fmt, str(path), f"{DISK_MIB}M")
    qemu("qemu-io", "-f", fmt, "-c", f"write -q -P {FILL} 0 {DISK_MIB}M", str(path))
    return path


def expected_image():
    """The whole disk after the guest's test run: FILL, its pattern, zeros where it discarded."""
    end = START + COUNT
    return (bytes([FILL]) * (START * SECTOR_SIZE) + pattern(SEED, START, COUNT - DISCARDED)
            + bytes(DISCARDED * SECTOR_SIZE) + bytes([FILL]) * ((DISK_SECTORS - end) * SECTOR_SIZE))


def guest_write_requests(start, end, depth=8, pages=256, max_segs=11):
    """The sectors of each segment of each WRITE request the guest issues (its write_pattern)."""
    sector, k, requests = start, 0, []
    while sector < end:
        page = depth_used = 0
        while depth_used < depth and sector < end and page + max_segs <= pages:
            segments = []
            for j in range(1 + k % max_segs):
                if sector >= end:
                    break
                count = 1 + (k * 3 + j) % 7 if (k + j) % 4 == 3 else 8
                segments.append(min(count, end - sector))
                sector += segments[-1]
                page += 1
            requests.append(segments)
            depth_used += 1
            k += 1
    return requests


def guest_read_requests(start, end, segs, depth=8, pages=256):
    """How many READ requests the guest's read_range issues for [start, end)."""
    sector, count = start, 0
    while sector < end:
        page = used = 0
        while used < depth and sector < end and page + segs <= pages:
            for _ in range(segs):
                if sector >= end:
                    break
                sector += min(8, end - sector)
                page += 1
            count += 1
            used += 1
    return count


# (name, cmdline extra, Blkback class attributes, connected line tail, segments a request)
FEATURES = [
    ("both-ends", "", {}, ", flush, discard, persistent, indirect 256; requests of up to 32 segments", 32),
    ("frontend-without", " persistent=0 maxseg=11", {},
     ", flush, discard, indirect 256; requests of up to 11 segments", 11),
    ("backend-without", "", {"MAX_INDIRECT_SEGMENTS": 0, "PERSISTENT_GRANTS": False},
     ", flush, discard; requests of up to 11 segments", 11),
]


def boot(disks, cmdline=f"start={START} sectors={COUNT} seed={SEED}"):
    out = bytearray()
    m = Machine(VmConfig(kernel=BLKFRONT, pv=True, console=out.extend, disks=disks, cmdline=cmdline))
    return m, out


@pytest.mark.parametrize("features", FEATURES, ids=[f[0] for f in FEATURES])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_guest_writes_what_qemu_img_reads(tmp_path, fmt, features, monkeypatch):
    """With indirect requests and persistent grants negotiated on both ends, and with
    either end offering neither (the frontend falls back to 11-segment requests, the
    backend maps per request): the same bytes in the file."""
    name, extra, backend_attrs, connected, segs = features
    for attr, value in backend_attrs.items():
        monkeypatch.setattr(Blkback, attr, value)
    disk = make_disk(tmp_path, fmt)
    m, out = boot([f"{disk},format={fmt}"], cmdline=f"start={START} sectors={COUNT} seed={SEED}{extra}")
    backend = m.vbds[0].backend_path
    dom0 = m.pv.dom0.grant_table
    maps = []
    real_map = dom0.map_grant_ref
    monkeypatch.setattr(dom0, "map_grant_ref", lambda *a, **k: maps.append(a[1]) or real_map(*a, **k))
    assert m.run() == POWEROFF, out.decode()
    lines = out.decode().splitlines()
    assert not [line for line in lines if line.startswith("FAIL")], out.decode()
    assert lines[-1] == "blkfront: 19/19 checks passed"
    assert f"blkfront: device/vbd/51712 connected: {DISK_SECTORS} sectors, info 0{connected}" in lines
    writes = guest_write_requests(START, START + COUNT, max_segs=segs)
    longest = max(len(segments) for segments in writes)
    assert (longest > 11 if segs > 11 else longest == 11)       # indirect requests only if negotiated
    assert min(c for segments in writes for c in segments) < 8  # partial pages too
    assert f"blkfront: wrote {COUNT} sectors at {START} in {len(writes)} requests (1..{segs} segments, " \
           f"up to 8 in flight)" in lines
    reads = guest_read_requests(START, START + COUNT, segs)
    assert f"blkfront: read back {COUNT} sectors in {reads} requests: 0 bad sectors" in lines
    # the ring, every segment written and read back (the reads past the end are refused
    # before any page is mapped), and one indirect page per indirect request
    segments = 1 + sum(len(w) for w in writes) + (COUNT + 7) // 8 + (DISCARDED + 7) // 8
    if name == "both-ends":          # persistent grants: each page mapped once (ring, data, indirect)
        assert len(set(maps)) == len(maps) < 1 + 256 + 32
        assert len(maps) < segments
    else:                            # a map per segment and the ring
        assert len(maps) == segments
    assert dom0.mappings() == []     # and nothing stays mapped after the close
    # the guest closed the device and the backend followed it to Closed
    assert read_state(m.pv.xs, backend) == XenbusState.Closed
    assert m.vbds == []                                 # detached with the VM: image closed

    # QEMU's view of the file: exactly the expected bytes, and (qcow2) a consistent image
    expected = tmp_path / "expected.raw"
    expected.write_bytes(expected_image())
    result = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", str(disk), str(expected)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    converted = tmp_path / "converted.raw"
    qemu("qemu-img", "convert", "-f", fmt, "-O", "raw", str(disk), str(converted))
    assert converted.read_bytes() == expected_image()
    if fmt == "qcow2":
        check = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_readonly_disk_refuses_the_guests_writes(tmp_path):
    disk = make_disk(tmp_path, "raw")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    m, out = boot([f"{disk},readonly"])
    assert m.pv.xs.read(f"{m.vbds[0].backend_path}/info") == b"4"          # VDISK_READONLY
    assert m.pv.xs.read(f"{m.vbds[0].backend_path}/feature-discard") == b"0"
    assert m.run() == POWEROFF, out.decode()
    lines = out.decode().splitlines()
    assert "blkfront: read-only disk" in lines
    assert "blkfront: write on the read-only disk: status -1" in lines        # BLKIF_RSP_ERROR
    assert "ok readonly_write_refused" in lines and "ok readonly_read_okay" in lines
    assert lines[-1].startswith("blkfront: ") and lines[-1].endswith("checks passed")
    assert not [line for line in lines if line.startswith("FAIL")]
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_second_disk_gets_its_own_nodes_and_backend(tmp_path):
    first, second = make_disk(tmp_path, "raw", "a"), make_disk(tmp_path, "qcow2", "b")
    m, out = boot([str(first), f"{second},format=qcow2,readonly"])
    try:
        xs = m.pv.xs
        assert [v.devid for v in m.vbds] == [51712, 51728] == [vbd_devid(0), vbd_devid(1)]
        fe, be = m.vbds[1].frontend_path, m.vbds[1].backend_path
        assert fe == "/local/domain/1/device/vbd/51728"
        assert be == "/local/domain/0/backend/vbd/1/51728"
        assert xs.read(f"{fe}/backend") == be.encode() and xs.read(f"{fe}/backend-id") == b"0"
        assert xs.read(f"{be}/frontend") == fe.encode()
        assert (xs.read(f"{be}/dev"), xs.read(f"{be}/mode"), xs.read(f"{be}/type")) == (b"xvdb", b"r", b"qcow2")
        assert xs.read(f"{be}/sectors") == str(DISK_SECTORS).encode()
        assert read_state(xs, be) == XenbusState.InitWait
    finally:
        status = m.run()
    assert status == POWEROFF, out.decode()
    # the guest used xvda only; xvdb stayed waiting and was closed with the VM
    assert "blkfront: device/vbd/51712 connected" in out.decode()
    assert qemu("qemu-img", "check", str(second)).returncode == 0


@pytest.mark.parametrize("arg, problem", [
    ("{disk},format=vmdk", "unknown format 'vmdk' (raw or qcow2)"),
    ("{disk},cache=none", "unknown option 'cache=none'"),
    (",readonly", "the file name is empty"),
    ("{tmp}/missing.img", "missing.img: cannot open"),
])
def test_bad_disk_argument_exits_2_with_one_line(tmp_path, arg, problem):
    disk = make_disk(tmp_path, "raw")
    assert_boot_refused(BLKFRONT, "--disk", arg.format(disk=disk, tmp=tmp_path), problem)


def test_disk_needs_pv():
    with pytest.raises(ConfigError, match="--disk needs --pv"):
        Machine(VmConfig(kernel=BLKFRONT, disks=["x.img"]))


def test_disk_spec_parsing():
    assert DiskSpec.parse("a.img") == DiskSpec("a.img", None, False)
    assert DiskSpec.parse("a.img,format=qcow2,readonly") == DiskSpec("a.img", "qcow2", True)
    assert DiskSpec.parse("a.img,readonly,format=raw") == DiskSpec("a.img", "raw", True)
    for bad in ("", "a.img,readonly=1", "a.img,format", "a.img,format=", "a.img,"):
        with pytest.raises(ConfigError, match="--disk"):
            DiskSpec.parse(bad)


def test_a_disk_that_cannot_open_leaves_no_image_open(tmp_path):
    good = make_disk(tmp_path, "qcow2")
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + bytes(100))          # a qcow2 magic and a truncated header
    with pytest.raises(BadImageError):
        boot([str(good), str(bad)])
    # the first image was closed again: qemu-img can take its write lock
    assert qemu("qemu-img", "check", str(good)).returncode == 0


def test_through_the_cli(tmp_path):
    disk = make_disk(tmp_path, "qcow2")
    result = subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", BLKFRONT,
                             "--cmdline", f"start={START} sectors={COUNT} seed={SEED}", "--disk", str(disk)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "blkfront: 19/19 checks passed"
    converted = tmp_path / "converted.raw"
    qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(converted))
    assert converted.read_bytes() == expected_image()
