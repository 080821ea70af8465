"""Compute-bound guest code with the VMM attached, against bare Unicorn on the same
guest (guests/spin) in the same run. Target: pyvmm at 90% or more of bare speed."""
import statistics

from pyvmm import benchmarks as B

ITERS = 20_000_000


def test_guest_speed(benchmark):
    kernel = B._guest("spin")
    cmd = f"iters={ITERS}"
    benchmark.pedantic(lambda: B.run_pyvmm(kernel, cmd)[0], rounds=3, iterations=1)
    pyvmm_s = benchmark.stats.stats.median
    bare_s = statistics.median(B.run_bare(kernel, cmd) for _ in range(3))
    benchmark.extra_info.update(pyvmm_s=round(pyvmm_s, 4), bare_unicorn_s=round(bare_s, 4),
                                speed_vs_bare=round(bare_s / pyvmm_s, 3))
    assert pyvmm_s > 0 and bare_s > 0
