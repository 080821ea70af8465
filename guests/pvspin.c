/* pvspin.c - a PV guest that spins without exits (the isolation test's hog).
 *
 * It loops on the CPU for `ms=` milliseconds of system time (0: for ever), reading the
 * clock only every 2^20 iterations (RDTSC exits for a PV guest), never blocking or
 * yielding: only the host timer takes the CPU away from it. It prints how many million
 * iterations it did and powers off.
 */
#include "pvcmdline.h"

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    uint64_t run_ns = cmdline_uint("ms", 500) * 1000000ULL;
    uint64_t end = now_ns() + run_ns;
    volatile uint64_t spins = 0;
    line("pvspin: spinning ms ", (long)(run_ns / 1000000), "");
    for (;;) {
        for (unsigned i = 0; i < (1u << 20); i++)
            spins++;
        if (run_ns && now_ns() >= end)
            break;
    }
    line("pvspin: million iterations ", (long)(spins >> 20), "");
    shutdown(SHUTDOWN_poweroff);
}
