# pgtable.S - a page-table-heavy guest: address spaces, CR3 switches, map/unmap/remap, fork.
#
# The guest runs the memory-management work of a small OS on 4 address spaces and prints a
# checksum of everything it observed, then a few fixed checks and a hostile section. The
# output is a pure function of the program and the command line (no timer is read), so it
# must be identical whatever MMU the VMM uses (shadow page tables or nested paging).
#
# Physical memory (the guest needs 32 MiB of RAM; it checks e820):
#   8 MiB .. 12 MiB   page-table frames, handed out in order (bump allocator, zeroed)
#  12 MiB .. 24 MiB   4 KiB data frames, handed out in order (zeroed)
#  24 MiB, 26 MiB     two 2 MiB frames for the large pages
# Every address space (AS) maps the kernel with PML4[0] copied from the boot tables
# (identity 0..4 GiB), and its own user region in PML4[1] (all supervisor pages, P|W):
#   USER_BASE + p * 4 KiB, p = 0..15     4 KiB pages, through PDPT[0] -> PD[0] -> PT
#   LARGE_VA = USER_BASE + 2 MiB         a 2 MiB page (PD[1], PS = 1); AS 0 and 1 share
#                                        frame 24 MiB, AS 2 and 3 share 26 MiB (shared memory)
# Initially AS s (s = 0..3) has pages 0..7 mapped to fresh frames; AS 0 is current.
#
# The workload: `iters=N` (default 20000) operations driven by the LCG of spin.S,
#   x = x * 6364136223846793005 + 1442695040888963407 (mod 2^64), x0 = 0x9E3779B97F4A7C15,
# each taking r = x >> 33 (31 bits), op = r & 15, p = (r >> 4) & 15, off = ((r >> 8) & 511) * 8:
#   0..5   WRITE   one more LCG step v = x; store v at USER_BASE + p * 4096 + off
#   6..10  READ    load the qword at USER_BASE + p * 4096 + off; hash it
#   11     LARGE   one more step v = x; store v at LARGE_VA + ((r >> 4) & 0x3FFFF) * 8, then
#                  load and hash the qword at LARGE_VA + ((r >> 13) & 0x3FFFF) * 8
#   12     UNMAP   PTE[p] = 0, INVLPG
#   13     MAP     q = (r >> 18) & 15; if (r >> 17) & 1 and PTE[q] is present: PTE[p] = the
#                  frame of q (an alias) | P | W; else a new zeroed frame | P | W. INVLPG.
#   14     SWITCH  hash the A/D summary of the current AS; current = (r >> 4) & 3; mov CR3
#   15     FORK    (after 48 forks: SWITCH instead) hash the A/D summary of the current AS;
#                  child = (cur + 1 + ((r >> 4) & 1) + ((r >> 5) & 1)) & 3 gets new page
#                  tables: the same 2 MiB frame, and for every present PTE[p] of the parent a
#                  new frame with a copy of the page, P | W; then current = child, mov CR3.
# A WRITE/READ of a page that is not present raises #PF: the handler resumes after the
# instruction, and the error code and CR2 are hashed (and counted).
# hash(v): h = (h ^ v) * 0x100000001B3 (mod 2^64), h0 = 0xCBF29CE484222325 (FNV-1a, 64 bit
# words). A/D summary: sum over p of ((PTE[p] >> 5) & 3) << (2 * p): the accessed and dirty
# bits the CPU set (a fresh PTE has both clear; a read sets A, a write A and D).
# At the end, for s = 0..3: switch to s, hash its A/D summary, then for every present page
# p (in order) hash its 512 qwords (read through the mapping).
#
# Output: "pgtable: N ops, F page faults, K forks, M frames", "pgtable: checksum 0x...";
# tests/test_guest_pgtable.py models all of the above in Python and computes the checksum.
# Then checks (`ok`/`FAIL` lines, guests/README.md): a read-only page (#PF P|W, A set and
# D clear), a not-present page, and the hostile part: reserved bits (an address bit at
# MAXPHYADDR from CPUID 0x80000008, PS in a PML4E, bit 13 of a 2 MiB PDE: #PF with RSVD),
# a page table and a data page past the end of RAM, and the self-map (PML4[511] -> the PML4
# itself: the guest reads and writes its own PTEs through it). Past the end of RAM a PC
# returns all ones; a VMM may also fault: the guest accepts either and prints which,
# "pgtable: beyond RAM: read 0x..." or "pgtable: beyond RAM: #PF error 0x...". These two
# come last; `skip=beyond_ram` leaves them out (prints "skip beyond_ram"). pyvmm today stops
# the VM at the first ("EPT violation ... no memory the guest may use there": the CPU sets
# the accessed bit of the entry it read past RAM).

	.include "macros.inc"

