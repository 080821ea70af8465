/* pvlib.c - the helpers every pyvmm PV guest shares (see pvlib.h; docs/pv-boot.md).
 *
 * Console output goes through the console ring (io/console.h), xenstore requests through
 * the xenstore ring (io/xs_wire.h); both signal their event channel and wait for domain 0
 * the portable way (check the ring, then block with a timeout).
 */
#include "pvlib.h"
#include <xen/io/xenbus.h>

#define UPCALL_VECTOR 0xF3

extern char hypercall_page[];
extern char upcall_entry[];

start_info_t *si;
shared_info_t *shared;
volatile uint64_t port_events[MAX_PORTS];
volatile uint64_t upcalls;
unsigned checks, passed;
static struct xencons_interface *cons;
static struct xenstore_domain_interface *xs;
static uint32_t xs_req_id;
static struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr;
static uint64_t idt[256 * 2];

void pvlib_init(start_info_t *start)
{
    si = start;
    shared = (shared_info_t *)si->shared_info;
    cons = (struct xencons_interface *)(si->console.domU.mfn << PAGE_SHIFT);
    xs = (struct xenstore_domain_interface *)(si->store_mfn << PAGE_SHIFT);
}

/* ---- hypercalls through the hypercall page (RAX; RDI, RSI, RDX, R10, R8) ---- */
long hypercall(unsigned nr, unsigned long a1, unsigned long a2, unsigned long a3,
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

long evtchn_op(int cmd, void *op) { return hypercall(__HYPERVISOR_event_channel_op, cmd, (unsigned long)op, 0, 0, 0); }
long sched_op(int cmd, void *arg) { return hypercall(__HYPERVISOR_sched_op, cmd, (unsigned long)arg, 0, 0, 0); }

long evtchn_send(evtchn_port_t port)
{
    struct evtchn_send op = { .port = port };
    return evtchn_op(EVTCHNOP_send, &op);
}

/* ---- output ---- */
size_t slen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

void cons_write(const char *s, size_t n)
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

void cons_flush(void) { evtchn_send(si->console.domU.evtchn); }
void puts_(const char *s) { cons_write(s, slen(s)); }

void putdec(long v)
{
    char buf[24];
    int i = sizeof(buf);
    unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
    do { buf[--i] = '0' + u % 10; u /= 10; } while (u);
    if (v < 0) buf[--i] = '-';
    cons_write(buf + i, sizeof(buf) - i);
}

void line(const char *a, long num, const char *b)
{
    puts_(a);
    if (b) { putdec(num); puts_(b); }
    puts_("\n");
    cons_flush();
}

void check(const char *name, long got, long want)
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
uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

uint64_t now_ns(void)
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
            if (port < MAX_PORTS)
                port_events[port]++;
        }
    }
    upcalls++;
}

void setup_upcalls(void)
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

void block(void) { sched_op(SCHEDOP_block, NULL); }

/* Waiting without losing a wake-up. Upcalls are masked while the caller's condition is
 * checked: SCHEDOP_block unmasks them and returns at once if one is pending (sched.h),
 * so an event that comes between the check and the block is taken, not slept through.
 * Without the mask, an upcall that ran just before the block (the timer's, say) left the
 * guest asleep with nothing armed to wake it. An upcall pending while masked is taken
 * here by doing its work directly. */
static void mask_upcalls(void)
{
    volatile vcpu_info_t *v = &shared->vcpu_info[0];
    v->evtchn_upcall_mask = 1;
    barrier();
    if (v->evtchn_upcall_pending)
        do_upcall();
}

static void unmask_upcalls(void)
{
    shared->vcpu_info[0].evtchn_upcall_mask = 0;
    barrier();
}

/* Block until `port` has seen more than `seen` upcalls (the caller armed what signals it). */
void wait_events(evtchn_port_t port, uint64_t seen)
{
    for (;;) {
        mask_upcalls();
        if (port_events[port] > seen)
            break;
        block();                                /* unmasks */
    }
    unmask_upcalls();
}

