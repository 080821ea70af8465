/* pvticks.c - a PV guest that must meet a periodic timer (the isolation test's victim).
 *
 * It binds VIRQ_TIMER, then for `ticks=` periods of `period_ms=` arms set_timer_op at
 * the next absolute deadline (start + k * period, so lateness does not accumulate) and
 * blocks until the timer upcall. For every tick it measures the lateness (system time
 * at the upcall minus the deadline) and prints the count, the mean and the worst, and
 * how many ticks came a whole period late (missed). A spinning domain beside it on the
 * same host CPU must not push its ticks late: the credit scheduler BOOSTs the woken
 * vCPU. It checks that every tick came and that the mean lateness stays below
 * `late_us=` (the mean, because a loaded host delays a single wake-up now and then),
 * and powers off (crash if not).
 */
#include "pvcmdline.h"

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    uint64_t period = cmdline_uint("period_ms", 10) * 1000000ULL;
    unsigned long ticks = cmdline_uint("ticks", 20);
    uint64_t mean_limit = cmdline_uint("late_us", 5000) * 1000ULL;
    setup_upcalls();
    struct evtchn_bind_virq bind = { .virq = VIRQ_TIMER, .vcpu = 0 };
    check("bind_virq_timer", evtchn_op(EVTCHNOP_bind_virq, &bind), 0);
    evtchn_port_t port = bind.port;
    uint64_t start_ns = now_ns(), worst = 0, total = 0;
    unsigned long late = 0, got = 0;
    for (unsigned long k = 1; k <= ticks; k++) {
        uint64_t deadline = start_ns + k * period;
        uint64_t seen = port_events[port];
        hypercall(__HYPERVISOR_set_timer_op, deadline, 0, 0, 0, 0);
        wait_events(port, seen);
        uint64_t now = now_ns();
        uint64_t lateness = now > deadline ? now - deadline : 0;
        got++;
        total += lateness;
        if (lateness > worst)
            worst = lateness;
        if (lateness >= period)
            late++;
    }
    line("pvticks: ticks ", (long)got, "");
    line("pvticks: mean lateness us ", (long)(total / (got ? got : 1) / 1000), "");
    line("pvticks: worst lateness us ", (long)(worst / 1000), "");
    line("pvticks: ticks a period late ", (long)late, "");
    check("every_tick_came", got, ticks);
    check("mean_lateness_below_limit", total / (got ? got : 1) < mean_limit, 1);
    line("pvticks: checks passed ", passed, "");
    shutdown(passed == checks ? SHUTDOWN_poweroff : SHUTDOWN_crash);
}
