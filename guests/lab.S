# lab.S - the exit laboratory: every kind of VM exit pyvmm handles, and what must come back.
#
# A hypervisor only sees a guest when the guest does something the hardware (here: the
# VMM's SVM intercepts) refuses to do alone: CPUID, port I/O, HLT, MSR and control-register
# access, hypercalls, INVLPG, RDTSC, exceptions, interrupts. Each section below performs one
# kind of exit and checks the result against docs/platform.md. Each check prints
# "ok <name>" or "FAIL <name>: got X want Y"; the last line is "lab: N checks passed".
# Then the guest powers off (exit status 0), or exits through isa-debug-exit with code 1
# if a check failed (exit status 3).

	.include "macros.inc"

MSR_SYSENTER_ESP   = 0x175
MSR_PAT            = 0x277
MSR_EFER           = 0xC0000080
MSR_KERNEL_GS_BASE = 0xC0000102
EFER_LME = 1 << 8                   # long mode enable
EFER_LMA = 1 << 10                  # long mode active
CR0_PE   = 1 << 0
CR0_PG   = 1 << 31
CR4_PAE  = 1 << 5
CR4_PGE  = 1 << 7

HC_XEN_VERSION = 17                 # xen/include/public/xen.h hypercall numbers
HC_CONSOLE_IO  = 18
HC_SCHED_OP    = 29
XENVER_VERSION = 0
CONSOLEIO_WRITE = 0
SCHEDOP_SHUTDOWN = 2
SHUTDOWN_SUSPEND = 2
ENOSYS = 38
EINVAL = 22

PIT_DIVISOR_1KHZ = 1193             # 1193182 Hz / 1193 = 1000.15 Hz

# The page-fault test unmaps the 2 MiB page at 2 MiB (PDE 1). The kernel lives below 2 MiB,
# so nothing else uses it; the e820 check makes sure it is RAM.
PF_SCRATCH = 0x234560

# RUN_SECTION name: call check_<name>, unless the command line says skip=<name>[,<name>...]
# (handy while a VMM feature is still missing, or to run the lab on a machine without it).
.macro RUN_SECTION name:req
	mov $.Lsection_name\@, %esi
	mov $check_\name, %edi
	call run_section
	.pushsection .rodata
.Lsection_name\@: .asciz "\name"
	.popsection
.endm

	.text
	.globl main
main:
	RUN_SECTION entry_state             # before setup_cpu changes anything
	RUN_SECTION zero_page
	call setup_cpu
	SET_HANDLER VEC_TIMER, timer_irq
	RUN_SECTION cpuid
	RUN_SECTION port_io
	RUN_SECTION string_io
	RUN_SECTION hypercalls
	RUN_SECTION msrs
	RUN_SECTION control_registers
	RUN_SECTION tlb_and_tsc
	RUN_SECTION exceptions
	RUN_SECTION ring3
	RUN_SECTION ist
	RUN_SECTION interrupts
	mov $guest_name, %esi
	jmp checks_finish

# run_section: esi = section name, rdi = its function.
run_section:
	mov %rsi, %rbx
	mov $.Lkey_skip, %esi
	call cmdline_find               # esi = the list after "skip=", or 0
	test %esi, %esi
	jz 4f
1:	mov %rbx, %rdx                  # compare one list item with the name
2:	mov (%rsi), %al
	cmp $',', %al
	je 3f
	cmp $' ', %al
	je 3f
	test %al, %al
	je 3f
	cmp (%rdx), %al
	jne 5f
	inc %rsi
	inc %rdx
	jmp 2b
3:	cmpb $0, (%rdx)                 # item ended: skip if the name ended too
	je 6f
5:	mov (%rsi), %al                 # no match: go to the next item
	inc %rsi
	cmp $',', %al
	je 1b
	cmp $' ', %al
	je 4f
	test %al, %al
	jne 5b
4:	jmp *%rdi                       # not skipped: run it
6:	PUTS "skip "
	mov %rbx, %rsi
	call puts
	jmp newline

