/* pvhostile.c - a PV guest that attacks its neighbours (the isolation test's villain).
 *
 * For `rounds=` rounds it throws at the VMM what a hostile domain can: events to every
 * port number (its own, closed, out of range), interdomain binds to other domains'
 * ports, grant maps and copies of other domains' refs, the grant table and memory of
 * other domains (setup_table, reservations, current_reservation of domain 1..8),
 * page-table updates naming frames beyond its RAM, huge counts and bad pointers, and
 * unknown hypercall numbers. Each call must fail with a Xen error code (it counts the
 * ones that did not); none may reach another domain. Then it powers off.
 */
#include "pvcmdline.h"
#include <xen/memory.h>

#define BAD_POINTER 0x100000000000UL
#define MAXDOM 8

static unsigned long succeeded;

static void expect_error(long rc)
{
    if (rc >= 0)
        succeeded++;
}

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    unsigned long rounds = cmdline_uint("rounds", 20);
    unsigned long calls = 0;
    setup_upcalls();
    long self = xs_read_uint("domid");
    static uint8_t page[4096] __attribute__((aligned(4096)));
    for (unsigned long r = 0; r < rounds; r++) {
        for (evtchn_port_t port = 8; port < 1100; port += 7) {
            expect_error(evtchn_send(port));
            calls++;
        }
        for (domid_t d = 0; d <= MAXDOM; d++) {
            if (d == 0 || d == self)
                continue;
            struct evtchn_bind_interdomain bind = { .remote_dom = d, .remote_port = 1 + r % 8 };
            long rc = evtchn_op(EVTCHNOP_bind_interdomain, &bind);
            if (rc >= 0) {                  /* a port another domain left open for us: close it */
                struct evtchn_close c = { .port = bind.local_port };
                evtchn_op(EVTCHNOP_close, &c);
            }
            for (grant_ref_t ref = 0; ref < 16; ref++) {
                struct gnttab_map_grant_ref map = { .host_addr = (uint64_t)page, .flags = GNTMAP_host_map,
                                                    .ref = ref, .dom = d };
                hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, (unsigned long)&map, 1, 0, 0);
                expect_error(map.status);
                struct gnttab_copy copy = { .source.u.ref = ref, .source.domid = d, .source.offset = 0,
                                            .dest.u.gmfn = (uint64_t)page >> PAGE_SHIFT, .dest.domid = DOMID_SELF,
                                            .len = 64, .flags = GNTCOPY_source_gref };
                hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_copy, (unsigned long)&copy, 1, 0, 0);
                expect_error(copy.status);
                calls += 2;
            }
            xen_pfn_t frame;
            struct gnttab_setup_table setup = { .dom = d, .nr_frames = 1 };
            set_xen_guest_handle(setup.frame_list, &frame);
            hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&setup, 1, 0, 0);
            expect_error(setup.status);
            xen_pfn_t victim = 0x200;
            struct xen_memory_reservation res = { .nr_extents = 1, .domid = d };
            set_xen_guest_handle(res.extent_start, &victim);
            long rc2 = hypercall(__HYPERVISOR_memory_op, XENMEM_decrease_reservation, (unsigned long)&res, 0, 0, 0);
            expect_error(rc2 == 0 ? -1 : rc2);
            domid_t dd = d;
            expect_error(hypercall(__HYPERVISOR_memory_op, XENMEM_current_reservation, (unsigned long)&dd, 0, 0, 0));
            calls += 4;
        }
        struct mmu_update u = { .ptr = ((uint64_t)1 << 39) | MMU_NORMAL_PT_UPDATE, .val = 0x123456789000UL | 1 };
        expect_error(hypercall(__HYPERVISOR_mmu_update, (unsigned long)&u, 1, 0, DOMID_SELF, 0));
        expect_error(hypercall(__HYPERVISOR_mmu_update, BAD_POINTER, 0x7fffffff, 0, DOMID_SELF, 0));
        expect_error(hypercall(__HYPERVISOR_multicall, BAD_POINTER, 1u << 30, 0, 0, 0));
        expect_error(hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_copy, BAD_POINTER, 0xffffffff, 0, 0));
        expect_error(hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, 1u << 30, BAD_POINTER, 0, 0));
        expect_error(hypercall(64 + r % 60, 1, 2, 3, 4, 5));
        calls += 6;
    }
    line("pvhostile: hostile calls ", (long)calls, "");
    line("pvhostile: calls that succeeded ", (long)succeeded, "");
    shutdown(succeeded ? SHUTDOWN_crash : SHUTDOWN_poweroff);
}
