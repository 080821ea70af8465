# exceptions32.S - exceptions in 32-bit protected mode, through a 32-bit IDT (8-byte
# interrupt gates, type 0x8E) and a 32-bit TSS.
#
# Like exceptions.S, but for the other half of the x86 delivery logic: 32-bit gates, stack
# frames of 4-byte slots, and the ring-3 -> ring-0 switch through TSS.SS0:ESP0, where the CPU
# pushes SS and ESP only because the privilege level changes. The guest starts with paging
# off (as pyvmm enters 32-bit kernels) and turns on 32-bit paging itself for the #PF tests.
# Ends with "exceptions32: survived N exceptions", the check summary and power-off (or
# isa-debug-exit code 1 if a check failed).

	.include "macros.inc"

CR0_PG  = 1 << 31
CR4_PSE = 1 << 4                    # page size extension: 4 MiB pages in the page directory

	.text
	.globl main
main:
	call check_entry_state          # before setup_cpu changes anything
	call setup_cpu
	call simple_faults
	call ring3_faults
	call enable_paging
	call page_faults
	call double_fault

	PUTS "exceptions32: survived "
	mov exceptions_taken, %eax
	call putdec
	PUTS " exceptions\n"
	mov $guest_name, %esi
	jmp checks_finish

# ---------------------------------------------------------------------------------------
# Entry state of the 32-bit boot protocol (docs/platform.md): protected mode, paging off.
# ---------------------------------------------------------------------------------------
check_entry_state:
	CHECK_EQ "entry_esi_is_zero_page", entry_esi, $0x3000
	CHECK_EQ "entry_esp", entry_esp, $0x8000
	CHECK_EQ "entry_eflags", entry_eflags, $0x2
	CHECK_EQ "entry_cs", entry_cs, $0x10
	CHECK_EQ "entry_ds", entry_ds, $0x18
	CHECK_EQ "entry_es", entry_es, $0x18
	CHECK_EQ "entry_ss", entry_ss, $0x18
	mov %cr0, %eax
	CHECK_BITS "entry_cr0_pe_without_pg", %eax, $(CR0_PG|1), $1
	sgdt desc_buf
	CHECK_EQ "entry_gdt_base", desc_buf+2, $0x2000
	sidt desc_buf
	movzwl desc_buf, %eax
	CHECK_EQ "entry_idt_limit_0", %eax, $0
	ret

# ---------------------------------------------------------------------------------------
# #UD, #DE, #BP and #GP at ring 0, several times in a row.
# ---------------------------------------------------------------------------------------
simple_faults:
	FAULT_ROUNDS

	mov $BAD_SELECTOR, %eax
	TRY_EXPECT "gp_selector_beyond_gdt", VEC_GP, $BAD_SELECTOR, mov %eax, %ds
	xor %eax, %eax
	TRY_EXPECT "gp_null_ss", VEC_GP, $0, mov %eax, %ss
	mov $MSR_BOGUS, %ecx
	TRY_EXPECT "gp_unimplemented_msr", VEC_GP, $0, rdmsr
	ret

# ---------------------------------------------------------------------------------------
# Ring 3: exceptions from CPL 3 switch to SS0:ESP0 of the TSS and push the user SS:ESP.
# ---------------------------------------------------------------------------------------
ring3_faults:
	CLEAR_REC VEC_BP
	CLEAR_REC VEC_GP
	mov $user_int3_hlt, %edi
	mov $0x2, %esi                  # EFLAGS: IF = 0, IOPL = 0
	call run_user
	CHECK_EQ "ring3_int80_returned", %eax, $0x600D
	mov %cs, %ax
	movzwl %ax, %eax
	CHECK_EQ "ring3_back_in_ring0", %eax, $KERNEL_CS
	mov %ds, %ax
	movzwl %ax, %eax
	CHECK_EQ "ring3_back_with_kernel_ds", %eax, $KERNEL_DS
	CHECK_REC "ring3_int3_delivered", VEC_BP, REC_COUNT, $1
	CHECK_REC "ring3_int3_rip", VEC_BP, REC_RIP, $user_after_int3
	CHECK_REC "ring3_int3_saved_cs_rpl3", VEC_BP, REC_CS, $USER_CS
	CHECK_REC "ring3_int3_saved_user_esp", VEC_BP, REC_RSP, $user_stack_top
	CHECK_REC "ring3_int3_saved_user_ss", VEC_BP, REC_SS, $USER_DS
	CHECK_REC "ring3_int3_on_tss_esp0_stack", VEC_BP, REC_FRAME, $tss_stack_top-TSS_FRAME
	CHECK_REC "ring3_hlt_gp_delivered", VEC_GP, REC_COUNT, $1
	CHECK_REC "ring3_hlt_gp_error_code", VEC_GP, REC_ERR, $0
	CHECK_REC "ring3_hlt_gp_rip", VEC_GP, REC_RIP, $user_hlt
	CHECK_REC "ring3_hlt_gp_saved_user_ss", VEC_GP, REC_SS, $USER_DS
	CHECK_REC "ring3_hlt_gp_on_tss_esp0_stack", VEC_GP, REC_FRAME, $tss_stack_top-TSS_FRAME

	USER_GP_FAULTS
	ret