NAS        = 4
NPAGES     = 16
USER_BASE  = 0x8000000000           # PML4 index 1
LARGE_VA   = USER_BASE + 0x200000
PT_POOL    = 0x800000
PT_POOL_END = 0xC00000
DATA_POOL  = 0xC00000
DATA_POOL_END = 0x1800000
LARGE0     = 0x1800000
LARGE1     = 0x1A00000
RAM_NEEDED = 0x2000000
FORK_MAX   = 48
DEFAULT_ITERS = 20000
PTE_ADDR   = 0x000FFFFFFFFFF000     # bits 51:12
PF_RSVD    = 8
SELFMAP_PML4 = 0xFFFFFF8000000000   # PML4 index 511 -> the PML4 itself
# the PT of the user region seen through the self-map: indices 511, 1, 0, 0
SELFMAP_USER_PT = SELFMAP_PML4 + (1 << 30)
# 511, 511, 511, 511: the PML4 itself
SELFMAP_SELF = 0xFFFFFFFFFFFFF000

# pass name: one `ok` line for a check that holds by getting here.
.macro pass name:req
	SAVE si
	mov $.Lpass_name\@, %esi
	call check_pass
	RESTORE si
	.pushsection .rodata
.Lpass_name\@: .asciz "\name"
	.popsection
.endm

	.text
	.globl main
main:
	call setup_cpu
	call find_ram_end
	CHECK_RANGE "ram_at_least_32_mib", ram_end(%rip), $RAM_NEEDED, $-1
	cmpq $RAM_NEEDED, ram_end(%rip)
	jb 9f
	mov %cr3, %rax
	mov (%rax), %rax
	mov %rax, kernel_pml4e(%rip)    # PML4[0] of the boot-time tables: the kernel identity map
	movq $PT_POOL, pt_next(%rip)
	movq $DATA_POOL, data_next(%rip)
	movabs $0x9E3779B97F4A7C15, %rax
	mov %rax, rng(%rip)
	movabs $0xCBF29CE484222325, %rax
	mov %rax, hsum(%rip)

	mov $.Lkey_iters, %esi
	call cmdline_find
	mov $DEFAULT_ITERS, %eax
	test %esi, %esi
	jz 1f
	call parse_dec
1:	mov %eax, iters(%rip)

	call build_spaces
	call workload
	call final_hash

	PUTS "pgtable: "
	mov iters(%rip), %eax
	call putdec
	PUTS " ops, "
	mov nfaults(%rip), %eax
	call putdec
	PUTS " page faults, "
	mov nforks(%rip), %eax
	call putdec
	PUTS " forks, "
	mov data_next(%rip), %rax
	sub $DATA_POOL, %rax
	shr $12, %rax
	call putdec
	PUTS " frames\n"
	PUTS "pgtable: checksum "
	mov hsum(%rip), %rax
	call puthex
	call newline

	xor %edi, %edi
	call switch_as
	call fixed_checks
	call hostile_checks
	mov kernel_cr3(%rip), %rax
	test %rax, %rax
	jz 9f
	mov %rax, %cr3
9:	mov $guest_name, %esi
	jmp checks_finish

