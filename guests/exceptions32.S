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
MSR_BOGUS = 0x4B564DFF
BAD_SELECTOR = 0x1230               # GDT index 0x246: far beyond our GDT limit

	.text
	.globl main
main:
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
# #UD, #DE, #BP and #GP at ring 0, several times in a row.
# ---------------------------------------------------------------------------------------
simple_faults:
	.irp n, 1, 2, 3
	TRY_EXPECT "ud2_\n", VEC_UD, $0, ud2
	.endr

	.irp n, 1, 2, 3
	mov $\n, %eax
	xor %edx, %edx
	xor %ecx, %ecx
	TRY_EXPECT "div_by_zero_\n", VEC_DE, $0, div %ecx
	.endr

	.irp n, 1, 2, 3
	CLEAR_REC VEC_BP
	int3
.Lafter_int3_\n:
	CHECK_REC "int3_\n\()_delivered", VEC_BP, REC_COUNT, $1
	CHECK_REC "int3_\n\()_rip_after_int3", VEC_BP, REC_RIP, $.Lafter_int3_\n
	CHECK_REC "int3_\n\()_saved_cs", VEC_BP, REC_CS, $KERNEL_CS
	.endr

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

	# int n checks the gate's DPL against CPL: #GP(vector * 8 + 2), "2" = the IDT flag
	USER_EXPECT "user_int_dpl0_gate_gp", user_int81, VEC_GP, $(0x81*8+2), user_int81_insn
	# IOPL 0 and no I/O permission bitmap in the TSS: #GP(0)
	USER_EXPECT "user_out_gp", user_out, VEC_GP, $0, user_out_insn
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
# #PF: unmap pf_page; the default handler (pf_fixup) restores its PTE and the access is
# retried. Four page faults in a row.
# ---------------------------------------------------------------------------------------
.macro PF_ROUND name:req, err:req, insn:vararg
	mov $pf_page, %edi
	call unmap_page
	CLEAR_REC VEC_PF
.Lpf_round\@:
	\insn
	CHECK_REC "\name\()_delivered", VEC_PF, REC_COUNT, $1
	CHECK_REC "\name\()_error_code", VEC_PF, REC_ERR, \err
	CHECK_REC "\name\()_cr2", VEC_PF, REC_CR2, $pf_page
	CHECK_REC "\name\()_rip", VEC_PF, REC_RIP, $.Lpf_round\@
.endm

page_faults:
	PF_ROUND "pf_write_1", $PF_W, movl $0x1111, (%edi)
	CHECK_EQ "pf_write_1_landed", (%edi), $0x1111
	PF_ROUND "pf_write_2", $PF_W, movl $0x2222, (%edi)
	CHECK_EQ "pf_write_2_landed", (%edi), $0x2222
	PF_ROUND "pf_write_3", $PF_W, movl $0x3333, (%edi)
	CHECK_EQ "pf_write_3_landed", (%edi), $0x3333
	PF_ROUND "pf_read_1", $0, mov (%edi), %eax
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
# Double fault: the #GP gate is marked not present, so delivering #GP raises #NP, and two
# contributory exceptions make a #DF (error code 0). Its handler escapes to run_guarded.
# ---------------------------------------------------------------------------------------
double_fault:
	SET_HANDLER VEC_DF, df_escape
	CLEAR_REC VEC_DF
	CLEAR_REC VEC_NP
	CLEAR_REC VEC_GP
	andb $0x7F, idt + VEC_GP * 8 + 5    # clear the P bit of the #GP gate
	mov $df_trigger, %edi
	call run_guarded
	orb $0x80, idt + VEC_GP * 8 + 5     # and set it again
	CHECK_EQ "df_handler_escaped", %eax, $VEC_DF
	CHECK_REC "df_delivered", VEC_DF, REC_COUNT, $1
	CHECK_REC "df_error_code_0", VEC_DF, REC_ERR, $0
	CHECK_REC "df_np_not_delivered", VEC_NP, REC_COUNT, $0
	CHECK_REC "df_gp_not_delivered", VEC_GP, REC_COUNT, $0
	ret

df_trigger:
	mov $BAD_SELECTOR, %eax
	mov %eax, %ds                   # #GP -> (gate not present) #NP -> #DF
	xor %eax, %eax                  # not reached
	ret

df_escape:
	mov $VEC_DF, %eax
	jmp escape

# ---------------------------------------------------------------------------------------
	.section .user.text, "ax"
user_int3_hlt:
	int3                            # #BP through a DPL-3 gate
user_after_int3:
	TRY user_hlt, hlt               # privileged at CPL 3: #GP(0)
	jmp user_done
user_int81:
	TRY user_int81_insn, int $0x81
	jmp user_done
user_out:
	TRY user_out_insn, outb %al, $0x80
user_done:
	mov $0x600D, %edi
	int $0x80

	.section .rodata
guest_name:     .asciz "exceptions32"

	.bss
	.balign 4096
page_dir:       .skip 4096
pt0:            .skip 4096
pf_page:        .skip 4096
