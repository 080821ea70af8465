/* See dirtyscan.h. Compiled by cffi into pyvmm._dirtyscan (csrc/dirtyscan_build.py). */
#include <string.h>
#include "dirtyscan.h"

__extension__ typedef unsigned __int128 u128;

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);      /* unaligned-safe; one mov on x86-64 */
    return v;              /* x86 is little-endian: limb order as the hash defines */
}

uint64_t ds_bitmap_count(const uint8_t *bitmap, size_t nbytes)
{
    uint64_t n = 0;
    size_t i = 0;
    for (; i + 8 <= nbytes; i += 8)
        n += (uint64_t)__builtin_popcountll(load64(bitmap + i));
    for (; i < nbytes; i++)
        n += (uint64_t)__builtin_popcount(bitmap[i]);
    return n;
}

/* Report the set bits of one unit (a byte or an aligned word) whose bit 0 is page
 * `base`. Returns 0 when cap was reached (the unreported bits are put back). */
#define SCAN_UNIT(type, unit, base)                                                \
    do {                                                                           \
        type w_ = clear ? __atomic_exchange_n((unit), (type)0, __ATOMIC_ACQ_REL)   \
                        : *(volatile type *)(unit);                                \
        while (w_) {                                                               \
            if (n == cap) {                                                        \
                if (clear)                                                         \
                    __atomic_fetch_or((unit), w_, __ATOMIC_ACQ_REL);               \
                return n;                                                          \
            }                                                                      \
            out[n++] = (base) + (uint64_t)__builtin_ctzll((uint64_t)w_);           \
            w_ &= (type)(w_ - 1);                                                  \
        }                                                                          \
    } while (0)

size_t ds_bitmap_pages(uint8_t *bitmap, size_t nbytes, uint64_t *out, size_t cap, int clear)
{
    size_t n = 0, i = 0;
    /* bytes up to the first 8-byte-aligned address, aligned words, then the tail */
    while (i < nbytes && ((uintptr_t)(bitmap + i) & 7)) {
        if (bitmap[i])
            SCAN_UNIT(uint8_t, bitmap + i, (uint64_t)i * 8);
        i++;
    }
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t *word = (uint64_t *)(void *)(bitmap + i);
        if (*(volatile uint64_t *)word)
            SCAN_UNIT(uint64_t, word, (uint64_t)i * 8);
    }
    for (; i < nbytes; i++) {
        if (bitmap[i])
            SCAN_UNIT(uint8_t, bitmap + i, (uint64_t)i * 8);
    }
    return n;
}

uint64_t ds_compare_pages(const uint8_t *ram, uint8_t *last, uint64_t npages,
                          uint64_t page_size, uint8_t *changed, int update)
{
    uint64_t n = 0;
    memset(changed, 0, (size_t)((npages + 7) / 8));
    for (uint64_t p = 0; p < npages; p++) {
        const uint8_t *a = ram + p * page_size;
        uint8_t *b = last + p * page_size;
        if (memcmp(a, b, (size_t)page_size) != 0) {
            changed[p >> 3] |= (uint8_t)(1u << (p & 7));
            n++;
            if (update)
                memcpy(b, a, (size_t)page_size);
        }
    }
    return n;
}

/* x mod (2^64 - 59) up to one extra multiple of the prime: 2^64 = 59 (mod p).
 * For x < 2^90 two folds give a value below 2^64: after the first, x < 2^64 + 2^32,
 * and a second fold of such an x cannot carry out of 64 bits. */
static inline uint64_t fold(u128 x)
{
    x = (x >> 64) * DS_HASH_FOLD + (uint64_t)x;
    x = (x >> 64) * DS_HASH_FOLD + (uint64_t)x;
    return (uint64_t)x;
}

/* Any x < 2^128 fully reduced: the first fold leaves x < 2^71, then as above. */
static inline uint64_t mod_prime(u128 x)
{
    uint64_t r = fold((x >> 64) * DS_HASH_FOLD + (uint64_t)x);
    return r >= DS_HASH_PRIME ? r - DS_HASH_PRIME : r;
}

/* The hash as a weighted sum: limb i of a block of HASH_BLOCK limbs has the weight
 * 2^(64 i) mod p = 59^i mod p, so a block is sum(limb_i * weight[i]) with one
 * independent multiply a limb (no multiply chain, unlike Horner's rule), summed
 * without reduction and reduced once. Blocks (pages above 4 KiB) are combined by
 * Horner's rule with 2^(64 HASH_BLOCK) mod p. The value is the same number. */
#define HASH_BLOCK 512                   /* limbs: a 4 KiB page is one block */
static uint64_t hash_weight[HASH_BLOCK]; /* 59^i mod p */
static uint64_t hash_block_weight;       /* 59^HASH_BLOCK mod p */

