/* pvguest.c - a paravirtual guest for `pyvmm boot --pv` (docs/pv-boot.md).
 *
 * Freestanding C on Xen's public headers (Debian's libxen-dev). It
 *   - prints through console_io and through the console ring (io/console.h);
 *   - reads its domid and name from xenstore over the xenstore ring (io/xs_wire.h);
 *   - registers an upcall vector (HVMOP_set_param HVM_PARAM_CALLBACK_IRQ), binds
 *     VIRQ_TIMER and counts TIMER_TICKS timer upcalls while blocked (SCHEDOP_block);
 *   - grants a page with data to domain 0, allocates an unbound port for it and
 *     publishes both in xenstore (data/gref, data/port), then waits a while for
 *     domain 0 to signal that port;
 *   - checks that hostile calls get Xen's error codes;
 *   - powers off with SCHEDOP_shutdown.
 * Every check prints "ok NAME" or "FAIL NAME: got X want Y"; the last line says how
 * many passed. The helpers (hypercall, evtchn_*, xs_*, cons_*, the upcall handler) are
 * pvlib.c's, shared with the other PV guests.
 */
#include "pvlib.h"

#define TIMER_TICKS 5
#define TIMER_PERIOD_NS 10000000ULL          /* 10 ms */
#define GRANT_REF 8                          /* the first ref after GNTTAB_NR_RESERVED_ENTRIES */
#define BAD_POINTER 0x100000000000UL         /* beyond the 4 GiB identity map */

static uint8_t grant_page[4096] __attribute__((aligned(4096)));

/* ---- the tests ---- */
static void test_xenstore(void)
{
    char buf[128];
    int n = xs_request(XS_READ, "domid", NULL, buf, sizeof(buf));
    check("xenstore_read_domid", n > 0 && streq(buf, "1"), 1);
    puts_("xenstore: domid=");
    puts_(n > 0 ? buf : "?");
    n = xs_request(XS_READ, "name", NULL, buf, sizeof(buf));
    puts_(" name=");
    puts_(n > 0 ? buf : "?");
    puts_("\n");
    cons_flush();
    check("xenstore_read_name", n > 0, 1);
    n = xs_request(XS_READ, "no/such/node", NULL, buf, sizeof(buf));
    check("xenstore_missing_node_enoent", n == -1 && streq(buf, "ENOENT"), 1);
}

static void test_timer(void)
{
    struct evtchn_bind_virq bind = { .virq = VIRQ_TIMER, .vcpu = 0 };
    check("bind_virq_timer", evtchn_op(EVTCHNOP_bind_virq, &bind), 0);
    evtchn_port_t port = bind.port;
    uint64_t start = now_ns();
    for (int i = 0; i < TIMER_TICKS; i++) {
        uint64_t seen = port_events[port];
        hypercall(__HYPERVISOR_set_timer_op, now_ns() + TIMER_PERIOD_NS, 0, 0, 0, 0);
        wait_events(port, seen);
    }
    uint64_t elapsed = now_ns() - start;
    line("timer: ", (long)port_events[port], " upcalls on VIRQ_TIMER while blocked");
    check("timer_upcalls", port_events[port], TIMER_TICKS);
    check("timer_took_the_periods", elapsed >= TIMER_TICKS * TIMER_PERIOD_NS, 1);
}

static void test_grant(void)
{
    grant_entry_v1_t *table = gnttab_setup();
    check("gnttab_setup_table", table != NULL, 1);
    if (!table)
        return;
    const char *text = "pvguest: a page granted to domain 0";
    for (size_t i = 0; text[i]; i++)
        grant_page[i] = text[i];
    gnttab_grant(table, GRANT_REF, 0, (uint64_t)grant_page >> PAGE_SHIFT, 1);

    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = 0 };
    check("alloc_unbound_for_dom0", evtchn_op(EVTCHNOP_alloc_unbound, &alloc), 0);
    check("xenstore_write_gref", xs_write_uint("data/gref", GRANT_REF) >= 0, 1);
    uint64_t seen = port_events[alloc.port];
    check("xenstore_write_port", xs_write_uint("data/port", alloc.port) >= 0, 1);
    line("grant: ref 8 to domain 0, event channel port ", alloc.port, "");
    if (wait_port(alloc.port, seen, now_ns() + DOM0_WAIT_NS))
        line("grant: domain 0 signalled port ", alloc.port, "");
    else
        line("grant: no signal from domain 0 on port ", alloc.port, "");
}

static void test_hostile(void)
{
    check("console_io_bad_pointer_efault",
          hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, 16, BAD_POINTER, 0, 0), -14);
    check("unknown_hypercall_enosys", hypercall(99, 0, 0, 0, 0, 0), -38);
    check("evtchn_op_bad_pointer_efault", evtchn_op(EVTCHNOP_send, (void *)BAD_POINTER), -14);
    check("send_to_unknown_port_einval", evtchn_send(1000), -22);
    struct evtchn_bind_virq bad_virq = { .virq = 99, .vcpu = 0 };
    check("bind_virq_99_einval", evtchn_op(EVTCHNOP_bind_virq, &bad_virq), -22);
    struct evtchn_close close_ = { .port = 0 };
    check("close_reserved_port_einval", evtchn_op(EVTCHNOP_close, &close_), -22);
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1 };
    set_xen_guest_handle(setup.frame_list, (xen_pfn_t *)BAD_POINTER);
    hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&setup, 1, 0, 0);
    check("setup_table_bad_frame_list", setup.status, GNTST_bad_virt_addr);
    xen_pfn_t frame;
    struct gnttab_setup_table other = { .dom = 0, .nr_frames = 1 };
    set_xen_guest_handle(other.frame_list, &frame);
    hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&other, 1, 0, 0);
    check("setup_table_of_dom0_denied", other.status, GNTST_permission_denied);
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_CALLBACK_IRQ, .value = 1ULL << 56 | 5 };
    check("hvm_callback_gsi_einval", hypercall(__HYPERVISOR_hvm_op, HVMOP_set_param, (unsigned long)&p, 0, 0, 0), -22);
    sched_shutdown_t suspend = { .reason = SHUTDOWN_suspend };
    check("shutdown_suspend_einval", sched_op(SCHEDOP_shutdown, &suspend), -22);
}

void pv_main(start_info_t *start)
{
    pvlib_init(start);

    static const char hello[] = "pvguest: hello through console_io\n";
    hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof(hello) - 1, (unsigned long)hello, 0, 0);
    puts_("pvguest: hello through the console ring (");
    puts_((const char *)si->magic);
    line(", pages: ", (long)si->nr_pages, ")");

    setup_upcalls();
    test_xenstore();
    test_timer();
    test_grant();
    test_hostile();
    finish("pvguest");
}
