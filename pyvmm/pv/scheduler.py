"""Credit scheduler: shares the one host thread among the vCPUs of several domains.

Responsibility: decide which vCPU runs next and for how long, run it by calling
its ``run_slice(max_ns)`` on the thread inside ``CreditScheduler.run()``, charge
the time it used, and sleep when nothing can run. The design is Xen's credit
scheduler (xen/common/sched/credit.c and the Xen wiki "Credit Scheduler")
reduced to one host CPU, written afresh:

- each domain has a *weight* (default 256) and a *cap* (percent of one CPU,
  0 = none). Every accounting period (one timeslice, 30 ms) the period's host time
  is handed out as credit (1 credit = 1 ns) to the *active* domains, those with a
  vCPU that ran in the period or waits to run, in proportion to their weights;
  a capped domain gets at most its cap and the rest goes to the others by weight.
  A domain's credit is split evenly among its active vCPUs.
- a vCPU's priority is BOOST (woken from blocked while not over its share),
  UNDER (credit >= 0) or OVER (credit < 0). The runnable vCPU of the highest
  priority runs. BOOSTed vCPUs run in wake order; within UNDER or OVER a capped
  domain's vCPU goes first (its budget is lost if not used in this period), then
  round-robin (a vCPU that ran queues last). The scheduler is work-conserving:
  an OVER vCPU runs whenever nobody else wants to.
- slices: at most one timeslice (30 ms), ending with the accounting period (new
  credit may make another vCPU the better choice). An UNDER vCPU's slice ends
  when its credit is spent (but lasts at least the rate limit). A BOOSTed vCPU
  gets one tick (10 ms) and may cross the period end to finish the short work it
  woke for. A capped domain's slice ends with its budget and with the period.
  A slice of a vCPU that is not BOOSTed is also cut at the earliest wake deadline
  of a blocked vCPU that will be BOOSTed (as Xen's timer wakes a vCPU that preempts the running one), but not
  below the rate limit (1 ms): a vCPU woken by its timer runs within one rate limit
  of its deadline.
  Xen, with many CPUs, has neither the credit-sized UNDER slice nor the
  capped-first rule; on one host CPU without them a single 30 ms slice fills a
  whole period, and a capped domain loses periods it can never make up.
- a capped domain that used cap% of the current period is *parked*: none of its
  vCPUs starts a slice until the next period, even if the host is idle.
- ``wake(vcpu)`` (an event arrived) makes a blocked vCPU runnable with BOOST; it
  may come from any thread. When nothing is runnable the scheduler waits on a
  ``threading.Event``-like waiter until the earliest wake deadline, the end of the
  period that unparks a domain, or an external wake.

The vCPU protocol: ``run_slice(max_ns) -> (used_ns, state)`` with state
"runnable", "blocked" or "stopped"; a blocked vCPU exposes ``wake_deadline_ns``
(an int on the scheduler's clock, or None for "only an event wakes me"); an
optional ``kick()`` asks a running vCPU to return early (a BOOSTed wake from
another thread calls it). Time comes from the injected ``clock`` (ns), so tests are
deterministic; ``used_ns`` as the vCPU reports it is what is charged.

Invariants:
- at most one vCPU runs at a time, and only on the thread inside ``run()``;
- each vCPU is in exactly one state: queued, running, blocked or stopped; stopped
  is final;
- credits stay within one period's worth either way (-period .. +period), so a
  domain that slept cannot hoard credit and a hog's debt is bounded;
- a parked domain starts no slice before the next period;
- a wake that arrives while its vCPU is still running is not lost: if the vCPU
  then reports "blocked" it is queued again at once;
- a bad answer from one vCPU, or a PyvmmError raised by it, stops that vCPU only:
  the other domains keep running.
"""

import itertools
import threading
import time
from dataclasses import dataclass

from pyvmm.errors import PyvmmError, SchedulerError
from pyvmm.pv import abi

