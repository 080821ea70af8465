# exceptions.S - many exceptions in a row, all handled by the guest's own IDT (64-bit).
#
# Provokes #PF (demand paging: the handler maps the page back and the instruction is
# retried), #UD, #BP, #DE and #GP several times each, faults from ring 3 (#GP for a DPL-0
# gate and for I/O, #PF for a supervisor page), an exception inside an exception handler,
# and a double fault. Every handler run is recorded (common64.S) and checked for the right
# vector, error code, saved RIP and CR2. Ends with "exceptions: survived N exceptions", the
# check summary, and power-off (or isa-debug-exit code 1 if a check failed).
#
# What it proves about the VMM: exceptions raised by the guest are delivered through the
# guest IDT with the architectural error codes and saved state, over and over (a VMM that
# forgets to finish an exception's delivery turns the next one into a double fault), from
# ring 0 and ring 3, nested, and a fault while delivering a fault becomes #DF on IST1.

	.include "macros.inc"

DEMAND_PAGES = 4

	.text
	.globl main
main:
	call setup_cpu
	SET_HANDLER VEC_PF, pf_demand

	call page_faults
	call simple_faults
	call ring3_faults
	call nested_exception
	call double_fault

	PUTS "exceptions: survived "
	mov exceptions_taken(%rip), %eax
	call putdec
	PUTS " exceptions\n"
	mov $guest_name, %esi
	jmp checks_finish

# ---------------------------------------------------------------------------------------
# #PF: demand paging (PF_ROUND in macros.inc). unmap_page clears the present bit of one of
# the demand_pages; the next access faults, pf_demand sets the bit again and the CPU
# retries the access.
# ---------------------------------------------------------------------------------------

page_faults:
	PF_ROUND "pf_write_1", demand_pages, $PF_W, movq $0x1111, (%rdi)
	CHECK_EQ "pf_write_1_landed", (%rdi), $0x1111
	PF_ROUND "pf_write_2", demand_pages, $PF_W, movq $0x2222, (%rdi)
	CHECK_EQ "pf_write_2_landed", (%rdi), $0x2222
	PF_ROUND "pf_write_3", demand_pages+4096, $PF_W, movq $0x3333, (%rdi)
	CHECK_EQ "pf_write_3_landed", (%rdi), $0x3333
	PF_ROUND "pf_read_1", demand_pages, $0, mov (%rdi), %rax
	CHECK_EQ "pf_read_1_value", %rax, $0x2222
	PF_ROUND "pf_read_2", demand_pages+4096, $0, mov (%rdi), %rax
	CHECK_EQ "pf_read_2_value", %rax, $0x3333

	# One instruction, two page faults: MOVSQ reads page 2 (fault, fixed, retried) and then
	# writes page 3 (fault, fixed, retried). The VMM must restart the instruction cleanly.
	lea demand_pages+2*4096(%rip), %rsi
	movq $0x4444, (%rsi)
	lea demand_pages+3*4096(%rip), %rdi
	call unmap_page
	xchg %rsi, %rdi
	call unmap_page
	xchg %rsi, %rdi
	CLEAR_REC VEC_PF
	movq $0, pf_log_count(%rip)
	cld
	movsq
	sub $8, %rsi
	sub $8, %rdi
	CHECK_REC "pf_movsq_two_faults", VEC_PF, REC_COUNT, $2
	CHECK_EQ "pf_movsq_first_cr2_source", pf_log(%rip), %rsi
	CHECK_EQ "pf_movsq_first_error_read", pf_log+8(%rip), $0
	CHECK_EQ "pf_movsq_second_cr2_destination", pf_log+16(%rip), %rdi
	CHECK_EQ "pf_movsq_second_error_write", pf_log+24(%rip), $PF_W
	CHECK_EQ "pf_movsq_copied", (%rdi), $0x4444
	ret

# unmap_page: rdi = a page below 2 MiB. Clears the present bit of its PTE and flushes the
# TLB entry (the CPU may have cached the old translation).
unmap_page:
	mov %rdi, %rax
	call pte_of
	andq $~PTE_P, (%rax)
	invlpg (%rdi)
	ret

# pf_demand: the #PF handler. In demand_pages a not-present page is mapped back and the
# access retried; every other #PF goes to isr_default (TRY fix-ups, or FAIL). Logs CR2 and
# the error code of each fault in pf_log.
pf_demand:
	mov %cr2, %rax
	mov pf_log_count(%rip), %rcx
	cmp $4, %rcx
	jae 1f
	shl $4, %rcx
	lea pf_log(%rip), %rdx
	mov %rax, (%rdx, %rcx)
	mov F_ERR(%rdi), %rsi
	mov %rsi, 8(%rdx, %rcx)
	incq pf_log_count(%rip)
