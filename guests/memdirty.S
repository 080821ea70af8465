# memdirty.S - a guest that keeps writing memory at a set rate: the workload of live migration.
#
# It rewrites whole 4 KiB pages of a region of RAM, one page after another, paced by the
# PIT, and folds every byte it overwrites into a running checksum. The checksum therefore
# reads back everything the guest wrote before: a page that a migration or a restore lost
# or delivered stale changes it. It prints the checksum after each round, and after the
# last round powers off.
#
# Command line (decimal; every word optional):
#   mem=M       region size in MiB (default 8); the region starts at 8 MiB and must be RAM
#   rate=R      pages written per second, as kB/s (1 kB = 1000 bytes; default 1000, 0 = idle)
#   round_ms=D  length of a round in ms, a multiple of 10 (default 1000)
#   rounds=N    rounds before power-off (default 10)
#
# Each round writes P = R * D // 4096 pages (R * D bytes is what R kB/s write in D ms),
# spread over the round's T = D / 10 ticks of a 100 Hz PIT: after the round's t-th tick
# the guest has written P * t // T pages of it, then sleeps in `sti; hlt`. When the guest
# runs late (ticks lost, a paused VM) it catches up: the pacing changes only *when* a page
# is written, never which page or what: the output depends on the command line alone.
#
# Output:
#   memdirty: M MiB at 0x800000, R kB/s, P pages per round of D ms, N rounds
#   memdirty: round r checksum 0x...                      (once a round, r = 1..N)
#   memdirty: W pages written, checksum 0x...
#
# In Python (the region starts all zeros; `mem` is the region as 64-bit words):
#
#     A, C, M = 6364136223846793005, 1442695040888963407, 2**64 - 1
#     x, s, k = 0x9E3779B97F4A7C15, 0, 0
#     for r in range(1, N + 1):
#         for _ in range(P):
#             page = k % (M_MiB * 256); k += 1
#             for i in range(512):
#                 x = (x * A + C) & M                               # Knuth's MMIX LCG
#                 s = (((s << 5) | (s >> 59)) & M) ^ mem[page * 512 + i] ^ x  # rotl 5, old and new word
#                 mem[page * 512 + i] = x
#         print("memdirty: round %d checksum %#x" % (r, s))

	.include "macros.inc"

REGION_BASE = 0x800000              # 8 MiB: above the guest image (1 MiB + its .bss)
PIT_DIVISOR_100HZ = 11932           # 1193182 Hz / 11932 = 100.0 Hz
TICK_MS = 10
PAGE_SHIFT = 12
WORDS_PER_PAGE = 512

	.text
	.globl main
main:
	call setup_cpu
	SET_HANDLER VEC_TIMER, timer_irq    # counts ticks and sends the EOI

	mov $.Lkey_mem, %esi
	mov $8, %eax
	call arg_or_default
	test %eax, %eax
	jz bad_args
	shl $8, %rax                    # MiB -> pages
	mov %rax, region_pages(%rip)

	mov $.Lkey_rate, %esi
	mov $1000, %eax
	call arg_or_default
	mov %rax, rate_kbps(%rip)

	mov $.Lkey_round_ms, %esi
	mov $1000, %eax
	call arg_or_default
	mov %rax, round_ms(%rip)
	xor %edx, %edx
	mov $TICK_MS, %ecx
	div %ecx
	test %edx, %edx                 # round_ms must be a positive multiple of 10
	jnz bad_args
	test %eax, %eax
	jz bad_args
	mov %rax, round_ticks(%rip)

	mov $.Lkey_rounds, %esi
	mov $10, %eax
	call arg_or_default
	mov %rax, rounds(%rip)

	mov rate_kbps(%rip), %rax
	mulq round_ms(%rip)             # bytes a round: kB/s * ms
	shr $PAGE_SHIFT, %rax
	mov %rax, pages_per_round(%rip)

	call check_region_is_ram

	PUTS "memdirty: "
	mov region_pages(%rip), %rax
	shr $8, %rax
	call putdec
	PUTS " MiB at "
	mov $REGION_BASE, %eax
	call puthex
	PUTS ", "
	mov rate_kbps(%rip), %rax
	call putdec
	PUTS " kB/s, "
	mov pages_per_round(%rip), %rax
	call putdec
	PUTS " pages per round of "
	mov round_ms(%rip), %rax
	call putdec
	PUTS " ms, "
	mov rounds(%rip), %rax
	call putdec
	PUTS " rounds\n"

	mov $PIT_DIVISOR_100HZ, %eax
	call pit_periodic
	mov $0xFFFE, %eax
	call pic_set_mask               # unmask IRQ 0 (interrupts stay off outside `sti; hlt`)

	mov $1, %r12d                   # r12 = round number
.Lround:
	cmp rounds(%rip), %r12
	ja .Ldone
	mov ticks(%rip), %r13           # r13 = ticks when the round began
	xor %r14d, %r14d                # r14 = pages written in this round
