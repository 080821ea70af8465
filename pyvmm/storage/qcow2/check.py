"""Consistency check of a qcow2 image, the way ``qemu-img check`` judges one.

Every cluster the metadata references (header, L1 and L2 tables, data and
compressed clusters, refcount table and blocks, snapshot table, snapshot L1/L2
tables) is counted, then compared with the stored refcount: stored < referenced is a
corruption (the cluster could be handed out twice), stored > referenced a leak
(space lost, data safe). Active L1/L2 entries must carry COPIED exactly when the
refcount is 1. Source: QEMU docs/interop/qcow2.rst.

Invariant: checking never writes; ``repair_leaks`` lowers leaked refcounts only,
through the image's own crash-ordered refcount path.
"""
import struct
from array import array
from dataclasses import dataclass, field

from pyvmm.errors import BadImageError
from pyvmm.storage.qcow2.cache import ArrayCodec
from pyvmm.storage.qcow2.cluster import COMPRESSED, COPIED, L2_RESERVED, OFFSET_MASK
from pyvmm.storage.qcow2.compress import parse_descriptor
from pyvmm.storage.qcow2.image import Qcow2Image

SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")   # qcow2.rst "Snapshot table", 40 bytes
MAX_SNAPSHOT_EXTRA = 1024                      # QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA


@dataclass
class CheckResult:
    filename: str
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    image_end_offset: int = 0
    leaks_fixed: int = 0
    messages: list = field(default_factory=list)

    def as_json(self):
        out = {"image-end-offset": self.image_end_offset, "total-clusters": self.total_clusters,
               "check-errors": self.check_errors, "leaks": self.leaks, "corruptions": self.corruptions,
               "allocated-clusters": self.allocated_clusters, "filename": self.filename, "format": "qcow2",
               "fragmented-clusters": self.fragmented_clusters,
               "compressed-clusters": self.compressed_clusters}
        if self.leaks_fixed:
            out["leaks-fixed"] = self.leaks_fixed
        return out


