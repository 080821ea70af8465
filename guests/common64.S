# common64.S - the small "kernel library" of the 64-bit guests.
#
# pyvmm enters a 64-bit ELF kernel in long mode (docs/platform.md, "Entry state"):
# CS = 0x10 (64-bit code) and DS = ES = SS = 0x18 from a boot GDT at 0x2000, paging on with an
# identity map of 0..4 GiB at 0x9000, RSI = 0x3000 (the zero page), RSP = 0x8000, RFLAGS = 0x2
# and an IDT with limit 0. This file provides:
#
#   _start        remember the entry state, switch to our own stack, go to start_kernel
#   setup_cpu     our own page tables, GDT (with ring-3 segments and a 64-bit TSS), IDT and PICs
#   isr_common    the interrupt entry/exit behind the stubs in lib.S; fills exc_rec[vector]
#   isr_default   TRY fix-ups for exceptions without a handler
#   pf_fixup      the default #PF handler: put back a page-table entry a test cleared
#   run_user      drop to ring 3; `int $0x80` from ring 3 comes back
#   run_guarded   call a function from which an exception handler may bail out (escape)
#   timer_irq     an IRQ 0 handler that counts ticks
#   puthex, check_masked, check_range   the width-dependent half of printing and checks
#
# What is the same in 32-bit and 64-bit code (serial output, PIC/PIT, the interrupt stubs,
# check reporting, power-off) lives in lib.S.

	.include "macros.inc"

TSS_SIZE = 104

	.text

# ---------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------
	.globl _start
_start:
	# Remember the registers the boot protocol defines, before changing any (lab checks them).
	mov %rsi, entry_rsi(%rip)
	mov %rsp, entry_rsp(%rip)
	pushfq                      # (uses one slot of the boot stack at 0x8000)
	popq entry_rflags(%rip)
	mov %cs, entry_cs(%rip)
	mov %ds, entry_ds(%rip)
	mov %es, entry_es(%rip)
	mov %ss, entry_ss(%rip)
	mov %esi, boot_params(%rip)

	lea stack_top(%rip), %rsp   # our own kernel stack in .bss
	jmp start_kernel            # lib.S: init the UART, call main, power off

# ---------------------------------------------------------------------------------------
# setup_cpu: replace everything the VMM set up with our own structures. Clobbers rax, rcx,
# rdx, rsi, rdi. Interrupts stay disabled; the PICs are initialised with every IRQ masked.
# ---------------------------------------------------------------------------------------
	.globl setup_cpu
setup_cpu:
	call build_page_tables
	lea pml4(%rip), %rax
	mov %rax, %cr3              # switch to our page tables (flushes non-global TLB entries)

	# The TSS descriptor holds the TSS address split in pieces: fill it in at run time.
	lea tss(%rip), %rax
	mov %rax, %rdx
	shl $16, %rdx
	movabs $0x000000FFFFFF0000, %rcx
	and %rcx, %rdx              # base 23:0 -> descriptor bits 39:16
	mov %rax, %rcx
	shr $24, %rcx
	and $0xFF, %rcx
	shl $56, %rcx               # base 31:24 -> descriptor bits 63:56
	or %rcx, %rdx
	movabs $(0x89 << 40) | (TSS_SIZE - 1), %rcx   # present, DPL 0, type 9 (available 64-bit TSS), limit
	or %rcx, %rdx
	mov %rdx, gdt_tss(%rip)
	shr $32, %rax
	mov %rax, gdt_tss + 8(%rip) # base 63:32

	lgdt gdt_desc(%rip)
	pushq $KERNEL_CS            # reload CS: a far return pops RIP then CS
	lea 1f(%rip), %rax
	push %rax
	lretq
1:	mov $KERNEL_DS, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov $TSS_SEL, %ax
	ltr %ax                     # the CPU now takes RSP0 / IST1 from our TSS
	call setup_idt
	jmp interrupt_defaults      # lib.S: default handlers, PICs with all IRQs masked

# build_page_tables: identity map 0..4 GiB like the VMM did, but
#  - the first 2 MiB with 4 KiB pages (pt0), so a test can unmap or remap a single page, and
#  - only the pages of the .user section with the U/S bit: ring 3 can touch nothing else.
# The upper levels (PML4E, PDPTE, PDE of the first 2 MiB) allow user access; the leaf entry
# decides. Everything else is 2 MiB pages, supervisor only.
build_page_tables:
	lea pdpt(%rip), %rax
	or $PTE_P | PTE_W | PTE_U, %rax
	mov %rax, pml4(%rip)        # PML4[0] -> PDPT: covers 0..512 GiB

	lea pd(%rip), %rax
	or $PTE_P | PTE_W | PTE_U, %rax
	lea pdpt(%rip), %rdi
	mov $4, %ecx