# find_ram_end: ram_end = the highest end of an e820 RAM entry.
find_ram_end:
	mov boot_params(%rip), %esi
	movzbl BP_E820_ENTRIES(%rsi), %ecx
	lea BP_E820_TABLE(%rsi), %rsi
	xor %edx, %edx
1:	test %ecx, %ecx
	jz 3f
	cmpl $E820_RAM, 16(%rsi)
	jne 2f
	mov (%rsi), %rax
	add 8(%rsi), %rax
	cmp %rdx, %rax
	cmova %rax, %rdx
2:	add $E820_ENTRY_SIZE, %rsi
	dec %ecx
	jmp 1b
3:	mov %rdx, ram_end(%rip)
	mov %cr3, %rax
	mov %rax, kernel_cr3(%rip)
	ret

# ---------------------------------------------------------------------------------------
# Helpers. They preserve rbx, rbp, r12..r15.
# ---------------------------------------------------------------------------------------

# rand: one LCG step; rax = x >> 33, rdx = x.
rand:
	mov rng(%rip), %rax
	movabs $6364136223846793005, %rdx
	imul %rdx, %rax
	movabs $1442695040888963407, %rdx
	add %rdx, %rax
	mov %rax, rng(%rip)
	mov %rax, %rdx
	shr $33, %rax
	ret

# hash: fold rax into hsum (FNV-1a over 64-bit words). Preserves every register.
hash:
	push %rdx
	mov hsum(%rip), %rdx
	xor %rax, %rdx
	push %rax
	movabs $0x100000001B3, %rax
	imul %rax, %rdx
	mov %rdx, hsum(%rip)
	pop %rax
	pop %rdx
	ret

# alloc_pt / alloc_data: rax = a zeroed 4 KiB frame from the pool. Running out is a bug in
# this guest (the workload is sized to fit): report it and stop. Clobber rcx and rdi only.
.macro POOL_ALLOC next:req, end:req, msg:req
	mov \next(%rip), %rax
	cmp $\end, %rax
	jae 1f
	addq $4096, \next(%rip)
	jmp zero_frame
1:	mov $\msg, %esi
	jmp fail_exit
.endm

alloc_pt:
	POOL_ALLOC pt_next, PT_POOL_END, .Lmsg_pt_pool
alloc_data:
	POOL_ALLOC data_next, DATA_POOL_END, .Lmsg_data_pool

zero_frame:                         # rax = frame (kept); clobbers rcx, rdi
	push %rax
	mov %rax, %rdi
	xor %eax, %eax
	mov $512, %ecx
	cld
	rep stosq
	pop %rax
	ret

# new_as: edi = slot, rsi = 2 MiB frame. Builds PML4, PDPT, PD, PT (all zeroed) with the
# kernel map and the large page; no 4 KiB page mapped yet. Sets as_cr3[slot], as_pt[slot].
new_as:
	push %rbx
	push %r12
	push %r13
	mov %edi, %ebx
	mov %rsi, %r12
	call alloc_pt                   # PML4
	mov %rax, %r13
	mov %rax, as_cr3(, %rbx, 8)
	mov kernel_pml4e(%rip), %rcx
	mov %rcx, (%r13)                # PML4[0]: the kernel
	call alloc_pt                   # PDPT
	or $PTE_P | PTE_W, %rax
	mov %rax, 8(%r13)               # PML4[1] -> PDPT
	and $~0xFFF, %rax
	mov %rax, %r13
	call alloc_pt                   # PD
	or $PTE_P | PTE_W, %rax
	mov %rax, (%r13)                # PDPT[0] -> PD
	and $~0xFFF, %rax
	mov %rax, %r13
	or $PTE_P | PTE_W | PTE_PS, %r12
	mov %r12, 8(%r13)               # PD[1]: the 2 MiB page
	call alloc_pt                   # PT
	mov %rax, as_pt(, %rbx, 8)
	or $PTE_P | PTE_W, %rax
	mov %rax, (%r13)                # PD[0] -> PT
	pop %r13
	pop %r12
	pop %rbx
	ret