# ---------------------------------------------------------------------------------------
# Entry state: the registers the 64-bit boot protocol defines (docs/platform.md table).
# Proves the loader and the initial vCPU state.
# ---------------------------------------------------------------------------------------
check_entry_state:
	CHECK_EQ "entry_rsi_is_zero_page", entry_rsi(%rip), $0x3000
	CHECK_EQ "entry_rsp", entry_rsp(%rip), $0x8000
	CHECK_EQ "entry_rflags", entry_rflags(%rip), $0x2
	CHECK_EQ "entry_cs", entry_cs(%rip), $0x10
	CHECK_EQ "entry_ds", entry_ds(%rip), $0x18
	CHECK_EQ "entry_es", entry_es(%rip), $0x18
	CHECK_EQ "entry_ss", entry_ss(%rip), $0x18
	mov %cr0, %rax
	mov $CR0_PG | CR0_PE, %ecx
	CHECK_BITS "entry_cr0_pg_pe", %rax, %rcx, %rcx
	mov %cr4, %rax
	CHECK_BITS "entry_cr4_pae", %rax, $CR4_PAE, $CR4_PAE
	mov $MSR_EFER, %ecx
	call rdmsr64
	CHECK_BITS "entry_efer_lme_lma", %rax, $(EFER_LME|EFER_LMA), $(EFER_LME|EFER_LMA)
	mov %cr3, %rax
	CHECK_BITS "entry_cr3_pml4", %rax, $~0xFFF, $0x9000
	# Walk the VMM's page tables for 0xFFE00000: the last 2 MiB page below 4 GiB must be
	# identity mapped (PML4[0] -> PDPT[3] -> PD[511], a 2 MiB page).
	movabs $0x000FFFFFFFFFF000, %rdx        # physical-address bits of a table entry
	and %rdx, %rax
	mov (%rax), %rax                        # PML4[0]
	and %rdx, %rax
	mov 3 * 8(%rax), %rax                   # PDPT[3]: 3..4 GiB
	and %rdx, %rax
	mov 511 * 8(%rax), %rax                 # PD[511]: 0xFFE00000
	mov $0xFFE00000 | 0x81, %ecx            # address | PS | P
	movabs $0x000FFFFFFFE00081, %rdx
	CHECK_BITS "entry_identity_map_4g", %rax, %rdx, %rcx
	sgdt desc_buf(%rip)
	CHECK_EQ "entry_gdt_base", desc_buf+2(%rip), $0x2000
	sidt desc_buf(%rip)
	movzwl desc_buf(%rip), %eax
	CHECK_EQ "entry_idt_limit_0", %rax, $0
	ret

# ---------------------------------------------------------------------------------------
# The zero page: command line pointer and the e820 map (docs/platform.md, "Entry state").
# ---------------------------------------------------------------------------------------
check_zero_page:
	mov boot_params(%rip), %rbx
	mov BP_CMD_LINE_PTR(%rbx), %eax
	CHECK_EQ "zeropage_cmd_line_ptr", %rax, $0x4000
	movzbl BP_E820_ENTRIES(%rbx), %eax
	CHECK_RANGE "zeropage_e820_entries", %rax, $3, $128
	lea BP_E820_TABLE(%rbx), %rsi
	CHECK_EQ "e820_0_addr", 0(%rsi), $0
	CHECK_EQ "e820_0_size", 8(%rsi), $0x9FC00
	mov 16(%rsi), %eax
	CHECK_EQ "e820_0_type_ram", %rax, $E820_RAM
	add $E820_ENTRY_SIZE, %rsi
	CHECK_EQ "e820_1_addr", 0(%rsi), $0x9FC00
	CHECK_EQ "e820_1_size", 8(%rsi), $(0x100000-0x9FC00)
	mov 16(%rsi), %eax
	CHECK_EQ "e820_1_type_reserved", %rax, $E820_RESERVED
	add $E820_ENTRY_SIZE, %rsi
	CHECK_EQ "e820_2_addr", 0(%rsi), $0x100000
	mov 16(%rsi), %eax
	CHECK_EQ "e820_2_type_ram", %rax, $E820_RAM
	# this guest uses RAM up to 4 MiB (PF_SCRATCH)
	mov 8(%rsi), %rax
	mov $0x7FFFFFFF, %ecx
	CHECK_RANGE "e820_2_covers_4mib", %rax, $0x300000, %rcx
	ret