# ---------------------------------------------------------------------------------------
# 32-bit paging: a page directory whose first entry points at a page table (4 KiB pages for
# 0..4 MiB) and whose other entries are 4 MiB pages (CR4.PSE). Identity mapped.
# ---------------------------------------------------------------------------------------
enable_paging:
	mov $pt0, %edi
	mov $PTE_P | PTE_W, %eax
	mov $1024, %ecx
1:	mov %eax, (%edi)                # PTE i -> 4 KiB page i
	add $4096, %eax
	add $4, %edi
	loop 1b
	mov $page_dir, %edi
	mov $PTE_P | PTE_W | PTE_PS, %eax
	mov $1024, %ecx
2:	mov %eax, (%edi)                # PDE i -> 4 MiB page i
	add $0x400000, %eax
	add $4, %edi
	loop 2b
	movl $pt0 + (PTE_P | PTE_W), page_dir   # ... except PDE 0 -> pt0

	mov %cr4, %eax
	or $CR4_PSE, %eax
	mov %eax, %cr4
	mov $page_dir, %eax
	mov %eax, %cr3
	mov %cr0, %eax
	or $CR0_PG, %eax
	mov %eax, %cr0                  # paging on: from now on addresses are translated
	mov %cr0, %eax
	CHECK_BITS "paging_cr0_pg", %eax, $CR0_PG, $CR0_PG
	mov %cr3, %eax
	CHECK_EQ "paging_cr3", %eax, $page_dir
	ret

# ---------------------------------------------------------------------------------------
# #PF (PF_ROUND in macros.inc): unmap pf_page; the default handler (pf_fixup) restores its
# PTE and the access is retried. Four page faults in a row.
# ---------------------------------------------------------------------------------------
page_faults:
	PF_ROUND "pf_write_1", pf_page, $PF_W, movl $0x1111, (%edi)
	CHECK_EQ "pf_write_1_landed", (%edi), $0x1111
	PF_ROUND "pf_write_2", pf_page, $PF_W, movl $0x2222, (%edi)
	CHECK_EQ "pf_write_2_landed", (%edi), $0x2222
	PF_ROUND "pf_write_3", pf_page, $PF_W, movl $0x3333, (%edi)
	CHECK_EQ "pf_write_3_landed", (%edi), $0x3333
	PF_ROUND "pf_read_1", pf_page, $0, mov (%edi), %eax
	CHECK_EQ "pf_read_1_value", %eax, $0x3333
	ret

# unmap_page: edi = a page below 4 MiB. Clears its PTE (pf_fixup will restore it) and
# flushes its TLB entry.
unmap_page:
	mov %edi, %eax
	shr $12, %eax
	lea pt0(, %eax, 4), %eax
	mov %eax, pf_fix_ptr
	mov (%eax), %ecx
	mov %ecx, pf_fix_val
	movl $0, (%eax)
	invlpg (%edi)
	ret

# ---------------------------------------------------------------------------------------
# Double fault (CHECK_DOUBLE_FAULT in macros.inc).
# ---------------------------------------------------------------------------------------
double_fault:
	CHECK_DOUBLE_FAULT df_trigger
	ret

df_trigger:
	mov $BAD_SELECTOR, %eax
	mov %eax, %ds                   # #GP -> (gate not present) #NP -> #DF
	xor %eax, %eax                  # not reached
	ret

# ---------------------------------------------------------------------------------------
	.section .user.text, "ax"
user_int3_hlt:
	int3                            # #BP through a DPL-3 gate
user_after_int3:
	TRY user_hlt, hlt               # privileged at CPL 3: #GP(0)
	jmp user_exit                   # (in USER_GP_FAULTS)

	.section .rodata
guest_name:     .asciz "exceptions32"

	.bss
	.balign 4096
page_dir:       .skip 4096
pt0:            .skip 4096
pf_page:        .skip 4096
desc_buf:       .skip 8
