"""Credit scheduler: shares by weight, caps, BOOST for timer wakes, idling, stopped and bad vCPUs.

Every test but one runs fake vCPUs on a fake clock: a vCPU's run_slice advances the
clock by the time it says it used, and the fake waiter advances it by the idle
timeout (or to the next scripted "other thread" event), so the results are exact.
"""

import os
import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import GuestStopped, SchedulerError
from pyvmm.pv import scheduler as sched_mod
from pyvmm.pv.scheduler import (ALL_STOPPED, STOP_REQUESTED, UNTIL, CreditScheduler,
                                format_stats)

MS = 1_000_000
SEC = 1000 * MS


class FakeClock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now

    def advance(self, ns):
        assert ns >= 0
        self.now += ns


class FakeWaiter:
    """threading.Event's wait/set/clear on the fake clock; ``at(t, fn)`` scripts what
    another thread does at time t (fn usually calls sched.wake)."""

    def __init__(self, clock):
        self.clock = clock
        self.flag = False
        self.events = []
        self.waits = []

    def at(self, t_ns, fn):
        self.events.append((t_ns, fn))
        self.events.sort(key=lambda e: e[0])

    def set(self):
        self.flag = True

    def clear(self):
        self.flag = False

    def wait(self, timeout_s=None):
        self.waits.append(timeout_s)
        if self.flag:
            return True
        end = None if timeout_s is None else self.clock.now + round(timeout_s * 1e9)
        if self.events and (end is None or self.events[0][0] <= end):
            t, fn = self.events.pop(0)
            self.clock.now = max(self.clock.now, t)
            fn()
            return self.flag
        if end is None:
            raise AssertionError("the scheduler would sleep forever with nothing to wake it")
        self.clock.now = end
        return False