# switch_as: edi = slot: it becomes the current AS (mov to CR3 flushes the TLB).
switch_as:
	mov %edi, cur(%rip)
	mov as_cr3(, %rdi, 8), %rax
	mov %rax, %cr3
	ret

# pte_ptr: ecx = page index -> rax = physical (= identity-mapped) address of the current
# AS's PTE for it.
pte_ptr:
	mov cur(%rip), %eax
	mov as_pt(, %rax, 8), %rax
	lea (%rax, %rcx, 8), %rax
	ret

# ad_summary: edi = slot -> rax = sum over p of ((PTE[p] >> 5) & 3) << (2 * p).
ad_summary:
	mov as_pt(, %rdi, 8), %rsi
	xor %eax, %eax
	mov $NPAGES - 1, %ecx
1:	shl $2, %rax
	mov (%rsi, %rcx, 8), %rdx
	shr $5, %rdx
	and $3, %edx
	or %rdx, %rax
	dec %ecx
	jns 1b
	ret

hash_current_ad:
	mov cur(%rip), %edi
	call ad_summary
	jmp hash

# ---------------------------------------------------------------------------------------
# build_spaces: the 4 initial address spaces, pages 0..7 of each on fresh frames.
# ---------------------------------------------------------------------------------------
build_spaces:
	push %rbx
	push %r12
	xor %ebx, %ebx
1:	mov %ebx, %edi
	mov $LARGE0, %esi
	cmp $2, %ebx
	jb 2f
	mov $LARGE1, %esi
2:	call new_as
	xor %r12d, %r12d
3:	call alloc_data
	or $PTE_P | PTE_W, %rax
	mov as_pt(, %rbx, 8), %rdx
	mov %rax, (%rdx, %r12, 8)
	inc %r12d
	cmp $8, %r12d
	jb 3b
	inc %ebx
	cmp $NAS, %ebx
	jb 1b
	xor %edi, %edi
	call switch_as
	pop %r12
	pop %rbx
	ret

# ---------------------------------------------------------------------------------------
# workload: the iters random operations (see the top of the file).
# ---------------------------------------------------------------------------------------
workload:
	push %rbx
	push %r12
	push %r13
	push %r14
	push %r15
	mov iters(%rip), %r15d
.Lop_next:
	test %r15d, %r15d
	jz .Lop_done
	dec %r15d
	call rand
	mov %eax, %ebx                  # r
	mov %ebx, %r12d
	shr $4, %r12d
	and $15, %r12d                  # p
	mov %ebx, %r13d
	shr $8, %r13d
	and $511, %r13d
	shl $3, %r13d                   # off
	mov %r12, %r14
	shl $12, %r14
	movabs $USER_BASE, %rax
	add %rax, %r14                  # the page's address
	mov %ebx, %eax
	and $15, %eax
	cmp $5, %eax
	jbe .Lop_write
	cmp $10, %eax
	jbe .Lop_read
	cmp $11, %eax
	je .Lop_large
	cmp $12, %eax
	je .Lop_unmap
	cmp $13, %eax
	je .Lop_map
	cmp $14, %eax
	je .Lop_switch
	jmp .Lop_fork

.Lop_write:
	call rand                       # rdx = v
	call pf_count
	mov %rax, %r8
	TRY .Lwrite_insn, mov %rdx, (%r14, %r13)
	call pf_observe
	jmp .Lop_next

.Lop_read:
	call pf_count
	mov %rax, %r8
	xor %eax, %eax
	TRY .Lread_insn, mov (%r14, %r13), %rax
	mov %rax, %r9
	call pf_observe
	test %eax, %eax
	jnz .Lop_next                   # faulted: already hashed
	mov %r9, %rax
	call hash
	jmp .Lop_next