1:	mov %rax, (%rdi)            # PDPT[0..3] -> the four page directories: 0..4 GiB
	add $4096, %rax
	add $8, %rdi
	loop 1b

	mov $PTE_P | PTE_W | PTE_PS, %eax
	lea pd(%rip), %rdi
	mov $4 * 512, %ecx
2:	mov %rax, (%rdi)            # PDE i maps the 2 MiB page at i * 2 MiB
	add $0x200000, %rax
	add $8, %rdi
	loop 2b

	lea pt0(%rip), %rax
	or $PTE_P | PTE_W | PTE_U, %rax
	mov %rax, pd(%rip)          # PDE 0 -> pt0 instead of a 2 MiB page

	mov $PTE_P | PTE_W, %eax
	lea pt0(%rip), %rdi
	mov $512, %ecx
3:	mov %rax, (%rdi)            # PTE i maps the 4 KiB page at i * 4 KiB
	add $4096, %rax
	add $8, %rdi
	loop 3b

	lea __user_start(%rip), %rax
	lea __user_end(%rip), %rdx
	lea pt0(%rip), %rdi
4:	cmp %rdx, %rax
	jae 5f
	mov %rax, %rcx
	shr $12, %rcx
	orq $PTE_U, (%rdi, %rcx, 8) # ring 3 may use this page
	add $4096, %rax
	jmp 4b
5:	ret

# pte_of: rax = an address below 2 MiB -> rax = address of its PTE in pt0.
	.globl pte_of
pte_of:
	shr $12, %rax
	lea pt0(, %rax, 8), %rax
	ret

# pde_of: rax = an address below 4 GiB -> rax = address of its PDE (2 MiB granularity).
	.globl pde_of
pde_of:
	shr $21, %rax
	lea pd(, %rax, 8), %rax
	ret

# setup_idt: point every vector at its stub (interrupt gates: IF is cleared on entry).
setup_idt:
	lea idt(%rip), %rdi
	lea isr_stubs(%rip), %rsi
	xor %ecx, %ecx
1:	mov %rsi, %rax
	mov %ax, (%rdi)             # offset 15:0
	movw $KERNEL_CS, 2(%rdi)    # code segment of the handler
	movb $0, 4(%rdi)            # IST index 0: no stack switch unless the CPL changes
	movb $0x8E, 5(%rdi)         # P = 1, DPL = 0, type 0xE = 64-bit interrupt gate
	shr $16, %rax
	mov %ax, 6(%rdi)            # offset 31:16
	shr $16, %rax
	mov %eax, 8(%rdi)           # offset 63:32
	movl $0, 12(%rdi)
	add $16, %rdi
	add $ISR_STUB_SIZE, %rsi
	inc %ecx
	cmp $256, %ecx
	jne 1b

	movb $0xEE, idt + VEC_BP * 16 + 5(%rip)       # DPL 3: ring 3 may execute int3 ...
	movb $0xEE, idt + VEC_SYSCALL * 16 + 5(%rip)  # ... and int $0x80
	movb $1, idt + VEC_DF * 16 + 4(%rip)          # #DF runs on IST1: a known-good stack
	movb $1, idt + VEC_IST * 16 + 4(%rip)         # test gate for IST delivery
	lidt idt_desc(%rip)
	SET_HANDLER VEC_IST, isr_return
	ret

# ---------------------------------------------------------------------------------------
# Interrupt entry: the stubs (isr_stubs in lib.S) push an error code (the CPU's or a dummy)
# and the vector, then jump here.
# ---------------------------------------------------------------------------------------
	.globl isr_common
isr_common:
	push %rax
	push %rcx
	push %rdx
	push %rbx
	push %rbp
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, %rdi              # rdi = the frame (F_* offsets in macros.inc)
	cld
	call isr_dispatch
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rbp
	pop %rbx
	pop %rdx
	pop %rcx
	pop %rax
	add $16, %rsp               # drop vector and error code
	iretq

