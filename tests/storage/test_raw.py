import os

import pytest

from pyvmm.errors import BadImageError, DiskImageError
from pyvmm.storage import create_image, open_image, probe
from pyvmm.storage.raw import RawImage


def test_raw_reads_back_what_was_written_at_any_alignment(tmp_path):
    path = tmp_path / "d.raw"
    create_image(path, "raw", 1 << 20)
    with open_image(path) as img:
        assert isinstance(img, RawImage) and img.size == 1 << 20
        img.write(511, b"abc" * 700)
        img.write(0, b"\x01")
        assert img.read(511, 2100) == b"abc" * 700
        assert img.read(0, 2) == b"\x01\x00"
    with open(path, "rb") as f:
        f.seek(511)
        assert f.read(2100) == b"abc" * 700


def test_raw_discard_reads_zeros_and_keeps_size(tmp_path):
    path = tmp_path / "d.raw"
    path.write_bytes(b"\xff" * 65536)
    with open_image(path) as img:
        img.discard(4096, 8192)
        img.discard(100, 3)
        data = img.read(0, 65536)
    assert data[4096:12288] == bytes(8192) and data[100:103] == bytes(3)
    assert data[:100] == b"\xff" * 100 and data[12288:] == b"\xff" * (65536 - 12288)
    assert os.path.getsize(path) == 65536


def test_requests_outside_the_disk_are_refused_and_change_nothing(tmp_path):
    path = tmp_path / "d.raw"
    create_image(path, "raw", 4096)
    with open_image(path) as img:
        with pytest.raises(DiskImageError, match="outside the disk"):
            img.write(4000, b"x" * 200)
        with pytest.raises(DiskImageError, match="outside the disk"):
            img.read(-1, 2)
        assert img.read(0, 4096) == bytes(4096)
    assert os.path.getsize(path) == 4096


def test_readonly_and_closed_images_refuse(tmp_path):
    path = tmp_path / "d.raw"
    create_image(path, "raw", 4096)
    img = open_image(path, readonly=True)
    with pytest.raises(DiskImageError, match="read-only"):
        img.write(0, b"x")
    with pytest.raises(DiskImageError, match="read-only"):
        img.discard(0, 512)
    img.close()
    with pytest.raises(DiskImageError, match="closed"):
        img.read(0, 1)


def test_probe_and_missing_files(tmp_path):
    raw = tmp_path / "a.img"
    raw.write_bytes(b"\0" * 512)
    assert probe(raw) == "raw"
    create_image(tmp_path / "b", "qcow2", 1 << 20)
    assert probe(tmp_path / "b") == "qcow2"
    with pytest.raises(BadImageError, match="nothere"):
        open_image(tmp_path / "nothere")
    with pytest.raises(DiskImageError, match="unknown image format 'vmdk'"):
        open_image(raw, "vmdk")
