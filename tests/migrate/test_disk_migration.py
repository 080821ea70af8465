"""The blkfront guest (guests/blkfront.c) on a `--disk` image, saved mid-run and restored,
and live-migrated mid-run: the disk's attachment (blkback's ring, grant and event channel,
xenbus state, no request left in flight) carries over, so the guest's output over both
halves is exactly an unmigrated run's, and qemu-img finds exactly the bytes the guest
wrote in the image (which the source flushed and the destination opened again by path).
"""

import os
import subprocess
import sys

import pytest

from pyvmm.devices import blkif
from pyvmm.devices.block.pattern import SECTOR_SIZE, pattern
from pyvmm.errors import BadImageError, MigrationStreamError
from pyvmm.machine import Machine, VmConfig
from tests.migrate.live import LiveMigration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLKFRONT = os.path.join(ROOT, "guests", "build", "blkfront.elf")
DISK_MIB = 16
DISK_SECTORS = DISK_MIB * 2048
FILL = 0x5A
START, SEED, DISCARDED = 100, 7, 16
COUNT = 8000                       # sectors the guest writes and reads back (about 0.5 s)
LONG_COUNT = 24000                 # a run long enough for a live migration to happen inside it
POWEROFF = (0, "guest powered off (SCHEDOP_shutdown poweroff)")

pytestmark = pytest.mark.skipif(subprocess.run(["which", "qemu-img"], capture_output=True).returncode,
                                reason="needs qemu-img and qemu-io (qemu-utils)")


def qemu(*args):
    return subprocess.run(list(args), capture_output=True, text=True, check=True)


def make_disk(tmp_path, fmt, name):
    path = tmp_path / f"{name}.{fmt}"
    qemu("qemu-img", "create", "-q", "-f", fmt, str(path), f"{DISK_MIB}M")
    qemu("qemu-io", "-f", fmt, "-c", f"write -q -P {FILL} 0 {DISK_MIB}M", str(path))
    return path


def expected_image(count):
    end = START + count
    return (bytes([FILL]) * (START * SECTOR_SIZE) + pattern(SEED, START, count - DISCARDED)
            + bytes(DISCARDED * SECTOR_SIZE) + bytes([FILL]) * ((DISK_SECTORS - end) * SECTOR_SIZE))


def assert_image_holds(path, fmt, count, tmp_path):
    """qemu-img is the oracle: the image compares equal to the expected bytes (and a
    qcow2 image checks clean)."""
    expected = tmp_path / "expected.raw"
    expected.write_bytes(expected_image(count))
    result = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", str(path), str(expected)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    if fmt == "qcow2":
        check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def config(disk, fmt, console, count=COUNT):
    return VmConfig(kernel=BLKFRONT, pv=True, console=console, disks=[f"{disk},format={fmt}"],
                    cmdline=f"start={START} sectors={count} seed={SEED}")


@pytest.fixture(scope="module")
def unmigrated(tmp_path_factory):
    """{count: console output} of uninterrupted runs (the output does not depend on the format)."""
    runs = {}
    for count in (COUNT, LONG_COUNT):
        disk = make_disk(tmp_path_factory.mktemp("unmigrated"), "raw", f"plain{count}")
        out = []
        assert Machine(config(disk, "raw", out.append, count)).run() == POWEROFF
        text = b"".join(out)
        assert text.endswith(b"19/19 checks passed\n"), text
        runs[count] = text
    return runs


def _paused(disk, fmt, out, when):
    """A Machine on ``disk`` paused when ``when(m, text)`` first says so (from the
    console, or from blkback's serve for a pause in the middle of the I/O)."""
    m = None

    def console(data):
        out.append(data)
        if when(m, data) and not m.vcpu.pause_requested:
            m.vcpu.request_pause()
    m = Machine(config(disk, fmt, console))
    return m


def _marker(text):
    return lambda m, data: text in data


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("marker", [b"connected:", b"ok write_pattern", b"ok read_back_matches"])
def test_saved_mid_run_and_restored_the_guest_finishes_as_unmigrated(fmt, marker, tmp_path, unmigrated):
    disk = make_disk(tmp_path, fmt, "disk")
    src, dst = [], []
    m = _paused(disk, fmt, src, _marker(marker))
    assert m.run() is None, "the guest ended before the pause"
    m.save(tmp_path / "blk.snap")
    m.close()
    restored = Machine.restore(tmp_path / "blk.snap", console=dst.append)
    assert [v.blkback.connected for v in restored.vbds] == [True]
    assert restored.run() == POWEROFF
    assert b"".join(src) and b"".join(src) + b"".join(dst) == unmigrated[COUNT]
    assert_image_holds(disk, fmt, COUNT, tmp_path)