# isr_dispatch: rdi = frame. Record the delivery in exc_rec[vector], then run the handler.
isr_dispatch:
	mov F_VEC(%rdi), %rax
	mov %rax, last_vector(%rip)
	mov %rax, %rdx
	shl $REC_SHIFT, %rdx        # * REC_SIZE
	lea exc_rec(%rip), %rcx
	add %rcx, %rdx              # rdx = &exc_rec[vector]
	incq REC_COUNT(%rdx)
	mov F_ERR(%rdi), %rcx
	mov %rcx, REC_ERR(%rdx)
	mov F_IP(%rdi), %rcx
	mov %rcx, REC_RIP(%rdx)
	mov F_CS(%rdi), %rcx
	mov %rcx, REC_CS(%rdx)
	mov F_FLAGS(%rdi), %rcx
	mov %rcx, REC_RFLAGS(%rdx)
	mov F_SP(%rdi), %rcx
	mov %rcx, REC_RSP(%rdx)
	mov F_SS(%rdi), %rcx
	mov %rcx, REC_SS(%rdx)
	lea F_IP(%rdi), %rcx        # where the CPU stored RIP: tells which stack it switched to
	mov %rcx, REC_FRAME(%rdx)
	cmp $VEC_PF, %rax
	jne 1f
	mov %cr2, %rcx              # the faulting linear address
	mov %rcx, REC_CR2(%rdx)
1:	cmp $32, %rax
	jae 2f
	incq exceptions_taken(%rip)
	cmpq $EXCEPTION_LIMIT, exceptions_taken(%rip)
	ja isr_storm
2:	lea vec_handler(%rip), %rcx
	mov (%rcx, %rax, 8), %rcx
	test %rcx, %rcx
	jz isr_default
	jmp *%rcx                   # handler(rdi = frame), returns to isr_common

# isr_default: no handler for this vector. An exception raised by a TRY instruction resumes
# after it; anything else is a bug (in the guest or in the VMM): report it and exit.
	.globl isr_default
isr_default:
	cmpq $32, F_VEC(%rdi)
	jae isr_unexpected
	mov F_IP(%rdi), %rax
	lea __ex_table_start(%rip), %rcx
	lea __ex_table_end(%rip), %rdx
1:	cmp %rdx, %rcx
	jae isr_unexpected
	cmp (%rcx), %rax
	je 2f
	add $16, %rcx
	jmp 1b
2:	mov 8(%rcx), %rax
	mov %rax, F_IP(%rdi)        # continue after the faulting instruction
	ret

# pf_fixup: the default #PF handler. A test that unmaps a page sets pf_fix_ptr to the page
# table entry it cleared and pf_fix_val to the old value; the handler writes it back and
# returns, so the CPU executes the faulting instruction again, which now succeeds (this is
# what demand paging does). No INVLPG is needed: the CPU never caches a not-present entry.
	.globl pf_fixup
pf_fixup:
	mov pf_fix_ptr(%rip), %rax
	test %rax, %rax
	jz isr_default
	mov pf_fix_val(%rip), %rcx
	mov %rcx, (%rax)
	movq $0, pf_fix_ptr(%rip)
	ret

# timer_irq: IRQ 0 handler. Counts ticks (and those that interrupted ring 3), then EOI.
	.globl timer_irq
timer_irq:
	incq ticks(%rip)
	testb $3, F_CS(%rdi)
	jz 1f
	incq ticks_cpl3(%rip)
1:	mov $0, %al
	jmp pic_eoi

# ---------------------------------------------------------------------------------------
# Ring 3 and escapes
# ---------------------------------------------------------------------------------------

# run_user: rdi = ring-3 entry point (in the .user section), rsi = RFLAGS to run with.
# Enters ring 3 with iretq on the user stack. The user code comes back with
# `mov $value, %edi; int $0x80`, and run_user returns rax = value.
	.globl run_user
run_user:
	mov %rdi, %rdx
	lea enter_user(%rip), %rdi
	jmp run_guarded             # enter_user(rsi = RFLAGS, rdx = entry point)

enter_user:
	pushq $USER_DS              # SS
	lea user_stack_top(%rip), %rax
	push %rax                   # RSP
	push %rsi                   # RFLAGS
	pushq $USER_CS              # CS: RPL 3 makes iretq switch to ring 3
	push %rdx                   # RIP
	iretq

# run_guarded: rdi = function to call at ring 0 (rsi, rdx: its arguments). Returns its rax,
# or the value an exception handler passes to escape.
	.globl run_guarded
run_guarded:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, escape_sp(%rip)
	call *%rdi
escape_return:
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret

# escape: jump here from an exception handler with rax = value: abandons the interrupt frame
# (we are at ring 0 already, so no iret is needed) and returns from run_user / run_guarded.
	.globl escape
escape:
	mov escape_sp(%rip), %rsp
	jmp escape_return

