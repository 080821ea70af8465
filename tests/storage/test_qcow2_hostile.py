"""Malformed and hostile qcow2 files: a BadImageError naming the file, never a crash,
never a giant allocation."""
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.errors import BadImageError, PyvmmError
from pyvmm.storage import create_image, open_image


def _image(tmp_path, name="h.qcow2", **opts):
    path = tmp_path / name
    create_image(path, "qcow2", 1 << 20, cluster_size=4096, **opts)
    with open_image(path) as img:
        img.write(0, b"\xaa" * 10000)
    return path


def _patch(path, offset, fmt, *values):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(data)


def _open_fails(path, match):
    tracemalloc.start()
    try:
        with pytest.raises(BadImageError, match=match) as e:
            with open_image(path) as img:
                img.read(0, img.size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.path == str(path) and str(path) in str(e.value)
    assert peak < 16 << 20
    return e.value


@pytest.mark.parametrize("offset,fmt,value,match", [
    (4, ">I", 4, "version 4 is not supported"),
    (20, ">I", 30, "cluster_bits 30"),
    (24, ">Q", 1 << 62, "too small for the virtual size"),
    (36, ">I", 0xFFFFFFFF, "larger than QEMU's limit"),
    (40, ">Q", 1 << 40, "L1 table at .* past the end"),
    (40, ">Q", 4096 + 8, "L1 table offset .* not aligned"),
    (48, ">Q", 1 << 50, "refcount table at .* past the end"),
    (48, ">Q", 100, "refcount table offset .* not aligned"),
    (56, ">I", 1 << 30, "larger than 8 MiB"),
    (56, ">I", 0, "empty"),
    (32, ">I", 1, "encrypted"),
    (72, ">Q", 1 << 4, "extended L2"),
    (72, ">Q", 1 << 2, "external data files"),
    (72, ">Q", 1 << 9, "unknown incompatible feature bits 0x200"),
    (96, ">I", 7, "refcount_order 7"),
    (100, ">I", 99, "header_length 99"),
    (16, ">I", 5000, "backing file name"),
    (60, ">I", 1 << 20, "snapshots is more than"),
])
def test_bad_header_fields(tmp_path, offset, fmt, value, match):
    path = _image(tmp_path)
    if offset == 16:
        _patch(path, 8, ">Q", 200)
    _patch(path, offset, fmt, value)
    _open_fails(path, match)


def test_refcount_table_overlapping_the_l1_table(tmp_path):
    path = _image(tmp_path)
    l1 = struct.unpack_from(">Q", path.read_bytes(), 40)[0]
    _patch(path, 48, ">Q", l1)
    _open_fails(path, "overlaps the L1 table")


def test_compression_type_zstd_is_refused(tmp_path):
    path = _image(tmp_path)
    data = bytearray(path.read_bytes())
    data[104] = 1
    struct.pack_into(">Q", data, 72, 1 << 3)
    path.write_bytes(data)
    _open_fails(path, "compression type zstd")


def test_truncated_and_foreign_files(tmp_path):
    path = _image(tmp_path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(BadImageError, match="header shorter"):
        open_image(path, "qcow2")
    path.write_bytes(b"\x00" * 8192)
    with pytest.raises(BadImageError, match="not a qcow2 image"):
        open_image(path, "qcow2")


def _l1_l2(path):
    data = path.read_bytes()
    l1 = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1)[0] & 0x00FFFFFFFFFFFE00
    return l1, l2


def test_l1_entry_past_eof_or_unaligned(tmp_path):
    path = _image(tmp_path)
    l1, _ = _l1_l2(path)
    _patch(path, l1, ">Q", (1 << 63) | (1 << 40))
    _open_fails(path, "L1 entry 0 points at")
    _patch(path, l1, ">Q", (1 << 63) | 4096 + 512)
    _open_fails(path, "L1 entry 0 .* not cluster aligned")


def test_l2_entry_past_eof_fails_the_read_and_leaves_the_image_usable(tmp_path):
    path = _image(tmp_path)
    _, l2 = _l1_l2(path)
    _patch(path, l2 + 8, ">Q", (1 << 63) | (1 << 45))
    with open_image(path) as img:
        with pytest.raises(BadImageError, match="past the end of the file"):
            img.read(4096, 10)
        with pytest.raises(BadImageError, match="past the end of the file"):
            img.write(4096, b"x")
        assert img.read(0, 4096) == b"\xaa" * 4096
        img.write(100000, b"still works")
        assert img.read(100000, 11) == b"still works"


def test_l2_entry_into_the_header_or_with_reserved_bits(tmp_path):
    path = _image(tmp_path)
    _, l2 = _l1_l2(path)
    _patch(path, l2, ">Q", (1 << 63) | 0)         # offset 0 with COPIED: unallocated, reads zeros
    _patch(path, l2 + 8, ">Q", (1 << 63) | 2)      # reserved bit 1
    with open_image(path, readonly=True) as img:
        assert img.read(0, 4096) == bytes(4096)
        with pytest.raises(BadImageError, match="reserved bits"):
            img.read(4096, 4096)


def test_garbage_compressed_cluster(tmp_path):
    path = _image(tmp_path)
    _, l2 = _l1_l2(path)
    _patch(path, l2, ">Q", (1 << 62) | 3 * 4096)     # "compressed" data = the L1 table
    with pytest.raises(BadImageError, match="compressed cluster at 0x3000: deflate"):
        with open_image(path, readonly=True) as img:
            img.read(0, 10)


def test_refcount_block_past_eof_fails_allocation(tmp_path):
    path = _image(tmp_path)
    rt = struct.unpack_from(">Q", path.read_bytes(), 48)[0]
    _patch(path, rt, ">Q", 1 << 40)
    with open_image(path) as img:
        with pytest.raises(BadImageError, match="refcount block 0 at .* past the end"):
            img.write(500000, b"needs a new cluster")
        assert img.read(0, 10) == b"\xaa" * 10


def test_backing_file_loops_and_missing_backing(tmp_path):
    path = tmp_path / "loop.qcow2"
    create_image(tmp_path / "other.qcow2", "qcow2", 1 << 20)
    create_image(path, "qcow2", 1 << 20, backing_file="other.qcow2", backing_fmt="qcow2")
    create_image(tmp_path / "other.qcow2", "qcow2", 1 << 20, backing_file="loop.qcow2", backing_fmt="qcow2")
    with pytest.raises(BadImageError, match="loops back"):
        open_image(path)
    create_image(tmp_path / "lost.qcow2", "qcow2", 1 << 20)
    create_image(path, "qcow2", 1 << 20, backing_file="lost.qcow2")
    (tmp_path / "lost.qcow2").unlink()
    with pytest.raises(BadImageError, match="lost.qcow2: cannot open"):
        open_image(path)


def test_corrupt_bit_and_dirty_lazy_refcounts_open_read_only_only(tmp_path):
    path = _image(tmp_path)
    _patch(path, 72, ">Q", 1 << 1)
    with pytest.raises(BadImageError, match="marked corrupt"):
        open_image(path)
    with open_image(path, readonly=True) as img:
        assert img.read(0, 1) == b"\xaa"
    _patch(path, 72, ">QQ", 1, 1)
    with pytest.raises(BadImageError, match="lazy refcounts"):
        open_image(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 5 * 4096 - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_random_metadata_damage_gives_errors_not_crashes(tmp_path_factory, flips):
    path = _image(tmp_path_factory.mktemp("fuzz"))
    data = bytearray(path.read_bytes())
    for off, value in flips:
        data[off] = value
    path.write_bytes(data)
    try:
        with open_image(path, "qcow2") as img:
            img.read(0, min(img.size, 1 << 20))
            img.write(0, b"z" * 5000)
            img.discard(0, min(img.size, 65536))
    except PyvmmError as e:
        assert str(path) in str(e)