class Spinner:
    """A guest that never blocks: uses every slice to the end (or stops at stop_at)."""

    def __init__(self, clock, stop_at=None):
        self.clock = clock
        self.stop_at = stop_at
        self.slices = []
        self.kicks = 0
        self.kicked_at = []         # where each kicked slice ended
        self.during = None          # called halfway through each slice

    def kick(self):
        self.kicks += 1

    def run_slice(self, max_ns):
        start = self.clock.now
        if self.stop_at is not None and start >= self.stop_at:
            return 0, "stopped"
        kicks = self.kicks
        if self.during is not None:
            self.clock.advance(max_ns // 2)
            self.during()
            if self.kicks != kicks:         # kicked: return early, as emu_stop() would
                self.slices.append((start, max_ns // 2))
                self.kicked_at.append(self.clock.now)
                return max_ns // 2, "runnable"
            self.clock.advance(max_ns - max_ns // 2)
        else:
            self.clock.advance(max_ns)
        self.slices.append((start, max_ns))
        return max_ns, "runnable"


class TimerGuest:
    """A guest that arms a periodic timer, blocks until each deadline, works a little."""

    def __init__(self, clock, period_ns=10 * MS, work_ns=MS // 2):
        self.clock = clock
        self.period_ns = period_ns
        self.work_ns = work_ns
        self.wake_deadline_ns = None
        self.lateness = []
        self.left = 0

    def run_slice(self, max_ns):
        now = self.clock.now
        if self.wake_deadline_ns is None:                   # first run: program the timer
            self.wake_deadline_ns = now + self.period_ns
            return 0, "blocked"
        if self.left == 0:                                  # woken by the deadline
            self.lateness.append(now - self.wake_deadline_ns)
            self.left = self.work_ns
            self.wake_deadline_ns += self.period_ns
        used = min(self.left, max_ns)
        self.clock.advance(used)
        self.left -= used
        return used, ("runnable" if self.left else "blocked")


class Sleeper:
    """Blocks with no deadline (only an event wakes it); each wake does ``work_ns``
    (over several slices if need be) and blocks again, until it has been woken
    ``stop_after`` times."""

    wake_deadline_ns = None

    def __init__(self, clock, work_ns=MS // 10, stop_after=None):
        self.clock = clock
        self.work_ns = work_ns
        self.stop_after = stop_after
        self.runs = []              # when each wake's work began
        self.left = 0

    def run_slice(self, max_ns):
        if self.left == 0:
            self.runs.append(self.clock.now)
            if self.stop_after is not None and len(self.runs) > self.stop_after:
                return 0, "stopped"
            self.left = self.work_ns
        used = min(self.left, max_ns)
        self.clock.advance(used)
        self.left -= used
        return used, ("runnable" if self.left else "blocked")


def make(**kw):
    clock = FakeClock()
    waiter = FakeWaiter(clock)
    return clock, waiter, CreditScheduler(clock=clock, waiter=waiter, **kw)


def by_dom(sched):
    return {d.domid: d for d in sched.stats().domains}


# ---- shares by weight ---------------------------------------------------------------

def test_weights_512_to_256_share_the_host_two_to_one():
    clock, _, s = make()
    s.add_domain(1, [Spinner(clock)], weight=512)
    s.add_domain(2, [Spinner(clock)])                   # default weight 256
    assert s.run(until=3 * SEC) == UNTIL                 # 100 accounting periods
    d = by_dom(s)
    assert clock.now == 3 * SEC and d[1].ns_run + d[2].ns_run == 3 * SEC
    assert d[1].ns_run / d[2].ns_run == pytest.approx(2.0, rel=0.03)
    assert s.stats().idle_ns == 0 and s.stats().periods == 100


def test_three_domains_share_by_weight_and_a_weight_change_applies_from_the_next_period():
    clock, _, s = make()
    for domid, weight in ((1, 512), (2, 256), (3, 256)):
        s.add_domain(domid, [Spinner(clock)], weight=weight)
    s.run(until=3 * SEC)
    first = {k: v.ns_run for k, v in by_dom(s).items()}
    assert [first[k] / (3 * SEC) for k in (1, 2, 3)] == pytest.approx([0.5, 0.25, 0.25], abs=0.02)
    s.set_weight(3, 1024)
    assert s.params(3) == (1024, 0)
    s.run(until=6 * SEC)
    got = {k: (v.ns_run - first[k]) / (3 * SEC) for k, v in by_dom(s).items()}
    assert [got[k] for k in (1, 2, 3)] == pytest.approx([2 / 7, 1 / 7, 4 / 7], abs=0.02)


def test_vcpus_of_one_domain_split_its_share():
    clock, _, s = make()
    a, b = Spinner(clock), Spinner(clock)
    s.add_domain(1, [a, b])
    s.add_domain(2, [Spinner(clock)])
    s.run(until=3 * SEC)
    d = by_dom(s)
    assert abs(d[1].ns_run - d[2].ns_run) <= 2 * s.tslice_ns    # within 2 slices in 100
    ran_a, ran_b = (sum(n for _, n in v.slices) for v in (a, b))
    assert abs(ran_a - ran_b) <= 2 * s.tslice_ns


# ---- caps -----------------------------------------------------------------------------

def test_a_cap_of_25_percent_holds_even_on_an_idle_host():
    clock, waiter, s = make()
    s.add_domain(1, [Spinner(clock)], cap=25)
    s.run(until=3 * SEC)
    d = by_dom(s)[1]
    st = s.stats()
    assert d.ns_run == 3 * SEC // 4                       # exactly 7.5 ms of every 30 ms
    assert st.idle_ns == 3 * SEC - d.ns_run
    assert d.parked_periods == 100
    assert all(t is not None for t in waiter.waits)       # it slept until the next period


def test_a_capped_domain_beside_a_spinner_gets_its_cap_and_the_spinner_the_rest():
    clock, _, s = make()
    s.add_domain(1, [Spinner(clock)], weight=1024, cap=25)   # weight alone would give it 80%
    s.add_domain(2, [Spinner(clock)])
    s.run(until=3 * SEC)
    d = by_dom(s)
    assert d[1].ns_run / (3 * SEC) == pytest.approx(0.25, abs=0.005)
    assert d[2].ns_run / (3 * SEC) == pytest.approx(0.75, abs=0.005)
    assert s.stats().idle_ns == 0


def test_a_cap_above_the_weight_share_changes_nothing_and_set_cap_parks_at_once():
    clock, _, s = make()
    s.add_domain(1, [Spinner(clock)], cap=75)
    s.add_domain(2, [Spinner(clock)])
    s.run(until=3 * SEC)
    d = by_dom(s)
    assert d[1].ns_run / d[2].ns_run == pytest.approx(1.0, rel=0.03)
    s.run(until=3 * SEC + 20 * MS)                           # 20 ms into period 101
    used, parked = by_dom(s)[1].ns_run, by_dom(s)[1].parked_periods
    s.set_cap(1, 10)                                         # 3 ms a period: already used
    assert by_dom(s)[1].parked_periods == parked + 1
    s.run(until=3 * SEC + 30 * MS)
    assert by_dom(s)[1].ns_run == used                       # sat out the rest of the period
    s.set_cap(1, 0)
    s.run(until=4 * SEC)
    assert by_dom(s)[1].ns_run > used


# ---- BOOST: a timer guest beside a spinner --------------------------------------------

def test_a_timer_guest_beside_a_spinner_meets_every_tick_and_the_spinner_gets_the_rest():
    clock, _, s = make()
    spinner = Spinner(clock)
    timer = TimerGuest(clock)
    s.add_domain(1, [spinner])                          # added first: it runs first
    s.add_domain(2, [timer])
    s.run(until=2 * SEC)
    d = by_dom(s)
    assert len(timer.lateness) >= 195                   # one tick every 10 ms
    assert max(timer.lateness) <= s.ratelimit_ns        # within one slice of each deadline
    assert d[2].boosts == len(timer.lateness)
    assert d[1].ns_run == 2 * SEC - d[2].ns_run         # the spinner gets all the rest
    assert d[1].ns_run / (2 * SEC) > 0.94


def test_deadlines_mid_slice_cut_the_spinners_slice_but_not_below_the_rate_limit():
    clock, _, s = make()
    spinner = Spinner(clock)
    timer = TimerGuest(clock, period_ns=7 * MS)           # deadlines fall mid-slice
    s.add_domain(1, [spinner])
    s.add_domain(2, [timer])
    s.run(until=SEC)
    assert timer.lateness and max(timer.lateness) == 0
    assert min(n for _, n in spinner.slices) < s.tslice_ns
    # a timer due 0.7 ms after it blocks: the spinner still gets the 1 ms rate limit
    clock, _, s = make()
    spinner = Spinner(clock)
    timer = TimerGuest(clock, period_ns=1200_000, work_ns=500_000)
    s.add_domain(1, [spinner])
    s.add_domain(2, [timer])
    s.run(until=SEC)
    cut_for_timer = [n for start, n in spinner.slices if (start + n) % s.period_ns]
    assert min(cut_for_timer) == s.ratelimit_ns               # (period ends cut shorter)
    assert 0 < max(timer.lateness) <= s.ratelimit_ns          # late by the rate limit at most
    assert by_dom(s)[1].ns_run > 0.4 * SEC


def test_a_wake_boosts_only_a_vcpu_within_its_share():
    clock, _, s = make(tslice_ms=100)                     # one 100 ms period: 33.3 ms each
    light, heavy = Sleeper(clock, work_ns=MS), Sleeper(clock, work_ns=50 * MS)
    s.add_domain(1, [light])
    s.add_domain(2, [heavy])
    s.add_domain(3, [Spinner(clock)])
    s.run(until=90 * MS)
    assert s.priority(light) == s.priority(heavy) == "blocked"
    assert s.wake(light) is True and s.priority(light) == "BOOST"
    assert s.wake(heavy) is True and s.priority(heavy) == "OVER"   # used 50 of its 33.3 ms
    assert s.wake(light) is False                          # already runnable: no second boost
    assert [d.boosts for d in s.stats().domains] == [1, 0, 0]


def test_a_guest_that_wakes_often_cannot_use_boost_to_take_more_than_its_share():
    clock, _, s = make()
    hog = TimerGuest(clock, period_ns=10 * MS, work_ns=9 * MS)   # 90% if it always won
    s.add_domain(1, [Spinner(clock)])
    s.add_domain(2, [hog])
    s.run(until=3 * SEC)
    d = by_dom(s)
    assert d[1].ns_run / (3 * SEC) > 0.45
    assert d[2].ns_run / (3 * SEC) > 0.45


def test_an_event_from_another_domain_preempts_the_spinner_and_boosts_the_sleeper():
    clock, _, s = make()
    spinner = Spinner(clock)
    sleeper = Sleeper(clock)
    s.add_domain(2, [sleeper])
    s.add_domain(1, [spinner])
    s.run(until=5 * MS)                                  # sleeper ran once and blocked
    assert s.priority(sleeper) == "blocked" and len(sleeper.runs) == 1
    spinner.during = lambda: s.wake(sleeper)             # an event channel send mid-slice
    s.run(until=100 * MS)
    woken = sleeper.runs[1:]
    assert len(woken) > 5 and spinner.kicks == len(spinner.kicked_at) == len(woken)
    assert woken == spinner.kicked_at                    # it ran where each kicked slice ended
    assert by_dom(s)[2].boosts == len(woken)


def test_a_wake_while_the_vcpu_is_still_running_is_not_lost():
    clock, _, s = make()

    class RacyGuest:
        wake_deadline_ns = None
        runs = 0

        def run_slice(self, max_ns):
            self.runs += 1
            clock.advance(MS)
            if self.runs == 1:
                s.wake(self)            # the event arrives before it reports "blocked"
                return MS, "blocked"
            return MS, "stopped"

    g = RacyGuest()
    s.add_domain(1, [g])
    assert s.run() == ALL_STOPPED and g.runs == 2


# ---- idling, stopping -----------------------------------------------------------------

def test_a_domain_blocked_forever_burns_no_cpu():
    clock, _, s = make()
    sleeper = Sleeper(clock)
    s.add_domain(1, [Spinner(clock)])
    s.add_domain(2, [sleeper])
    s.run(until=SEC)
    d = by_dom(s)
    assert len(sleeper.runs) == 1 and d[2].slices == 1 and d[2].ns_run == MS // 10
    assert d[1].ns_run == SEC - MS // 10 and s.stats().idle_ns == 0


def test_when_all_are_blocked_it_sleeps_until_a_deadline_or_an_external_wake():
    clock, waiter, s = make()
    sleeper = Sleeper(clock, stop_after=1)
    timer = TimerGuest(clock, period_ns=20 * MS)
    s.add_domain(1, [sleeper])
    s.add_domain(2, [timer])
    waiter.at(55 * MS, lambda: s.wake(sleeper))          # another thread delivers an event
    s.run(until=100 * MS)
    assert sleeper.runs[1] == 55 * MS                    # ran the moment it was woken
    assert timer.lateness == [0, 0, 0, 0]                # slept exactly to each deadline (20..80 ms)
    st = s.stats()
    assert st.idle_ns == 100 * MS - sum(d.ns_run for d in st.domains)
    s.request_stop()
    assert s.run() == STOP_REQUESTED


def test_a_stopped_domain_leaves_the_others_running_and_run_ends_when_all_stop():
    clock, _, s = make()
    s.add_domain(1, [Spinner(clock, stop_at=100 * MS)])
    s.add_domain(2, [Spinner(clock, stop_at=400 * MS)])
    assert s.run() == ALL_STOPPED
    d = by_dom(s)
    assert d[1].vcpus_stopped == 1 and d[1].ns_run <= 100 * MS
    assert d[2].vcpus_stopped == 1 and d[2].ns_run >= 300 * MS
    assert d[1].ns_run + d[2].ns_run == clock.now and s.stats().idle_ns == 0
    assert "stopped" in format_stats(s.stats())


def test_a_guest_error_stops_only_that_domain():
    clock, _, s = make()

    class Crashing:
        def run_slice(self, max_ns):
            clock.advance(2 * MS)
            raise GuestStopped("triple fault at rip 0x1000")

    s.add_domain(1, [Crashing()])
    s.add_domain(2, [Spinner(clock, stop_at=200 * MS)])
    assert s.run() == ALL_STOPPED
    d = by_dom(s)
    assert d[1].vcpus_stopped == 1 and d[1].ns_run == 2 * MS and "triple fault" in d[1].error
    assert d[2].ns_run == clock.now - 2 * MS >= 198 * MS


def test_a_vcpu_with_a_bad_answer_is_stopped_with_a_clear_error_and_the_rest_go_on():
    clock, _, s = make()

    class Broken:
        def run_slice(self, max_ns):
            clock.advance(MS)
            return MS, "sleeping"

    s.add_domain(7, [Broken()])
    s.add_domain(2, [Spinner(clock, stop_at=100 * MS)])
    with pytest.raises(SchedulerError, match=r"domain 7 vcpu 0: run_slice\(\d+\) returned \(1000000, 'sleeping'\)"):
        s.run()
    assert s.run() == ALL_STOPPED
    d = by_dom(s)
    assert d[7].vcpus_stopped == 1 and "sleeping" in d[7].error
    assert d[2].ns_run == clock.now - MS >= 99 * MS


def test_removing_a_domain_while_running_drops_it_and_late_wakes_for_it():
    clock, _, s = make()
    victim = Spinner(clock)
    other = Spinner(clock, stop_at=300 * MS)

    def destroy_victim_after_100ms():          # e.g. a domain-destroy request mid-slice
        if clock.now >= 100 * MS and 3 in [d.domid for d in s.stats().domains]:
            s.remove_domain(3)

    other.during = destroy_victim_after_100ms
    s.add_domain(3, [victim])
    s.add_domain(1, [other])
    assert s.run() == ALL_STOPPED
    assert [d.domid for d in s.stats().domains] == [1]
    assert victim.slices and all(start < 100 * MS for start, _ in victim.slices)
    assert s.wake(victim) is False


def test_the_stats_table_names_each_domain_with_its_share():
    clock, _, s = make()
    s.add_domain(4, [Spinner(clock)], cap=10)            # runs first: 3 ms of each 30 ms
    s.add_domain(0, [Spinner(clock)], weight=512)
    s.run(until=300 * MS)
    table = format_stats(s.stats())
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["domain", "weight", "cap", "run"]
    row0 = lines[1].split()
    row4 = lines[2].split()
    assert row0[:2] == ["0", "512"] and row0[4] == "90.0%"
    assert row4[:3] == ["4", "256", "10"] and row4[4] == "10.0%" and row4[7] == "10"
    assert lines[3].split()[0] == "idle"


def test_run_with_the_real_clock_wakes_from_another_thread():
    s = CreditScheduler()                                # time.monotonic_ns + threading.Event
    sleeper = Sleeper(None, stop_after=1)
    sleeper.clock = type("C", (), {"now": property(lambda self: time.monotonic_ns()),
                                   "advance": lambda self, ns: None})()
    s.add_domain(1, [sleeper])
    timer = threading.Timer(0.02, s.wake, args=(sleeper,))
    timer.start()
    t0 = time.monotonic()
    try:
        assert s.run(until=time.monotonic_ns() + 5 * SEC) == ALL_STOPPED
    finally:
        timer.cancel()
    assert 0.015 < time.monotonic() - t0 < 2.0
    assert s.stats().idle_ns >= 15 * MS and by_dom(s)[1].boosts == 1


# ---- refused inputs -------------------------------------------------------------------

@pytest.mark.parametrize("weight", [0, -1, 65536, 1.5, True, "256", None])
def test_bad_weights_are_refused_naming_domain_and_value(weight):
    clock, _, s = make()
    with pytest.raises(SchedulerError, match=rf"domain 1: weight {weight!r} is not an integer in 1\.\.65535"):
        s.add_domain(1, [Spinner(clock)], weight=weight)
    s.add_domain(1, [Spinner(clock)])
    with pytest.raises(SchedulerError, match="domain 1: weight"):
        s.set_weight(1, weight)
    assert s.params(1) == (256, 0)


@pytest.mark.parametrize("cap,nr_vcpus", [(-1, 1), (101, 1), (201, 2), (2.5, 1), (False, 1)])
def test_bad_caps_are_refused_naming_domain_and_value(cap, nr_vcpus):
    clock, _, s = make()
    vcpus = [Spinner(clock) for _ in range(nr_vcpus)]
    with pytest.raises(SchedulerError, match=rf"domain 2: cap {cap!r} is not an integer in 0\.\.{100 * nr_vcpus}"):
        s.add_domain(2, vcpus, cap=cap)
    s.add_domain(2, vcpus, cap=100 * nr_vcpus)
    with pytest.raises(SchedulerError, match="domain 2: cap"):
        s.set_cap(2, cap)
    assert s.params(2) == (256, 100 * nr_vcpus)


def test_bad_domains_vcpus_and_parameters_are_refused():
    clock, _, s = make()
    v = Spinner(clock)
    s.add_domain(1, [v])
    with pytest.raises(SchedulerError, match="domain 1 is already scheduled"):
        s.add_domain(1, [Spinner(clock)])
    with pytest.raises(SchedulerError, match="already belongs to domain 1"):
        s.add_domain(2, [v])
    with pytest.raises(SchedulerError, match="listed twice"):
        w = Spinner(clock)
        s.add_domain(2, [w, w])
    with pytest.raises(SchedulerError, match="domain 2: no vCPUs"):
        s.add_domain(2, [])
    with pytest.raises(SchedulerError, match=r"domain 2 vcpu 0: .* has no run_slice"):
        s.add_domain(2, [object()])
    with pytest.raises(SchedulerError, match=r"domain id 32752 is not in 0\.\.0x7fef"):
        s.add_domain(0x7FF0, [Spinner(clock)])
    with pytest.raises(SchedulerError, match="domain 9 is not scheduled"):
        s.set_weight(9, 256)
    with pytest.raises(SchedulerError, match="domain 9 is not scheduled"):
        s.remove_domain(9)
    with pytest.raises(SchedulerError, match="timeslice 0 is not an integer in 1..1000 ms"):
        CreditScheduler(tslice_ms=0)
    with pytest.raises(SchedulerError, match="rate limit 50 is not an integer in 100..30000 us"):
        CreditScheduler(ratelimit_us=50)
    with pytest.raises(SchedulerError, match="until='soon'"):
        s.run(until="soon")
    assert s.run(until=60 * MS) == UNTIL and by_dom(s)[1].ns_run == 60 * MS


def test_a_bad_wake_deadline_stops_that_vcpu_only():
    clock, _, s = make()

    class FloatDeadline(Sleeper):
        wake_deadline_ns = 1.5e6

    s.add_domain(3, [FloatDeadline(clock)])
    s.add_domain(1, [Spinner(clock, stop_at=50 * MS)])
    with pytest.raises(SchedulerError, match=r"domain 3 vcpu 0: wake_deadline_ns 1500000.0 is not an int"):
        s.run()
    assert s.run() == ALL_STOPPED and by_dom(s)[3].vcpus_stopped == 1


def test_ranges_match_xens_public_headers():
    sysctl, domctl = "/usr/include/xen/sysctl.h", "/usr/include/xen/domctl.h"
    if not (os.path.exists(sysctl) and os.path.exists(domctl)):
        pytest.skip("Xen public headers (libxen-dev) not installed")
    defines = dict(re.findall(r"^#define (XEN_SYSCTL_\w+) (\d+)", open(sysctl).read(), re.M))
    assert int(defines["XEN_SYSCTL_CSCHED_TSLICE_MIN"]) == sched_mod.TSLICE_MS_MIN
    assert int(defines["XEN_SYSCTL_CSCHED_TSLICE_MAX"]) == sched_mod.TSLICE_MS_MAX
    assert int(defines["XEN_SYSCTL_SCHED_RATELIMIT_MIN"]) == sched_mod.RATELIMIT_US_MIN
    assert int(defines["XEN_SYSCTL_SCHED_RATELIMIT_MAX"]) == sched_mod.RATELIMIT_US_MAX
    credit = re.search(r"struct xen_domctl_sched_credit \{(.*?)\};", open(domctl).read(), re.S)
    assert credit.group(1).split() == ["uint16_t", "weight;", "uint16_t", "cap;"]
    assert sched_mod.WEIGHT_MAX == sched_mod.CAP_MAX == 2 ** 16 - 1


# ---- invariants over random mixes -------------------------------------------------------

_guest = st.one_of(
    st.tuples(st.just("spin")),
    st.tuples(st.just("timer"), st.integers(2, 40).map(lambda n: n * MS // 2),
              st.integers(1, 20).map(lambda n: n * 100_000)),
    st.tuples(st.just("sleep")),
)
_domain = st.tuples(_guest, st.integers(1, 2048), st.sampled_from([0, 0, 5, 25, 50, 90]))


@settings(max_examples=60, deadline=None)
@given(st.lists(_domain, min_size=1, max_size=5))
def test_time_is_conserved_caps_hold_spinners_get_their_share_and_light_timers_are_on_time(doms):
    clock, _, s = make()
    guests = []
    for domid, ((kind, *args), weight, cap) in enumerate(doms, start=1):
        g = {"spin": Spinner, "timer": TimerGuest, "sleep": Sleeper}[kind](clock, *args)
        guests.append((kind, g, weight, cap))
        s.add_domain(domid, [g], weight=weight, cap=cap)
    assert s.run(until=SEC) == UNTIL
    st_ = s.stats()
    assert sum(d.ns_run for d in st_.domains) + st_.idle_ns == SEC == st_.elapsed_ns
    total_weight = sum(w for _, _, w, _ in guests)
    timer_load = sum(g.work_ns / g.period_ns for k, g, _, _ in guests if k == "timer")
    for (kind, g, weight, cap), d in zip(guests, st_.domains):
        if cap:                                           # never above cap% of any period
            assert d.ns_run <= st_.periods * s.period_ns * cap // 100
        if kind == "spin":                                # at least its weight's share
            share = weight / total_weight
            if cap:
                share = min(share, cap / 100)
            assert d.ns_run >= share * SEC - 3 * s.tslice_ns
        if kind == "timer" and not cap and g.work_ns / g.period_ns < weight / total_weight / 2 \
                and timer_load <= 0.5:              # every timer can be served on time
            # at worst: the rest of a rate-limited slice, then each other timer's work
            # twice (one BOOSTed run already going at the deadline, one woken with it)
            others = sum(o.work_ns for k, o, _, _ in guests if k == "timer" and o is not g)
            assert max(g.lateness) <= s.ratelimit_ns + 2 * others
    if any(kind == "spin" and not cap for kind, _, _, cap in guests):
        assert st_.idle_ns == 0                           # work-conserving
