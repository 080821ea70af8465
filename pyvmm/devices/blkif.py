"""Block device ring ABI (xen/include/public/io/blkif.h): layouts and constants only.

Responsibility: the byte layout of blkif requests and responses, the operation
and status numbers, and the ring they travel on (``DEFINE_RING_TYPES(blkif, ...)``)
as ``RingLayout`` for ``devices/ring.py``. The backend that serves them lives
elsewhere.

Invariants: every layout matches gcc's for the x86-64 header byte for byte
(tests/devices/test_ring_abi.py compiles the real header and compares).
"""

from pyvmm.devices.ring import RingLayout
from pyvmm.pv.cstruct import Array, Struct, i16, u8, u16, u32, u64

__all__ = ["BLKIF_REQUEST", "BLKIF_REQUEST_DISCARD", "BLKIF_REQUEST_INDIRECT", "BLKIF_RESPONSE",
           "BLKIF_SEGMENT", "BLKIF_RING", "LAYOUTS"]

# Operations (blkif.h, BLKIF_OP_*).
BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_DISCARD_SECURE = 1 << 0

# Response status (blkif.h, BLKIF_RSP_*).
BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

# Virtual disk info flags (blkif.h, VDISK_*), written to xenstore "info".
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4

_GRANT_REF = u32           # grant_table.h: typedef uint32_t grant_ref_t;
_VDEV = u16                # blkif.h: #define blkif_vdev_t uint16_t
_SECTOR = u64              # blkif.h: #define blkif_sector_t uint64_t

# struct blkif_request_segment
BLKIF_SEGMENT = Struct("blkif_request_segment", [
    ("gref", _GRANT_REF), ("first_sect", u8), ("last_sect", u8)])

# struct blkif_request (typedef blkif_request_t)
BLKIF_REQUEST = Struct("blkif_request", [
    ("operation", u8), ("nr_segments", u8), ("handle", _VDEV), ("id", u64),
    ("sector_number", _SECTOR), ("seg", Array(BLKIF_SEGMENT, BLKIF_MAX_SEGMENTS_PER_REQUEST))])

# struct blkif_request_discard
BLKIF_REQUEST_DISCARD = Struct("blkif_request_discard", [
    ("operation", u8), ("flag", u8), ("handle", _VDEV), ("id", u64),
    ("sector_number", _SECTOR), ("nr_sectors", u64)])

# struct blkif_request_indirect (x86-64: no i386 ``pad``)
BLKIF_REQUEST_INDIRECT = Struct("blkif_request_indirect", [
    ("operation", u8), ("indirect_op", u8), ("nr_segments", u16), ("id", u64),
    ("sector_number", _SECTOR), ("handle", _VDEV),
    ("indirect_grefs", Array(_GRANT_REF, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST))])

# struct blkif_response
BLKIF_RESPONSE = Struct("blkif_response", [("id", u64), ("operation", u8), ("status", i16)])

# DEFINE_RING_TYPES(blkif, struct blkif_request, struct blkif_response);
BLKIF_RING = RingLayout("blkif", BLKIF_REQUEST, BLKIF_RESPONSE)

LAYOUTS = [
    ("struct blkif_request_segment", BLKIF_SEGMENT),
    ("blkif_request_t", BLKIF_REQUEST),
    ("blkif_request_discard_t", BLKIF_REQUEST_DISCARD),
    ("blkif_request_indirect_t", BLKIF_REQUEST_INDIRECT),
    ("blkif_response_t", BLKIF_RESPONSE),
] + BLKIF_RING.layouts()
