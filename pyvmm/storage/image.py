"""The DiskImage interface, the format probe and ``open_image``.

A DiskImage is a virtual disk of ``size`` bytes addressed at byte granularity:
``read(offset, length)``, ``write(offset, data)``, ``discard(offset, length)``
(the range reads as zeros afterwards and its host space may be released),
``flush()`` (everything written before is durable, data before the metadata that
points at it) and ``close()``. ``readv(offset, buffers)`` and ``writev(offset,
buffers)`` are the scatter/gather forms (preadv/pwritev): the bytes go straight
between the image and the caller's memory (a device's view of guest RAM), with no
intermediate bytes object where the format can avoid one. Devices never know the
format behind it.

Invariants every format keeps: requests outside [0, size) raise DiskImageError
and change nothing; a read-only image refuses write/discard; after close every
call raises DiskImageError.
"""
import os

from pyvmm.errors import BadImageError, DiskImageError

QCOW2_MAGIC = b"QFI\xfb"  # docs/interop/qcow2.rst: "QFI\xfb"
MAX_BACKING_DEPTH = 32


class DiskImage:
    """Base of the formats: argument checks here, the format's work in _read/_write/..."""

    format = None

    def __init__(self, path, size, readonly):
        self.path = str(path)
        self.size = size
        self.readonly = readonly
        self.closed = False

    def _check(self, offset, length, writing):
        if self.closed:
            raise DiskImageError(self.path, "image is closed")
        if writing and self.readonly:
            raise DiskImageError(self.path, "image is open read-only")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DiskImageError(self.path, f"request at offset {offset} length {length} is "
                                            f"outside the disk (size {self.size})")

    def read(self, offset, length):
        self._check(offset, length, False)
        return self._read(offset, length) if length else b""

    def write(self, offset, data):
        self._check(offset, len(data), True)
        if data:
            self._write(offset, data)

    def readv(self, offset, buffers, length=None):
        """Fill ``buffers`` (writable byte-format memoryviews, in order) with the guest
        bytes from ``offset`` on; nothing is read if the range is outside the disk.
        ``length``, if given, must be the buffers' summed length (a caller that built
        them knows it; summing 256 lengths costs more than checking the range)."""
        total = sum(map(len, buffers)) if length is None else length
        self._check(offset, total, False)
        if total:
            self._readv(offset, buffers, total)

    def writev(self, offset, buffers, length=None):
        """Write the concatenation of ``buffers`` (byte-format buffers) at ``offset``;
        ``length`` as for readv."""
        total = sum(map(len, buffers)) if length is None else length
        self._check(offset, total, True)
        if total:
            self._writev(offset, buffers, total)

    def discard(self, offset, length):
        self._check(offset, length, True)
        if length:
            self._discard(offset, length)

    def flush(self):
        if self.closed:
            raise DiskImageError(self.path, "image is closed")
        if not self.readonly:
            self._flush()

    def close(self):
        if not self.closed:
            try:
                if not self.readonly:
                    self._flush()
            finally:
                self.closed = True
                self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, offset, length):
        raise NotImplementedError

    def _write(self, offset, data):
        raise NotImplementedError

    def _discard(self, offset, length):
        raise NotImplementedError

    def _readv(self, offset, buffers, total):
        """Any format: one read, scattered (a format overrides it to read in place)."""
        data = memoryview(self._read(offset, total))
        pos = 0
        for buf in buffers:
            n = len(buf)
            buf[:] = data[pos:pos + n]
            pos += n

    def _writev(self, offset, buffers, total):
        """Any format: gathered into one write (a format overrides it to write in place)."""
        self._write(offset, b"".join(buffers))

    def _flush(self):
        raise NotImplementedError

    def _close(self):
        raise NotImplementedError


def probe(path):
    """The format of the image file at ``path``: "qcow2" or "raw"."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BadImageError(path, f"cannot open: {e.strerror}") from None
    return "qcow2" if magic == QCOW2_MAGIC else "raw"


def open_image(path, fmt=None, readonly=False, _chain=()):
    """Open a disk image, probing its format unless ``fmt`` names it."""
    from pyvmm.storage.qcow2.image import Qcow2Image
    from pyvmm.storage.raw import RawImage

    real = os.path.realpath(path)
    if real in _chain:
        raise BadImageError(path, "backing file chain loops back to this file")
    if len(_chain) > MAX_BACKING_DEPTH:
        raise BadImageError(path, f"backing file chain is deeper than {MAX_BACKING_DEPTH}")
    fmt = fmt or probe(path)
    if fmt == "raw":
        return RawImage(path, readonly)
    if fmt == "qcow2":
        return Qcow2Image(path, readonly, _chain=_chain + (real,))
    raise DiskImageError(path, f"unknown image format {fmt!r} (known: raw, qcow2)")


def create_image(path, fmt, size, **options):
    """Create an image file; qcow2 options as in pyvmm.storage.qcow2.image.create_qcow2."""
    if fmt == "raw":
        if options:
            raise DiskImageError(path, f"raw images take no options (got {sorted(options)})")
        from pyvmm.storage.raw import create_raw
        return create_raw(path, size)
    if fmt == "qcow2":
        from pyvmm.storage.qcow2.image import create_qcow2
        return create_qcow2(path, size, **options)
    raise DiskImageError(path, f"unknown image format {fmt!r} (known: raw, qcow2)")