.Lop_large:
	call rand                       # rdx = v
	movabs $LARGE_VA, %rsi
	mov %ebx, %eax
	shr $4, %eax
	and $0x3FFFF, %eax
	mov %rdx, (%rsi, %rax, 8)
	mov %ebx, %eax
	shr $13, %eax
	and $0x3FFFF, %eax
	mov (%rsi, %rax, 8), %rax
	call hash
	jmp .Lop_next

.Lop_unmap:
	mov %r12d, %ecx
	call pte_ptr
	movq $0, (%rax)
	invlpg (%r14)
	jmp .Lop_next

.Lop_map:
	bt $17, %ebx
	jnc 1f
	mov %ebx, %ecx
	shr $18, %ecx
	and $15, %ecx
	call pte_ptr
	mov (%rax), %rax
	test $PTE_P, %al
	jz 1f
	movabs $PTE_ADDR, %rdx
	and %rdx, %rax                  # alias of page q's frame
	jmp 2f
1:	call alloc_data
2:	or $PTE_P | PTE_W, %rax
	mov %rax, %rdx
	mov %r12d, %ecx
	call pte_ptr
	mov %rdx, (%rax)
	invlpg (%r14)
	jmp .Lop_next

.Lop_switch:
	call hash_current_ad
	mov %ebx, %edi
	shr $4, %edi
	and $3, %edi
	call switch_as
	jmp .Lop_next

.Lop_fork:
	cmpl $FORK_MAX, nforks(%rip)
	jae .Lop_switch
	call hash_current_ad
	mov %ebx, %eax
	shr $4, %eax
	and $1, %eax
	mov %ebx, %edx
	shr $5, %edx
	and $1, %edx
	add %edx, %eax
	add cur(%rip), %eax
	inc %eax
	and $3, %eax
	mov %eax, %edi                  # the child's slot
	call fork
	incl nforks(%rip)
	jmp .Lop_next

.Lop_done:
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbx
	ret

# pf_count: rax = #PF deliveries so far. pf_observe: r8 = the count before the access;
# if a #PF came since, hash its error code and CR2, count it, and return eax = 1 (else 0).
pf_count:
	mov exc_rec + VEC_PF * REC_SIZE + REC_COUNT(%rip), %rax
	ret

pf_observe:
	mov exc_rec + VEC_PF * REC_SIZE + REC_COUNT(%rip), %rax
	cmp %r8, %rax
	je 1f
	mov exc_rec + VEC_PF * REC_SIZE + REC_ERR(%rip), %rax
	call hash
	mov exc_rec + VEC_PF * REC_SIZE + REC_CR2(%rip), %rax
	call hash
	incl nfaults(%rip)
	movq $0, exceptions_taken(%rip) # each of these faults was resumed: no storm
	mov $1, %eax
	ret
1:	xor %eax, %eax
	ret

# fork: edi = the child's slot. New page tables for it, sharing the parent's 2 MiB frame;
# every present page of the parent is copied to a new frame. The child becomes current.
fork:
	push %rbx
	push %r12
	push %r13
	mov %edi, %ebx
	mov cur(%rip), %eax
	mov as_cr3(, %rax, 8), %rax
	mov 8(%rax), %rax               # parent PML4[1] -> PDPT
	and $~0xFFF, %rax
	mov (%rax), %rax                # PDPT[0] -> PD
	and $~0xFFF, %rax
	mov 8(%rax), %rsi               # PD[1]: the 2 MiB page
	movabs $PTE_ADDR, %rdx
	and %rdx, %rsi
	and $~0x1FFFFF, %rsi
	mov %ebx, %edi
	mov cur(%rip), %r13d            # parent slot
	call new_as
	xor %r12d, %r12d
1:	mov as_pt(, %r13, 8), %rax
	mov (%rax, %r12, 8), %rsi       # parent PTE
	test $PTE_P, %sil
	jz 2f
	movabs $PTE_ADDR, %rdx
	and %rdx, %rsi
	call alloc_data
	mov %rax, %rdi
	mov $512, %ecx
	cld
	rep movsq                       # copy the page (identity-mapped physical addresses)
	or $PTE_P | PTE_W, %rax
	mov as_pt(, %rbx, 8), %rdx
	mov %rax, (%rdx, %r12, 8)