# Parameters and their ranges. Weight and cap are the uint16_t fields of
# struct xen_domctl_sched_credit (xen/include/public/domctl.h); weight 1..65535,
# default 256, cap 0 = uncapped (Xen wiki "Credit Scheduler", CSCHED_DEFAULT_WEIGHT
# in xen/common/sched/credit.c).
DEFAULT_WEIGHT = 256
WEIGHT_MIN = 1
WEIGHT_MAX = 0xFFFF
CAP_MAX = 0xFFFF
# Timeslice and rate limit: XEN_SYSCTL_CSCHED_TSLICE_MIN/MAX (ms) and
# XEN_SYSCTL_SCHED_RATELIMIT_MIN/MAX (us) in xen/include/public/sysctl.h; defaults
# 30 ms (CSCHED_DEFAULT_TSLICE_MS) and 1000 us (sched_ratelimit_us), 3 ticks per
# timeslice (CSCHED_TICKS_PER_TSLICE), accounting once per timeslice.
DEFAULT_TSLICE_MS = 30
TSLICE_MS_MIN = 1
TSLICE_MS_MAX = 1000
DEFAULT_RATELIMIT_US = 1000
RATELIMIT_US_MIN = 100
RATELIMIT_US_MAX = 500000
TICKS_PER_TSLICE = 3

# Priorities, higher runs first (CSCHED_PRI_TS_BOOST/UNDER/OVER in credit.c).
PRI_BOOST = 0
PRI_UNDER = -1
PRI_OVER = -2
PRIORITY_NAMES = {PRI_BOOST: "BOOST", PRI_UNDER: "UNDER", PRI_OVER: "OVER"}

# What run_slice reports.
RUNNABLE = "runnable"
BLOCKED = "blocked"
STOPPED = "stopped"
_VCPU_STATES = (RUNNABLE, BLOCKED, STOPPED)

# Why run() returned.
ALL_STOPPED = "all-stopped"
UNTIL = "until"
STOP_REQUESTED = "stop-requested"

_QUEUED = "queued"
_RUNNING = "running"


def _plain_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(what, value, low, high, unit=""):
    if not _plain_int(value) or not low <= value <= high:
        raise SchedulerError(f"{what} {value!r} is not an integer in {low}..{high}{unit}")
    return value


@dataclass(frozen=True)
class DomainStats:
    """What one domain got: host time, slices, BOOSTed wakes, periods spent parked."""
    domid: int
    weight: int
    cap: int
    ns_run: int
    slices: int
    boosts: int
    parked_periods: int
    vcpus: int
    vcpus_stopped: int
    error: str | None


@dataclass(frozen=True)
class SchedStats:
    """The scheduler's account since its first run(): wall time, idle time, periods."""
    elapsed_ns: int
    idle_ns: int
    periods: int
    domains: tuple


def format_stats(stats):
    """The ``--stats`` table: one row per domain (share of the elapsed host time), then idle."""
    elapsed = max(stats.elapsed_ns, 1)
    lines = [f"{'domain':>6} {'weight':>6} {'cap':>4} {'run ms':>10} {'share':>6} "
             f"{'slices':>7} {'boosts':>7} {'parked':>6}  state"]
    for d in stats.domains:
        state = "stopped" if d.vcpus_stopped == d.vcpus else f"{d.vcpus - d.vcpus_stopped}/{d.vcpus} live"
        if d.error:
            state += f" ({d.error})"
        lines.append(f"{d.domid:>6} {d.weight:>6} {d.cap or '-':>4} {d.ns_run / 1e6:>10.1f} "
                     f"{100 * d.ns_run / elapsed:>5.1f}% {d.slices:>7} {d.boosts:>7} "
                     f"{d.parked_periods:>6}  {state}")
    lines.append(f"{'idle':>6} {'':>6} {'':>4} {stats.idle_ns / 1e6:>10.1f} "
                 f"{100 * stats.idle_ns / elapsed:>5.1f}%")
    return "\n".join(lines)


