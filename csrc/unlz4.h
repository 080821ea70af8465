/* pyvmm LZ4 legacy-frame decoder: a bzImage's lz4 payload, decompressed on the host.
 *
 * Linux builds an lz4 kernel with `lz4 -l` (the legacy frame) and appends the
 * decompressed size as 4 little-endian bytes (scripts/Makefile.lib, cmd_lz4_with_size).
 * pyvmm/boot/payload.py strips that size and hands the frame here.
 *
 * Legacy frame (lz4's doc/lz4_Frame_format.md, "Legacy frame"): the magic number
 * 0x184C2102 (little-endian), then blocks, each a 4-byte little-endian compressed
 * size followed by that many bytes of one LZ4 block. Blocks are independent (a match
 * never reaches into an earlier block) and each decompresses to at most 8 MiB.
 * The frame has no end mark: it ends where the input ends; another legacy frame
 * may follow (its magic number where a block size would be).
 *
 * LZ4 block (doc/lz4_Block_format.md): sequences of
 *   token (high nibble: literal length, low nibble: match length - 4),
 *   literal length continuation bytes if the nibble is 15 (each adds 0..255, a byte
 *   below 255 ends it), the literals, a 2-byte little-endian match offset (1..65535
 *   back from the current output), match length continuation bytes as above.
 * The last sequence of a block has literals only.
 *
 * The input is untrusted (a kernel file from anywhere): every read and write is
 * bounds-checked and a malformed frame gives a negative error, never a write
 * outside dst.
 */
#include <stdint.h>
#include <stddef.h>

#define UNLZ4_LEGACY_MAGIC 0x184C2102u
#define UNLZ4_LEGACY_BLOCK_MAX 8388608        /* 8 MiB: a legacy block's decompressed size limit */

/* Errors (negative return values of unlz4_legacy) */
#define UNLZ4_ERR_MAGIC -1          /* the input does not start with the legacy magic */
#define UNLZ4_ERR_TRUNCATED -2      /* a block size or a block runs past the input */
#define UNLZ4_ERR_CORRUPT -3        /* a sequence runs past its block, or an offset is 0 or
                                       reaches before the block's output */
#define UNLZ4_ERR_TOO_BIG -4        /* the output would not fit dst (or a block > 8 MiB) */

/* Decode the legacy frame(s) in src[0..src_len) into dst[0..dst_cap).
 * Returns the number of bytes written, or one of the UNLZ4_ERR_ codes. */
int64_t unlz4_legacy(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_cap);
