"""DiskImage.readv/writev (the scatter/gather forms a device uses on guest RAM): the same
bytes as read/write on raw and qcow2, in place where the format allows, across cluster
boundaries, holes, zero and compressed clusters, more buffers than one preadv takes, and
the same refusals as read/write."""

import os

import pytest

from pyvmm.errors import DiskImageError
from pyvmm.storage import create_image, open_image
from pyvmm.storage.raw import _IOV_MAX
from tests.storage.conftest import pattern

SIZE = 4 << 20


def split(buf, sizes):
    """memoryviews of ``buf`` cut into pieces of ``sizes`` (cycled) until it is used up."""
    view, out, pos, k = memoryview(buf), [], 0, 0
    while pos < len(buf):
        n = min(sizes[k % len(sizes)], len(buf) - pos)
        out.append(view[pos:pos + n])
        pos += n
        k += 1
    return out


@pytest.fixture(params=["raw", "qcow2", "qcow2-4k"])
def image(request, tmp_path):
    fmt = request.param.split("-")[0]
    options = {"cluster_size": 4096} if request.param == "qcow2-4k" else {}
    path = tmp_path / f"disk.{fmt}"
    create_image(path, fmt, SIZE, **options)
    with open_image(path) as img:
        yield img


@pytest.mark.parametrize("offset,length,sizes", [
    (0, 4096, [4096]),
    (512, 1 << 20, [4096]),                         # 256 pages, unaligned start
    (65536 - 1024, 3 * 65536, [512, 4096, 1536]),   # uneven pieces across clusters
    (4096, (_IOV_MAX + 9) * 512, [512]),            # more pieces than one preadv takes
])
def test_writev_then_readv_equals_write_then_read(image, offset, length, sizes):
    data = pattern(offset, length)
    image.writev(offset, split(bytearray(data), sizes))
    assert image.read(offset, length) == data
    out = bytearray(length)
    image.readv(offset, split(out, sizes[::-1]))
    assert bytes(out) == data
    # a second overwrite goes the in-place path (clusters allocated now)
    data2 = pattern(offset, length, seed=2)
    image.writev(offset, split(bytearray(data2), sizes))
    image.readv(offset, split(out, [4096]))
    assert bytes(out) == data2


def test_readv_of_holes_and_discarded_ranges_reads_zeros(image):
    image.write(0, pattern(0, 1 << 20))
    image.discard(65536, 131072)
    out = bytearray(b"\xEE" * (1 << 20))
    image.readv(0, split(out, [4096]))
    assert bytes(out) == pattern(0, 1 << 20)[:65536] + bytes(131072) + pattern(0, 1 << 20)[196608:]
    out = bytearray(b"\xEE" * 65536)
    image.readv(2 << 20, split(out, [4096]))        # never written
    assert bytes(out) == bytes(65536)


def test_readv_of_compressed_clusters(tmp_path):
    path = tmp_path / "c.qcow2"
    create_image(path, "qcow2", SIZE)
    data = pattern(0, 3 * 65536)
    with open_image(path) as img:
        img.write_compressed(0, data[:65536])
        img.write(65536, data[65536:])
        out = bytearray(len(data) - 1000)
        img.readv(1000, split(out, [4096]))
        assert bytes(out) == data[1000:]


def test_out_of_range_and_readonly_are_refused_and_change_nothing(image, tmp_path):
    image.write(SIZE - 4096, b"\x11" * 4096)
    out = bytearray(b"\x22" * 8192)
    with pytest.raises(DiskImageError, match="outside the disk"):
        image.readv(SIZE - 4096, split(out, [4096]))
    assert bytes(out) == b"\x22" * 8192
    with pytest.raises(DiskImageError, match="outside the disk"):
        image.writev(SIZE - 4096, split(bytearray(8192), [4096]))
    assert image.read(SIZE - 4096, 4096) == b"\x11" * 4096
    image.close()
    with open_image(image.path, readonly=True) as ro:
        with pytest.raises(DiskImageError, match="read-only"):
            ro.writev(0, [memoryview(bytearray(512))])
        buf = bytearray(4096)
        ro.readv(SIZE - 4096, [memoryview(buf)])
        assert bytes(buf) == b"\x11" * 4096
    with pytest.raises(DiskImageError, match="closed"):
        image.readv(0, [memoryview(bytearray(512))])


def test_raw_readv_past_a_shrunken_file_reads_zeros(tmp_path):
    path = tmp_path / "shrink.raw"
    create_image(path, "raw", 1 << 20)
    with open_image(path) as img:
        img.write(0, b"\x33" * (1 << 20))
        os.truncate(path, 8192)                     # another process shrank it
        out = bytearray(b"\xEE" * 16384)
        img.readv(0, split(out, [4096]))
        assert bytes(out) == b"\x33" * 8192 + bytes(8192)


def test_contiguous_ranges_go_in_place_without_a_bytes_copy(image, monkeypatch):
    """After allocation, a 1 MiB readv/writev is one preadv/pwritev into the buffers:
    the format's copying paths (_read, _write) are not used."""
    data = pattern(0, 1 << 20)
    image.write(0, data)

    def refuse(*args):
        raise AssertionError("the copying path was taken")
    monkeypatch.setattr(type(image), "_read", refuse)
    monkeypatch.setattr(type(image), "_write", refuse)
    out = bytearray(1 << 20)
    image.readv(0, split(out, [4096]))
    assert bytes(out) == data
    image.writev(0, split(bytearray(data[::-1]), [4096]))
    monkeypatch.undo()
    assert image.read(0, 1 << 20) == data[::-1]


def test_a_given_length_is_the_one_checked(image):
    bufs = split(bytearray(8192), [4096])
    with pytest.raises(DiskImageError, match="outside the disk"):
        image.readv(SIZE - 4096, bufs, length=8192)
    image.writev(4096, split(bytearray(b"\x5a" * 8192), [4096]), length=8192)
    image.readv(4096, bufs, length=8192)
    assert b"".join(bytes(b) for b in bufs) == b"\x5a" * 8192
