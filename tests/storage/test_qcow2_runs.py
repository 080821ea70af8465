"""The qcow2 one-pread/one-pwrite path: a request over host-contiguous plain clusters is
served with one host call, and anything that is not such a run (clusters out of host
order, a hole, a zero or compressed cluster, a run across L2 tables that are not
contiguous) still reads and writes the right bytes."""
import pytest

from pyvmm.storage import create_image, open_image
from pyvmm.storage.qcow2.check import check_qcow2

from .conftest import HAVE_QEMU, pattern, qemu_check, qemu_img

CS = 512                    # 64 entries per L2 table: runs cross tables often
SIZE = 256 * CS


def _image(tmp_path, name="d.qcow2", cluster_size=CS, size=SIZE):
    path = tmp_path / name
    create_image(path, "qcow2", size, cluster_size=cluster_size)
    return path


def test_runs_in_and_out_of_host_order_read_back(tmp_path):
    path = _image(tmp_path)
    model = bytearray(SIZE)
    with open_image(path) as img:
        # clusters 0..99 in one write (host-contiguous), 199..100 one by one backwards
        # (each guest cluster lands before its predecessor on the host), 200.. holes.
        img.write(0, pattern(0, 100 * CS))
        model[:100 * CS] = pattern(0, 100 * CS)
        for c in range(199, 99, -1):
            img.write(c * CS, pattern(c, CS))
            model[c * CS:(c + 1) * CS] = pattern(c, CS)
        img.discard(40 * CS, 2 * CS)               # a hole in the middle of the first run
        model[40 * CS:42 * CS] = bytes(2 * CS)
        for off, n in [(0, 100 * CS), (10, 70 * CS), (63 * CS, 3 * CS), (95 * CS + 7, 20 * CS),
                       (150 * CS + 1, 100 * CS), (0, SIZE), (39 * CS, 4 * CS), (201 * CS, 2 * CS)]:
            assert img.read(off, n) == bytes(model[off:off + n]), (off, n)
            # and again, now that single clusters of the range are remembered
            assert img.read(off, n) == bytes(model[off:off + n]), (off, n)
        # overwrite across all of them: in-place runs, out-of-order clusters, the hole
        img.write(30 * CS + 3, pattern(9, 150 * CS))
        model[30 * CS + 3:180 * CS + 3] = pattern(9, 150 * CS)
        assert img.read(0, SIZE) == bytes(model)
    with open_image(path, readonly=True) as img:
        assert img.read(0, SIZE) == bytes(model)
    r = check_qcow2(path)
    assert (r.corruptions, r.leaks) == (0, 0)


def test_overwriting_allocated_clusters_leaves_the_dirty_bit_clear(tmp_path):
    path = _image(tmp_path, cluster_size=65536, size=4 << 20)
    with open_image(path) as img:
        img.write(0, pattern(1, 4 << 20))
    with open_image(path) as img:
        img.write(4096, pattern(2, 1 << 20))        # allocated: data only, no metadata
        img.write(3 << 20, pattern(3, 4096))
        with open_image(path, readonly=True) as other:
            assert not other.info()["dirty-flag"]
            assert other.read(4096, 1 << 20) == pattern(2, 1 << 20)
        img.discard(2 << 20, 65536)                  # metadata changes: the bit is set first
        with open_image(path, readonly=True) as other:
            assert other.info()["dirty-flag"]
    with open_image(path, readonly=True) as img:
        assert not img.info()["dirty-flag"]
        assert img.read(3 << 20, 4096) == pattern(3, 4096)
    if HAVE_QEMU:
        report = qemu_check(path)
        assert "corruptions" not in report and "leaks" not in report


def test_a_read_only_image_never_takes_the_write_path(tmp_path):
    path = _image(tmp_path)
    with open_image(path) as img:
        img.write(0, pattern(4, SIZE))
    before = path.read_bytes()
    with open_image(path, readonly=True) as img:
        assert img.read(0, SIZE) == pattern(4, SIZE)        # every cluster is now remembered
        with pytest.raises(Exception, match="read-only"):
            img.write(0, b"x" * CS)
    assert path.read_bytes() == before


@pytest.mark.skipif(not HAVE_QEMU, reason="qemu-img not installed")
def test_runs_over_a_qemu_image_with_zero_and_compressed_clusters(tmp_path):
    src = tmp_path / "src.raw"
    data = bytearray(pattern(5, 2 << 20))
    data[256 << 10:512 << 10] = bytes(256 << 10)            # zero clusters in the middle
    src.write_bytes(bytes(data))
    q = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=65536", src, q)
    with open_image(q) as img:
        assert img.read(0, 2 << 20) == bytes(data)
        img.write(100, pattern(6, 1 << 20))                  # replaces compressed clusters
        data[100:100 + (1 << 20)] = pattern(6, 1 << 20)
        assert img.read(0, 2 << 20) == bytes(data)
        assert img.read(65536 - 10, 3 * 65536) == bytes(data[65536 - 10:4 * 65536 - 10])
    (tmp_path / "model.raw").write_bytes(bytes(data))
    assert qemu_img("compare", "-F", "raw", q, tmp_path / "model.raw", check=False).returncode == 0
    report = qemu_check(q)
    assert "corruptions" not in report


def test_autoclear_bits_are_cleared_before_an_in_place_write(tmp_path):
    """An autoclear bit (bit 0: bitmaps) says another program's extension data matches
    the image; a write pyvmm makes, even one that changes no metadata, must clear it."""
    path = _image(tmp_path, cluster_size=65536, size=1 << 20)
    with open_image(path) as img:
        img.write(0, pattern(7, 1 << 20))
    with open(path, "r+b") as f:
        f.seek(88)                                   # autoclear_features (qcow2.rst)
        f.write((1).to_bytes(8, "big"))
    with open_image(path, readonly=True) as img:     # read-only: left as it is
        assert img.header.autoclear_features == 1
    with open_image(path) as img:
        img.write(4096, b"in place")
    with open(path, "rb") as f:
        f.seek(88)
        assert f.read(8) == bytes(8)
    with open_image(path, readonly=True) as img:
        assert img.read(4096, 8) == b"in place" and not img.info()["dirty-flag"]
