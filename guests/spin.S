# spin.S - pure guest computation, for measuring how fast pyvmm runs guest code.
#
# Reads "iters=N" from the command line (default 100000000; N < 2^32), runs N iterations of
# a loop with no VM exits at all (ALU work plus one store to memory per iteration), prints
# the checksum and powers off. The same N always gives the same checksum, so a benchmark
# can also check that the guest computed correctly. In Python:
#
#     A, C, M = 6364136223846793005, 1442695040888963407, 2**64 - 1
#     x, s = 0x9E3779B97F4A7C15, 0
#     for _ in range(n):
#         x = (x * A + C) & M                            # 64-bit LCG step (Knuth's MMIX)
#         s ^= x >> 29
#         s = ((s << 5) | (s >> 59)) & M                 # rotate left by 5
#     print("spin: checksum %#x" % s)                    # (0x0 prints as 0x0)
#
# Output: "spin: N iterations" then "spin: checksum 0x...", e.g. iters=1000 gives
# 0x92e38cd131685671 and the default (100000000) gives 0x9d0900e8ce08c14.

	.include "macros.inc"

DEFAULT_ITERS = 100000000

	.text
	.globl main
main:
	mov $.Lkey_iters, %esi
	call cmdline_find               # esi = text after "iters=", or 0
	mov $DEFAULT_ITERS, %eax
	test %esi, %esi
	jz 1f
	call parse_dec
1:	mov %eax, %ecx                  # rcx = N (zero-extended)
	PUTS "spin: "
	call putdec
	PUTS " iterations\n"

	movabs $6364136223846793005, %r8
	movabs $1442695040888963407, %r9
	movabs $0x9E3779B97F4A7C15, %rax   # x
	xor %ebx, %ebx                  # s
	test %rcx, %rcx
	jz 3f
2:	imul %r8, %rax
	add %r9, %rax                   # x = x * A + C
	mov %rax, %rdx
	shr $29, %rdx
	xor %rdx, %rbx                  # s ^= x >> 29
	rol $5, %rbx                    # s = rotl(s, 5)
	mov %rbx, spin_checksum(%rip)   # one store per iteration
	dec %rcx
	jnz 2b
3:	PUTS "spin: checksum "
	mov %rbx, %rax
	call puthex
	call newline
	ret                             # _start powers off

	.section .rodata
.Lkey_iters:    .asciz "iters="

	.bss
	.balign 8
spin_checksum:  .skip 8
