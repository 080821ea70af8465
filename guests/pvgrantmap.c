/* pvgrantmap.c - two PV guests sharing pages through grant mappings (guest to guest).
 *
 * Run two copies in one host: `role=1 peer=2` (the granter, domain 1) and
 * `role=2 peer=1` (the mapper, domain 2).
 *
 * The granter fills two pages, grants the first to its peer writable (ref 8) and the
 * second read-only (ref 9), and waits for the mapper's reply in the first page. While
 * the peer has them mapped, GTF_reading/GTF_writing are set and revoking the grant
 * (clearing the flags the way gnttab_end_foreign_access does: only if neither is set)
 * fails; it then acknowledges in the page, and once the peer has unmapped, revoking
 * succeeds. The read-only page must be
 * unchanged at the end.
 *
 * The mapper maps ref 8 with GNTMAP_host_map at a page of its own RAM (retrying until
 * the grant exists), reads the granter's text there, prints it through console_io
 * from the mapped page (root mode reads what the guest sees), writes its reply and
 * keeps the mapping until the granter acknowledges; maps
 * ref 9 read-only (a writable mapping of it is refused), reads it, and writes to it:
 * the VMM answers #GP(0) and the page stays unchanged. After unmapping, its own page
 * shows again. With `expect_refused=1` (both guests under --mmu shadow) the map must
 * fail with GNTST_general_error, and the mapper replies with GNTTABOP_copy instead.
 */
#include "pvcmdline.h"

#define REF_RW 8
#define REF_RO 9
#define REPLY_OFF 2048
#define ACK_OFF 3072
#define WAIT_NS 5000000000ULL

static const char greeting[] = "hello from the granter";
static const char ro_text[] = "read-only page of the granter";
static const char reply[] = "the mapper was here";
static const char own_text[] = "the mapper's own page";

static uint8_t pages[2][4096] __attribute__((aligned(4096)));
volatile uint64_t gp_count;

/* #GP handler: count it and resume after the faulting store (ro_store below). */
void gp_entry(void);
__asm__(".text\n.globl gp_entry\ngp_entry:\n"
        "  addq $8, %rsp\n"                   /* the error code */
        "  lock incq gp_count(%rip)\n"
        "  leaq ro_store_done(%rip), %rax\n"  /* rax is clobbered by the faulting asm */
        "  movq %rax, (%rsp)\n"
        "  iretq\n");

static void __attribute__((noinline)) ro_store(volatile uint8_t *p)
{
    __asm__ __volatile__("movb $0x58, (%0)\n.globl ro_store_done\nro_store_done:"
                         :: "r"(p) : "rax", "memory");
}

static void install_gp_handler(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr;
    uint16_t cs;
    __asm__ __volatile__("sidt %0" : "=m"(idtr));
    __asm__ __volatile__("mov %%cs, %0" : "=r"(cs));
    uint64_t *idt = (uint64_t *)idtr.base, h = (uint64_t)gp_entry;
    idt[13 * 2] = (h & 0xFFFF) | (uint64_t)cs << 16 | 0x8EULL << 40 | ((h >> 16) & 0xFFFF) << 48;
    idt[13 * 2 + 1] = h >> 32;
}

static long gnttab_op(unsigned cmd, void *op) { return hypercall(__HYPERVISOR_grant_table_op, cmd, (unsigned long)op, 1, 0, 0); }
static void yield(void) { sched_op(SCHEDOP_yield, NULL); }

