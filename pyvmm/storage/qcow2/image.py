"""A qcow2 disk image (versions 2 and 3): reads, writes, discards, flushes; creation.

Source: QEMU docs/interop/qcow2.rst. The header, refcounts, cluster map, table cache
and compression live in the sibling modules; this one turns byte ranges into cluster
runs.

Invariants:
- guest data is written (pwrite) before any L2 entry points at it; new clusters are
  written whole (the parts not covered by the request are filled from the old
  content: backing file, compressed data, zeros), except past the end of the host
  file, where the holes already read as zeros;
- an L2 entry is rewritten in place only if it has the COPIED flag (refcount 1) and
  is neither compressed nor a zero cluster; anything else gets a new cluster and the
  old one is freed after the new mapping is on disk (refcount.py);
- ``flush``: refcount blocks, barrier, L2 tables and L1, barrier, then the freed
  clusters' refcounts, barrier. So a crash at any point leaks at worst;
- autoclear feature bits are cleared when the image is opened read-write (before
  any write); the v3 dirty bit is set before the first metadata change (an
  allocation, a discard, a resize) and cleared on a clean close; an overwrite of
  allocated clusters changes no metadata and leaves it alone;
- a request whose guest range maps to host-contiguous plain clusters is one
  pread/pwrite, or one preadv/pwritev for readv/writev (``_run_start``); anything else walks the map cluster run by run; images with the corrupt bit, internal snapshots, or dirty
  with lazy refcounts open read-only only.
"""
import os
import struct

from pyvmm.errors import BadImageError, DiskImageError
from pyvmm.storage.image import DiskImage, open_image, probe
from pyvmm.storage.qcow2 import header as H
from pyvmm.storage.qcow2.cache import ArrayCodec, typecode_for_bits
from pyvmm.storage.qcow2.cluster import COMPRESSED, COPIED, L2_RESERVED, OFFSET_MASK, ZERO, ClusterMap
from pyvmm.storage.qcow2.compress import (compress_cluster, decompress_cluster, make_descriptor,
                                          parse_descriptor)
from pyvmm.storage.qcow2.refcount import PackedCodec, Refcounts
from pyvmm.storage.raw import HostFile

DEFAULT_CACHE_BYTES = 4 << 20
_pread, _pwrite = os.pread, os.pwrite   # the fast paths call these once a request
_DICT_RUN = 16     # runs up to this many clusters (1 MiB of 64 KiB ones) are checked in ClusterMap.plain first


