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
 * many passed. The helpers a frontend guest needs (hypercall, evtchn_*, xs_*,
 * gnttab_*, cons_*) are the static functions below.
 */
#define __XEN_INTERFACE_VERSION__ 0x00040a00
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/sched.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>

#define UPCALL_VECTOR 0xF3
#define TIMER_TICKS 5
#define TIMER_PERIOD_NS 10000000ULL          /* 10 ms */
#define DOM0_WAIT_NS 300000000ULL            /* how long to wait for domain 0's signal */
#define GRANT_REF 8                          /* the first ref after GNTTAB_NR_RESERVED_ENTRIES */
#define BAD_POINTER 0x100000000000UL         /* beyond the 4 GiB identity map */
#define barrier() __asm__ __volatile__("" ::: "memory")
#define mb() __asm__ __volatile__("mfence" ::: "memory")

extern char hypercall_page[];
extern char upcall_entry[];

static start_info_t *si;
static shared_info_t *shared;
static struct xencons_interface *cons;
static struct xenstore_domain_interface *xs;
static volatile uint64_t port_events[64];   /* upcalls seen per port (ports < 64) */
static volatile uint64_t upcalls;
static unsigned checks, passed;
static uint32_t xs_req_id;
static uint8_t grant_page[4096] __attribute__((aligned(4096)));
static struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr;
static uint64_t idt[256 * 2];

/* ---- hypercalls through the hypercall page (RAX; RDI, RSI, RDX, R10, R8) ---- */
static long hypercall(unsigned nr, unsigned long a1, unsigned long a2, unsigned long a3,
                      unsigned long a4, unsigned long a5)
{
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = a5;
    long ret;
    __asm__ __volatile__("call *%[stub]"
                         : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                         : [stub] "r"(hypercall_page + nr * 32)
                         : "memory", "rcx", "r9", "r11");
    return ret;
}

static long evtchn_op(int cmd, void *op) { return hypercall(__HYPERVISOR_event_channel_op, cmd, (unsigned long)op, 0, 0, 0); }
static long sched_op(int cmd, void *arg) { return hypercall(__HYPERVISOR_sched_op, cmd, (unsigned long)arg, 0, 0, 0); }

static long evtchn_send(evtchn_port_t port)
{
    struct evtchn_send op = { .port = port };
    return evtchn_op(EVTCHNOP_send, &op);
}

/* ---- output ---- */
static size_t slen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static void cons_write(const char *s, size_t n)
{
    while (n) {
        XENCONS_RING_IDX prod = cons->out_prod;
        if (prod - cons->out_cons >= sizeof(cons->out)) {
            evtchn_send(si->console.domU.evtchn);
            if (prod - cons->out_cons >= sizeof(cons->out))
                return;                      /* the backend is gone: drop the rest */
            continue;
        }
        cons->out[MASK_XENCONS_IDX(prod, cons->out)] = *s++;
        mb();
        cons->out_prod = prod + 1;
        n--;
    }
}

static void cons_flush(void) { evtchn_send(si->console.domU.evtchn); }
static void puts_(const char *s) { cons_write(s, slen(s)); }

static void putdec(long v)
{
    char buf[24];
    int i = sizeof(buf);
    unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
    do { buf[--i] = '0' + u % 10; u /= 10; } while (u);
    if (v < 0) buf[--i] = '-';
    cons_write(buf + i, sizeof(buf) - i);
}

static void line(const char *a, long num, const char *b)
{
    puts_(a);
    if (b) { putdec(num); puts_(b); }
    puts_("\n");
    cons_flush();
}

static void check(const char *name, long got, long want)
{
    checks++;
    if (got == want) {
        passed++;
        puts_("ok ");
        puts_(name);
    } else {
        puts_("FAIL ");
        puts_(name);
        puts_(": got ");
        putdec(got);
        puts_(" want ");
        putdec(want);
    }
    puts_("\n");
    cons_flush();
}