2:	inc %r12d
	cmp $NPAGES, %r12d
	jb 1b
	mov %ebx, %edi
	call switch_as
	pop %r13
	pop %r12
	pop %rbx
	ret

# final_hash: every AS's A/D summary and the contents of its present pages.
final_hash:
	push %rbx
	push %r12
	xor %ebx, %ebx
1:	mov %ebx, %edi
	call switch_as
	call hash_current_ad
	xor %r12d, %r12d
2:	mov as_pt(, %rbx, 8), %rax
	testb $PTE_P, (%rax, %r12, 8)
	jz 4f
	mov %r12, %rsi
	shl $12, %rsi
	movabs $USER_BASE, %rax
	add %rax, %rsi
	mov $512, %ecx
3:	mov (%rsi), %rax
	call hash
	add $8, %rsi
	dec %ecx
	jnz 3b
4:	inc %r12d
	cmp $NPAGES, %r12d
	jb 2b
	inc %ebx
	cmp $NAS, %ebx
	jb 1b
	pop %r12
	pop %rbx
	ret

# ---------------------------------------------------------------------------------------
# Fixed checks in AS 0: a read-only page, a not-present page.
# ---------------------------------------------------------------------------------------
RO_PAGE = USER_BASE + 0 * 4096
NP_PAGE = USER_BASE + 1 * 4096

fixed_checks:
	push %rbx
	call alloc_data
	movq $0x600DF00D, 8(%rax)
	or $PTE_P, %rax                 # present, read-only
	mov %rax, %rdx
	xor %ecx, %ecx
	call pte_ptr
	mov %rax, %rbx                  # rbx = &PTE[0]
	mov %rdx, (%rbx)
	movabs $RO_PAGE, %rsi
	invlpg (%rsi)
	CLEAR_REC VEC_PF
	TRY .Lro_read, mov 8(%rsi), %rax
	CHECK_EQ "ro_page_read", %rax, $0x600DF00D
	CHECK_REC "ro_page_read_no_fault", VEC_PF, REC_COUNT, $0
	TRY_EXPECT "ro_page_write_pf", VEC_PF, $(PF_P|PF_W), movq $1, 8(%rsi)
	lea 8(%rsi), %rax
	CHECK_REC "ro_page_write_cr2", VEC_PF, REC_CR2, %rax
	movq $0, exceptions_taken(%rip)
	CHECK_EQ "ro_page_unchanged", 8(%rsi), $0x600DF00D
	CHECK_BITS "ro_page_accessed_not_dirty", (%rbx), $(PTE_A|PTE_D), $PTE_A

	movq $0, 8(%rbx)                # PTE[1] = 0: not present
	movabs $NP_PAGE, %rsi
	invlpg (%rsi)
	TRY_EXPECT "not_present_read_pf", VEC_PF, $0, mov 16(%rsi), %rax
	lea 16(%rsi), %rax
	CHECK_REC "not_present_read_cr2", VEC_PF, REC_CR2, %rax
	TRY_EXPECT "not_present_write_pf", VEC_PF, $PF_W, movb $1, 0xFFF(%rsi)
	lea 0xFFF(%rsi), %rax
	CHECK_REC "not_present_write_cr2", VEC_PF, REC_CR2, %rax
	movq $0, exceptions_taken(%rip)
	pop %rbx
	ret

# ---------------------------------------------------------------------------------------
# Hostile page tables, in AS 0.
# ---------------------------------------------------------------------------------------
RSVD_PAGE = USER_BASE + 2 * 4096
PAST_RAM_PAGE = USER_BASE + 3 * 4096
SELF_PAGE = USER_BASE + 4 * 4096
PML4_PS_VA = 2 * USER_BASE           # PML4 index 2
BAD_LARGE_VA = USER_BASE + 2 * 0x200000   # PD[2]
PAST_RAM_PT_VA = USER_BASE + 3 * 0x200000 # PD[3]

