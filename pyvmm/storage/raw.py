"""Host files and the raw disk image format.

``HostFile`` is the one place storage code touches a host file descriptor: whole
reads and writes at byte offsets (``os.pread``/``os.pwrite`` loops, so a short
transfer never goes unnoticed), the durability barrier (``fdatasync``) and hole
punching. It tracks the file length it has seen so image formats can tell which
host bytes are still holes.

``RawImage`` is a DiskImage whose guest byte N is host byte N. Invariants: the
virtual size is the file length at open; reads and writes never change it.
"""
import ctypes
import ctypes.util
import os

from pyvmm.errors import BadImageError, DiskImageError
from pyvmm.storage.image import DiskImage

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = None
_IOV_MAX = 1024          # Linux's UIO_MAXIOV: iovecs one preadv/pwritev call takes


def _fallocate():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        except (OSError, AttributeError):
            _libc = False
    return _libc.fallocate if _libc else None


class HostFile:
    """A host file opened for an image: exact reads and writes, barrier, holes."""

    def __init__(self, path, readonly):
        self.path = str(path)
        self.readonly = readonly
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, flags)
        except OSError as e:
            raise BadImageError(self.path, f"cannot open: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset, length):
        """Read up to ``length`` bytes; short only at end of file."""
        data = os.pread(self.fd, length, offset)
        if len(data) == length or not data:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def pread_exact(self, offset, length, what):
        """Read exactly ``length`` bytes or raise BadImageError naming ``what``."""
        data = self.pread(offset, length)
        if len(data) != length:
            raise BadImageError(self.path, f"{what} at offset {offset:#x} (+{length:#x}) "
                                           f"is past the end of the file ({self.size:#x} bytes)")
        return data

    def preadv_into(self, view, offset, what):
        """Fill the writable memoryview ``view`` from ``offset`` exactly."""
        done = 0
        n = len(view)
        while done < n:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise BadImageError(self.path, f"{what} at offset {offset:#x} (+{n:#x}) "
                                               f"is past the end of the file ({self.size:#x} bytes)")
            done += got

    def preadv(self, buffers, offset, total):
        """Fill ``buffers`` in order from ``offset`` (``total`` = their summed length)
        with os.preadv; returns the bytes read, short only at end of file."""
        return _vectored(os.preadv, self.fd, buffers, offset, total)

    def pwritev(self, buffers, offset, total):
        """Write ``buffers`` in order at ``offset`` with os.pwritev (all of them)."""
        done = _vectored(os.pwritev, self.fd, buffers, offset, total)
        if done != total:
            raise OSError(f"{self.path}: pwritev at {offset:#x} wrote {done} of {total} bytes")
        if offset + total > self.size:
            self.size = offset + total

    def pwrite(self, offset, data):
        view = memoryview(data)
        n = len(view)
        done = os.pwrite(self.fd, view, offset)
        while done < n:
            done += os.pwrite(self.fd, view[done:], offset + done)
        if offset + n > self.size:
            self.size = offset + n

    def truncate(self, length):
        os.ftruncate(self.fd, length)
        self.size = length

    def barrier(self):
        """Everything written so far is durable before anything written after."""
        os.fdatasync(self.fd)

    def punch_hole(self, offset, length):
        """Deallocate host bytes (they read back as zeros); False if unsupported."""
        fallocate = _fallocate()
        if fallocate is None or length <= 0:
            return False
        return fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0

    def allocated_bytes(self):
        return os.fstat(self.fd).st_blocks * 512

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _vectored(call, fd, buffers, offset, total):
    """os.preadv/os.pwritev over any number of buffers: IOV_MAX at a time, resumed
    after a short transfer; returns the bytes moved (short only if a call moved 0)."""
    if len(buffers) <= _IOV_MAX:
        done = call(fd, buffers, offset)
        if done == total or done <= 0:
            return max(done, 0)
    else:
        done = 0
    bufs = list(buffers)
    skip = done                     # drop what the first call moved, then go on
    i = 0
    while i < len(bufs):
        while skip and i < len(bufs):
            n = len(bufs[i])
            if skip >= n:
                skip -= n
                i += 1
            else:
                bufs[i] = memoryview(bufs[i])[skip:]
                skip = 0
        if i == len(bufs):
            break
        got = call(fd, bufs[i:i + _IOV_MAX], offset + done)
        if got <= 0:
            break
        done += got
        skip = got
    return done


class RawImage(DiskImage):
    """A disk image that is the host file itself."""

    format = "raw"

    def __init__(self, path, readonly=False):
        self._f = HostFile(path, readonly)
        super().__init__(self._f.path, self._f.size, readonly)

    def read(self, offset, length):
        if not self.closed and offset >= 0 and length > 0 and offset + length <= self.size:
            data = os.pread(self._f.fd, length, offset)
            if len(data) == length:
                return data
        return DiskImage.read(self, offset, length)

    def write(self, offset, data):
        n = len(data)
        if not self.readonly and not self.closed and offset >= 0 and n and offset + n <= self.size:
            if os.pwrite(self._f.fd, data, offset) == n:
                return
        return DiskImage.write(self, offset, data)

    def _read(self, offset, length):
        data = self._f.pread(offset, length)
        if len(data) != length:  # the file shrank under us
            data += bytes(length - len(data))
        return data

    def _write(self, offset, data):
        self._f.pwrite(offset, data)

    def _readv(self, offset, buffers, total):
        got = self._f.preadv(buffers, offset, total)
        if got != total:        # the file shrank under us: the rest reads as zeros
            DiskImage._readv(self, offset, buffers, total)

    def _writev(self, offset, buffers, total):
        self._f.pwritev(buffers, offset, total)

    def _discard(self, offset, length):
        if not self._f.punch_hole(offset, length):
            for pos in range(offset, offset + length, 1 << 20):
                self._f.pwrite(pos, bytes(min(1 << 20, offset + length - pos)))

    def _flush(self):
        self._f.barrier()

    def _close(self):
        self._f.close()

    def info(self):
        return {"format": "raw", "virtual-size": self.size,
                "actual-size": self._f.allocated_bytes()}


def create_raw(path, size):
    """Create (or truncate) ``path`` as a raw image of ``size`` bytes."""
    if size < 0:
        raise DiskImageError(path, f"image size {size} is negative")
    try:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise BadImageError(path, f"cannot create: {e.strerror}") from None
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
