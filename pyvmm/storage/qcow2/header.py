"""The qcow2 header: layout, header extensions, validation against the file.

Source for every offset and constant: QEMU docs/interop/qcow2.rst ("Header",
"Header extensions", "Feature name table"). All fields are big-endian.

Invariant: a Header returned by ``parse_header`` has been checked against the file
length, so every table it names (L1, refcount table, snapshot table, backing file
name) lies inside the file, is cluster aligned where the spec requires it, and has
a size bounded the way QEMU bounds it; reading those tables cannot cause a giant
allocation. Anything else is a BadImageError naming the file.
"""
import struct
from dataclasses import dataclass, field

from pyvmm.errors import BadImageError

MAGIC = b"QFI\xfb"
# Header field byte offsets (qcow2.rst "Header").
OFF_VERSION = 4
OFF_BACKING_FILE = 8          # u64 offset, u32 size at 16
OFF_SIZE = 24
OFF_L1 = 36                   # u32 l1_size at 36, u64 l1_table_offset at 40
OFF_REFTABLE = 48             # u64 refcount_table_offset, u32 refcount_table_clusters at 56
OFF_INCOMPAT = 72
OFF_AUTOCLEAR = 88
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
V3_HEADER_LENGTH = 112        # with the compression_type byte, padded to 8

# Incompatible feature bits (qcow2.rst, "incompatible_features").
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
COMPAT_LAZY_REFCOUNTS = 1 << 0
COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

# Header extension types (qcow2.rst, "Header extensions").
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

MIN_CLUSTER_BITS = 9          # 512 B
MAX_CLUSTER_BITS = 21         # 2 MiB
MAX_L1_BYTES = 32 << 20       # QEMU's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20  # QEMU's QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536         # QEMU's QCOW_MAX_SNAPSHOTS
MAX_BACKING_NAME = 1023       # qcow2.rst: "must be less than 1024 bytes"

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")   # 72 bytes
_V3 = struct.Struct(">QQQII")            # bytes 72..103


@dataclass
class Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = COMPRESSION_ZLIB
    backing_file: str = None
    backing_format: str = None
    extensions: list = field(default_factory=list)   # [(type, bytes)] in file order

    @property
    def cluster_size(self):
        return 1 << self.cluster_bits

    def pack(self):
        """Header, extensions (end marker included) and backing file name as bytes."""
        out = bytearray(_V2.pack(MAGIC, self.version, self.backing_file_offset, self.backing_file_size,
                                 self.cluster_bits, self.size, self.crypt_method, self.l1_size,
                                 self.l1_table_offset, self.refcount_table_offset,
                                 self.refcount_table_clusters, self.nb_snapshots, self.snapshots_offset))
        if self.version >= 3:
            out += _V3.pack(self.incompatible_features, self.compatible_features,
                            self.autoclear_features, self.refcount_order, self.header_length)
            out += bytes(self.header_length - len(out))
            if self.header_length > V3_MIN_HEADER_LENGTH:
                out[V3_MIN_HEADER_LENGTH] = self.compression_type
        for etype, data in self.extensions + [(EXT_END, b"")]:
            out += struct.pack(">II", etype, len(data)) + data + bytes(-len(data) % 8)
        if self.backing_file:
            name = self.backing_file.encode()
            out[OFF_BACKING_FILE:OFF_BACKING_FILE + 12] = struct.pack(">QI", len(out), len(name))
            self.backing_file_offset, self.backing_file_size = len(out), len(name)
            out += name
        return bytes(out)


def l2_entries(cluster_bits):
    return 1 << (cluster_bits - 3)