hostile_checks:
	push %rbx
	push %r12
	# A reserved address bit: MAXPHYADDR from CPUID 0x80000008 (bits 7:0 of EAX).
	mov $0x80000008, %eax
	cpuid                           # (clobbers rbx)
	movzbl %al, %eax
	mov %rax, maxphyaddr(%rip)
	mov cur(%rip), %eax
	mov as_cr3(, %rax, 8), %r12     # r12 = the PML4
	mov 8(%r12), %rax
	and $~0xFFF, %rax
	mov (%rax), %rbx
	and $~0xFFF, %rbx               # rbx = the PD
	CHECK_RANGE "maxphyaddr", maxphyaddr(%rip), $36, $52
	cmpq $52, maxphyaddr(%rip)
	jae 1f
	call alloc_data
	or $PTE_P | PTE_W, %rax
	mov maxphyaddr(%rip), %ecx
	mov $1, %edx
	shl %cl, %rdx                   # 1 << MAXPHYADDR: the lowest reserved address bit
	or %rdx, %rax
	mov %rax, %rdx
	mov $2, %ecx
	call pte_ptr
	mov %rdx, (%rax)
	movabs $RSVD_PAGE, %rsi
	invlpg (%rsi)
	TRY_EXPECT "reserved_address_bit_read_pf", VEC_PF, $(PF_P|PF_RSVD), mov (%rsi), %rax
	CHECK_REC "reserved_address_bit_cr2", VEC_PF, REC_CR2, %rsi
	TRY_EXPECT "reserved_address_bit_write_pf", VEC_PF, $(PF_P|PF_W|PF_RSVD), movq $1, (%rsi)
1:
	# PS in a PML4E is reserved.
	mov 8(%r12), %rax
	or $PTE_PS, %rax
	mov %rax, 16(%r12)              # PML4[2]: the user PDPT, with PS
	movabs $PML4_PS_VA, %rsi
	TRY_EXPECT "pml4e_ps_reserved_pf", VEC_PF, $(PF_P|PF_RSVD), mov (%rsi), %rax
	movq $0, 16(%r12)
	invlpg (%rsi)

	# Bit 13 of a 2 MiB PDE is reserved (bits 20:13 must be 0).
	mov $LARGE0 | PTE_P | PTE_W | PTE_PS | (1 << 13), %eax
	mov %rax, 16(%rbx)              # PD[2]
	movabs $BAD_LARGE_VA, %rsi
	TRY_EXPECT "large_pde_bit13_reserved_pf", VEC_PF, $(PF_P|PF_RSVD), mov 8(%rsi), %rax
	movq $0, 16(%rbx)
	invlpg (%rsi)
	movq $0, exceptions_taken(%rip)

	# The self-map: PML4[511] -> the PML4.
	mov %r12, %rax
	or $PTE_P | PTE_W, %rax
	mov %rax, 511 * 8(%r12)
	movabs $SELFMAP_SELF, %rsi
	mov (%rsi), %rax
	CHECK_EQ "selfmap_reads_pml4_entry_0", %rax, (%r12)
	mov cur(%rip), %eax
	mov as_pt(, %rax, 8), %rdx      # the PT, by its physical address
	movabs $SELFMAP_USER_PT, %rsi
	mov 5 * 8(%rsi), %rax
	CHECK_EQ "selfmap_reads_pte_5", %rax, 5*8(%rdx)
	# map SELF_PAGE by writing its PTE through the self-map
	call alloc_data
	movq $0x5E1F, 16(%rax)
	or $PTE_P | PTE_W, %rax
	mov %rax, 4 * 8(%rsi)
	movabs $SELF_PAGE, %rdi
	invlpg (%rdi)
	mov 16(%rdi), %rax
	CHECK_EQ "selfmap_written_pte_maps_page", %rax, $0x5E1F
	CHECK_EQ "selfmap_pte_visible_physically", 4*8(%rdx), 4*8(%rsi)
	movq $0, 511 * 8(%r12)
	mov as_cr3(%rip), %rax
	mov %rax, %cr3                  # flush the self-map's translations

	mov $.Lkey_skip_beyond_ram, %esi
	call cmdline_find
	test %esi, %esi
	jz 6f
	PUTS "skip beyond_ram\n"
	jmp 7f