def test_saved_in_the_middle_of_the_writes_with_requests_on_the_ring(tmp_path, unmigrated):
    """Paused right after blkback served its 20th request: the guest has pushed more
    before it next exits. The save serves what is on the ring before it writes the disk
    record, and the restored backend answers the rest."""
    disk = make_disk(tmp_path, "qcow2", "disk")
    src, dst, served = [], [], []
    m = Machine(config(disk, "qcow2", src.append))
    blkback = m.vbds[0].blkback
    serve = blkback.serve

    def counting_serve(requests):
        result = serve(requests)
        served.extend(requests)
        if len(served) >= 20 and not m.vcpu.pause_requested:
            m.vcpu.request_pause()
        return result
    blkback.serve = counting_serve
    assert m.run() is None
    snap = m.snapshot()
    [disk_state] = snap.disks
    ring = disk_state["backend"]["rings"]["ring-ref"]
    assert ring[1] == ring[2] >= 20 and blkback.served[blkif.BLKIF_RSP_OKAY] == ring[1]
    assert blkback.ring.unconsumed_requests() == 0          # nothing left in flight
    m.save(tmp_path / "blk.snap")
    m.close()
    restored = Machine.restore(tmp_path / "blk.snap", console=dst.append)
    assert restored.vbds[0].blkback.served[blkif.BLKIF_RSP_OKAY] == ring[1]
    assert restored.run() == POWEROFF
    assert b"".join(src) + b"".join(dst) == unmigrated[COUNT]
    assert_image_holds(disk, "qcow2", COUNT, tmp_path)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_live_migration_mid_run_finishes_as_unmigrated(fmt, tmp_path, unmigrated):
    """The migration starts when the guest has connected its disk and runs while the
    guest writes and reads it (pre-copy rounds with blkback filling the guest's pages);
    the destination opens the same image file once the source has flushed and closed it."""
    disk = make_disk(tmp_path, fmt, "shared")
    live = LiveMigration(trigger=b"connected:")
    src, dst = live.src, live.dst
    live.start(Machine(config(disk, fmt, live.console, LONG_COUNT)))
    machine, stats = live.arrived(60)
    assert stats["status"] == "completed"
    assert machine.vbds[0].image.path == str(disk)
    assert machine.run() == POWEROFF
    assert b"connected:" in b"".join(src) and b"checks passed" not in b"".join(src)   # moved mid-run
    assert stats["rounds"] >= 2 and b"".join(dst).endswith(b"19/19 checks passed\n")
    assert b"".join(src) + b"".join(dst) == unmigrated[LONG_COUNT]
    assert_image_holds(disk, fmt, LONG_COUNT, tmp_path)


def test_save_and_restore_through_the_cli(tmp_path, unmigrated):
    disk = make_disk(tmp_path, "qcow2", "disk")
    snap = tmp_path / "blk.snap"
    src = []
    m = _paused(disk, "qcow2", src, _marker(b"ok write_pattern"))
    assert m.run() is None
    m.save(snap)
    m.close()
    done = subprocess.run([sys.executable, "-m", "pyvmm.cli", "restore", str(snap)],
                          capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert b"".join(src) + done.stdout == unmigrated[COUNT]
    assert_image_holds(disk, "qcow2", COUNT, tmp_path)


# ---- what is refused -----------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    disk = make_disk(tmp_path, "raw", "disk")
    m = _paused(disk, "raw", [], _marker(b"ok write_pattern"))
    assert m.run() is None
    m.save(tmp_path / "blk.snap")
    m.close()
    return disk, tmp_path / "blk.snap"


def test_a_snapshot_whose_image_is_gone_is_refused(saved):
    disk, snap = saved
    os.unlink(disk)
    with pytest.raises(BadImageError, match=str(disk)):
        Machine.restore(snap)


def test_a_snapshot_whose_image_changed_size_is_refused(saved):
    disk, snap = saved
    qemu("qemu-img", "resize", "-q", "-f", "raw", str(disk), f"{DISK_MIB * 2}M")
    with pytest.raises(MigrationStreamError, match=f"has {2 * DISK_SECTORS} sectors of 512 bytes, "
                                                   f"but {DISK_SECTORS} when it was saved"):
        Machine.restore(snap)


def test_a_damaged_backend_state_is_refused_and_nothing_stays_open(saved):
    from pyvmm.migrate import snapshot
    disk, path = saved
    snap = snapshot.load_file(path)
    snap.disks[0]["backend"]["rings"]["ring-ref"][0] = 4000       # a ref the guest never granted
    with pytest.raises(MigrationStreamError, match="the saved connection cannot be made again"):
        Machine.from_snapshot(snap)
    snap = snapshot.load_file(path)
    snap.disks[0]["devid"] = 51728
    with pytest.raises(MigrationStreamError, match="xvda was saved as device 51728"):
        Machine.from_snapshot(snap)


def test_the_disk_attachment_is_in_the_snapshot(saved):
    from pyvmm.migrate import snapshot
    disk, path = saved
    [state] = snapshot.load_file(path).disks
    assert {k: state[k] for k in ("path", "format", "readonly", "devid", "sectors")} == \
        {"path": str(disk), "format": "raw", "readonly": False, "devid": 51712, "sectors": DISK_SECTORS}
    backend = state["backend"]
    assert backend["state"] == 4 and backend["error"] is None and backend["port"] > 0
    assert backend["rings"]["ring-ref"][0] == 8                  # blkfront's RING_REF
    assert backend["served"][2] == backend["rings"]["ring-ref"][1]     # [EOPNOTSUPP, ERROR, OKAY] counts


def test_pages_domain0_writes_count_as_dirty_in_every_round(tmp_path):
    """blkback fills the pages of a read and writes responses into the ring page with
    domain 0's own stores, which no write exit of the guest shows: the dirty log names
    them (every frame the guest grants writable, its rings, shared_info and grant
    frames) each time it is read, and nothing else the guest did not write."""
    disk = make_disk(tmp_path, "raw", "disk")
    m = _paused(disk, "raw", [], _marker(b"connected:"))
    try:
        assert m.run() is None
        m.start_dirty_log()
        m.read_dirty_log()
        guest = m.pv.guest
        granted = {guest.grant_table.read_entry(ref)["frame"] for ref in range(8, 8 + 1 + 256)}   # ring + data
        for _ in range(2):
            bitmap = m.read_dirty_log()
            dirty = {i for i in range(len(bitmap) * 8) if bitmap[i >> 3] >> (i & 7) & 1}
            assert granted | {guest.shared_info_gfn} | set(guest.grant_table.frames) <= dirty
            assert dirty == set(m.pv.host_written_frames())       # the guest itself did not run
        m.stop_dirty_log()
    finally:
        m.close()
