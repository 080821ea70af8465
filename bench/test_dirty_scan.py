"""The dirty-page scan (C) over guest RAM, next to memcpy and the Python backend.

The timed part is the C scan of 256 MiB of guest RAM against its last-sent copy
with 1% of the pages changed. In the same test, over the same memory, memcpy of
the RAM and the Python backend's scan are timed (median of 3); extra_info holds
GB/s for all three and the ratios the issue sets targets for (C >= 0.5x memcpy,
C >= 50x Python).

    python3 -m pytest bench/test_dirty_scan.py --benchmark-only
"""
import pytest

from pyvmm.migrate.dirty_scan import DirtyScanner
from pyvmm.migrate.dirty_scan_bench import Workload, _median_seconds


@pytest.fixture(scope="module")
def workload():
    with Workload(size_mib=256, dirty_percent=1.0) as w:
        yield w


def test_dirty_scan_c(benchmark, workload):
    c, py = DirtyScanner("c"), DirtyScanner("python")
    assert list(workload.scan(c)) == list(workload.scan(py)) == workload.dirty
    benchmark.pedantic(workload.scan, args=(c,), rounds=5, iterations=1)
    c_s = benchmark.stats.stats.median
    memcpy_s = _median_seconds(workload.memcpy, 3)
    py_s = _median_seconds(lambda: workload.scan(py), 3)
    benchmark.extra_info.update(
        c_scan_gbps=workload.gbps(c_s), memcpy_gbps=workload.gbps(memcpy_s),
        python_scan_gbps=workload.gbps(py_s),
        c_vs_memcpy=round(memcpy_s / c_s, 2), c_vs_python=round(py_s / c_s, 1))
    assert c_s > 0 and memcpy_s > 0 and py_s > 0


def test_dirty_bitmap_scan_c(benchmark, workload):
    c, py = DirtyScanner("c"), DirtyScanner("python")
    assert list(c.dirty_pages(workload.bitmap)) == workload.dirty
    benchmark.pedantic(c.dirty_pages, args=(workload.bitmap,), rounds=20, iterations=5)
    c_s = benchmark.stats.stats.median
    py_s = _median_seconds(lambda: py.dirty_pages(workload.bitmap), 5)
    benchmark.extra_info.update(c_us=round(c_s * 1e6, 1), python_us=round(py_s * 1e6, 1),
                                c_vs_python=round(py_s / c_s, 1))
    assert c_s > 0 and py_s > 0
