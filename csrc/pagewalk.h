/* pyvmm guest page walk, IA-32e (4-level) paging: the common case of
 * pyvmm/mm/pagewalk.py's translate() in C.
 *
 * Root mode reads every hypercall argument through a guest-linear pointer; with EPT
 * its TLB is dropped at every exit (CR3 loads and INVLPG do not exit), so each such
 * hypercall walks the guest's tables again. The Python walk costs ~10 us; this one
 * well under one.
 *
 * Only a walk that succeeds is answered here. A walk that faults, or whose tables
 * leave guest RAM, returns PW_FALLBACK and the Python walk redoes it and raises the
 * precise #PF (error code, CR2). The checks are Python's, byte for byte (SDM Vol. 3A,
 * 4.5 and 4.6): present bit at every level; reserved bits 51:PW_MAXPHYADDR; NX set
 * without EFER.NXE; PS in a PML4E; bits 29:13 of a 1-GiB PDPTE and bits 20:13 of a
 * 2-MiB PDE; then, at the leaf, user access to a supervisor page, a write to a
 * read-only page by a user or with CR0.WP, and a fetch from an NX page.
 * pyvmm/mm/pagewalk.py is its twin; the tests compare both on random tables.
 */
#include <stdint.h>

#define PW_FALLBACK 0xFFFFFFFFFFFFFFFFULL   /* not an address: a walk gives at most 2^52 - 1 */
#define PW_MAXPHYADDR 40   /* the emulated CPU's physical-address width (pagewalk.MAXPHYADDR) */

/* Guest-linear ``vaddr`` -> its guest-physical address (or PW_FALLBACK), with the
 * guest's RAM at host address ``ram`` (``ram_size`` bytes at guest-physical 0) and PML4
 * at ``cr3``. ``flags`` is PW_WRITE | PW_USER | PW_FETCH | PW_WP (CR0.WP) | PW_NXE
 * (EFER.NXE). The answer is the return value, not an out-parameter: cffi releases the
 * GIL around the call, and VMs run on several threads of one process. */
#define PW_WRITE 1
#define PW_USER 2
#define PW_FETCH 4
#define PW_WP 8
#define PW_NXE 16
uint64_t pw_translate64(uint64_t ram, uint64_t ram_size, uint64_t cr3, uint64_t vaddr, int flags);
