/* See unlz4.h. Compiled by cffi into pyvmm._unlz4 (csrc/unlz4_build.py). */
#include <string.h>
#include "unlz4.h"

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A length nibble of 15 continues in the following bytes: add each, stop after one < 255. */
static int extend(const uint8_t **ip, const uint8_t *iend, size_t *len)
{
    uint8_t b;
    do {
        if (*ip >= iend)
            return -1;
        b = *(*ip)++;
        *len += b;
    } while (b == 255);
    return 0;
}

/* One block: src[0..n) into out[0..cap); returns bytes written or an error. */
static int64_t block(const uint8_t *ip, size_t n, uint8_t *out, size_t cap)
{
    const uint8_t *iend = ip + n;
    uint8_t *op = out, *oend = out + cap;

    while (ip < iend) {
        uint8_t token = *ip++;
        size_t lit = token >> 4;
        if (lit == 15 && extend(&ip, iend, &lit))
            return UNLZ4_ERR_CORRUPT;
        if (lit > (size_t)(iend - ip))
            return UNLZ4_ERR_CORRUPT;
        if (lit > (size_t)(oend - op))
            return UNLZ4_ERR_TOO_BIG;
        memcpy(op, ip, lit);
        ip += lit;
        op += lit;
        if (ip == iend)
            break;                          /* the last sequence: literals only */

        if (iend - ip < 2)
            return UNLZ4_ERR_CORRUPT;
        size_t offset = (size_t)ip[0] | (size_t)ip[1] << 8;
        ip += 2;
        if (offset == 0 || offset > (size_t)(op - out))
            return UNLZ4_ERR_CORRUPT;
        size_t match = token & 15;
        if (match == 15 && extend(&ip, iend, &match))
            return UNLZ4_ERR_CORRUPT;
        match += 4;                         /* the minimum match */
        if (match > (size_t)(oend - op))
            return UNLZ4_ERR_TOO_BIG;
        const uint8_t *from = op - offset;
        if (offset >= match) {
            memcpy(op, from, match);
            op += match;
        } else {
            /* Overlapping: the match repeats the last `offset` bytes. Copy forward,
             * byte by byte, so bytes written in this match are read again. */
            while (match--)
                *op++ = *from++;
        }
    }
    return op - out;
}

int64_t unlz4_legacy(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_cap)
{
    const uint8_t *ip = src, *iend = src + src_len;
    size_t written = 0;

    if (src_len < 4 || le32(ip) != UNLZ4_LEGACY_MAGIC)
        return UNLZ4_ERR_MAGIC;
    ip += 4;
    while (ip < iend) {
        if (iend - ip < 4)
            return UNLZ4_ERR_TRUNCATED;
        uint32_t size = le32(ip);
        ip += 4;
        if (size == UNLZ4_LEGACY_MAGIC)
            continue;                       /* a concatenated legacy frame */
        if (size > (size_t)(iend - ip))
            return UNLZ4_ERR_TRUNCATED;
        size_t cap = dst_cap - written;
        if (cap > UNLZ4_LEGACY_BLOCK_MAX)
            cap = UNLZ4_LEGACY_BLOCK_MAX;
        int64_t got = block(ip, size, dst + written, cap);
        if (got < 0)
            return got;
        written += (size_t)got;
        ip += size;
    }
    return (int64_t)written;
}