# ---------------------------------------------------------------------------------------
# CPUID: always intercepted. pyvmm reports an AMD EPYC, adjusted (docs/platform.md, CPUID).
# ---------------------------------------------------------------------------------------
check_cpuid:
	xor %eax, %eax
	cpuid
	CHECK_RANGE "cpuid_0_max_leaf", %rax, $1, $0xFFFF
	mov %ebx, sig_buf(%rip)                 # the vendor string is EBX, EDX, ECX
	mov %edx, sig_buf + 4(%rip)
	mov %ecx, sig_buf + 8(%rip)
	mov $.Lname_vendor, %esi
	mov $.Lwant_vendor, %edx
	call check_signature

	mov $1, %eax
	cpuid
	mov %ecx, %eax
	shr $31, %eax                           # ECX[31]: running under a hypervisor
	CHECK_EQ "cpuid_1_hypervisor_bit", %rax, $1
	mov %edx, %eax
	shr $9, %eax
	and $1, %eax                            # EDX[9]: on-chip APIC (pyvmm has none)
	CHECK_EQ "cpuid_1_no_apic", %rax, $0

	mov $0x80000001, %eax
	cpuid
	CHECK_BITS "cpuid_80000001_no_svm", %rcx, $(1<<2), $0

	mov $0x40000000, %eax                   # the hypervisor leaves
	cpuid
	CHECK_EQ "cpuid_40000000_max_leaf", %rax, $0x40000001
	mov %ebx, sig_buf(%rip)                 # the signature is EBX, ECX, EDX
	mov %ecx, sig_buf + 4(%rip)
	mov %edx, sig_buf + 8(%rip)
	mov $.Lname_hv_sig, %esi
	mov $.Lwant_hv_sig, %edx
	call check_signature

	mov $0x40000001, %eax
	cpuid
	or %rcx, %rbx
	or %rdx, %rbx
	CHECK_EQ "cpuid_40000001_ebx_ecx_edx_zero", %rbx, $0
	ret

# check_signature: compare the 12 bytes in sig_buf with the string at rdx; esi = check name.
# Prints both as text when they differ.
check_signature:
	lea sig_buf(%rip), %rdi
	mov %rdx, %rbx
	mov $12, %ecx
1:	mov (%rdi), %al
	cmp (%rdx), %al
	jne 2f
	inc %rdi
	inc %rdx
	loop 1b
	jmp check_pass
2:	call check_fail_begin
	PUTS "\""
	lea sig_buf(%rip), %rsi                 # sig_buf[12] stays 0: it is a C string
	call puts
	PUTS "\""
	call check_fail_want
	PUTS "\""
	mov %rbx, %rsi
	call puts
	PUTS "\""
	jmp newline

# ---------------------------------------------------------------------------------------
# Port I/O: every IN/OUT is an IOIO exit; pyvmm routes it to a device model or, for a port
# nobody claims, reads all ones and drops writes (docs/platform.md, I/O ports).
# ---------------------------------------------------------------------------------------
check_port_io:
	# The UART scratch register keeps what was written: OUT then IN reach the same device.
	mov $COM1_SCRATCH, %dx
	mov $0xA5, %al
	out %al, %dx
	xor %eax, %eax
	in %dx, %al
	CHECK_EQ "io_uart_scratch_register", %rax, $0xA5

	# CMOS: register B bit 2 clear = BCD mode (the default); register 0 = seconds.
	mov $0x0B, %al
	out %al, $CMOS_INDEX
	in $CMOS_DATA, %al
	movzbl %al, %eax
	CHECK_BITS "io_cmos_bcd_mode", %rax, $(1<<2), $0
	mov $0x00, %al
	out %al, $CMOS_INDEX
	in $CMOS_DATA, %al
	movzbl %al, %eax
	CHECK_RANGE "io_cmos_seconds_le_59", %rax, $0x00, $0x59
	and $0x0F, %eax
	CHECK_RANGE "io_cmos_seconds_bcd_digit", %rax, $0, $9

	# Nobody decodes UNCLAIMED_PORT: reads float to all ones at every width.
	mov $UNCLAIMED_PORT, %dx
	xor %eax, %eax
	in %dx, %al
	CHECK_EQ "io_unclaimed_port_in8", %rax, $0xFF
	xor %eax, %eax
	in %dx, %ax
	CHECK_EQ "io_unclaimed_port_in16", %rax, $0xFFFF
	xor %eax, %eax
	in %dx, %eax                            # (zero-extends into rax)
	mov $0xFFFFFFFF, %ecx
	CHECK_EQ "io_unclaimed_port_in32", %rax, %rcx
	xor %eax, %eax
	out %eax, %dx                           # ignored ...
	in %dx, %eax
	CHECK_EQ "io_unclaimed_port_write_ignored", %rax, %rcx
	ret