class _Walker:
    def __init__(self, img, result):
        self.img = img
        self.r = result
        self.cs = img.cs
        self.cb = img.cluster_bits
        self.nclusters = -(-img._f.size // self.cs)
        self.refs = array("I", bytes(4 * self.nclusters))
        self.copied = []     # (cluster, has COPIED, what) for active tables and data

    def error(self, msg):
        self.r.corruptions += 1
        self.r.messages.append("ERROR " + msg)

    def ref(self, offset, length, what):
        if offset % self.cs and "compressed" not in what:
            self.error(f"{what} at {offset:#x} is not cluster aligned")
            return False
        first = offset >> self.cb
        for c in range(first, ((offset + max(length, 1) - 1) >> self.cb) + 1):
            if c >= self.nclusters:
                self.error(f"{what} at {offset:#x} is past the end of the file")
                return False
            self.refs[c] += 1
        return True

    def table(self, offset, length, what):
        try:
            return ArrayCodec("Q").decode(self.img._f.pread_exact(offset, length, what)) if length else []
        except BadImageError as e:
            self.r.check_errors += 1
            self.r.messages.append(f"ERROR {e}")
            return []

    def walk_l1(self, l1_offset, l1_size, active):
        for i, entry in enumerate(self.table(l1_offset, l1_size * 8, "L1 table")):
            l2 = entry & OFFSET_MASK
            if not l2:
                continue
            if not self.ref(l2, self.cs, f"L2 table (L1 entry {i})"):
                continue
            if active:
                self.copied.append((l2 >> self.cb, bool(entry & COPIED), f"L2 table {l2:#x}"))
            prev = None
            for j, e in enumerate(self.table(l2, self.cs, "L2 table")):
                if e & COMPRESSED:
                    _, start, span = parse_descriptor(e, self.cb)
                    self.ref(start, span, "compressed cluster")
                    if active:
                        self.r.compressed_clusters += 1
                        self.r.allocated_clusters += 1
                    continue
                host = e & OFFSET_MASK
                if not host:
                    continue
                if e & L2_RESERVED:
                    self.error(f"L2 entry {j} of table {l2:#x} has reserved bits set ({e:#x})")
                if not self.ref(host, self.cs, f"data cluster (L2 {l2:#x} entry {j})"):
                    continue
                if active:
                    if not e & 1:
                        self.r.allocated_clusters += 1
                        if prev is not None and host != prev + self.cs:
                            self.r.fragmented_clusters += 1
                        prev = host
                    self.copied.append((host >> self.cb, bool(e & COPIED), f"data cluster {host:#x}"))

    def walk_snapshots(self, h):
        pos = h.snapshots_offset
        start = pos
        for n in range(h.nb_snapshots):
            fixed = self.img._f.pread(pos, SNAPSHOT_ENTRY.size)
            if len(fixed) < SNAPSHOT_ENTRY.size:
                self.error(f"snapshot {n} header at {pos:#x} is past the end of the file")
                return
            l1_off, l1_size, id_len, name_len, _, _, _, _, extra = SNAPSHOT_ENTRY.unpack(fixed)
            if extra > MAX_SNAPSHOT_EXTRA or l1_size * 8 > (32 << 20):
                self.error(f"snapshot {n} at {pos:#x} has extra data {extra} or L1 size {l1_size} out of range")
                return
            pos += SNAPSHOT_ENTRY.size + extra + id_len + name_len
            pos += -(pos - start) % 8
            if self.ref(l1_off, l1_size * 8, f"snapshot {n} L1 table"):
                self.walk_l1(l1_off, l1_size, active=False)
        self.ref(start, pos - start, "snapshot table")


def check_qcow2(path, repair_leaks=False):
    """Check the qcow2 image at ``path``; with ``repair_leaks`` lower leaked refcounts."""
    img = Qcow2Image(path, readonly=not repair_leaks)
    try:
        result = CheckResult(filename=str(path))
        h = img.header
        result.total_clusters = -(-h.size // img.cs)
        w = _Walker(img, result)
        w.ref(0, img.cs, "header")
        w.ref(h.l1_table_offset, len(img.map.l1) * 8, "L1 table")
        w.walk_l1(img.map.l1_offset, len(img.map.l1), active=True)
        if h.nb_snapshots:
            w.walk_snapshots(h)
        rc = img.refcounts
        w.ref(rc.table_offset, rc.table_clusters * img.cs, "refcount table")
        for ti, entry in enumerate(rc.table):
            if entry:
                w.ref(entry & ~0x1FF, img.cs, f"refcount block {ti}")
        last_used = 0
        leaked = []
        stored_of = {}
        for c in range(max(w.nclusters, rc.end)):
            try:
                stored = rc.get(c)
            except BadImageError as e:
                result.check_errors += 1
                result.messages.append(f"ERROR {e}")
                break
            computed = w.refs[c] if c < w.nclusters else 0
            if stored:
                last_used = c + 1
            if stored < computed:
                w.error(f"cluster {c} refcount={stored} reference={computed}")
            elif stored > computed:
                result.leaks += 1
                result.messages.append(f"Leaked cluster {c} refcount={stored} reference={computed}")
                leaked.append((c, stored - computed))
            stored_of[c] = stored
        for c, flag, what in w.copied:
            if (stored_of.get(c, 0) == 1) != flag:
                w.error(f"OFLAG_COPIED {what}: refcount={stored_of.get(c, 0)} copied={int(flag)}")
        result.image_end_offset = last_used * img.cs
        if repair_leaks and leaked and not result.corruptions:
            img._mark_dirty()
            for c, extra in leaked:
                rc.change(c, 1, -extra)
            result.leaks_fixed = len(leaked)
            result.leaks = 0
    finally:
        img.close()
    return result