__attribute__((constructor)) static void hash_weights_init(void)
{
    uint64_t w = 1;
    for (int i = 0; i < HASH_BLOCK; i++) {
        hash_weight[i] = w;
        w = mod_prime((u128)w * DS_HASH_FOLD);
    }
    hash_block_weight = w;
}

/* sum(limb_i * hash_weight[i]) for the nlimbs (<= HASH_BLOCK) limbs at q, reduced
 * mod p. The products (each < 2^128) go into 128-bit sums, their carries out counted
 * in top: a sum is top 2^128 + acc, and 2^128 = 59^2 (mod p). Four accumulators take
 * the limbs in turn, so four multiply-add chains run side by side (one chain waits on
 * its own add-with-carry each limb); all stay in registers. */
static inline uint64_t hash_sum(u128 acc, uint64_t top)
{
    return mod_prime((u128)mod_prime(acc) + (u128)top * (DS_HASH_FOLD * DS_HASH_FOLD));
}

static inline uint64_t hash_block(const uint8_t *q, uint64_t nlimbs)
{
    u128 acc[4] = {0, 0, 0, 0};
    uint64_t top[4] = {0, 0, 0, 0};
    uint64_t body = nlimbs & ~(uint64_t)3;
    for (uint64_t i = 0; i < body; i += 4) {
        for (int k = 0; k < 4; k++) {
            u128 p = (u128)load64(q + 8 * (i + k)) * hash_weight[i + k];
            acc[k] += p;
            top[k] += acc[k] < p;
        }
    }
    for (uint64_t i = body; i < nlimbs; i++) {
        u128 p = (u128)load64(q + 8 * i) * hash_weight[i];
        acc[0] += p;
        top[0] += acc[0] < p;
    }
    uint64_t h = 0;
    for (int k = 0; k < 4; k++)
        h = mod_prime((u128)h + hash_sum(acc[k], top[k]));
    return h;
}

uint64_t ds_page_hash(const uint8_t *page, uint64_t page_size)
{
    uint64_t nlimbs = page_size / 8;
    if (nlimbs == 0)
        return 0;
    uint64_t top = nlimbs % HASH_BLOCK ? nlimbs % HASH_BLOCK : HASH_BLOCK;
    uint64_t b = nlimbs - top;                       /* first limb of the top block */
    uint64_t h = hash_block(page + 8 * b, top);
    while (b) {                                      /* Horner over the lower blocks */
        b -= HASH_BLOCK;
        h = mod_prime((u128)h * hash_block_weight + hash_block(page + 8 * b, HASH_BLOCK));
    }
    return h;
}

void ds_hash_pages(const uint8_t *ram, uint64_t npages, uint64_t page_size, uint64_t *hashes)
{
    for (uint64_t p = 0; p < npages; p++)
        hashes[p] = ds_page_hash(ram + p * page_size, page_size);
}

uint64_t ds_compare_hashes(const uint8_t *ram, uint64_t *hashes, uint64_t npages,
                           uint64_t page_size, uint8_t *changed, int update)
{
    uint64_t n = 0;
    memset(changed, 0, (size_t)((npages + 7) / 8));
    for (uint64_t p = 0; p < npages; p++) {
        uint64_t h = ds_page_hash(ram + p * page_size, page_size);
        if (h != hashes[p]) {
            changed[p >> 3] |= (uint8_t)(1u << (p & 7));
            n++;
            if (update)
                hashes[p] = h;
        }
    }
    return n;
}

/* 1 if the page (page_size % 32 == 0) holds only zero bytes. Four words a step,
 * stopping at the first step that finds a non-zero byte. */
static inline int page_is_zero(const uint8_t *page, uint64_t page_size)
{
    for (uint64_t i = 0; i < page_size; i += 32) {
        if (load64(page + i) | load64(page + i + 8) | load64(page + i + 16) | load64(page + i + 24))
            return 0;
    }
    return 1;
}

uint64_t ds_nonzero_pages(const uint8_t *ram, uint64_t npages, uint64_t page_size, uint8_t *nonzero)
{
    uint64_t n = 0;
    memset(nonzero, 0, (size_t)((npages + 7) / 8));
    for (uint64_t p = 0; p < npages; p++) {
        if (!page_is_zero(ram + p * page_size, page_size)) {
            nonzero[p >> 3] |= (uint8_t)(1u << (p & 7));
            n++;
        }
    }
    return n;
}