# String I/O: one exit moves several bytes between a port and guest memory; the VMM must
# translate the guest-virtual buffer address and update RCX/RSI/RDI like the CPU would.
check_string_io:
	lea outs_text(%rip), %rsi
	mov $outs_len, %ecx
	mov $COM1, %dx
	cld
	rep outsb                               # visible on the console
	CHECK_EQ "io_rep_outsb_rcx", %rcx, $0
	lea outs_text + outs_len(%rip), %rax
	CHECK_EQ "io_rep_outsb_rsi", %rsi, %rax

	mov $COM1_SCRATCH, %dx
	mov $0x5A, %al
	out %al, %dx
	lea ins_buf(%rip), %rdi
	movabs $0x1111111111111111, %rax
	mov %rax, (%rdi)
	mov $4, %ecx
	rep insb                                # four reads of the scratch register
	CHECK_EQ "io_rep_insb_rcx", %rcx, $0
	lea ins_buf + 4(%rip), %rax
	CHECK_EQ "io_rep_insb_rdi", %rdi, %rax
	mov ins_buf(%rip), %eax
	CHECK_EQ "io_rep_insb_data", %rax, $0x5A5A5A5A
	mov ins_buf + 4(%rip), %eax
	CHECK_EQ "io_rep_insb_no_overrun", %rax, $0x11111111
	ret

# ---------------------------------------------------------------------------------------
# Hypercalls: VMCALL (Intel's instruction) and VMMCALL (AMD's) both reach pyvmm, with Xen's
# register convention (docs/platform.md, Hypercalls).
# ---------------------------------------------------------------------------------------
check_hypercalls:
	mov $HC_XEN_VERSION, %eax
	mov $XENVER_VERSION, %edi
	vmcall
	mov %rax, %rbx
	shr $16, %rax
	CHECK_EQ "vmcall_xen_version_major_0", %rax, $0
	mov %rbx, %rax
	shr $63, %rax
	CHECK_EQ "vmcall_xen_version_not_negative", %rax, $0

	mov $HC_XEN_VERSION, %eax
	mov $XENVER_VERSION, %edi
	vmmcall
	CHECK_EQ "vmmcall_xen_version_same_as_vmcall", %rax, %rbx

	mov $999, %eax
	vmcall
	CHECK_EQ "vmcall_unknown_returns_enosys", %rax, $-ENOSYS

	mov $HC_CONSOLE_IO, %eax
	mov $CONSOLEIO_WRITE, %edi
	mov $hc_text_len, %esi
	lea hc_text(%rip), %rdx
	vmcall
	CHECK_EQ "vmcall_console_io_write_returns_len", %rax, $hc_text_len

	mov $HC_SCHED_OP, %eax
	mov $SCHEDOP_SHUTDOWN, %edi
	lea shutdown_suspend(%rip), %rsi
	vmcall
	CHECK_EQ "vmcall_sched_op_suspend_refused", %rax, $-EINVAL
	ret

