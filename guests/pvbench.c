/* pvbench.c - the PV benchmark guest (`pyvmm bench pv`, pyvmm/pv/bench.py).
 *
 * Each phase is framed by two console_io hypercalls, "@pvbench NAME begin" and
 * "@pvbench NAME end OPS": the VMM stamps its clock and the vCPU's exit counters when
 * they arrive, so a phase's time and exits are measured outside the guest. Options on
 * the command line: `n=` operations per phase (default 512, at most 512: one L1 table),
 * `grants=` source pages granted to domain 0 (default 16, at most 32).
 *
 * Phases:
 *   null_hypercall   n x xen_version(XENVER_version): the null hypercall round trip
 *   cpuid            n x CPUID leaf 0 (the VMM may serve it in C: see bench.py)
 *   cpuid_python     the same, after the VMM turned its C fast path off for this phase
 *   pt_trapped       n page-table updates as n stores into a live L1 table, each followed
 *                    by a load through the entry it wrote (under --mmu shadow the L1 is
 *                    write-protected once used, so every store exits)
 *   pt_mmu_update    the same n updates as ONE mmu_update of n requests on a pinned L1,
 *                    then the same n loads
 *   pt_multicall     the same n updates as one multicall of n update_va_mapping (plus a
 *                    TLB flush entry) on a third pinned L1, then the same n loads
 *   grant_dom0       the guest grants 2 x `grants=` pages to domain 0 (sources filled,
 *                    destinations zero) and sends one event on a port bound by domain 0:
 *                    the VMM's handler maps+unmaps every grant and copies each source
 *                    onto its destination (it times those itself; the phase frames it);
 *                    afterwards every destination holds its source's bytes
 * Each L1 table maps the same 64 data pages, each data page holding its index, and every
 * load checks it reads the index the entry it wrote names (so no update may be lost).
 * The guest prints a summary and powers off (crash if a check failed).
 */
#include "pvcmdline.h"
#include <xen/version.h>

#define MAX_N 512
#define DATA_PAGES 64
#define MAX_GRANTS 32
#define FIRST_REF 8
#define PTE_P 1UL
#define PTE_W 2UL
#define VA_TRAPPED 0x80000000UL          /* 2 GiB: beyond RAM, each window one 2 MiB PD slot */
#define VA_BATCHED 0x80200000UL
#define VA_MULTI 0x80400000UL

static uint64_t l1_trapped[512] __attribute__((aligned(4096)));
static uint64_t l1_batched[512] __attribute__((aligned(4096)));
static uint64_t l1_multi[512] __attribute__((aligned(4096)));
static uint8_t data[DATA_PAGES][4096] __attribute__((aligned(4096)));
static uint8_t granted[2 * MAX_GRANTS][4096] __attribute__((aligned(4096)));
static struct mmu_update reqs[MAX_N];
static multicall_entry_t calls[MAX_N + 1];
static struct mmuext_op flush_op = { .cmd = MMUEXT_TLB_FLUSH_LOCAL };

static void mark(const char *phase, const char *what, long ops)
{
    char buf[96], num[24];
    size_t n = 0;
    const char *parts[] = { "@pvbench ", phase, " ", what };
    for (unsigned i = 0; i < 4; i++)
        for (const char *p = parts[i]; *p && n < sizeof(buf) - 24; p++)
            buf[n++] = *p;
    if (ops >= 0) {
        buf[n++] = ' ';
        utoa((unsigned long)ops, num);
        for (const char *p = num; *p; p++)
            buf[n++] = *p;
    }
    buf[n++] = '\n';
    hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, n, (unsigned long)buf, 0, 0);
}

static uint64_t pte(unsigned i) { return (uint64_t)data[i % DATA_PAGES] | PTE_P | PTE_W; }
static long mmuext(unsigned cmd, unsigned long gfn)
{
    struct mmuext_op op = { .cmd = cmd, .arg1.mfn = gfn };
    return hypercall(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, DOMID_SELF, 0);
}

/* The PD entry that maps `va` in the boot tables (PML4 at CR3, 4-level, 2 MiB pages). */
static uint64_t *pd_entry(uint64_t va)
{
    uint64_t cr3;
    __asm__ __volatile__("mov %%cr3, %0" : "=r"(cr3));
    uint64_t *pml4 = (uint64_t *)(cr3 & ~0xFFFUL);
    uint64_t *pdpt = (uint64_t *)(pml4[(va >> 39) & 511] & 0x000FFFFFFFFFF000UL);
    uint64_t *pd = (uint64_t *)(pdpt[(va >> 30) & 511] & 0x000FFFFFFFFFF000UL);
    return &pd[(va >> 21) & 511];
}

static void link_table(uint64_t va, uint64_t *l1)
{
    *pd_entry(va) = (uint64_t)l1 | PTE_P | PTE_W;
    for (unsigned i = 0; i < 512; i++)
        __asm__ __volatile__("invlpg (%0)" :: "r"(va + i * 4096UL) : "memory");
}