# ---------------------------------------------------------------------------------------
# Printing 64-bit values and the CHECK_* macros
# ---------------------------------------------------------------------------------------

# puthex: print rax as 0x... (no leading zeros).
	.globl puthex
puthex:
	SAVE ax, cx
	PUTS "0x"
	mov %rax, %rcx
	shr $32, %rcx
	jz 1f
	push %rax
	mov %ecx, %eax              # the high half first, then all 8 digits of the low half
	mov $1, %ecx
	call puthex_digits
	pop %rax
	mov $8, %ecx
	jmp 2f
1:	mov $1, %ecx
2:	call puthex_digits
	RESTORE cx, ax
	ret

# check_masked: the stack holds (from the top) the return address, name, mask, want, got,
# pushed by CHECK_BITS / CHECK_EQ; `ret $32` drops the four arguments.
	.globl check_masked
check_masked:
	SAVE ax, bx, cx, dx, si
	mov 72(%rsp), %rax          # got
	and 56(%rsp), %rax          # & mask
	mov 64(%rsp), %rdx          # want
	mov 48(%rsp), %rsi          # name
	cmp %rdx, %rax
	sete %cl
	mov $0, %ch
	call check_report
	RESTORE si, dx, cx, bx, ax
	ret $32

# check_range: the stack holds the return address, name, hi, lo, got (see CHECK_RANGE).
	.globl check_range
check_range:
	SAVE ax, bx, cx, dx, si
	mov 72(%rsp), %rax          # got
	mov 64(%rsp), %rdx          # lo
	mov 56(%rsp), %rbx          # hi
	mov 48(%rsp), %rsi          # name
	cmp %rdx, %rax
	setae %cl                   # got >= lo
	cmp %rbx, %rax
	setbe %ch                   # got <= hi
	and %ch, %cl
	mov $1, %ch
	call check_report
	RESTORE si, dx, cx, bx, ax
	ret $32

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
	.data
	.balign 16
gdt:
	.quad 0                     # 0x00: null
	.quad 0x00AF9A000000FFFF    # 0x08 KERNEL_CS: 64-bit code (L = 1), DPL 0
	.quad 0x00CF92000000FFFF    # 0x10 KERNEL_DS: data, writable, DPL 0
	.quad 0x00AFFA000000FFFF    # 0x18 USER_CS: 64-bit code, DPL 3
	.quad 0x00CFF2000000FFFF    # 0x20 USER_DS: data, writable, DPL 3
gdt_tss:
	.quad 0, 0                  # 0x28 TSS_SEL: a 16-byte system descriptor, built in setup_cpu
gdt_end:
	.balign 8
	.word 0, 0, 0
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt

	.balign 8
	.word 0, 0, 0
idt_desc:
	.word 256 * 16 - 1
	.quad idt

# The 64-bit TSS only holds stack pointers: RSP0 for interrupts that arrive in ring 3, and
# the IST slots. The I/O map base points past the limit: no I/O bitmap, so ring 3 (with
# IOPL 0) gets #GP for every IN/OUT.
	.balign 16
	.globl tss
tss:
	.long 0
	.quad tss_stack_top         # RSP0
	.quad 0, 0                  # RSP1, RSP2
	.quad 0
	.quad ist1_stack_top        # IST1
	.quad 0, 0, 0, 0, 0, 0      # IST2..IST7
	.quad 0
	.word 0
	.word TSS_SIZE              # I/O map base

	.bss
	.balign 4096
pml4:           .skip 4096
pdpt:           .skip 4096
	.globl pd, pt0
pd:             .skip 4 * 4096  # four page directories: 0..4 GiB
pt0:            .skip 4096      # 4 KiB pages for 0..2 MiB
	.globl idt
idt:            .skip 256 * 16

	.balign 16
stack:          .skip 16384     # the kernel stack main() runs on
	.globl stack_top
stack_top:
	.globl tss_stack_top, ist1_stack_top
tss_stack:      .skip 8192      # TSS.RSP0: interrupts and exceptions from ring 3
tss_stack_top:
ist1_stack:     .skip 4096      # TSS.IST1: #DF and VEC_IST
ist1_stack_top:

	.balign 8
	.globl entry_rsi, entry_rsp, entry_rflags, entry_cs, entry_ds, entry_es, entry_ss
entry_rsi:      .skip 8
entry_rsp:      .skip 8
entry_rflags:   .skip 8
entry_cs:       .skip 8
entry_ds:       .skip 8
entry_es:       .skip 8
entry_ss:       .skip 8