class Qcow2Image(DiskImage):
    format = "qcow2"

    def __init__(self, path, readonly=False, cache_bytes=DEFAULT_CACHE_BYTES, _chain=()):
        self._f = HostFile(path, readonly)
        self.backing = None
        try:
            self._open(readonly, cache_bytes, _chain)
        except BaseException:
            self._f.close()
            if self.backing is not None:
                self.backing.close()
            raise

    def _open(self, readonly, cache_bytes, chain):
        f = self._f
        path = f.path
        first = f.pread(0, H.V3_MIN_HEADER_LENGTH)
        bits = struct.unpack_from(">I", first, 20)[0] if len(first) >= 24 else 0
        head = f.pread(0, 1 << bits) if H.MIN_CLUSTER_BITS <= bits <= H.MAX_CLUSTER_BITS else first
        h = self.header = H.parse_header(path, head, f.size)
        if not readonly:
            if h.incompatible_features & H.INCOMPAT_CORRUPT:
                raise BadImageError(path, "image is marked corrupt (incompatible feature bit 1): open it "
                                          "read-only or repair it with qemu-img check -r all")
            if h.nb_snapshots:
                raise DiskImageError(path, f"image has {h.nb_snapshots} internal snapshots: pyvmm opens "
                                           f"such images read-only")
            if h.incompatible_features & H.INCOMPAT_DIRTY and h.compatible_features & H.COMPAT_LAZY_REFCOUNTS:
                raise BadImageError(path, "image is dirty with lazy refcounts: repair it with "
                                          "qemu-img check -r all, or open it read-only")
        self.cluster_bits = cb = h.cluster_bits
        self.cs = cs = 1 << cb
        tables = max(8, cache_bytes // cs)
        self.refcounts = Refcounts(f, h, path, tables)
        self.map = ClusterMap(f, h, path, self.refcounts, tables)
        if h.backing_file:
            self.backing = open_image(self.backing_path(), h.backing_format or None, True, chain)
        if not readonly and h.autoclear_features:
            # We do not keep what those features describe (bitmaps, raw external data),
            # and even an in-place data write makes them stale: clear them now, as
            # QEMU does when it opens such an image read-write (qcow2.rst).
            h.autoclear_features = 0
            f.pwrite(H.OFF_AUTOCLEAR, struct.pack(">Q", 0))
            f.barrier()
        # An L2 entry a read can serve with one pread: none of these bits set.
        self._special = COMPRESSED | L2_RESERVED | ZERO | (cs - 1)
        self._cmask = cs - 1
        self._plain = self.map.plain       # the same dict object for the image's life
        self._fd = f.fd
        self._dirty_marked = False
        self._compressed_tail = 0      # next free byte in the cluster holding compressed data
        self._last_compressed = (None, None)
        super().__init__(path, h.size, readonly)

    def backing_path(self):
        name = self.header.backing_file
        if not name:
            return None
        if os.path.isabs(name):
            return name
        return os.path.join(os.path.dirname(os.path.abspath(self._f.path)), name)

    # -- reading -----------------------------------------------------------------
    def _run_start(self, offset, length):
        """Host offset of the cluster holding guest byte ``offset`` if guest bytes
        [offset, offset+length) lie in plain COPIED data clusters that are contiguous
        on the host (one pread/pwrite serves them), else -1. A single cluster is looked
        up in ClusterMap.plain (inlined in read/write, the 4 KiB path); a longer run is
        checked a whole L2 slice at a time (ClusterMap.plain_run)."""
        cb = self.cluster_bits
        gci = offset >> cb
        count = ((offset + length - 1) >> cb) - gci + 1
        plain = self._plain
        host = plain.get(gci, -1)
        if count == 2 and host >= 0 and plain.get(gci + 1) == host + self.cs:
            return host            # a small request across one cluster boundary
        if count <= _DICT_RUN and host >= 0:
            for k in range(1, count):
                if plain.get(gci + k) != host + (k << cb):
                    break
            else:
                return host
        elif count == 1:
            return host
        host = self.map.plain_run(gci, count)
        if 0 <= host and count <= _DICT_RUN:   # small runs repeat: remember their clusters
            for k in range(count):
                self.map.note_plain(gci + k, host + (k << cb))
        return host

    def read(self, offset, length):
        if offset >= 0 and length > 0 and offset + length <= self.size and not self.closed:
            inoff = offset & self._cmask
            try:     # a subscript, not dict.get: this is the per-request cost of 4 KiB reads
                host = self._plain[offset >> self.cluster_bits] if inoff + length <= self.cs \
                    else self._run_start(offset, length)
            except KeyError:     # not remembered yet: one L2 lookup remembers it if plain
                host = self.map.plain_host(offset >> self.cluster_bits)
            if host >= 0:
                data = _pread(self._fd, length, host + inoff)
                if len(data) == length:
                    return data
            return self._read(offset, length)
        return DiskImage.read(self, offset, length)

    def _readv(self, offset, buffers, total):
        # Host-contiguous plain clusters: one preadv straight into the caller's buffers.
        host = self._run_start(offset, total)
        if host >= 0 and self._f.preadv(buffers, host + (offset & self._cmask), total) == total:
            return
        DiskImage._readv(self, offset, buffers, total)

    def _extents(self, offset, length):
        """Merged runs [kind, arg, length] covering the range: kind "d" (host data at arg),
        "b" (backing file at guest offset arg), "z" (zeros), "c" (compressed entry arg)."""
        cb, cs = self.cluster_bits, self.cs
        out = []
        pos, end = offset, offset + length
        backing = self.backing is not None
        m = self.map
        table, table_end = None, -1
        while pos < end:
            gci = pos >> cb
            inoff = pos & (cs - 1)
            n = min(cs - inoff, end - pos)
            if pos >= table_end:          # one L2 lookup per table, not per cluster
                l2off, table = m.l2(gci >> m.l2_bits)
                table_end = ((gci >> m.l2_bits) + 1) << (m.l2_bits + cb)
            e = table[gci & m.l2_mask] if table is not None else 0
            if e & m._not_plain == COPIED:
                m.note_plain(gci, e & OFFSET_MASK)
            if e & COMPRESSED:
                out.append(["c", (e, inoff), n])
                pos += n
                continue
            if e:
                self._check_data_entry(gci, e)
            if e & ZERO:
                kind, arg = "z", None
            elif e & OFFSET_MASK:
                kind, arg = "d", (e & OFFSET_MASK) + inoff
            else:
                kind, arg = ("b", pos) if backing else ("z", None)
            if out and out[-1][0] == kind and (kind == "z" or out[-1][1] + out[-1][2] == arg):
                out[-1][2] += n
            else:
                out.append([kind, arg, n])
            pos += n
        return out

    def _check_data_entry(self, gci, e):
        host = e & OFFSET_MASK
        if e & L2_RESERVED or host & (self.cs - 1) or 0 < host < self.cs:
            raise BadImageError(self.path, f"L2 entry for guest cluster {gci} ({e:#x}) has reserved bits "
                                           f"set, is not cluster aligned or points into the header")

    def _read(self, offset, length):
        runs = self._extents(offset, length)
        if len(runs) == 1 and runs[0][0] == "d":
            return self._f.pread_exact(runs[0][1], length, "data cluster")
        buf = bytearray(length)
        view = memoryview(buf)
        p = 0
        for kind, arg, n in runs:
            if kind == "d":
                self._f.preadv_into(view[p:p + n], arg, "data cluster")
            elif kind == "b":
                view[p:p + n] = self._backing_read(arg, n)
            elif kind == "c":
                entry, inoff = arg
                view[p:p + n] = self._decompressed(entry)[inoff:inoff + n]
            p += n
        return bytes(buf)

    def _backing_read(self, pos, n):
        avail = self.backing.size - pos
        if avail >= n:
            return self.backing.read(pos, n)
        if avail <= 0:
            return bytes(n)
        return self.backing.read(pos, avail) + bytes(n - avail)

    def _decompressed(self, entry):
        if self._last_compressed[0] == entry:
            return self._last_compressed[1]
        host, start, span = parse_descriptor(entry, self.cluster_bits)
        if host >= self._f.size or host < self.cs:
            raise BadImageError(self.path, f"compressed cluster at {host:#x} is in the header or past the "
                                           f"end of the file ({self._f.size:#x} bytes)")
        data = self._f.pread(host, start + span - host)
        try:
            out = decompress_cluster(data, self.cs)
        except ValueError as e:
            raise BadImageError(self.path, f"compressed cluster at {host:#x}: {e}") from None
        self._last_compressed = (entry, out)
        return out

    def _old_content(self, gci, e, start, n):
        """Bytes [start, start+n) of guest cluster ``gci`` as mapped by ``e``; None for zeros."""
        if e & COMPRESSED:
            return self._decompressed(e)[start:start + n]
        if e & ZERO:
            return None
        if e & OFFSET_MASK:
            self._check_data_entry(gci, e)
            return self._f.pread_exact((e & OFFSET_MASK) + start, n, "data cluster")
        if self.backing is None or (gci << self.cluster_bits) + start >= self.backing.size:
            return None
        return self._backing_read((gci << self.cluster_bits) + start, n)

    # -- writing -----------------------------------------------------------------
    def _in_place(self, e):
        return (e & (self._special | COPIED)) == COPIED and e & OFFSET_MASK >= self.cs

    def write(self, offset, data):
        # An overwrite of allocated plain clusters changes no metadata: one pwrite,
        # and no dirty bit (it says refcounts may be stale, qcow2.rst).
        n = len(data)
        if offset >= 0 and n and offset + n <= self.size and not self.closed and not self.readonly:
            inoff = offset & self._cmask
            host = self._plain.get(offset >> self.cluster_bits, -1) if inoff + n <= self.cs \
                else self._run_start(offset, n)
            if host >= 0:
                host += inoff
                if _pwrite(self._fd, data, host) == n:
                    return
                return self._f.pwrite(host, data)
        return DiskImage.write(self, offset, data)

    def _writev(self, offset, buffers, total):
        # An overwrite of host-contiguous plain clusters: one pwritev, no metadata (as write).
        host = self._run_start(offset, total)
        if host >= 0:
            return self._f.pwritev(buffers, host + (offset & self._cmask), total)
        self._write(offset, b"".join(buffers))

    def _write(self, offset, data):
        cb, cs = self.cluster_bits, self.cs
        n = len(data)
        view = memoryview(data).cast("B")
        pos, end = offset, offset + n
        while pos < end:
            gci = pos >> cb
            e = self.map.entry(gci)
            if self._in_place(e):
                self._check_data_entry(gci, e)
                host = (e & OFFSET_MASK) + (pos & (cs - 1))
                run_end = min(end, (gci + 1) << cb)
                while run_end < end:
                    e2 = self.map.entry(run_end >> cb)
                    if not self._in_place(e2) or (e2 & OFFSET_MASK) != host + (run_end - pos):
                        break
                    run_end = min(end, run_end + cs)
                if host + (run_end - pos) > self._f.size:
                    raise BadImageError(self.path, f"L2 entry for guest cluster {gci} points past the end "
                                                   f"of the file ({self._f.size:#x} bytes)")
                self._f.pwrite(host, view[pos - offset:run_end - offset])
                pos = run_end
            else:
                self._mark_dirty()
                last = (end - 1) >> cb
                k = 1
                while gci + k <= last and not self._in_place(self.map.entry(gci + k)):
                    k += 1
                pos = self._write_new(gci, k, pos, min(end, (gci + k) << cb), view, offset)

    def _write_new(self, gci, k, pos, run_end, view, base):
        """Write [pos, run_end) (within guest clusters gci..gci+k-1) into new clusters."""
        cb, cs = self.cluster_bits, self.cs
        while k:
            first, got = self.refcounts.allocate(k)
            host = first << cb
            seg_end = min(run_end, (gci + got) << cb)
            head = pos & (cs - 1)
            tail = ((gci + got) << cb) - seg_end
            olds = [self.map.entry(gci + i) for i in range(got)]
            head_data = self._old_content(gci, olds[0], 0, head) if head else None
            tail_data = self._old_content(gci + got - 1, olds[-1], cs - tail, tail) if tail else None
            payload = view[pos - base:seg_end - base]
            if host >= self._f.size and head_data is None and tail_data is None:
                self._f.pwrite(host + head, payload)
                if self._f.size < host + got * cs:
                    self._f.truncate(host + got * cs)
            else:
                self._f.pwrite(host, b"".join((head_data or bytes(head), payload, tail_data or bytes(tail))))
            for i in range(got):
                self.map.set_entry(gci + i, (host + i * cs) | COPIED)
                self._release(olds[i])
            gci += got
            k -= got
            pos = seg_end
        return pos

    def _release(self, e):
        """Free the host clusters an L2 entry that is being replaced pointed at."""
        if e & COMPRESSED:
            _, start, span = parse_descriptor(e, self.cluster_bits)
            first = start >> self.cluster_bits
            self.refcounts.free(first, ((start + span - 1) >> self.cluster_bits) - first + 1)
        elif e & OFFSET_MASK:
            self.refcounts.free((e & OFFSET_MASK) >> self.cluster_bits)

    def write_compressed(self, offset, data):
        """Write one whole guest cluster compressed (for conversion); the cluster must
        be unallocated. Falls back to a normal write if deflate does not shrink it."""
        self._check(offset, len(data), True)
        cs, cb = self.cs, self.cluster_bits
        if offset % cs or len(data) != min(cs, self.size - offset):
            raise DiskImageError(self.path, f"compressed write at {offset} length {len(data)} is not one "
                                            f"whole cluster")
        if self.map.entry(offset >> cb):
            raise DiskImageError(self.path, f"compressed write at {offset}: cluster is already allocated")
        packed = compress_cluster(bytes(data) + bytes(cs - len(data)))
        if packed is None:
            return self.write(offset, data)
        self._mark_dirty()
        tail = self._compressed_tail
        if tail and (tail & (cs - 1)) + len(packed) <= cs:
            host = tail
            self.refcounts.change(host >> cb, 1, 1)
        else:
            host = self.refcounts.allocate(1)[0] << cb
        self._f.pwrite(host, packed)
        self._compressed_tail = host + len(packed) if (host + len(packed)) & (cs - 1) else 0
        self.map.set_entry(offset >> cb, make_descriptor(host, len(packed), cb))

    def _discard(self, offset, length):
        self._mark_dirty()
        cb, cs = self.cluster_bits, self.cs
        end = offset + length
        first_full = -(-offset // cs)
        last_full = end >> cb
        if first_full >= last_full:          # no whole cluster: parts of at most two
            boundary = min(end, ((offset >> cb) + 1) << cb)
            self._zero_partial(offset, boundary)
            return self._zero_partial(boundary, end)
        self._zero_partial(offset, first_full << cb)
        self._zero_partial(last_full << cb, end)
        if self.backing is not None and self.header.version < 3:
            for gci in range(first_full, last_full):   # v2 has no zero flag: store zeros
                self._write(gci << cb, bytes(min(cs, self.size - (gci << cb))))
            return
        new = ZERO if self.backing is not None else 0
        for gci in range(first_full, last_full):
            e = self.map.entry(gci)
            if e != new:
                self.map.set_entry(gci, new)
                self._release(e)

    def _zero_partial(self, start, end):
        """Zeroes over [start, end), which lies inside one cluster."""
        if start >= end:
            return
        e = self.map.entry(start >> self.cluster_bits)
        if e & COMPRESSED:
            zero = False
        elif e & ZERO:
            zero = True
        else:
            zero = not e & OFFSET_MASK and (self.backing is None or start >= self.backing.size)
        if not zero:
            self._write(start, bytes(end - start))

    def _mark_dirty(self):
        if self._dirty_marked:
            return
        h = self.header
        if h.version >= 3:
            self._f.pwrite(H.OFF_INCOMPAT, struct.pack(">Q", h.incompatible_features | H.INCOMPAT_DIRTY))
            self._f.barrier()
        self._dirty_marked = True

    def resize(self, new_size):
        """Grow the virtual disk to ``new_size`` bytes (shrinking is refused)."""
        self._check(0, 0, True)
        if new_size < self.size:
            raise DiskImageError(self.path, f"shrinking from {self.size} to {new_size} bytes is not supported")
        self._mark_dirty()
        need = H.l1_entries_for(new_size, self.cluster_bits)
        if need > len(self.map.l1):
            self.map.grow_l1(need)
        self._f.pwrite(H.OFF_SIZE, struct.pack(">Q", new_size))
        self._f.barrier()
        self.size = self.header.size = new_size

    # -- durability ----------------------------------------------------------------
    def _flush(self):
        f = self._f
        self.refcounts.flush()
        f.barrier()
        if self.map.flush():
            f.barrier()
        if self.refcounts.pending:
            freed = self.refcounts.apply_pending()
            self.refcounts.flush()
            f.barrier()
            for first, count in freed:
                f.punch_hole(first << self.cluster_bits, count << self.cluster_bits)

    def _close(self):
        clean = not (self.refcounts.cache.dirty or self.map.cache.dirty or self.map.l1_dirty
                     or self.refcounts.pending)
        try:
            if self._dirty_marked and clean and self.header.version >= 3:
                incompat = self.header.incompatible_features & ~H.INCOMPAT_DIRTY
                self._f.pwrite(H.OFF_INCOMPAT, struct.pack(">Q", incompat))
                self._f.barrier()
        finally:
            self._f.close()
            if self.backing is not None:
                self.backing.close()

    def info(self):
        h = self.header
        out = {"format": "qcow2", "virtual-size": self.size, "cluster-size": self.cs,
               "actual-size": self._f.allocated_bytes(),
               "dirty-flag": bool(h.incompatible_features & H.INCOMPAT_DIRTY)}
        if h.backing_file:
            out["backing-filename"] = h.backing_file
            out["full-backing-filename"] = self.backing_path()
            if h.backing_format:
                out["backing-filename-format"] = h.backing_format
        specific = {"compat": "1.1" if h.version >= 3 else "0.10"}
        if h.version >= 3:
            specific.update({"compression-type": "zlib",
                             "lazy-refcounts": bool(h.compatible_features & H.COMPAT_LAZY_REFCOUNTS),
                             "refcount-bits": 1 << h.refcount_order,
                             "corrupt": bool(h.incompatible_features & H.INCOMPAT_CORRUPT),
                             "extended-l2": False})
        else:
            specific["refcount-bits"] = 16
        out["format-specific"] = {"type": "qcow2", "data": specific}
        return out


def create_qcow2(path, size=None, cluster_size=65536, compat="1.1", refcount_bits=16,
                 backing_file=None, backing_fmt=None):
    """Create an empty qcow2 image; ``size`` defaults to the backing file's size."""
    def refuse(problem):
        raise DiskImageError(path, problem)

    if cluster_size & (cluster_size - 1) or not 512 <= cluster_size <= 2 << 20:
        refuse(f"cluster_size {cluster_size} is not a power of two from 512 to 2097152")
    if compat not in ("0.10", "1.1", "v2", "v3"):
        refuse(f"compat {compat!r} is not 0.10 or 1.1")
    version = 2 if compat in ("0.10", "v2") else 3
    if refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
        refuse(f"refcount_bits {refcount_bits} is not a power of two from 1 to 64")
    if version == 2 and refcount_bits != 16:
        refuse("refcount widths other than 16 bits need compat=1.1")
    if backing_file:
        full = backing_file if os.path.isabs(backing_file) else \
            os.path.join(os.path.dirname(os.path.abspath(path)), backing_file)
        backing_fmt = backing_fmt or probe(full)
        if size is None:
            with open_image(full, backing_fmt, readonly=True) as b:
                size = b.size
    if size is None or size < 0:
        refuse("give the image size (or a backing file to take it from)")
    size = -(-size // 512) * 512
    cb = cluster_size.bit_length() - 1
    order = refcount_bits.bit_length() - 1
    l1_size = H.l1_entries_for(size, cb)
    if l1_size * 8 > H.MAX_L1_BYTES:
        refuse(f"size {size} needs an L1 table larger than 32 MiB with {cluster_size}-byte clusters")
    h = H.Header(version=version, backing_file_offset=0, backing_file_size=0, cluster_bits=cb, size=size,
                 crypt_method=0, l1_size=l1_size, l1_table_offset=0, refcount_table_offset=0,
                 refcount_table_clusters=0, nb_snapshots=0, snapshots_offset=0, refcount_order=order,
                 header_length=H.V3_HEADER_LENGTH if version == 3 else H.V2_HEADER_LENGTH,
                 backing_file=backing_file)
    if backing_file and backing_fmt:
        h.extensions.append((H.EXT_BACKING_FORMAT, backing_fmt.encode()))
    if len(h.pack()) > cluster_size:
        refuse(f"header and backing file name do not fit one {cluster_size}-byte cluster")
    l1_clusters = -(-l1_size * 8 // cluster_size)
    per_block = cluster_size * 8 // refcount_bits
    rt, blocks = 1, 1
    while True:
        total = 1 + rt + blocks + l1_clusters
        nb = -(-total // per_block)
        nrt = -(-nb * 8 // cluster_size)
        if (nb, nrt) == (blocks, rt):
            break
        blocks, rt = nb, nrt
    h.refcount_table_offset = cluster_size
    h.refcount_table_clusters = rt
    h.l1_table_offset = (1 + rt + blocks) * cluster_size if l1_size else 0
    image = bytearray(total * cluster_size)
    head = h.pack()
    image[:len(head)] = head
    table = ArrayCodec("Q").empty(rt * cluster_size)
    codec = ArrayCodec(typecode_for_bits(refcount_bits)) if refcount_bits >= 8 else PackedCodec(refcount_bits)
    for j in range(blocks):
        table[j] = (1 + rt + j) * cluster_size
        block = codec.empty(cluster_size)
        for c in range(j * per_block, min(total, (j + 1) * per_block)):
            block[c - j * per_block] = 1
        image[table[j]:table[j] + cluster_size] = codec.encode(block)
    image[cluster_size:cluster_size * (1 + rt)] = ArrayCodec("Q").encode(table)
    try:
        with open(path, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:
        raise BadImageError(path, f"cannot create: {e.strerror}") from None