6:
	# A page table past the end of RAM: the walk reads all ones (reserved bits), or faults.
	mov ram_end(%rip), %rax
	or $PTE_P | PTE_W, %rax
	mov %rax, 24(%rbx)              # PD[3] -> a "page table" past RAM
	movabs $PAST_RAM_PT_VA, %rsi
	CLEAR_REC VEC_PF
	TRY .Lpast_ram_pt, mov (%rsi), %rax
	CHECK_REC "page_table_beyond_ram_pf", VEC_PF, REC_COUNT, $1
	CHECK_REC "page_table_beyond_ram_cr2", VEC_PF, REC_CR2, %rsi
	PUTS "pgtable: page table beyond RAM: #PF error "
	mov exc_rec + VEC_PF * REC_SIZE + REC_ERR(%rip), %rax
	call puthex
	call newline
	movq $0, 24(%rbx)
	invlpg (%rsi)
	movq $0, exceptions_taken(%rip)

	# A data page past the end of RAM.
	mov ram_end(%rip), %rax
	or $PTE_P | PTE_W, %rax
	mov %rax, %rdx
	mov $3, %ecx
	call pte_ptr
	mov %rdx, (%rax)
	movabs $PAST_RAM_PAGE, %rsi
	invlpg (%rsi)
	PUTS "pgtable: beyond RAM: "
	call pf_count
	mov %rax, %r8
	xor %eax, %eax
	TRY .Lpast_ram_read, mov (%rsi), %rax
	mov %rax, %r9
	mov exc_rec + VEC_PF * REC_SIZE + REC_COUNT(%rip), %rax
	cmp %r8, %rax
	jne 2f
	PUTS "read "
	mov %r9, %rax
	call puthex
	call newline
	jmp 3f
2:	PUTS "#PF error "
	mov exc_rec + VEC_PF * REC_SIZE + REC_ERR(%rip), %rax
	call puthex
	call newline
	CHECK_REC "beyond_ram_pf_cr2", VEC_PF, REC_CR2, %rsi
3:	call pf_count
	mov %rax, %r8
	TRY .Lpast_ram_write, movq $0x5A5A, 8(%rsi)
	PUTS "pgtable: beyond RAM: write "
	mov exc_rec + VEC_PF * REC_SIZE + REC_COUNT(%rip), %rax
	cmp %r8, %rax
	jne 4f
	PUTS "done\n"
	jmp 5f
4:	PUTS "#PF error "
	mov exc_rec + VEC_PF * REC_SIZE + REC_ERR(%rip), %rax
	call puthex
	call newline
5:	movq $0, exceptions_taken(%rip)
	pass "beyond_ram_survived"
7:

	pop %r12
	pop %rbx
	ret

	.section .rodata
guest_name:     .asciz "pgtable"
.Lkey_iters:    .asciz "iters="
.Lkey_skip_beyond_ram: .asciz "skip=beyond_ram"
.Lmsg_pt_pool:  .asciz "pgtable: out of page-table frames"
.Lmsg_data_pool: .asciz "pgtable: out of data frames"

	.bss
	.balign 8
rng:            .skip 8
hsum:           .skip 8
iters:          .skip 8
nfaults:        .skip 8
nforks:         .skip 8
cur:            .skip 8
ram_end:        .skip 8
maxphyaddr:     .skip 8
kernel_cr3:     .skip 8
kernel_pml4e:   .skip 8
pt_next:        .skip 8
data_next:      .skip 8
as_cr3:         .skip NAS * 8
as_pt:          .skip NAS * 8
