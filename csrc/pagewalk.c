/* pyvmm guest page walk, IA-32e paging (see pagewalk.h). */
#include <string.h>
#include "pagewalk.h"

#define P 1ULL
#define RW 2ULL
#define US 4ULL
#define PS 0x80ULL
#define NX (1ULL << 63)
#define ADDR_4K 0x000FFFFFFFFFF000ULL
#define RSVD_HI (((1ULL << 52) - 1) & ~((1ULL << PW_MAXPHYADDR) - 1))

uint64_t pw_translate64(uint64_t ram, uint64_t ram_size, uint64_t cr3, uint64_t vaddr, int flags)
{
    const uint8_t *base = (const uint8_t *)(uintptr_t)ram;
    uint64_t table = cr3 & ADDR_4K;
    int allow_w = 1, allow_u = 1, allow_x = 1;
    for (int level = 4; level >= 1; level--) {
        unsigned shift = 12 + 9 * (level - 1);
        uint64_t at = table + ((vaddr >> shift) & 0x1FF) * 8, entry;
        if (at > ram_size - 8 || ram_size < 8)
            return PW_FALLBACK;                  /* a table outside RAM: #PF (RSVD) */
        memcpy(&entry, base + at, 8);            /* x86 only: little-endian in place */
        if (!(entry & P))
            return PW_FALLBACK;
        if (entry & RSVD_HI || (entry & NX && !(flags & PW_NXE)))
            return PW_FALLBACK;
        if (level == 4 && entry & PS)
            return PW_FALLBACK;
        if (entry & PS && ((level == 3 && entry & 0x3FFFE000ULL) || (level == 2 && entry & 0x1FE000ULL)))
            return PW_FALLBACK;
        allow_w &= !!(entry & RW);
        allow_u &= !!(entry & US);
        if (entry & NX)
            allow_x = 0;
        int large = (entry & PS) && (level == 2 || level == 3);
        if (level == 1 || large) {
            if ((flags & PW_USER && !allow_u) ||
                (flags & PW_WRITE && !allow_w && (flags & (PW_USER | PW_WP))) ||
                (flags & PW_FETCH && !allow_x))
                return PW_FALLBACK;
            uint64_t low = (1ULL << shift) - 1;
            return (entry & ADDR_4K & ~low) | (vaddr & low);
        }
        table = entry & ADDR_4K;
    }
    return PW_FALLBACK;                          /* unreachable */
}