1:	lea demand_pages(%rip), %rcx
	cmp %rcx, %rax
	jb isr_default
	add $DEMAND_PAGES * 4096, %rcx
	cmp %rcx, %rax
	jae isr_default
	call pte_of                     # rax = &PTE(CR2)
	testq $PTE_P, (%rax)
	jnz isr_default                 # present: a protection fault, not ours to fix
	orq $PTE_P, (%rax)
	ret                             # iretq retries the instruction

# ---------------------------------------------------------------------------------------
# #UD, #DE, #BP and #GP at ring 0, each several times in a row.
# ---------------------------------------------------------------------------------------
simple_faults:
	FAULT_ROUNDS

	movabs $0x8000000000000000, %rax    # not canonical: bits 63..47 differ
	TRY_EXPECT "gp_noncanonical_address", VEC_GP, $0, mov (%rax), %rax
	mov $BAD_SELECTOR, %eax
	TRY_EXPECT "gp_selector_beyond_gdt", VEC_GP, $BAD_SELECTOR, mov %eax, %ds
	mov $MSR_BOGUS, %ecx
	TRY_EXPECT "gp_unimplemented_msr", VEC_GP, $0, rdmsr
	ret

# ---------------------------------------------------------------------------------------
# Faults from ring 3 (USER_EXPECT in macros.inc). Each user routine faults once (the TRY
# fix-up resumes it) and returns to ring 0 with `int $0x80`.
# ---------------------------------------------------------------------------------------

ring3_faults:
	USER_GP_FAULTS
	# supervisor pages: #PF with P (protection violation) and U (from ring 3)
	USER_EXPECT "user_read_kernel_pf", user_read_kernel, VEC_PF, $(PF_P|PF_U), user_read_insn
	CHECK_REC "user_read_kernel_pf_cr2", VEC_PF, REC_CR2, $kernel_secret
	USER_EXPECT "user_write_kernel_pf", user_write_kernel, VEC_PF, $(PF_P|PF_W|PF_U), user_write_insn
	CHECK_REC "user_write_kernel_pf_cr2", VEC_PF, REC_CR2, $kernel_secret
	CHECK_EQ "user_write_kernel_blocked", kernel_secret(%rip), $0x5EC2E7
	ret

# ---------------------------------------------------------------------------------------
# An exception inside an exception handler (not during delivery): just another exception.
# ---------------------------------------------------------------------------------------
nested_exception:
	SET_HANDLER VEC_BP, bp_with_ud2
	CLEAR_REC VEC_UD
	CLEAR_REC VEC_BP
	int3
	SET_HANDLER VEC_BP, isr_return
	CHECK_REC "nested_bp_delivered", VEC_BP, REC_COUNT, $1
	CHECK_REC "nested_ud_in_bp_handler", VEC_UD, REC_COUNT, $1
	CHECK_REC "nested_ud_rip", VEC_UD, REC_RIP, $nested_ud2
	ret

bp_with_ud2:
	TRY nested_ud2, ud2
	ret

# ---------------------------------------------------------------------------------------
# Double fault (CHECK_DOUBLE_FAULT in macros.inc); 64-bit mode sends it to IST1.
# ---------------------------------------------------------------------------------------
double_fault:
	CHECK_DOUBLE_FAULT df_trigger
	CHECK_REC "df_on_ist1_stack", VEC_DF, REC_FRAME, $ist1_stack_top-40
	ret

df_trigger:
	movabs $0x8000000000000000, %rax
	mov (%rax), %rax                # #GP -> (gate not present) #NP -> #DF
	xor %eax, %eax                  # not reached
	ret

# ---------------------------------------------------------------------------------------
	.section .user.text, "ax"
user_read_kernel:
	TRY user_read_insn, mov kernel_secret(%rip), %rax
	jmp user_exit
user_write_kernel:
	TRY user_write_insn, movq $0, kernel_secret(%rip)
	jmp user_exit                   # (in USER_GP_FAULTS)

	.section .rodata
guest_name:     .asciz "exceptions"

	.data
	.balign 8
kernel_secret:  .quad 0x5EC2E7      # in a supervisor-only page

	.bss
	.balign 4096
demand_pages:   .skip DEMAND_PAGES * 4096
pf_log:         .skip 4 * 16    # (CR2, error code) of the first faults after pf_log_count = 0
pf_log_count:   .skip 8