# ---------------------------------------------------------------------------------------
# MSRs: RDMSR/WRMSR exits. Known MSRs behave as on hardware; unknown ones and reserved bits
# raise #GP(0) in the guest (docs/platform.md, MSRs).
# ---------------------------------------------------------------------------------------
check_msrs:
	# A base address MSR holds a canonical address (bits 63..47 all equal): write one and
	# read it back, then try a non-canonical one, which must raise #GP(0) and change nothing.
	mov $MSR_KERNEL_GS_BASE, %ecx
	movabs $0xFFFF8123456789A0, %rax
	mov %rax, %rbx
	call wrmsr64
	call rdmsr64
	CHECK_EQ "msr_kernel_gs_base_write_read", %rax, %rbx
	movabs $0x123456789ABCDEF0, %rax
	mov %rax, %rdx
	shr $32, %rdx
	TRY_EXPECT "msr_kernel_gs_base_noncanonical_gp", VEC_GP, $0, wrmsr
	call rdmsr64
	CHECK_EQ "msr_kernel_gs_base_unchanged_after_gp", %rax, %rbx
	xor %eax, %eax
	call wrmsr64

	mov $MSR_EFER, %ecx
	call rdmsr64
	mov %rax, %r12                          # keep EFER
	CHECK_BITS "msr_efer_lme_lma", %rax, $(EFER_LME|EFER_LMA), $(EFER_LME|EFER_LMA)

	mov $MSR_SYSENTER_ESP, %ecx
	mov $0x1234ABCD, %eax
	call wrmsr64
	call rdmsr64
	CHECK_EQ "msr_sysenter_esp_write_read", %rax, $0x1234ABCD
	xor %eax, %eax
	call wrmsr64

	mov $MSR_BOGUS, %ecx
	TRY_EXPECT "msr_unimplemented_rdmsr_gp", VEC_GP, $0, rdmsr
	xor %eax, %eax
	xor %edx, %edx
	TRY_EXPECT "msr_unimplemented_wrmsr_gp", VEC_GP, $0, wrmsr

	mov $MSR_EFER, %ecx                     # EFER bit 2 is reserved
	mov %r12, %rax
	or $(1<<2), %rax
	mov %rax, %rdx
	shr $32, %rdx
	TRY_EXPECT "msr_efer_reserved_bit_gp", VEC_GP, $0, wrmsr
	call rdmsr64
	CHECK_EQ "msr_efer_unchanged_after_gp", %rax, %r12
	mov %r12, %rax                          # (in case the write went through after all)
	call wrmsr64

	mov $MSR_PAT, %ecx                      # memory type 2 is reserved in a PAT entry
	call rdmsr64
	mov %rax, %r12
	and $~7, %rax
	or $2, %rax
	mov %rax, %rdx
	shr $32, %rdx
	TRY_EXPECT "msr_pat_reserved_type_gp", VEC_GP, $0, wrmsr
	call rdmsr64
	CHECK_EQ "msr_pat_unchanged_after_gp", %rax, %r12
	mov %r12, %rax
	call wrmsr64
	ret

# rdmsr64: ecx = MSR -> rax = its 64-bit value. wrmsr64: ecx = MSR, rax = value.
rdmsr64:
	push %rdx
	rdmsr                                   # value in edx:eax
	shl $32, %rdx
	or %rdx, %rax
	pop %rdx
	ret

wrmsr64:
	push %rdx
	mov %rax, %rdx
	shr $32, %rdx
	wrmsr
	pop %rdx
	ret

# ---------------------------------------------------------------------------------------
# Control registers: MOV to/from CR0/CR3/CR4 (CR-access exits or intercepted writes).
# ---------------------------------------------------------------------------------------
check_control_registers:
	mov %cr0, %rax
	mov $CR0_PG | CR0_PE, %ecx
	CHECK_BITS "cr0_pg_pe", %rax, %rcx, %rcx

	mov %cr3, %rax                          # write CR3 back: a full (non-global) TLB flush
	mov %rax, %cr3
	mov %cr3, %rbx
	CHECK_EQ "cr3_write_read_back", %rbx, %rax

	mov %cr4, %rbx                          # keep CR4
	mov %rbx, %rax
	or $CR4_PGE, %rax
	mov %rax, %cr4
	mov %cr4, %rax
	CHECK_BITS "cr4_pge_set", %rax, $CR4_PGE, $CR4_PGE
	and $~CR4_PGE, %rax
	mov %rax, %cr4
	mov %cr4, %rax
	CHECK_BITS "cr4_pge_cleared", %rax, $CR4_PGE, $0
	mov %rbx, %cr4

	mov %rbx, %rax                          # CR4 bit 31 is reserved
	bts $31, %rax
	TRY_EXPECT "cr4_reserved_bit_gp", VEC_GP, $0, mov %rax, %cr4
	mov %cr4, %rax
	CHECK_EQ "cr4_unchanged_after_gp", %rax, %rbx
	ret