/* Wait until port has seen more than `seen` upcalls, or deadline; 1 if it did. */
int wait_port(evtchn_port_t port, uint64_t seen, uint64_t deadline)
{
    hypercall(__HYPERVISOR_set_timer_op, deadline, 0, 0, 0, 0);
    for (;;) {
        mask_upcalls();
        if (port_events[port] > seen || now_ns() >= deadline)
            break;
        block();                                /* unmasks */
    }
    unmask_upcalls();
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
int xs_request(enum xsd_sockmsg_type type, const char *path, const char *value,
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

int streq(const char *a, const char *b)
{
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

void utoa(unsigned long v, char *buf)
{
    char tmp[24];
    int i = 0;
    do { tmp[i++] = '0' + v % 10; v /= 10; } while (v);
    while (i) *buf++ = tmp[--i];
    *buf = 0;
}


void shutdown(unsigned reason)
{
    sched_shutdown_t off = { .reason = reason };
    sched_op(SCHEDOP_shutdown, &off);
    for (;;)
        block();
}

void finish(const char *who)
{
    puts_(who);
    puts_(": ");
    putdec(passed);
    puts_("/");
    putdec(checks);
    puts_(" checks passed\n");
    cons_flush();
    shutdown(passed == checks ? SHUTDOWN_poweroff : SHUTDOWN_crash);
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

int xs_write_uint(const char *path, unsigned long value)
{
    char buf[24], out[64];
    utoa(value, buf);
    return xs_request(XS_WRITE, path, buf, out, sizeof(out));
}

long xs_read_uint(const char *path)
{
    char buf[32];
    int n = xs_request(XS_READ, path, NULL, buf, sizeof(buf));
    if (n <= 0)
        return -1;
    long v = 0;
    for (int i = 0; i < n; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        v = v * 10 + (buf[i] - '0');
    }
    return v;
}

void xs_path(char *out, size_t size, const char *dir, const char *key)
{
    size_t n = 0;
    for (; *dir && n < size - 1; dir++)
        out[n++] = *dir;
    if (n < size - 1)
        out[n++] = '/';
    for (; *key && n < size - 1; key++)
        out[n++] = *key;
    out[n] = 0;
}

long xs_read_uint_at(const char *dir, const char *key)
{
    char path[192];
    xs_path(path, sizeof(path), dir, key);
    return xs_read_uint(path);
}

int xs_write_uint_at(const char *dir, const char *key, unsigned long value)
{
    char path[192];
    xs_path(path, sizeof(path), dir, key);
    return xs_write_uint(path, value);
}

long xenbus_wait_state(const char *peer_dir, long want, int or_later)
{
    uint64_t deadline = now_ns() + DOM0_WAIT_NS;
    for (;;) {
        long state = xs_read_uint_at(peer_dir, "state");
        if (state == want || (or_later && state > want))
            return state;
        if (now_ns() >= deadline)
            return state;
        wait_port(si->store_evtchn, port_events[si->store_evtchn], now_ns() + 1000000);   /* 1 ms */
    }
}

grant_entry_v1_t *gnttab_setup(void)
{
    xen_pfn_t frame = 0;
    struct gnttab_setup_table setup = { .dom = DOMID_SELF, .nr_frames = 1 };
    set_xen_guest_handle(setup.frame_list, &frame);
    long rc = hypercall(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (unsigned long)&setup, 1, 0, 0);
    if (rc != 0 || setup.status != GNTST_okay)
        return NULL;
    return (grant_entry_v1_t *)(frame << PAGE_SHIFT);
}

grant_entry_v1_t *frontend_begin(const char *be_dir)
{
    check("backend_initwait", xenbus_wait_state(be_dir, XenbusStateInitWait, 0), XenbusStateInitWait);
    grant_entry_v1_t *table = gnttab_setup();
    check("gnttab_setup_table", table != NULL, 1);
    return table;
}

void gnttab_grant(grant_entry_v1_t *table, grant_ref_t ref, domid_t domid, uint64_t frame, int readonly)
{
    table[ref].domid = domid;
    table[ref].frame = frame;
    mb();                                /* frame and domid before the flags that validate them */
    table[ref].flags = GTF_permit_access | (readonly ? GTF_readonly : 0);
}