/* Load page i of a window: it must hold the data index its entry names. */
static unsigned touch_all(uint64_t va, unsigned n)
{
    unsigned bad = 0;
    for (unsigned i = 0; i < n; i++)
        bad += *(volatile uint8_t *)(va + i * 4096UL) != i % DATA_PAGES;
    return bad;
}

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    setup_upcalls();
    unsigned n = cmdline_uint("n", MAX_N), ngrants = cmdline_uint("grants", 16);
    if (n > MAX_N)
        n = MAX_N;
    if (ngrants > MAX_GRANTS)
        ngrants = MAX_GRANTS;
    for (unsigned i = 0; i < DATA_PAGES; i++)
        data[i][0] = (uint8_t)i;

    mark("null_hypercall", "begin", -1);
    for (unsigned i = 0; i < n; i++)
        hypercall(__HYPERVISOR_xen_version, XENVER_version, 0, 0, 0, 0);
    mark("null_hypercall", "end", n);

    for (const char *phase = "cpuid"; phase; phase = phase[5] ? NULL : "cpuid_python") {
        mark(phase, "begin", -1);
        for (unsigned i = 0; i < n; i++) {
            uint32_t a = 0, b, c = 0, d;
            __asm__ __volatile__("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
        }
        mark(phase, "end", n);
    }

    /* n trapped stores: the table is live, and each store is followed by a load through it */
    link_table(VA_TRAPPED, l1_trapped);
    l1_trapped[511] = pte(511);
    unsigned bad = *(volatile uint8_t *)(VA_TRAPPED + 511 * 4096UL) != 511 % DATA_PAGES;   /* the L1 in use */
    mark("pt_trapped", "begin", -1);
    for (unsigned i = 0; i < n; i++) {
        l1_trapped[i] = pte(i);
        bad += *(volatile uint8_t *)(VA_TRAPPED + i * 4096UL) != i % DATA_PAGES;
    }
    mark("pt_trapped", "end", n);
    check("pt_trapped_loads", bad, 0);

    /* the same n updates in one mmu_update on a pinned (validated) L1 */
    check("pin_l1_batched", mmuext(MMUEXT_PIN_L1_TABLE, (uint64_t)l1_batched >> PAGE_SHIFT), 0);
    link_table(VA_BATCHED, l1_batched);
    mark("pt_mmu_update", "begin", -1);
    for (unsigned i = 0; i < n; i++) {
        reqs[i].ptr = (uint64_t)&l1_batched[i] | MMU_NORMAL_PT_UPDATE;
        reqs[i].val = pte(i);
    }
    unsigned done = 0;
    long rc = hypercall(__HYPERVISOR_mmu_update, (unsigned long)reqs, n, (unsigned long)&done, DOMID_SELF, 0);
    bad = touch_all(VA_BATCHED, n);
    mark("pt_mmu_update", "end", n);
    check("mmu_update_batch", rc, 0);
    check("mmu_update_done", done, n);
    check("pt_mmu_update_loads", bad, 0);

    /* the same n updates as a multicall of update_va_mapping, then one local TLB flush */
    check("pin_l1_multi", mmuext(MMUEXT_PIN_L1_TABLE, (uint64_t)l1_multi >> PAGE_SHIFT), 0);
    link_table(VA_MULTI, l1_multi);
    mark("pt_multicall", "begin", -1);
    for (unsigned i = 0; i < n; i++) {
        calls[i].op = __HYPERVISOR_update_va_mapping;
        calls[i].args[0] = VA_MULTI + i * 4096UL;
        calls[i].args[1] = pte(i);
        calls[i].args[2] = UVMF_NONE;
    }
    calls[n].op = __HYPERVISOR_mmuext_op;
    calls[n].args[0] = (unsigned long)&flush_op;
    calls[n].args[1] = 1;
    calls[n].args[2] = 0;
    calls[n].args[3] = DOMID_SELF;
    rc = hypercall(__HYPERVISOR_multicall, (unsigned long)calls, n + 1, 0, 0, 0);
    bad = touch_all(VA_MULTI, n);
    mark("pt_multicall", "end", n);
    check("multicall", rc, 0);
    unsigned failed = 0;
    for (unsigned i = 0; i <= n; i++)
        failed += calls[i].result != 0;
    check("multicall_entries_ok", failed, 0);
    check("pt_multicall_loads", bad, 0);

    /* grants to domain 0, then one event: domain 0 maps/unmaps and copies them */
    grant_entry_v1_t *table = gnttab_setup();
    check("grant_table_setup", table != NULL, 1);
    for (unsigned i = 0; table && i < 2 * ngrants; i++) {   /* sources, then destinations */
        memset(granted[i], i < ngrants ? (int)(0x40 + i) : 0, 4096);
        gnttab_grant(table, FIRST_REF + i, 0, (uint64_t)granted[i] >> PAGE_SHIFT, 0);
    }
    struct evtchn_alloc_unbound alloc = { .dom = DOMID_SELF, .remote_dom = 0 };
    check("alloc_unbound_for_dom0", evtchn_op(EVTCHNOP_alloc_unbound, &alloc), 0);
    char what[64] = "grants ", num[24];
    size_t w = slen(what);
    const unsigned long vals[] = { alloc.port, FIRST_REF, ngrants };
    for (unsigned k = 0; k < 3; k++) {
        utoa(vals[k], num);
        for (const char *p = num; *p; p++)
            what[w++] = *p;
        what[w++] = k < 2 ? ' ' : '\0';
    }
    mark("setup", what, -1);                 /* "@pvbench setup grants PORT REF COUNT": COUNT sources */
    mark("grant_dom0", "begin", -1);
    check("send_to_dom0", evtchn_send(alloc.port), 0);
    mark("grant_dom0", "end", ngrants);
    unsigned copied = 0, in_use = 0;
    for (unsigned i = 0; i < ngrants; i++)      /* domain 0 copied source i onto destination i */
        copied += granted[ngrants + i][0] == (uint8_t)(0x40 + i) && granted[ngrants + i][4095] == (uint8_t)(0x40 + i);
    check("dom0_copies_landed", copied, ngrants);
    for (unsigned i = 0; table && i < 2 * ngrants; i++)
        in_use += (table[FIRST_REF + i].flags & (GTF_reading | GTF_writing)) != 0;
    check("grants_unmapped_after_dom0", in_use, 0);
    finish("pvbench");
}