# ---------------------------------------------------------------------------------------
# INVLPG and RDTSC.
# ---------------------------------------------------------------------------------------
check_tlb_and_tsc:
	# Point the virtual page remap_a at the physical page of remap_b. After INVLPG the CPU
	# (and the VMM's software TLB) must use the new translation; after putting it back and
	# another INVLPG, the old one.
	movq $0xAAAA, remap_a(%rip)
	movq $0xBBBB, remap_b(%rip)
	lea remap_a(%rip), %rax
	call pte_of
	mov %rax, %rbx                          # rbx = &PTE(remap_a)
	mov (%rbx), %r12                        # its current value
	lea remap_b(%rip), %rax
	or $3, %rax                             # present, writable
	mov %rax, (%rbx)
	lea remap_a(%rip), %rdi
	invlpg (%rdi)
	mov (%rdi), %rax
	CHECK_EQ "invlpg_sees_new_mapping", %rax, $0xBBBB
	mov %r12, (%rbx)
	invlpg (%rdi)
	mov (%rdi), %rax
	CHECK_EQ "invlpg_sees_restored_mapping", %rax, $0xAAAA

	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov %rax, %rbx
	mov $1000, %ecx
1:	loop 1b
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	sub %rbx, %rax
	movabs $0x7FFFFFFFFFFFFFFF, %rcx
	CHECK_RANGE "rdtsc_increases", %rax, $1, %rcx
	ret

# ---------------------------------------------------------------------------------------
# Exceptions at ring 0, delivered through the guest's own IDT (common64.S records each one).
# Faults save the RIP of the faulting instruction; traps (int3) the RIP after it.
# ---------------------------------------------------------------------------------------
check_exceptions:
	mov $1, %eax
	xor %edx, %edx
	xor %ecx, %ecx
	TRY_EXPECT "de_divide_by_zero", VEC_DE, $0, div %rcx
	TRY_EXPECT "ud_ud2", VEC_UD, $0, ud2

	CLEAR_REC VEC_BP
	int3
.Lafter_int3:
	CHECK_REC "bp_int3_delivered", VEC_BP, REC_COUNT, $1
	CHECK_REC "bp_int3_rip_is_next_insn", VEC_BP, REC_RIP, $.Lafter_int3
	CHECK_REC "bp_int3_cs_ring0", VEC_BP, REC_CS, $KERNEL_CS

	# #PF: clear the PDE of the 2 MiB page around PF_SCRATCH, then write there. The handler
	# (pf_fixup) restores the PDE and the CPU retries the write, which then lands.
	mov $PF_SCRATCH, %rax
	call pde_of
	mov %rax, %rbx                          # rbx = &PDE
	mov (%rbx), %r12                        # r12 = its value
	movq $0, (%rbx)
	mov $PF_SCRATCH, %rdi
	invlpg (%rdi)                           # the TLB may still hold the old translation
	mov %rbx, pf_fix_ptr(%rip)
	mov %r12, pf_fix_val(%rip)
	CLEAR_REC VEC_PF
.Lpf_write:
	movq $0x5151, (%rdi)
	CHECK_REC "pf_delivered_once", VEC_PF, REC_COUNT, $1
	CHECK_REC "pf_error_code_write_not_present", VEC_PF, REC_ERR, $PF_W
	CHECK_REC "pf_cr2_is_address", VEC_PF, REC_CR2, $PF_SCRATCH
	CHECK_REC "pf_rip_is_faulting_insn", VEC_PF, REC_RIP, $.Lpf_write
	CHECK_EQ "pf_retried_write_landed", (%rdi), $0x5151
	and $~(PTE_A|PTE_D), %r12               # the retried write may set Accessed/Dirty
	CHECK_BITS "pf_pde_restored", (%rbx), $~(PTE_A|PTE_D), %r12
	ret

