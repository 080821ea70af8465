"""VM-exit costs, named as kvm-unit-tests' x86/vmexit.c, each next to its floor.

The timed part is a pyvmm run of the vmexit guest doing N exits of one kind. In the
same test, the boot alone (iters=0) is timed and subtracted, and the floor is
measured: bare Unicorn running the same guest with hooks that only return (for
RDMSR/WRMSR/mov to CR3, which bare Unicorn does not trap, the SVM intercept with a
hook that steps over the instruction). Results land in extra_info:
exit_ns, floor_ns, and for cpuid the Python handler path too.

    python3 -m pytest bench/test_vmexit.py --benchmark-only
"""
import statistics

import pytest

from pyvmm import benchmarks as B

ITERS = 20_000


def _median_time(fn, n=3):
    return statistics.median(fn() for _ in range(n))


@pytest.mark.parametrize("test", B.EXIT_TESTS)
def test_vmexit(benchmark, test):
    kernel = B._guest("vmexit")
    cmd = f"test={test} iters={ITERS}"
    boot = _median_time(lambda: B.run_pyvmm(kernel, f"test={test} iters=0")[0])
    benchmark.pedantic(lambda: B.run_pyvmm(kernel, cmd)[0], rounds=3, iterations=1)
    exit_ns = (benchmark.stats.stats.median - boot) / ITERS * 1e9
    svm = test in B.NEEDS_SVM_FLOOR
    bare_boot = _median_time(lambda: B.run_bare(kernel, f"test={test} iters=0", svm=svm))
    floor_ns = (_median_time(lambda: B.run_bare(kernel, cmd, svm=svm)) - bare_boot) / ITERS * 1e9
    benchmark.extra_info.update(exit_ns=round(exit_ns), floor_ns=round(floor_ns),
                                ratio_to_floor=round(exit_ns / floor_ns, 2))
    if test == "cpuid":
        py = (_median_time(lambda: B.run_pyvmm(kernel, cmd, fast_paths=False)[0]) - boot) / ITERS * 1e9
        benchmark.extra_info["python_exit_ns"] = round(py)
    assert exit_ns > 0 and floor_ns > 0
