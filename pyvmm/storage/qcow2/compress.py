"""Compressed qcow2 clusters: the L2 descriptor and deflate (compression type zlib).

Source: QEMU docs/interop/qcow2.rst, "Compressed Clusters Descriptor": with
x = 62 - (cluster_bits - 8), bits 0..x-1 are the host byte offset of the data and
bits x..61 the number of additional 512-byte sectors it occupies beyond the one
holding the offset. The data is a raw deflate stream (no zlib header, 4 KiB
window, i.e. zlib windowBits -12) that inflates to exactly one cluster.

Invariant: ``decompress_cluster`` returns exactly ``cluster_size`` bytes or raises
ValueError; the caller turns that into a BadImageError naming the image.
"""
import zlib

COMPRESSED = 1 << 62
WBITS = -12


def descriptor_fields(cluster_bits):
    """(shift of the sector count, mask of the host offset, mask of the sector count)."""
    x = 62 - (cluster_bits - 8)
    return x, (1 << x) - 1, (1 << (cluster_bits - 8)) - 1


def parse_descriptor(entry, cluster_bits):
    """(host byte offset, sector-aligned start, bytes spanned by whole sectors)."""
    x, offset_mask, count_mask = descriptor_fields(cluster_bits)
    host = entry & offset_mask
    sectors = ((entry >> x) & count_mask) + 1
    start = host & ~511
    return host, start, sectors * 512


def make_descriptor(host, length, cluster_bits):
    x, offset_mask, count_mask = descriptor_fields(cluster_bits)
    extra = ((host + length - 1) >> 9) - (host >> 9)
    if host > offset_mask or extra > count_mask:
        raise ValueError(f"compressed data at {host:#x} (+{length}) does not fit a descriptor")
    return COMPRESSED | (extra << x) | host


def compress_cluster(data, level=6):
    """Deflate one cluster; None if that does not make it smaller."""
    c = zlib.compressobj(level, zlib.DEFLATED, WBITS)
    out = c.compress(data) + c.flush()
    return out if len(out) < len(data) else None


def decompress_cluster(data, cluster_size):
    d = zlib.decompressobj(WBITS)
    try:
        out = d.decompress(data, cluster_size)
    except zlib.error as e:
        raise ValueError(f"deflate stream is invalid: {e}") from None
    if len(out) != cluster_size:
        raise ValueError(f"deflate stream inflates to {len(out)} bytes, not one cluster ({cluster_size})")
    return out