# ---------------------------------------------------------------------------------------
# Ring 3: iretq into user code (U/S pages), which raises #BP (int3, DPL-3 gate) and #GP
# (HLT is privileged), then returns with `int $0x80`. Each delivery from ring 3 must switch
# to TSS.RSP0 and save the user SS:RSP and CS with RPL 3.
# ---------------------------------------------------------------------------------------
check_ring3:
	CLEAR_REC VEC_BP
	CLEAR_REC VEC_GP
	CLEAR_REC VEC_SYSCALL
	mov $user_exceptions, %edi
	mov $0x2, %esi                          # RFLAGS: IF = 0, IOPL = 0
	call run_user
	CHECK_EQ "ring3_int80_returned", %rax, $0x600D
	mov %cs, %ax
	movzwl %ax, %eax
	CHECK_EQ "ring3_back_in_ring0", %rax, $KERNEL_CS
	CHECK_REC "ring3_int3_delivered", VEC_BP, REC_COUNT, $1
	CHECK_REC "ring3_int3_saved_cs_rpl3", VEC_BP, REC_CS, $USER_CS
	CHECK_REC "ring3_int3_rip", VEC_BP, REC_RIP, $user_after_int3
	CHECK_REC "ring3_int3_saved_user_rsp", VEC_BP, REC_RSP, $user_stack_top
	CHECK_REC "ring3_int3_saved_user_ss", VEC_BP, REC_SS, $USER_DS
	CHECK_REC "ring3_int3_on_tss_rsp0_stack", VEC_BP, REC_FRAME, $tss_stack_top-TSS_FRAME
	CHECK_REC "ring3_hlt_gp_delivered", VEC_GP, REC_COUNT, $1
	CHECK_REC "ring3_hlt_gp_error_code", VEC_GP, REC_ERR, $0
	CHECK_REC "ring3_hlt_gp_rip", VEC_GP, REC_RIP, $user_hlt
	CHECK_REC "ring3_hlt_gp_saved_cs_rpl3", VEC_GP, REC_CS, $USER_CS
	CHECK_REC "ring3_hlt_gp_on_tss_rsp0_stack", VEC_GP, REC_FRAME, $tss_stack_top-TSS_FRAME
	CHECK_REC "ring3_int80_saved_cs_rpl3", VEC_SYSCALL, REC_CS, $USER_CS
	ret

# IST: the gate of VEC_IST names IST1, so even at ring 0 the CPU switches to TSS.IST1.
check_ist:
	CLEAR_REC VEC_IST
	int $VEC_IST
	CHECK_REC "ist_int_delivered", VEC_IST, REC_COUNT, $1
	CHECK_REC "ist_int_on_ist1_stack", VEC_IST, REC_FRAME, $ist1_stack_top-40
	ret

# ---------------------------------------------------------------------------------------
# External interrupts: PIT channel 0 at ~1 kHz on IRQ 0 (vector 0x20).
# ---------------------------------------------------------------------------------------
check_interrupts:
	mov $PIT_DIVISOR_1KHZ, %eax
	call pit_periodic
	mov $0xFFFE, %eax
	call pic_set_mask                       # unmask IRQ 0 only

	# 1. HLT with IF = 1 sleeps until an interrupt: the VMM must wake the vCPU when the
	#    timer fires, deliver IRQ 0, and the saved RIP is the instruction after HLT.
	CLEAR_REC VEC_TIMER
	mov ticks(%rip), %rbx
	sti                                     # (STI's one-instruction shadow covers the HLT)
	hlt
.Lafter_hlt:
	cli
	mov ticks(%rip), %rax
	sub %rbx, %rax
	CHECK_RANGE "hlt_woken_by_timer_irq", %rax, $1, $1000000
	CHECK_REC "hlt_irq_saved_rip_after_hlt", VEC_TIMER, REC_RIP, $.Lafter_hlt
	CHECK_REC "timer_irq_saved_cs_ring0", VEC_TIMER, REC_CS, $KERNEL_CS

	# 2. Interrupt window: with IF = 0 the tick must stay pending in the PIC (IRR bit 0)
	#    and not be delivered; right after STI (and the one instruction in its shadow) it
	#    must be. The VMM has to notice that the guest became interruptible without any
	#    other exit, e.g. with a VINTR intercept.
	mov $0x0A, %al
	out %al, $PIC1_CMD                      # OCW3: reads of port 0x20 return the IRR
	mov ticks(%rip), %rbx
	mov $100000, %ecx                       # (each IN is an exit: give up after a while)