def l1_entries_for(size, cluster_bits):
    """L1 entries needed to map ``size`` bytes."""
    span = 1 << (cluster_bits + cluster_bits - 3)
    return -(-size // span)


def parse_header(path, head, file_size):
    """Parse and validate the header at the start of ``head`` (the first cluster, or
    as much of the file as there is) of a file of ``file_size`` bytes."""
    def bad(problem):
        raise BadImageError(path, problem)

    if len(head) < V2_HEADER_LENGTH or head[:4] != MAGIC:
        bad("not a qcow2 image (no QFI\\xfb magic or header shorter than 72 bytes)")
    f = _V2.unpack_from(head)
    h = Header(*f[1:])
    if h.version not in (2, 3):
        bad(f"qcow2 version {h.version} is not supported (only 2 and 3)")
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        bad(f"cluster_bits {h.cluster_bits} is outside 9..21 (512 B to 2 MiB)")
    cs = h.cluster_size
    if h.version == 3:
        if len(head) < V3_MIN_HEADER_LENGTH:
            bad("version 3 header is shorter than 104 bytes")
        (h.incompatible_features, h.compatible_features, h.autoclear_features,
         h.refcount_order, h.header_length) = _V3.unpack_from(head, V2_HEADER_LENGTH)
        if h.header_length < V3_MIN_HEADER_LENGTH or h.header_length % 8 or h.header_length > cs \
                or h.header_length > len(head):
            bad(f"header_length {h.header_length} is not a multiple of 8 in 104..cluster size")
        if h.header_length > V3_MIN_HEADER_LENGTH:
            h.compression_type = head[V3_MIN_HEADER_LENGTH]
    if h.refcount_order > 6:
        bad(f"refcount_order {h.refcount_order} is larger than 6 (64-bit refcounts)")
    if h.crypt_method:
        bad(f"encrypted images (crypt_method {h.crypt_method}) are not supported")
    unknown = h.incompatible_features & ~INCOMPAT_KNOWN
    if unknown:
        bad(f"unknown incompatible feature bits {unknown:#x}")
    if h.incompatible_features & INCOMPAT_DATA_FILE:
        bad("external data files (incompatible feature bit 2) are not supported")
    if h.incompatible_features & INCOMPAT_EXTL2:
        bad("extended L2 entries (incompatible feature bit 4) are not supported")
    if h.compression_type != COMPRESSION_ZLIB:
        name = "zstd" if h.compression_type == COMPRESSION_ZSTD else str(h.compression_type)
        bad(f"compression type {name} is not supported (only zlib/deflate)")

    def region(what, offset, length, align=True):
        if align and offset % cs:
            bad(f"{what} offset {offset:#x} is not aligned to the cluster size {cs}")
        if offset + length > file_size:
            bad(f"{what} at {offset:#x} (+{length:#x}) is past the end of the file ({file_size:#x} bytes)")

    if h.l1_size > MAX_L1_BYTES // 8:
        bad(f"L1 size {h.l1_size} entries is larger than QEMU's limit {MAX_L1_BYTES // 8}")
    if h.size > (1 << 63) - 1 or l1_entries_for(h.size, h.cluster_bits) > h.l1_size:
        bad(f"L1 table of {h.l1_size} entries is too small for the virtual size {h.size}")
    region("L1 table", h.l1_table_offset, h.l1_size * 8)
    if h.l1_size and h.l1_table_offset == 0:
        bad("L1 table overlaps the header (offset 0)")
    if h.refcount_table_clusters == 0 or h.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
        bad(f"refcount table of {h.refcount_table_clusters} clusters is empty or larger than 8 MiB")
    region("refcount table", h.refcount_table_offset, h.refcount_table_clusters * cs)
    if h.refcount_table_offset == 0:
        bad("refcount table overlaps the header (offset 0)")
    rt = (h.refcount_table_offset, h.refcount_table_offset + h.refcount_table_clusters * cs)
    l1 = (h.l1_table_offset, h.l1_table_offset + h.l1_size * 8)
    if h.l1_size and rt[0] < l1[1] and l1[0] < rt[1]:
        bad(f"refcount table {rt[0]:#x}..{rt[1]:#x} overlaps the L1 table {l1[0]:#x}..{l1[1]:#x}")
    if h.nb_snapshots > MAX_SNAPSHOTS:
        bad(f"{h.nb_snapshots} snapshots is more than {MAX_SNAPSHOTS}")
    if h.nb_snapshots:
        region("snapshot table", h.snapshots_offset, 0)
    if h.backing_file_offset:
        if h.backing_file_size > MAX_BACKING_NAME or h.backing_file_offset + h.backing_file_size > min(cs, len(head)):
            bad(f"backing file name at {h.backing_file_offset:#x} (+{h.backing_file_size}) "
                f"is longer than {MAX_BACKING_NAME} bytes or not in the first cluster")
        raw = bytes(head[h.backing_file_offset:h.backing_file_offset + h.backing_file_size])
        try:
            h.backing_file = raw.decode()
        except UnicodeDecodeError:
            bad(f"backing file name {raw!r} is not UTF-8")
    _parse_extensions(path, h, head, bad)
    return h


def _parse_extensions(path, h, head, bad):
    pos = h.header_length if h.version == 3 else V2_HEADER_LENGTH
    end = h.backing_file_offset if h.backing_file_offset else min(h.cluster_size, len(head))
    while pos + 8 <= end:
        etype, length = struct.unpack_from(">II", head, pos)
        if etype == EXT_END:
            return
        if pos + 8 + length > end:
            bad(f"header extension {etype:#x} at {pos:#x} (+{length}) runs past the header area")
        data = bytes(head[pos + 8:pos + 8 + length])
        if etype == EXT_BACKING_FORMAT:
            h.backing_format = data.decode(errors="replace")
        elif etype == EXT_CRYPTO:
            bad("encryption header extension present: encrypted images are not supported")
        elif etype == EXT_DATA_FILE:
            bad("external data file extension present: external data files are not supported")
        h.extensions.append((etype, data))
        pos += 8 + length + (-length % 8)
