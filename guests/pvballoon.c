/* pvballoon.c - a PV guest that gives memory back and takes it again (a balloon).
 *
 *   - XENMEM_current_reservation before, after and at the end;
 *   - fills NPAGES pages with a pattern and gives them back with
 *     XENMEM_decrease_reservation; giving them back a second time completes no extent
 *     (the VMM really took them: the domain no longer owns them);
 *   - page-table updates on its own frames (pv_mmu): a released frame can be neither
 *     pinned as a page table (MMUEXT_PIN_L1_TABLE) nor mapped by mmu_update; an own
 *     page pinned as an L1 table takes a validated entry and cannot be ballooned out
 *     while pinned; MMUEXT_UNPIN_TABLE releases it;
 *   - takes NPAGES back with XENMEM_increase_reservation (the lowest free frames: the
 *     same ones) and checks that they read as zeros, not as the old pattern;
 *   - with `touch=1` on the command line it releases one page again and reads it: the
 *     VMM has unmapped it, so the domain is stopped there (and only this domain).
 * It prints a summary and powers off (crash if a check failed).
 */
#include "pvcmdline.h"
#include <xen/memory.h>

#define NPAGES 16
#define PTE_P 1UL
#define PTE_W 2UL

static uint8_t pool[NPAGES][4096] __attribute__((aligned(4096)));
static uint64_t l1_table[512] __attribute__((aligned(4096)));
static uint8_t data_page[4096] __attribute__((aligned(4096)));

static unsigned long gfn_of(const void *p) { return (unsigned long)p >> PAGE_SHIFT; }

static long memory_op(unsigned cmd, void *arg) { return hypercall(__HYPERVISOR_memory_op, cmd, (unsigned long)arg, 0, 0, 0); }

static long reservation(unsigned cmd, xen_pfn_t *frames, unsigned long n)
{
    struct xen_memory_reservation r = { .nr_extents = n, .extent_order = 0, .mem_flags = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, frames);
    return memory_op(cmd, &r);
}

static long current_pages(void)
{
    domid_t self = DOMID_SELF;
    return memory_op(XENMEM_current_reservation, &self);
}

static long mmuext(unsigned cmd, unsigned long gfn)
{
    struct mmuext_op op = { .cmd = cmd, .arg1.mfn = gfn };
    return hypercall(__HYPERVISOR_mmuext_op, (unsigned long)&op, 1, 0, DOMID_SELF, 0);
}

static long pte_update(uint64_t *entry, uint64_t val)
{
    struct mmu_update u = { .ptr = (uint64_t)entry | MMU_NORMAL_PT_UPDATE, .val = val };
    return hypercall(__HYPERVISOR_mmu_update, (unsigned long)&u, 1, 0, DOMID_SELF, 0);
}

void pv_main(start_info_t *start)
{
    xen_pfn_t frames[NPAGES];
    pvlib_init(start);
    long before = current_pages();
    line("pvballoon: pages before ", before, "");
    for (int i = 0; i < NPAGES; i++) {
        memset(pool[i], 0xA5, sizeof(pool[i]));
        frames[i] = gfn_of(pool[i]);
    }
    check("decrease_reservation", reservation(XENMEM_decrease_reservation, frames, NPAGES), NPAGES);
    check("reservation_after_decrease", current_pages(), before - NPAGES);
    check("released_frames_are_gone", reservation(XENMEM_decrease_reservation, frames, NPAGES), 0);

    check("pin_released_frame_refused", mmuext(MMUEXT_PIN_L1_TABLE, gfn_of(pool[0])) < 0, 1);
    check("pin_own_l1_table", mmuext(MMUEXT_PIN_L1_TABLE, gfn_of(l1_table)), 0);
    check("map_released_frame_refused", pte_update(&l1_table[0], gfn_of(pool[0]) << PAGE_SHIFT | PTE_P | PTE_W) < 0, 1);
    check("map_own_frame", pte_update(&l1_table[0], gfn_of(data_page) << PAGE_SHIFT | PTE_P), 0);
    check("entry_written", l1_table[0] == (gfn_of(data_page) << PAGE_SHIFT | PTE_P), 1);
    xen_pfn_t table_frame = gfn_of(l1_table);
    check("pinned_table_not_released", reservation(XENMEM_decrease_reservation, &table_frame, 1), 0);
    check("clear_entry", pte_update(&l1_table[0], 0), 0);
    check("unpin_table", mmuext(MMUEXT_UNPIN_TABLE, gfn_of(l1_table)), 0);

    for (int i = 0; i < NPAGES; i++)
        frames[i] = 0;
    check("increase_reservation", reservation(XENMEM_increase_reservation, frames, NPAGES), NPAGES);
    int same = 1, zero = 1;
    for (int i = 0; i < NPAGES; i++) {
        same &= frames[i] == gfn_of(pool[i]);
        for (int j = 0; j < 4096; j++)
            zero &= pool[i][j] == 0;
    }
    check("got_the_same_frames", same, 1);
    check("frames_come_back_zeroed", zero, 1);
    check("reservation_restored", current_pages(), before);
    puts_("pvballoon: gave back ");
    putdec(NPAGES);
    puts_(" pages and took them again; ");
    putdec(passed);
    puts_("/");
    putdec(checks);
    puts_(" checks passed\n");
    cons_flush();
    if (cmdline_uint("touch", 0)) {
        frames[0] = gfn_of(pool[0]);
        reservation(XENMEM_decrease_reservation, frames, 1);
        line("pvballoon: reading a released frame", 0, NULL);
        line("pvballoon: read ", *(volatile uint8_t *)pool[0], " (the VMM should have stopped this domain)");
    }
    shutdown(passed == checks ? SHUTDOWN_poweroff : SHUTDOWN_crash);
}