/* ---- time: vcpu_time_info (xen.h) and RDTSC ---- */
static uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static uint64_t now_ns(void)
{
    volatile struct vcpu_time_info *t = &shared->vcpu_info[0].time;
    uint32_t version, mul;
    uint64_t system_time, stamp, delta;
    int8_t shift;
    do {
        version = t->version;
        barrier();
        system_time = t->system_time;
        stamp = t->tsc_timestamp;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        barrier();
    } while ((version & 1) || version != t->version);
    delta = rdtsc() - stamp;
    delta = shift < 0 ? delta >> -shift : delta << shift;
    return system_time + ((delta & 0xFFFFFFFF) * mul >> 32) + (delta >> 32) * mul;
}

/* ---- upcalls: the 2-level event ABI ---- */
void do_upcall(void)
{
    vcpu_info_t *v = &shared->vcpu_info[0];
    v->evtchn_upcall_pending = 0;
    barrier();
    xen_ulong_t sel = __atomic_exchange_n(&v->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
    while (sel) {
        unsigned w = __builtin_ctzl(sel);
        sel &= sel - 1;
        xen_ulong_t bits = shared->evtchn_pending[w] & ~shared->evtchn_mask[w];
        while (bits) {
            unsigned b = __builtin_ctzl(bits);
            bits &= bits - 1;
            __atomic_fetch_and(&shared->evtchn_pending[w], ~(1UL << b), __ATOMIC_SEQ_CST);
            unsigned port = w * 64 + b;
            if (port < 64)
                port_events[port]++;
        }
    }
    upcalls++;
}

static void setup_upcalls(void)
{
    uint64_t handler = (uint64_t)upcall_entry;
    uint16_t cs;
    __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
    /* a 64-bit interrupt gate: present, DPL 0, type 0xE */
    idt[UPCALL_VECTOR * 2] = (handler & 0xFFFF) | (uint64_t)cs << 16 | 0x8EULL << 40 |
                             ((handler >> 16) & 0xFFFF) << 48;
    idt[UPCALL_VECTOR * 2 + 1] = handler >> 32;
    idtr.limit = sizeof(idt) - 1;
    idtr.base = (uint64_t)idt;
    __asm__ __volatile__("lidt %0" :: "m"(idtr));
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = HVM_PARAM_CALLBACK_IRQ,
                               .value = (uint64_t)HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | UPCALL_VECTOR };
    check("hvm_set_callback_vector", hypercall(__HYPERVISOR_hvm_op, HVMOP_set_param, (unsigned long)&p, 0, 0, 0), 0);
    shared->vcpu_info[0].evtchn_upcall_mask = 0;
    __asm__ __volatile__("sti" ::: "memory");
}

static void block(void) { sched_op(SCHEDOP_block, NULL); }

/* Wait until port has seen more than `seen` upcalls, or deadline; 1 if it did. */
static int wait_port(evtchn_port_t port, uint64_t seen, uint64_t deadline)
{
    hypercall(__HYPERVISOR_set_timer_op, deadline, 0, 0, 0, 0);
    while (port_events[port] <= seen && now_ns() < deadline)
        block();
    return port_events[port] > seen;
}

/* ---- xenstore over the ring (xs_wire.h) ---- */
static void xs_put(const void *data, uint32_t len)
{
    const char *p = data;
    while (len) {
        XENSTORE_RING_IDX prod = xs->req_prod;
        if (prod - xs->req_cons >= XENSTORE_RING_SIZE) {
            evtchn_send(si->store_evtchn);
            continue;
        }
        xs->req[MASK_XENSTORE_IDX(prod)] = *p++;
        mb();
        xs->req_prod = prod + 1;
        len--;
    }
}

static int xs_get(void *data, uint32_t len)
{
    char *p = data;
    uint64_t deadline = now_ns() + DOM0_WAIT_NS;
    while (len) {
        XENSTORE_RING_IDX cons_ = xs->rsp_cons;
        if (cons_ == xs->rsp_prod) {
            if (now_ns() >= deadline)
                return -1;
            uint64_t seen = port_events[si->store_evtchn];
            evtchn_send(si->store_evtchn);
            if (xs->rsp_cons == xs->rsp_prod)
                wait_port(si->store_evtchn, seen, deadline);
            continue;
        }
        *p++ = xs->rsp[MASK_XENSTORE_IDX(cons_)];
        mb();
        xs->rsp_cons = cons_ + 1;
        len--;
    }
    return 0;
}

