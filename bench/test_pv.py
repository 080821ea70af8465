"""The paravirtual interface's costs (pyvmm/pv/bench.py) around the pvbench guest. Each
benchmark's timed body is one whole guest boot doing every phase; the phase it reports
is the VMM's stamps at the guest's markers, next to its baseline measured in the same
boot (extra_info):
- null hypercall round trip: baseline the CPUID exit of the same guest (C path and Python);
- N page-table updates as N trapped stores under --mmu shadow: baseline for one batched
  mmu_update and for one multicall of update_va_mapping (exits and time);
- domain 0 grant map+unmap and grant copy per page: baseline the same page reached as a
  plain view, and 4 KiB copied between views.

    python3 -m pytest bench/test_pv.py --benchmark-only
"""
import pytest

from pyvmm.pv import bench as B

N = 512


@pytest.mark.parametrize("comparison", ["null_hypercall_vs_cpuid", "pt_updates", "grants"])
def test_pv(benchmark, comparison):
    result = benchmark.pedantic(B.bench_pv, kwargs={"n": N, "repeats": 1}, rounds=1, iterations=1)
    row = result[comparison]
    benchmark.extra_info.update(row)
    if comparison == "pt_updates":
        # batching: the updates reach the VMM in one exit instead of one (or more) each
        assert row["mmu_update_exits"] < row["trapped_exits"] and row["multicall_exits"] < row["trapped_exits"]
    elif comparison == "grants":
        assert row["map_unmap_ns"] > 0 and row["copy_ns"] > 0 and row["view_ns"] > 0
    else:
        assert row["hypercall_ns"] > 0 and row["cpuid_python_ns"] > 0