class _Domain:
    __slots__ = ("domid", "weight", "cap", "vcpus", "used_in_period", "parked",
                 "ns_run", "slices", "boosts", "parked_periods", "error")

    def __init__(self, domid, weight, cap):
        self.domid = domid
        self.weight = weight
        self.cap = cap
        self.vcpus = []
        self.used_in_period = 0
        self.parked = False
        self.ns_run = 0
        self.slices = 0
        self.boosts = 0
        self.parked_periods = 0
        self.error = None


class _Vcpu:
    __slots__ = ("vcpu", "index", "dom", "state", "credit", "boosted", "seq",
                 "wake_pending", "ran_in_period", "removed")

    def __init__(self, vcpu, index, dom, seq):
        self.vcpu = vcpu
        self.index = index
        self.dom = dom
        self.state = _QUEUED
        self.credit = 0
        self.boosted = False
        self.seq = seq
        self.wake_pending = False
        self.ran_in_period = False
        self.removed = False

    @property
    def name(self):
        return f"domain {self.dom.domid} vcpu {self.index}"

    @property
    def priority(self):
        if self.boosted:
            return PRI_BOOST
        return PRI_UNDER if self.credit >= 0 else PRI_OVER


class CreditScheduler:
    """Weights, caps and BOOST over vCPUs that run one slice at a time on one thread.

    ``clock()`` returns ns (default ``time.monotonic_ns``); ``waiter`` has
    ``wait(timeout_s) -> bool``, ``set()``, ``clear()`` (default ``threading.Event()``).
    """

    def __init__(self, *, clock=time.monotonic_ns, waiter=None,
                 tslice_ms=DEFAULT_TSLICE_MS, ratelimit_us=DEFAULT_RATELIMIT_US):
        _check_range("timeslice", tslice_ms, TSLICE_MS_MIN, TSLICE_MS_MAX, " ms")
        _check_range("rate limit", ratelimit_us, RATELIMIT_US_MIN,
                     min(RATELIMIT_US_MAX, tslice_ms * 1000), " us (and at most the timeslice)")
        self._clock = clock
        self._waiter = waiter if waiter is not None else threading.Event()
        self.tslice_ns = tslice_ms * 1_000_000
        self.tick_ns = self.tslice_ns // TICKS_PER_TSLICE
        self.period_ns = self.tslice_ns
        self.ratelimit_ns = ratelimit_us * 1000
        self._lock = threading.RLock()
        self._domains = {}
        self._entries = {}          # id(vcpu object) -> _Vcpu
        self._seq = itertools.count()
        self._current = None
        self._in_run = False
        self._stop_requested = False
        self._started_ns = None
        self._period_end = None
        self._idle_ns = 0
        self._periods = 0

    # ---- domains and parameters -------------------------------------------------

    def add_domain(self, domid, vcpus, *, weight=DEFAULT_WEIGHT, cap=0):
        """Schedule ``vcpus`` (a non-empty sequence) as domain ``domid``; they start runnable."""
        if not _plain_int(domid) or not 0 <= domid < abi.DOMID_FIRST_RESERVED:
            raise SchedulerError(f"domain id {domid!r} is not in 0..{abi.DOMID_FIRST_RESERVED - 1:#x}")
        vcpus = list(vcpus)
        if not vcpus:
            raise SchedulerError(f"domain {domid}: no vCPUs to schedule")
        for i, vcpu in enumerate(vcpus):
            if not callable(getattr(vcpu, "run_slice", None)):
                raise SchedulerError(f"domain {domid} vcpu {i}: {vcpu!r} has no run_slice(max_ns)")
        if len({id(v) for v in vcpus}) != len(vcpus):
            raise SchedulerError(f"domain {domid}: the same vCPU object is listed twice")
        self._check_weight(domid, weight)
        self._check_cap(domid, cap, len(vcpus))
        with self._lock:
            if domid in self._domains:
                raise SchedulerError(f"domain {domid} is already scheduled")
            for vcpu in vcpus:
                owner = self._entries.get(id(vcpu))
                if owner is not None:
                    raise SchedulerError(f"domain {domid}: vCPU {vcpu!r} already belongs to "
                                         f"domain {owner.dom.domid}")
            dom = _Domain(domid, weight, cap)
            for i, vcpu in enumerate(vcpus):
                entry = _Vcpu(vcpu, i, dom, next(self._seq))
                dom.vcpus.append(entry)
                self._entries[id(vcpu)] = entry
            self._domains[domid] = dom
            self._waiter.set()

    def remove_domain(self, domid):
        """Stop scheduling ``domid`` (its running slice, if any, finishes); returns its last stats."""
        with self._lock:
            dom = self._domain(domid)
            del self._domains[domid]
            for entry in dom.vcpus:
                entry.removed = True
                del self._entries[id(entry.vcpu)]
            self._waiter.set()
            return self._domain_stats(dom)

    def set_weight(self, domid, weight):
        self._check_weight(domid, weight)
        with self._lock:
            self._domain(domid).weight = weight
            self._waiter.set()

    def set_cap(self, domid, cap):
        """Change the cap; the budget of the current period follows at once (park or unpark)."""
        with self._lock:
            dom = self._domain(domid)
            self._check_cap(domid, cap, len(dom.vcpus))
            dom.cap = cap
            over = bool(cap) and dom.used_in_period >= self._budget(dom)
            if over and not dom.parked:
                dom.parked_periods += 1
            dom.parked = over
            self._waiter.set()

    def params(self, domid):
        """(weight, cap) of ``domid``, as ``xl sched-credit -d`` lists them."""
        with self._lock:
            dom = self._domain(domid)
            return dom.weight, dom.cap

    @staticmethod
    def _check_weight(domid, weight):
        _check_range(f"domain {domid}: weight", weight, WEIGHT_MIN, WEIGHT_MAX)

    @staticmethod
    def _check_cap(domid, cap, nr_vcpus):
        # More than 100% per vCPU can never be used; Xen's credit2 refuses it the same way.
        _check_range(f"domain {domid}: cap", cap, 0, min(CAP_MAX, 100 * nr_vcpus),
                     f" percent of one CPU (0 = no cap; {nr_vcpus} vCPU(s))")

    def _domain(self, domid):
        dom = self._domains.get(domid)
        if dom is None:
            raise SchedulerError(f"domain {domid!r} is not scheduled")
        return dom

    def _budget(self, dom):
        return self.period_ns * dom.cap // 100

    # ---- wakes and stopping -------------------------------------------------------

    def wake(self, vcpu):
        """An event arrived for ``vcpu``: a blocked vCPU becomes runnable (BOOSTed if not
        over its share). Safe from any thread. Returns True if it was blocked. A wake for
        a vCPU not (or no longer) scheduled is dropped, as an event to a dead domain is."""
        kick = None
        with self._lock:
            entry = self._entries.get(id(vcpu))
            if entry is None or entry.state in (_QUEUED, STOPPED):
                return False
            if entry.state == _RUNNING:
                entry.wake_pending = True
                return False
            self._make_runnable(entry)
            current = self._current
            if entry.boosted and current is not None and current.priority < PRI_BOOST:
                kick = getattr(current.vcpu, "kick", None)
            self._waiter.set()
        if kick is not None:
            kick()
        return True

    def request_stop(self):
        """Make run() return (after the running slice) with STOP_REQUESTED. Any thread."""
        with self._lock:
            self._stop_requested = True
            self._waiter.set()

    def _make_runnable(self, entry):
        entry.state = _QUEUED
        entry.seq = next(self._seq)
        entry.boosted = entry.credit >= 0 and not entry.dom.parked
        if entry.boosted:
            entry.dom.boosts += 1

    # ---- the run loop -----------------------------------------------------------

    def run(self, until=None):
        """Run vCPUs until all are stopped (ALL_STOPPED), the clock reaches ``until``
        (ns, UNTIL) or request_stop() (STOP_REQUESTED)."""
        if until is not None and not _plain_int(until):
            raise SchedulerError(f"run(until={until!r}): give a clock time in ns or None")
        with self._lock:
            if self._in_run:
                raise SchedulerError("run() called while the scheduler is already running")
            self._in_run = True
        try:
            while True:
                with self._lock:
                    self._waiter.clear()
                    now = self._clock()
                    if self._started_ns is None:
                        self._started_ns = now
                        self._period_end = now      # the first period's credit now
                    if self._stop_requested:
                        self._stop_requested = False
                        return STOP_REQUESTED
                    if until is not None and now >= until:
                        return UNTIL
                    self._account(now)
                    self._wake_expired(now)
                    if all(e.state == STOPPED for e in self._entries.values()):
                        return ALL_STOPPED
                    entry = self._pick()
                    if entry is not None:
                        max_ns = self._slice(entry, now, until)
                        entry.state = _RUNNING
                        entry.wake_pending = False
                        self._current = entry
                    else:
                        timeout = self._idle_timeout(now, until)
                if entry is not None:
                    self._run_one(entry, max_ns)
                else:
                    self._wait(timeout)
        finally:
            with self._lock:
                self._in_run = False

    def _account(self, now):
        """When a period begins: hand out its credit by weight and cap, unpark."""
        if now < self._period_end:
            return
        elapsed = (now - self._period_end) // self.period_ns + 1
        self._period_end += elapsed * self.period_ns
        self._periods += elapsed
        active = {}
        for dom in self._domains.values():
            vcpus = [e for e in dom.vcpus if e.ran_in_period or e.state == _QUEUED]
            if vcpus:
                active[dom] = vcpus
        shares = self._shares(list(active))
        for dom, vcpus in active.items():
            each = shares[dom] // len(vcpus)
            for entry in vcpus:
                entry.credit = min(entry.credit + each, self.period_ns)
        for dom in self._domains.values():
            dom.used_in_period = 0
            dom.parked = False
            for entry in dom.vcpus:
                entry.ran_in_period = False

    def _shares(self, active):
        """Credit per domain for one period: by weight, no domain above its cap, the
        part a cap leaves over shared by weight among the rest."""
        shares = {}
        budget = self.period_ns
        while active:
            total = sum(d.weight for d in active)
            capped = [d for d in active if d.cap and budget * d.weight > self._budget(d) * total]
            if not capped:
                for d in active:
                    shares[d] = budget * d.weight // total
                break
            for d in capped:
                shares[d] = self._budget(d)
                budget -= shares[d]
                active.remove(d)
        return shares

    def _wake_expired(self, now):
        for entry in self._entries.values():
            if entry.state != BLOCKED:
                continue
            deadline = self._deadline(entry)
            if deadline is not None and deadline <= now:
                self._make_runnable(entry)

    def _deadline(self, entry):
        deadline = getattr(entry.vcpu, "wake_deadline_ns", None)
        if deadline is not None and not _plain_int(deadline):
            entry.state = STOPPED
            entry.dom.error = f"wake_deadline_ns {deadline!r} is not an int"
            raise SchedulerError(f"{entry.name}: wake_deadline_ns {deadline!r} is not an int "
                                 "(ns on the scheduler's clock, or None); vCPU stopped")
        return deadline

    def _pick(self):
        best = None
        for entry in self._entries.values():
            if entry.state != _QUEUED or entry.dom.parked:
                continue
            if best is None or self._order(entry) > self._order(best):
                best = entry
        return best

    @staticmethod
    def _order(entry):
        # BOOSTed vCPUs stay in wake order: a capped one must not hold off other wakes.
        pri = entry.priority
        return pri, pri != PRI_BOOST and entry.dom.cap != 0, -entry.seq

    def _slice(self, entry, now, until):
        dom = entry.dom
        if entry.boosted:   # a woken vCPU finishes its short work across a period end
            limit = self.tick_ns
        else:               # new credit may make another vCPU the better choice
            limit = min(self.tslice_ns, self._period_end - now)
            if entry.credit >= 0:   # UNDER: until its credit is spent, then the next UNDER
                limit = min(limit, max(entry.credit, self.ratelimit_ns))
        if dom.cap:         # the budget is per period: end with it, or with the period
            limit = min(limit, self._budget(dom) - dom.used_in_period, self._period_end - now)
        if until is not None:
            limit = min(limit, until - now)
        if entry.priority < PRI_BOOST:
            soonest = None
            for other in self._entries.values():
                if other.state == BLOCKED and other.credit >= 0 and not other.dom.parked:
                    deadline = self._deadline(other)
                    if deadline is not None and (soonest is None or deadline < soonest):
                        soonest = deadline
            if soonest is not None:
                limit = min(limit, max(soonest - now, self.ratelimit_ns))
        return max(limit, 1)

    def _idle_timeout(self, now, until):
        """ns until something can run without an external wake, or None."""
        wakeups = []
        for entry in self._entries.values():
            if entry.state == BLOCKED:
                deadline = self._deadline(entry)
                if deadline is not None:
                    wakeups.append(max(deadline, self._period_end) if entry.dom.parked else deadline)
            elif entry.state == _QUEUED:             # queued but parked
                wakeups.append(self._period_end)
        if until is not None:
            wakeups.append(until)
        return max(min(wakeups) - now, 0) if wakeups else None

    def _wait(self, timeout_ns):
        start = self._clock()
        self._waiter.wait(None if timeout_ns is None else timeout_ns / 1e9)
        with self._lock:
            self._idle_ns += self._clock() - start

    def _run_one(self, entry, max_ns):
        start = self._clock()
        try:
            result = entry.vcpu.run_slice(max_ns)
        except PyvmmError as exc:
            with self._lock:
                self._charge(entry, max(self._clock() - start, 0), STOPPED)
                entry.dom.error = f"{type(exc).__name__}: {exc}"
            return
        except BaseException:
            with self._lock:
                self._current = None
                entry.state = STOPPED
            raise
        with self._lock:
            try:
                used_ns, state = result
                ok = _plain_int(used_ns) and used_ns >= 0 and state in _VCPU_STATES
            except (TypeError, ValueError):
                ok = False
            if not ok:
                self._charge(entry, max(self._clock() - start, 0), STOPPED)
                entry.dom.error = f"bad run_slice result {result!r}"
                raise SchedulerError(f"{entry.name}: run_slice({max_ns}) returned {result!r}, not "
                                     f"(used_ns >= 0, one of {', '.join(_VCPU_STATES)}); vCPU stopped")
            self._charge(entry, used_ns, state)

    def _charge(self, entry, used_ns, state):
        self._current = None
        if entry.removed:
            return
        dom = entry.dom
        entry.credit = max(entry.credit - used_ns, -self.period_ns)
        entry.ran_in_period = True
        entry.boosted = False
        dom.used_in_period += used_ns
        dom.ns_run += used_ns
        dom.slices += 1
        if state == RUNNABLE:
            entry.state = _QUEUED
            entry.seq = next(self._seq)
        elif state == BLOCKED:
            entry.state = BLOCKED
            if entry.wake_pending:
                self._make_runnable(entry)
        else:
            entry.state = STOPPED
        entry.wake_pending = False
        if dom.cap and not dom.parked and dom.used_in_period >= self._budget(dom):
            dom.parked = True
            dom.parked_periods += 1

    # ---- statistics -------------------------------------------------------------

    def stats(self):
        with self._lock:
            now = self._clock()
            elapsed = 0 if self._started_ns is None else now - self._started_ns
            return SchedStats(elapsed, self._idle_ns, self._periods,
                              tuple(self._domain_stats(self._domains[k]) for k in sorted(self._domains)))

    @staticmethod
    def _domain_stats(dom):
        return DomainStats(dom.domid, dom.weight, dom.cap, dom.ns_run, dom.slices, dom.boosts,
                           dom.parked_periods, len(dom.vcpus),
                           sum(e.state == STOPPED for e in dom.vcpus), dom.error)

    def priority(self, vcpu):
        """The vCPU's priority name now (BOOST/UNDER/OVER), or its state if not queued."""
        with self._lock:
            entry = self._entries.get(id(vcpu))
            if entry is None:
                raise SchedulerError(f"vCPU {vcpu!r} is not scheduled")
            if entry.state in (BLOCKED, STOPPED):
                return entry.state
            return PRIORITY_NAMES[entry.priority]