.Lpace:
	mov ticks(%rip), %rax
	sub %r13, %rax                  # ticks since the round began,
	cmp round_ticks(%rip), %rax
	jbe 1f
	mov round_ticks(%rip), %rax     # counted up to the round's length
1:	mov %rax, %r15                  # r15 = elapsed ticks (<= T)
	mulq pages_per_round(%rip)
	divq round_ticks(%rip)          # rax = P * elapsed // T: pages due by now
2:	cmp %rax, %r14
	jae 3f
	call write_page
	inc %r14
	jmp 2b
3:	cmp round_ticks(%rip), %r15
	je .Lround_end                  # the round's time is up and its P pages are written
	sti                             # STI's shadow covers HLT: a tick cannot slip in between
	hlt
	cli
	jmp .Lpace
.Lround_end:
	PUTS "memdirty: round "
	mov %r12, %rax
	call putdec
	PUTS " checksum "
	mov checksum(%rip), %rax
	call puthex
	call newline
	inc %r12
	jmp .Lround

.Ldone:
	mov $0xFFFF, %eax
	call pic_set_mask               # no more ticks
	PUTS "memdirty: "
	mov pages_written(%rip), %rax
	call putdec
	PUTS " pages written, checksum "
	mov checksum(%rip), %rax
	call puthex
	call newline
	ret                             # _start powers off

# write_page: rewrite the next page of the sequence (page k mod region_pages, k counting
# every page written so far) with the next 512 values of the LCG, folding each old word and
# its new value into the checksum.
write_page:
	SAVE ax, bx, cx, dx, di, 8, 9
	mov pages_written(%rip), %rax
	xor %edx, %edx
	divq region_pages(%rip)         # rdx = k mod region_pages
	shl $PAGE_SHIFT, %rdx
	lea REGION_BASE(%rdx), %rdi     # rdi = the page
	mov lcg_x(%rip), %rax
	mov checksum(%rip), %rbx
	movabs $6364136223846793005, %r8
	movabs $1442695040888963407, %r9
	mov $WORDS_PER_PAGE, %ecx
1:	imul %r8, %rax
	add %r9, %rax                   # x = x * A + C
	rol $5, %rbx
	xor (%rdi), %rbx
	xor %rax, %rbx                  # s = rotl(s, 5) ^ old word ^ x
	mov %rax, (%rdi)
	add $8, %rdi
	dec %ecx
	jnz 1b
	mov %rax, lcg_x(%rip)
	mov %rbx, checksum(%rip)
	incq pages_written(%rip)
	RESTORE 9, 8, di, dx, cx, bx, ax
	ret

# arg_or_default: esi = key ("mem="), eax = default. Returns rax = the key's decimal value
# from the command line, or the default when the key is absent.
arg_or_default:
	push %rax
	call cmdline_find
	pop %rax
	test %esi, %esi
	jz 1f
	call parse_dec                  # eax = value (zero-extends rax)
1:	mov %eax, %eax
	ret

# check_region_is_ram: the region [REGION_BASE, REGION_BASE + mem MiB) must lie inside one
# e820 RAM entry; otherwise fail (the guest would write where no RAM is).
check_region_is_ram:
	mov boot_params(%rip), %esi
	movzbl BP_E820_ENTRIES(%rsi), %ecx
	lea BP_E820_TABLE(%rsi), %rsi
	mov region_pages(%rip), %rdx
	shl $PAGE_SHIFT, %rdx
	add $REGION_BASE, %rdx          # rdx = region end
1:	test %ecx, %ecx
	jz 2f
	cmpl $E820_RAM, 16(%rsi)
	jne 3f
	cmpq $REGION_BASE, 0(%rsi)
	ja 3f                           # the entry starts above the region
	mov 0(%rsi), %rax
	add 8(%rsi), %rax
	cmp %rdx, %rax
	jae 4f                          # ... and ends at or after its end: fine
3:	add $E820_ENTRY_SIZE, %rsi
	dec %ecx
	jmp 1b
2:	mov $.Lmsg_no_ram, %esi
	jmp fail_exit
4:	ret

bad_args:
	mov $.Lmsg_bad_args, %esi
	jmp fail_exit

	.section .rodata
.Lkey_mem:      .asciz "mem="
.Lkey_rate:     .asciz "rate="
.Lkey_round_ms: .asciz "round_ms="
.Lkey_rounds:   .asciz "rounds="
.Lmsg_no_ram:   .asciz "memdirty: the region (8 MiB + mem= MiB) is not inside RAM: give the VM more memory"
.Lmsg_bad_args: .asciz "memdirty: mem= must be at least 1 and round_ms= a positive multiple of 10"

	.data
	.balign 8
lcg_x:          .quad 0x9E3779B97F4A7C15

	.bss
	.balign 8
checksum:       .skip 8
pages_written:  .skip 8
region_pages:   .skip 8
rate_kbps:      .skip 8
round_ms:       .skip 8
round_ticks:    .skip 8
rounds:         .skip 8
pages_per_round: .skip 8
