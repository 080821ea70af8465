"""Measurement behind ``pyvmm bench dirty-scan``: the dirty-page scan next to memcpy.

One run builds guest RAM (a GuestMemory, the buffer the CPU engine maps), a
last-sent copy of it with ``dirty_percent`` of the pages then changed in their
last byte (so an unchanged prefix does not end the compare early), and times over
the same memory, median of ``repeats``:

- the scan against the last-sent copy, C backend and Python backend;
- plain memcpy (ctypes.memmove) of the same RAM into a third buffer, the baseline;
- the per-page hash compare (C and Python) and the dirty-bitmap scan (C and Python)
  with the same dirty pages; the bitmap scan takes microseconds, so each sample
  times BITMAP_CALLS scans in a row (after one untimed scan) and divides.

GB/s is guest RAM covered per second (10^9 bytes). Both backends must find the
same pages, or the run fails: a fast wrong answer is not a result.
"""

import ctypes
import os
import random
import statistics
import time
from array import array

from pyvmm.errors import MigrationError
from pyvmm.migrate.dirty_scan import DirtyScanner
from pyvmm.mm.layout import MiB, PAGE_SIZE
from pyvmm.mm.memory import GuestMemory

TARGET_VS_MEMCPY = 0.5   # the C scan at >= 50% of memcpy speed (issue 7)
TARGET_VS_PYTHON = 50.0  # and >= 50x the Python scan
BITMAP_CALLS = 100       # bitmap scans timed in a row per sample (one C scan is a few us)


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _median_seconds_per_call(fn, repeats, calls):
    """Median over ``repeats`` samples of the time per call of ``calls`` calls in a row:
    for scans of a few microseconds, where one call is near the clock's resolution.
    One call first, untimed, so that a buffer a backend keeps is already allocated."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls)
    return statistics.median(times)


def _same(results, what):
    if len({tuple(r) for r in results}) != 1:
        raise MigrationError(f"bench dirty-scan: the C and Python backends disagree on {what}")
    return results[0]


class Workload:
    """Guest RAM, its last-sent copy with some pages changed, the same pages in a
    dirty bitmap, and a destination for memcpy; a context manager (frees the RAM)."""

    def __init__(self, size_mib=256, dirty_percent=1.0, seed=1):
        if not 0 <= dirty_percent <= 100:
            raise MigrationError(f"bench dirty-scan: dirty percentage {dirty_percent} is outside 0..100")
        self.size = size = size_mib * MiB
        self.npages = npages = size // PAGE_SIZE
        rng = random.Random(seed)
        self.mem = GuestMemory(size)
        chunk = rng.randbytes(MiB)
        for off in range(0, size, MiB):
            self.mem.write(off, chunk[:min(MiB, size - off)])
        self.last = bytearray(self.mem.view)
        self.dst = bytearray(size)          # memcpy's destination, touched in advance
        self.dirty = sorted(rng.sample(range(npages), round(npages * dirty_percent / 100)))
        self.bitmap = bytearray((npages + 7) // 8)
        for p in self.dirty:
            self.last[(p + 1) * PAGE_SIZE - 1] ^= 0xFF
            self.bitmap[p >> 3] |= 1 << (p & 7)
        self._dst_addr = ctypes.addressof((ctypes.c_char * size).from_buffer(self.dst))

    def memcpy(self):
        ctypes.memmove(self._dst_addr, self.mem.host_address, self.size)

    def scan(self, scanner):
        found = scanner.changed_pages(self.mem, self.last)
        if len(found) != len(self.dirty):
            raise MigrationError(f"bench dirty-scan: the {scanner.backend} scan found {len(found)} "
                                 f"changed pages, {len(self.dirty)} were changed")
        return found

    def gbps(self, seconds):
        return round(self.size / seconds / 1e9, 3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.mem.close()


def bench_dirty_scan(size_mib=256, dirty_percent=1.0, repeats=3, seed=1):
    """Time the scans over ``size_mib`` MiB of guest RAM; returns a dict of results."""
    c, py = DirtyScanner("c"), DirtyScanner("python")
    with Workload(size_mib, dirty_percent, seed) as w:
        if _same([list(w.scan(s)) for s in (c, py)], "the changed pages") != w.dirty:
            raise MigrationError("bench dirty-scan: the scan missed or invented dirty pages")
        memcpy_s = _median_seconds(w.memcpy, repeats)
        c_s = _median_seconds(lambda: w.scan(c), repeats)
        py_s = _median_seconds(lambda: w.scan(py), repeats)

        hashes = c.page_hashes(w.last)
        _same([list(s.changed_pages_by_hash(w.mem, array("Q", hashes))) for s in (c, py)], "hashes")
        c_hash_s = _median_seconds(lambda: c.changed_pages_by_hash(w.mem, hashes), repeats)
        py_hash_s = _median_seconds(lambda: py.changed_pages_by_hash(w.mem, hashes), repeats)

        _same([list(s.dirty_pages(w.bitmap)) for s in (c, py)], "the bitmap")
        c_bitmap_s = _median_seconds_per_call(lambda: c.dirty_pages(w.bitmap), repeats, BITMAP_CALLS)
        py_bitmap_s = _median_seconds_per_call(lambda: py.dirty_pages(w.bitmap), repeats, BITMAP_CALLS)

        result = {
            "size_mib": size_mib, "page_size": PAGE_SIZE, "pages": w.npages,
            "dirty_pages": len(w.dirty), "repeats": repeats,
            "c_scan_gbps": w.gbps(c_s), "python_scan_gbps": w.gbps(py_s), "memcpy_gbps": w.gbps(memcpy_s),
            "c_vs_memcpy": round(memcpy_s / c_s, 2), "c_vs_python": round(py_s / c_s, 1),
            "c_hash_scan_gbps": w.gbps(c_hash_s), "python_hash_scan_gbps": w.gbps(py_hash_s),
            "c_bitmap_scan_us": round(c_bitmap_s * 1e6, 1),
            "python_bitmap_scan_us": round(py_bitmap_s * 1e6, 1),
            "c_vs_python_bitmap": round(py_bitmap_s / c_bitmap_s, 1),
        }
    result["targets"] = {
        "c_scan_at_least_half_memcpy": result["c_vs_memcpy"] >= TARGET_VS_MEMCPY,
        "c_scan_at_least_50x_python": result["c_vs_python"] >= TARGET_VS_PYTHON,
    }
    return result


if __name__ == "__main__":
    import json
    print(json.dumps(bench_dirty_scan(int(os.environ.get("SIZE_MIB", "256"))), indent=2))
