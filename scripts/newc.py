"""A small writer for "newc" cpio archives, the format Linux unpacks as an initramfs.

The format (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst):

    cpio_file    := ALGN(4) + cpio_header + filename + "\\0" + ALGN(4) + data
    cpio_trailer := ALGN(4) + cpio_header + "TRAILER!!!\\0" + ALGN(4)

A header is 110 ASCII bytes: the magic ``070701`` and then 13 fields, each written as
8 hexadecimal digits (upper case here, the kernel accepts either case):

    ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check

``namesize`` counts the terminating NUL; ``check`` is 0 (it is only used by the "crc"
variant, magic 070702). ALGN(4) pads with NUL bytes to a multiple of 4 counted from the
start of the archive, so header+name and the data each end on a 4-byte boundary.
A symlink's data is its target (no NUL); directories and device nodes have no data.

Usage::

    with open("out.cpio", "wb") as f, CpioWriter(f) as w:
        w.add_dir("bin")
        w.add_file("bin/busybox", data, mode=0o755)
        w.add_symlink("bin/sh", "busybox")
        w.add_device("dev/console", "c", 5, 1, mode=0o600)
    # leaving the with-block calls close(), which writes the entries and TRAILER!!!

Entries are collected and written by close() in sorted name order, so the same inputs
always give the same bytes, whatever order they were added in (a parent directory sorts
before its children). Every entry has mtime 0 and uid/gid 0 unless told otherwise, inode
numbers are assigned 1, 2, 3... in output order, and names are stored without a leading
"/" (the kernel unpacks relative to the root either way).

For a compressed initramfs, write through ``gzip_file(fileobj)``: a gzip stream whose
header has mtime 0 and no file name, so it is reproducible too.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["CpioWriter", "Entry", "MAGIC", "TRAILER", "HEADER_SIZE", "gzip_file", "normalize_name"]

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110  # 6 bytes of magic + 13 fields of 8 hex digits
_MAX = 0xFFFFFFFF


def normalize_name(name: str) -> str:
    """Return the archive form of a path: no leading "/" or "./", no empty or "." parts."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"empty archive name: {name!r}")
    if ".." in parts:
        raise ValueError(f"'..' not allowed in archive name: {name!r}")
    return "/".join(parts)


@dataclass(frozen=True)
class Entry:
    """One archive member. ``mode`` includes the file type bits (stat.S_IF*)."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0

    @property
    def nlink(self) -> int:
        return 2 if stat.S_ISDIR(self.mode) else 1


def _pad4(n: int) -> int:
    """Number of NUL bytes that bring offset ``n`` to a multiple of 4."""
    return (-n) & 3


def _header(ino: int, e: Entry, namesize: int) -> bytes:
    fields = (
        ino, e.mode, e.uid, e.gid, e.nlink, e.mtime, len(e.data),
        0, 0,                      # devmajor, devminor: the device holding the file
        e.rdevmajor, e.rdevminor,  # the device a node stands for
        namesize, 0,               # check: 0 for newc
    )
    for v in fields:
        if not 0 <= v <= _MAX:
            raise ValueError(f"{e.name}: header field {v} does not fit in 32 bits")
    return MAGIC + b"".join(b"%08X" % v for v in fields)


class CpioWriter:
    """Collects entries and writes them as a newc cpio archive to ``fileobj`` on close().

    ``fileobj`` is any binary file-like object with ``write`` (a file, ``io.BytesIO``, or
    ``gzip_file(...)``). ``check_parents`` (default True) makes close() raise ValueError
    if an entry's parent directory is not itself in the archive: the kernel does not
    create missing directories when it unpacks an initramfs.
    """

    def __init__(self, fileobj: BinaryIO, *, check_parents: bool = True):
        self._out = fileobj
        self._entries: dict[str, Entry] = {}
        self._check_parents = check_parents
        self._closed = False
        self.bytes_written = 0

    # -- adding entries ----------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """Add a prepared Entry (its name is normalized). Duplicate names are an error."""
        if self._closed:
            raise ValueError("CpioWriter is closed")
        name = normalize_name(entry.name)
        if name == TRAILER:
            raise ValueError(f"{TRAILER} is reserved for the end-of-archive record")
        if name in self._entries:
            raise ValueError(f"duplicate archive entry: {name}")
        if name != entry.name:
            entry = Entry(name, entry.mode, entry.data, entry.uid, entry.gid, entry.mtime,
                          entry.rdevmajor, entry.rdevminor)
        self._entries[name] = entry

    def add_dir(self, name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> None:
        """A directory; ``mode`` is the permission bits (e.g. 0o1777 for /tmp)."""
        self.add(Entry(name, stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid))

    def add_file(self, name: str, data: bytes, mode: int = 0o644, *,
                 uid: int = 0, gid: int = 0) -> None:
        """A regular file holding ``data``; ``mode`` is the permission bits."""
        self.add(Entry(name, stat.S_IFREG | (mode & 0o7777), bytes(data), uid=uid, gid=gid))

    def add_symlink(self, name: str, target: str, *, uid: int = 0, gid: int = 0) -> None:
        """A symbolic link to ``target`` (stored verbatim as the entry's data)."""
        if not target:
            raise ValueError(f"{name}: empty symlink target")
        self.add(Entry(name, stat.S_IFLNK | 0o777, target.encode(), uid=uid, gid=gid))

    def add_device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600,
                   *, uid: int = 0, gid: int = 0) -> None:
        """A device node: ``kind`` "c" (character) or "b" (block), e.g. ("c", 5, 1)."""
        kinds = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
        if kind not in kinds:
            raise ValueError(f"{name}: device kind must be 'c' or 'b', not {kind!r}")
        self.add(Entry(name, kinds[kind] | (mode & 0o7777), uid=uid, gid=gid,
                       rdevmajor=major, rdevminor=minor))

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    # -- writing -----------------------------------------------------------------
    def _write(self, b: bytes) -> None:
        self._out.write(b)
        self.bytes_written += len(b)

    def _write_record(self, ino: int, e: Entry) -> None:
        name = e.name.encode() + b"\0"
        self._write(_header(ino, e, len(name)) + name)
        self._write(b"\0" * _pad4(self.bytes_written))
        if e.data:
            self._write(e.data)
            self._write(b"\0" * _pad4(self.bytes_written))

    def close(self) -> None:
        """Write all entries in sorted name order, then the TRAILER!!! record.

        Does not close ``fileobj``. Calling close() twice is harmless.
        """
        if self._closed:
            return
        if self._check_parents:
            for name in self._entries:
                parent = name.rpartition("/")[0]
                if parent and (parent not in self._entries
                               or not stat.S_ISDIR(self._entries[parent].mode)):
                    raise ValueError(f"{name}: parent directory {parent} is not in the archive")
        self._closed = True
        ino = 0
        for ino, name in enumerate(sorted(self._entries), start=1):
            self._write_record(ino, self._entries[name])
        # The trailer: all-zero fields except nlink 1 (as cpio(1) writes it) and namesize.
        self._write_record(0, Entry(TRAILER, 0))

    def __enter__(self) -> "CpioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def gzip_file(fileobj: BinaryIO, compresslevel: int = 9) -> gzip.GzipFile:
    """A gzip stream over ``fileobj`` with a reproducible header (mtime 0, no file name).

    Close the returned object (or use it in a with-block) to flush the gzip trailer.
    """
    return gzip.GzipFile(filename="", mode="wb", fileobj=fileobj,
                         compresslevel=compresslevel, mtime=0)