/* One request; the reply payload (NUL-terminated) in out. Returns its length, or
 * -1 for an XS_ERROR reply (out holds the errno name) or a broken ring. */
static int xs_request(enum xsd_sockmsg_type type, const char *path, const char *value,
                      char *out, uint32_t outlen)
{
    uint32_t plen = slen(path) + 1, vlen = value ? slen(value) : 0;
    struct xsd_sockmsg msg = { .type = type, .req_id = ++xs_req_id, .tx_id = 0, .len = plen + vlen };
    xs_put(&msg, sizeof(msg));
    xs_put(path, plen);
    if (vlen)
        xs_put(value, vlen);
    evtchn_send(si->store_evtchn);
    struct xsd_sockmsg reply;
    for (;;) {
        if (xs_get(&reply, sizeof(reply)) || reply.len >= outlen)
            return -1;
        if (xs_get(out, reply.len))
            return -1;
        out[reply.len] = 0;
        if (reply.type != XS_WATCH_EVENT && reply.req_id == msg.req_id)
            break;
    }
    return reply.type == XS_ERROR ? -1 : (int)reply.len;
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

static void utoa(unsigned long v, char *buf)
{
    char tmp[24];
    int i = 0;
    do { tmp[i++] = '0' + v % 10; v /= 10; } while (v);
    while (i) *buf++ = tmp[--i];
    *buf = 0;
}

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
        while (port_events[port] == seen)
            block();
    }
    uint64_t elapsed = now_ns() - start;
    line("timer: ", (long)port_events[port], " upcalls on VIRQ_TIMER while blocked");
    check("timer_upcalls", port_events[port], TIMER_TICKS);
    check("timer_took_the_periods", elapsed >= TIMER_TICKS * TIMER_PERIOD_NS, 1);
}

static void test_grant(void)
{
    xen_pfn_t frame = 0;
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1 };
    set_xen_guest_handle(setup.frame_list, &frame);
    long rc = hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&setup, 1, 0, 0);
    check("gnttab_setup_table", rc == 0 && setup.status == GNTST_okay, 1);
    grant_entry_v1_t *table = (grant_entry_v1_t *)(frame << 12);
    const char *text = "pvguest: a page granted to domain 0";
    for (size_t i = 0; text[i]; i++)
        grant_page[i] = text[i];
    table[GRANT_REF].domid = 0;
    table[GRANT_REF].frame = (uint64_t)grant_page >> 12;
    mb();
    table[GRANT_REF].flags = GTF_permit_access | GTF_readonly;

    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = 0 };
    check("alloc_unbound_for_dom0", evtchn_op(EVTCHNOP_alloc_unbound, &alloc), 0);
    char buf[32], out[64];
    utoa(GRANT_REF, buf);
    check("xenstore_write_gref", xs_request(XS_WRITE, "data/gref", buf, out, sizeof(out)) >= 0, 1);
    uint64_t seen = port_events[alloc.port];
    utoa(alloc.port, buf);
    check("xenstore_write_port", xs_request(XS_WRITE, "data/port", buf, out, sizeof(out)) >= 0, 1);
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
    si = start;
    shared = (shared_info_t *)si->shared_info;
    cons = (struct xencons_interface *)(si->console.domU.mfn << 12);
    xs = (struct xenstore_domain_interface *)(si->store_mfn << 12);

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
    puts_("pvguest: ");
    putdec(passed);
    puts_("/");
    putdec(checks);
    puts_(" checks passed\n");
    cons_flush();
    sched_shutdown_t off = { .reason = passed == checks ? SHUTDOWN_poweroff : SHUTDOWN_crash };
    sched_op(SCHEDOP_shutdown, &off);
    for (;;)
        block();
}