/* gnttab_end_foreign_access's test: clear the flags unless the peer still uses the entry. */
static int revoke(grant_entry_v1_t *e)
{
    uint16_t flags = e->flags;
    if (flags & (GTF_reading | GTF_writing))
        return 0;
    return __atomic_compare_exchange_n(&e->flags, &flags, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static void granter(domid_t peer)
{
    grant_entry_v1_t *t = gnttab_setup();
    check("grant_table_setup", t != NULL, 1);
    memcpy(pages[0], greeting, sizeof(greeting));
    memcpy(pages[1], ro_text, sizeof(ro_text));
    gnttab_grant(t, REF_RW, peer, (uint64_t)pages[0] >> PAGE_SHIFT, 0);
    gnttab_grant(t, REF_RO, peer, (uint64_t)pages[1] >> PAGE_SHIFT, 1);
    uint64_t deadline = now_ns() + WAIT_NS;
    while (memcmp(pages[0] + REPLY_OFF, reply, sizeof(reply)) && now_ns() < deadline)
        yield();
    check("reply_written_by_the_peer", memcmp(pages[0] + REPLY_OFF, reply, sizeof(reply)), 0);
    if (!cmdline_uint("expect_refused", 0)) {    /* the peer replied through a mapping */
        check("entry_in_use_while_mapped", (t[REF_RW].flags & (GTF_reading | GTF_writing)) == (GTF_reading | GTF_writing), 1);
        check("revoke_refused_while_mapped", revoke(&t[REF_RW]), 0);
    }
    pages[0][ACK_OFF] = 1;                   /* the mapper unmaps once it sees this */
    while ((t[REF_RW].flags | t[REF_RO].flags) & (GTF_reading | GTF_writing) && now_ns() < deadline)
        yield();
    check("revoke_rw_after_unmap", revoke(&t[REF_RW]), 1);
    check("revoke_ro_after_unmap", revoke(&t[REF_RO]), 1);
    check("read_only_page_unchanged", memcmp(pages[1], ro_text, sizeof(ro_text)), 0);
    finish("pvgrantmap granter");
}

static int16_t map(domid_t peer, grant_ref_t ref, void *at, uint32_t flags, grant_handle_t *handle)
{
    struct gnttab_map_grant_ref op = { .host_addr = (uint64_t)at, .flags = flags, .ref = ref, .dom = peer };
    gnttab_op(GNTTABOP_map_grant_ref, &op);
    *handle = op.handle;
    return op.status;
}

static int16_t unmap(void *at, grant_handle_t handle)
{
    struct gnttab_unmap_grant_ref op = { .host_addr = (uint64_t)at, .handle = handle };
    gnttab_op(GNTTABOP_unmap_grant_ref, &op);
    return op.status;
}

static void mapper(domid_t peer)
{
    grant_handle_t rw, ro;
    memcpy(pages[0], own_text, sizeof(own_text));
    memcpy(pages[1], own_text, sizeof(own_text));
    int16_t st = GNTST_general_error;
    uint64_t deadline = now_ns() + WAIT_NS;
    if (cmdline_uint("expect_refused", 0)) {
        while (now_ns() < deadline) {        /* the grant exists once the granter has run */
            struct gnttab_copy c = { .source.u.ref = REF_RW, .source.domid = peer,
                                     .dest.u.gmfn = (uint64_t)pages[1] >> PAGE_SHIFT, .dest.domid = DOMID_SELF,
                                     .len = 8, .flags = GNTCOPY_source_gref };
            gnttab_op(GNTTABOP_copy, &c);
            if (c.status == GNTST_okay)
                break;
            yield();
        }
        check("map_refused_without_ept", map(peer, REF_RW, pages[0], GNTMAP_host_map, &rw), GNTST_general_error);
        check("own_page_unchanged", memcmp(pages[0], own_text, sizeof(own_text)), 0);
        memcpy(pages[0] + REPLY_OFF, reply, sizeof(reply));
        struct gnttab_copy c = { .source.u.gmfn = (uint64_t)pages[0] >> PAGE_SHIFT, .source.domid = DOMID_SELF,
                                 .source.offset = REPLY_OFF, .dest.u.ref = REF_RW, .dest.domid = peer,
                                 .dest.offset = REPLY_OFF, .len = sizeof(reply), .flags = GNTCOPY_dest_gref };
        gnttab_op(GNTTABOP_copy, &c);
        check("reply_by_copy_instead", c.status, GNTST_okay);
        finish("pvgrantmap mapper");
    }
    while ((st = map(peer, REF_RW, pages[0], GNTMAP_host_map, &rw)) != GNTST_okay && now_ns() < deadline)
        yield();
    check("map_writable_grant", st, GNTST_okay);
    check("granter_text_visible", memcmp(pages[0], greeting, sizeof(greeting)), 0);
    puts_("pvgrantmap: the mapped page says: ");
    cons_flush();
    hypercall(__HYPERVISOR_console_io, CONSOLEIO_write, sizeof(greeting) - 1, (unsigned long)pages[0], 0, 0);
    puts_("\n");
    check("second_map_at_same_frame_refused", map(peer, REF_RO, pages[0], GNTMAP_host_map | GNTMAP_readonly, &ro),
          GNTST_bad_virt_addr);
    memcpy(pages[0] + REPLY_OFF, reply, sizeof(reply));
    while (!((volatile uint8_t *)pages[0])[ACK_OFF] && now_ns() < deadline)
        yield();
    check("granter_saw_the_mapping_in_use", pages[0][ACK_OFF], 1);

    check("writable_map_of_readonly_grant_refused", map(peer, REF_RO, pages[1], GNTMAP_host_map, &ro),
          GNTST_general_error);
    check("map_readonly_grant", map(peer, REF_RO, pages[1], GNTMAP_host_map | GNTMAP_readonly, &ro), GNTST_okay);
    check("readonly_text_visible", memcmp(pages[1], ro_text, sizeof(ro_text)), 0);
    install_gp_handler();
    ro_store(pages[1]);
    check("write_to_readonly_mapping_gets_gp", (long)gp_count, 1);
    check("readonly_page_unchanged", pages[1][0], ro_text[0]);

    check("unmap_writable", unmap(pages[0], rw), GNTST_okay);
    check("unmap_readonly", unmap(pages[1], ro), GNTST_okay);
    check("unmap_twice_refused", unmap(pages[0], rw), GNTST_bad_handle);
    check("own_page_back", memcmp(pages[0], own_text, sizeof(own_text)), 0);
    check("own_readonly_slot_back", memcmp(pages[1], own_text, sizeof(own_text)), 0);
    finish("pvgrantmap mapper");
}

void pv_main(start_info_t *start)
{
    pvlib_init(start);
    setup_upcalls();                         /* loads the IDT the #GP handler goes into */
    domid_t peer = (domid_t)cmdline_uint("peer", 0);
    if (cmdline_uint("role", 0) == 1)
        granter(peer);
    else
        mapper(peer);
}