uint64_t ds_gather_pages(const uint8_t *ram, uint64_t npages, uint64_t page_size,
                         const uint64_t *pfns, uint64_t n, uint8_t *enc, uint32_t *len,
                         uint8_t *data)
{
    uint64_t out = 0;
    for (uint64_t i = 0; i < n; i++)
        if (pfns[i] >= npages)
            return UINT64_MAX;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *page = ram + pfns[i] * page_size;
        if (page_is_zero(page, page_size)) {
            enc[i] = DS_PAGE_ZERO;
            len[i] = 0;
        } else {
            enc[i] = DS_PAGE_RAW;
            len[i] = (uint32_t)page_size;
            memcpy(data + out, page, (size_t)page_size);
            out += page_size;
        }
    }
    return out;
}

static inline int put_uleb(uint8_t *out, uint64_t *pos, uint64_t limit, uint64_t v)
{
    do {
        if (*pos >= limit)
            return -1;
        uint8_t b = v & 0x7f;
        v >>= 7;
        out[(*pos)++] = v ? (uint8_t)(b | 0x80) : b;
    } while (v);
    return 0;
}

/* First index >= i where old and new differ (len if none). */
static inline uint64_t skip_same(const uint8_t *old, const uint8_t *new_, uint64_t i, uint64_t len)
{
    while (i + 8 <= len && load64(old + i) == load64(new_ + i))
        i += 8;
    while (i < len && old[i] == new_[i])
        i++;
    return i;
}

int ds_scatter_pages(uint8_t *ram, uint64_t npages, uint64_t page_size,
                     const uint64_t *pfns, const uint8_t *enc, const uint32_t *len, uint64_t n,
                     const uint8_t *data, uint64_t dlen, uint8_t *received, uint64_t *bad)
{
    uint64_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t pfn = pfns[i], d = len[i];
        int err = 0;
        *bad = i;
        if (pfn >= npages)
            return DS_ERR_PFN;
        if (d > dlen - off)
            return DS_ERR_DATA;
        uint8_t *page = ram + pfn * page_size;
        switch (enc[i]) {
        case DS_PAGE_RAW:
            if (d != page_size)
                return DS_ERR_ENCODING;
            memcpy(page, data + off, (size_t)page_size);
            break;
        case DS_PAGE_ZERO:
            if (d != 0)
                return DS_ERR_ENCODING;
            if (received[pfn])
                memset(page, 0, (size_t)page_size);
            break;
        case DS_PAGE_XBZRLE:
            if (d > page_size)
                return DS_ERR_ENCODING;
            if (!received[pfn])
                return DS_ERR_NO_BASE;
            if ((err = ds_xbzrle_decode(data + off, d, page, page_size)))
                return err;
            break;
        default:
            return DS_ERR_ENCODING;
        }
        received[pfn] = 1;
        off += d;
    }
    return 0;
}

int64_t ds_xbzrle_encode(const uint8_t *old, const uint8_t *new_, uint64_t len,
                         uint8_t *out, uint64_t limit)
{
    uint64_t pos = 0, i = 0;
    while (i < len) {
        uint64_t start = i;
        i = skip_same(old, new_, i, len);
        if (i == len)
            break;                       /* trailing unchanged bytes are implied */
        uint64_t u = i - start, j = i;
        for (;;) {                       /* the changed run, with short gaps inside */
            while (i < len && old[i] != new_[i])
                i++;
            if (i == len)
                break;
            uint64_t k = skip_same(old, new_, i, len);
            if (k == len || k - i >= DS_XBZRLE_MIN_SKIP)
                break;
            i = k;
        }
        uint64_t c = i - j;
        if (put_uleb(out, &pos, limit, u) || put_uleb(out, &pos, limit, c) || c > limit - pos)
            return -1;
        memcpy(out + pos, new_ + j, (size_t)c);
        pos += c;
    }
    return (int64_t)pos;
}

static inline int get_uleb(const uint8_t *d, uint64_t dlen, uint64_t *pos, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 35; shift += 7) {
        if (*pos >= dlen)
            return DS_ERR_TRUNCATED;
        uint8_t b = d[(*pos)++];
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return DS_ERR_BAD_LENGTH;
}

int ds_xbzrle_decode(const uint8_t *delta, uint64_t dlen, uint8_t *page, uint64_t len)
{
    for (int apply = 0; apply < 2; apply++) {   /* pass 0 checks, pass 1 writes */
        uint64_t pos = 0, off = 0, u, c;
        int err;
        while (pos < dlen) {
            if ((err = get_uleb(delta, dlen, &pos, &u)) || (err = get_uleb(delta, dlen, &pos, &c)))
                return err;
            if (c == 0 || (u == 0 && off != 0))   /* off > 0 after the first pair */
                return DS_ERR_EMPTY_RUN;
            if (u > len - off || c > len - off - u)
                return DS_ERR_OVERRUN;
            if (c > dlen - pos)
                return DS_ERR_TRUNCATED;
            off += u;
            if (apply)
                memcpy(page + off, delta + pos, (size_t)c);
            pos += c;
            off += c;
        }
    }
    return 0;
}