1:	in $PIC1_CMD, %al
	test $1, %al
	jnz 2f
	dec %ecx
	jnz 1b
2:	movzbl %al, %eax
	and $1, %eax
	CHECK_EQ "irq0_pending_in_irr_while_if0", %rax, $1
	mov ticks(%rip), %rax
	sub %rbx, %rax
	CHECK_EQ "if0_holds_irq_back", %rax, $0
	CLEAR_REC VEC_TIMER
	sti
.Lwindow_1:
	nop                                     # in the STI shadow: not interruptible yet
.Lwindow_2:
	nop
.Lwindow_3:
	cli
	mov ticks(%rip), %rax
	sub %rbx, %rax
	CHECK_RANGE "irq_window_delivered_after_sti", %rax, $1, $1000000
	CHECK_RANGE "irq_window_saved_rip", exc_rec+VEC_TIMER*REC_SIZE+REC_RIP, $.Lwindow_1, $.Lwindow_3

	# 3. Ring 3 spins (no exits at all) until it sees the tick counter change: the VMM must
	#    interrupt a running vCPU and deliver IRQ 0 with a switch to TSS.RSP0.
	mov ticks_cpl3(%rip), %rbx
	mov $user_wait_tick, %edi
	mov $0x202, %esi                        # RFLAGS: IF = 1
	call run_user
	CHECK_EQ "ring3_spin_saw_a_tick", %rax, $0
	mov ticks_cpl3(%rip), %rax
	sub %rbx, %rax
	CHECK_RANGE "timer_irq_from_ring3", %rax, $1, $1000000
	CHECK_REC "timer_irq_ring3_saved_cs", VEC_TIMER, REC_CS, $USER_CS
	CHECK_REC "timer_irq_ring3_on_tss_rsp0_stack", VEC_TIMER, REC_FRAME, $tss_stack_top-TSS_FRAME

	mov $0xFFFF, %eax
	call pic_set_mask                       # timer off again
	ret

# ---------------------------------------------------------------------------------------
# Ring-3 code: in the .user section, whose pages have the U/S bit.
# ---------------------------------------------------------------------------------------
	.section .user.text, "ax"
user_exceptions:
	int3                                    # #BP through a DPL-3 gate
user_after_int3:
	TRY user_hlt, hlt                       # privileged at CPL 3: #GP(0)
	mov $0x600D, %edi
	int $0x80                               # back to ring 0: run_user returns 0x600D

user_wait_tick:
	mov ticks(%rip), %rax
	mov $200000000, %ecx
1:	cmp ticks(%rip), %rax
	jne 2f
	dec %ecx
	jnz 1b
	mov $1, %edi                            # gave up: no interrupt reached ring 3
	int $0x80
2:	xor %edi, %edi
	int $0x80

# ---------------------------------------------------------------------------------------
	.section .rodata
guest_name:     .asciz "lab"
.Lkey_skip:     .asciz "skip="
.Lname_vendor:  .asciz "cpuid_0_vendor"
.Lwant_vendor:  .asciz "AuthenticAMD"
.Lname_hv_sig:  .asciz "cpuid_40000000_signature"
.Lwant_hv_sig:  .asciz "PyVMMPyVMMPy"
outs_text:      .ascii "rep outsb: this line came through string I/O\n"
outs_len = . - outs_text
hc_text:        .ascii "hypercall console works\n"
hc_text_len = . - hc_text
	.balign 4
shutdown_suspend: .long SHUTDOWN_SUSPEND    # struct sched_shutdown { uint32 reason; }

	.bss
	.balign 4096
remap_a:        .skip 4096
remap_b:        .skip 4096
desc_buf:       .skip 16
sig_buf:        .skip 16
ins_buf:        .skip 8
