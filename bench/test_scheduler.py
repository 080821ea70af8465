"""Credit-scheduler overhead per slice, next to calling the same vCPUs directly.

The vCPUs are counters on a fake clock (each slice "uses" the time it is given and
costs no host time beyond the call), so what is measured is the scheduler's own
work: picking the next vCPU, accounting credit, period boundaries. The baseline,
timed in the same test, is a plain round-robin loop that calls ``run_slice`` on
the same vCPUs the same number of times. Results in extra_info: ns_per_slice,
baseline_ns, overhead_ns (the difference), for 2 and 8 domains.

    python3 -m pytest bench/test_scheduler.py --benchmark-only
"""

import time

import pytest

from pyvmm.pv.scheduler import CreditScheduler

SLICES = 20_000
MS = 1_000_000


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


class Counter:
    """A vCPU that spins: uses every slice to the end and counts them."""

    def __init__(self, clock):
        self.clock = clock
        self.slices = 0

    def run_slice(self, max_ns):
        self.clock.now += max_ns
        self.slices += 1
        return max_ns, "runnable"


def _scheduled(domains):
    clock = Clock()
    sched = CreditScheduler(clock=clock)
    vcpus = [Counter(clock) for _ in range(domains)]
    for domid, vcpu in enumerate(vcpus, start=1):
        sched.add_domain(domid, [vcpu], weight=256 * (1 + domid % 2))
    t0 = time.perf_counter_ns()
    sched.run(until=clock.now + SLICES * 30 * MS)          # at most 30 ms a slice
    elapsed = time.perf_counter_ns() - t0
    n = sum(v.slices for v in vcpus)
    return elapsed / n, n


def _direct(domains, n):
    clock = Clock()
    vcpus = [Counter(clock) for _ in range(domains)]
    t0 = time.perf_counter_ns()
    for i in range(n):
        vcpus[i % domains].run_slice(30 * MS)
    return (time.perf_counter_ns() - t0) / n


@pytest.mark.parametrize("domains", [2, 8])
def test_scheduler_overhead_per_slice(benchmark, domains):
    per_slice, n = benchmark.pedantic(_scheduled, args=(domains,), rounds=3, iterations=1)
    assert n >= SLICES / 2, "the scheduler ran the vCPUs"
    baseline = min(_direct(domains, n) for _ in range(3))
    benchmark.extra_info.update(ns_per_slice=round(per_slice), baseline_ns=round(baseline),
                                overhead_ns=round(per_slice - baseline), domains=domains)
