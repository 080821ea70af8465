/* pyvmm dirty-page scan: the hot loop of live migration, over guest RAM in place.
 *
 * Guest RAM is the host buffer the CPU engine maps zero-copy (pyvmm/mm/memory.py);
 * Python hands its address in through cffi's from_buffer, so nothing is copied.
 * pyvmm/migrate/dirty_scan.py holds the pure-Python twin of every function here;
 * both give the same answers, and the tests compare them on the same inputs.
 *
 * Bitmaps are LSB-first bytes (bit k of byte j is page 8*j + k), which is the
 * layout of KVM_GET_DIRTY_LOG's array of little-endian unsigned longs on x86.
 *
 * Page hash: a page read as one little-endian integer (limb i = bytes 8i..8i+7,
 * weight 2^(64 i)) taken modulo the prime DS_HASH_PRIME = 2^64 - 59. Python gets
 * the same number as int.from_bytes(page, "little") % DS_HASH_PRIME.
 *
 * XBZRLE delta of a page (same bytes from C and Python):
 *   repeated { uleb128 u; uleb128 c; c bytes of the new page }
 * u unchanged bytes are skipped, then c changed bytes are copied. c >= 1; u may be
 * 0 only in the first pair. An unchanged run shorter than DS_XBZRLE_MIN_SKIP that
 * lies between changed bytes is carried as literal bytes in c (cheaper than a new
 * pair). Unchanged bytes at the end of the page are not encoded. An unchanged page
 * encodes as zero bytes.
 */
#include <stdint.h>
#include <stddef.h>

#define DS_HASH_PRIME 18446744073709551557ULL   /* 2^64 - 59, the largest prime below 2^64 */
#define DS_HASH_FOLD 59ULL                      /* 2^64 mod DS_HASH_PRIME */
#define DS_XBZRLE_MIN_SKIP 3

/* Page encodings of the migration stream's MEMORY record (docs/migration-stream.md) */
#define DS_PAGE_RAW 0
#define DS_PAGE_ZERO 1
#define DS_PAGE_XBZRLE 2

/* XBZRLE decode errors (negative return values of ds_xbzrle_decode) */
#define DS_ERR_TRUNCATED (-1)   /* a length or the literal bytes run past the delta */
#define DS_ERR_OVERRUN (-2)     /* the runs add up to more than the page */
#define DS_ERR_EMPTY_RUN (-3)   /* c == 0, or u == 0 after the first pair */
#define DS_ERR_BAD_LENGTH (-4)  /* a uleb128 longer than 5 bytes */

/* Page scatter errors (ds_scatter_pages), besides the XBZRLE ones above */
#define DS_ERR_PFN (-5)         /* a page number is outside RAM */
#define DS_ERR_NO_BASE (-6)     /* an XBZRLE page that was never received in full */
#define DS_ERR_ENCODING (-7)    /* an unknown encoding, or a length wrong for its encoding */
#define DS_ERR_DATA (-8)        /* the lengths run past the end of the data */

/* Set bits in bitmap[0..nbytes): how many. */
uint64_t ds_bitmap_count(const uint8_t *bitmap, size_t nbytes);

/* Write the numbers of the set bits (ascending) into out[0..cap); returns how many
 * were written. With clear != 0 every bit reported is cleared, atomically per word,
 * so a bit set concurrently is never lost (at worst reported again next time).
 * When cap is reached the remaining bits are left as they are. */
size_t ds_bitmap_pages(uint8_t *bitmap, size_t nbytes, uint64_t *out, size_t cap, int clear);

/* Compare npages pages of ram with last; set bit p of changed (zeroed first) for
 * each page that differs; with update != 0 copy those pages into last.
 * Returns the number of changed pages. */
uint64_t ds_compare_pages(const uint8_t *ram, uint8_t *last, uint64_t npages,
                          uint64_t page_size, uint8_t *changed, int update);

/* Hash of one page (page_size % 32 == 0). */
uint64_t ds_page_hash(const uint8_t *page, uint64_t page_size);

/* hashes[p] = hash of page p, for npages pages. */
void ds_hash_pages(const uint8_t *ram, uint64_t npages, uint64_t page_size, uint64_t *hashes);

/* Like ds_compare_pages, against per-page hashes; update != 0 stores new hashes. */
uint64_t ds_compare_hashes(const uint8_t *ram, uint64_t *hashes, uint64_t npages,
                           uint64_t page_size, uint8_t *changed, int update);

/* The zero-page check: set bit p of nonzero (zeroed first) for each of the npages
 * pages of ram that holds a byte other than 0. Returns the number of such pages. */
uint64_t ds_nonzero_pages(const uint8_t *ram, uint64_t npages, uint64_t page_size, uint8_t *nonzero);

/* Gather pages pfns[0..n) of ram (npages pages) for a MEMORY record: an all-zero page
 * gets enc[i] = DS_PAGE_ZERO and len[i] = 0; any other enc[i] = DS_PAGE_RAW,
 * len[i] = page_size and its bytes are appended to data (room for n pages).
 * Returns the bytes appended, or UINT64_MAX (nothing written) if a pfn is >= npages. */
uint64_t ds_gather_pages(const uint8_t *ram, uint64_t npages, uint64_t page_size,
                         const uint64_t *pfns, uint64_t n, uint8_t *enc, uint32_t *len,
                         uint8_t *data);

/* The receiver's side of ds_gather_pages: put entries 0..n) of a MEMORY record
 * (pfns, enc, len, and their data[0..dlen) one after another) into ram (npages
 * pages), in order. RAW copies the page; ZERO zeroes it, except a page with
 * received[pfn] == 0 (RAM the receiver starts with is zero there); XBZRLE applies
 * the delta to the page in place and needs received[pfn] != 0. received[pfn] is set
 * to 1 for each entry applied. Returns 0, or a DS_ERR_* code with *bad = the index
 * of the refused entry: the entries before it are applied, it and the rest are not. */
int ds_scatter_pages(uint8_t *ram, uint64_t npages, uint64_t page_size,
                     const uint64_t *pfns, const uint8_t *enc, const uint32_t *len, uint64_t n,
                     const uint8_t *data, uint64_t dlen, uint8_t *received, uint64_t *bad);

/* Encode new against old (len bytes each) into out[0..limit). Returns the delta
 * length, or -1 if it would be longer than limit (send the page raw instead). */
int64_t ds_xbzrle_encode(const uint8_t *old, const uint8_t *new_, uint64_t len,
                         uint8_t *out, uint64_t limit);

/* Apply delta[0..dlen) to page[0..len) in place. The delta is checked whole before
 * the page is touched: on error (DS_ERR_*) the page is unchanged. Returns 0. */
int ds_xbzrle_decode(const uint8_t *delta, uint64_t dlen, uint8_t *page, uint64_t len);
