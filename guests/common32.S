# common32.S - the small "kernel library" of the 32-bit guests.
#
# pyvmm enters a 32-bit ELF kernel in protected mode with paging off (docs/platform.md):
# CS = 0x10 (flat 32-bit code) and DS = ES = SS = 0x18 from a boot GDT at 0x2000,
# ESI = 0x3000 (the zero page), ESP = 0x8000, EFLAGS = 0x2, IDT limit 0.
# This is the 32-bit counterpart of common64.S, with the same routines, names and
# conventions (see the list there), minus the page tables: the 32-bit guests start with
# paging off, and exceptions32.S turns it on itself. The differences worth noticing are in
# the interrupt path: 8-byte gates, 4-byte stack slots, the CPU pushes SS:ESP only when the
# privilege level changes, and DS/ES must be reloaded on entry from ring 3.

	.include "macros.inc"

TSS32_SIZE = 104

	.text

# ---------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------
	.globl _start
_start:
	mov %esi, entry_esi
	mov %esp, entry_esp
	pushf                       # (uses one slot of the boot stack at 0x8000)
	popl entry_eflags
	mov %cs, entry_cs
	mov %ds, entry_ds
	mov %es, entry_es
	mov %ss, entry_ss
	mov %esi, boot_params

	mov $stack_top, %esp        # our own kernel stack in .bss
	jmp start_kernel            # lib.S: init the UART, call main, power off

# ---------------------------------------------------------------------------------------
# setup_cpu: load our own GDT, TSS and IDT; initialise the PICs with every IRQ masked.
# Clobbers eax, ecx, edx, esi, edi. Interrupts stay disabled.
# ---------------------------------------------------------------------------------------
	.globl setup_cpu
setup_cpu:
	mov $tss, %eax              # the TSS descriptor holds the TSS address split in pieces
	mov %ax, gdt_tss + 2        # base 15:0
	shr $16, %eax
	mov %al, gdt_tss + 4        # base 23:16
	mov %ah, gdt_tss + 7        # base 31:24

	lgdt gdt_desc
	ljmp $KERNEL_CS, $1f        # reload CS from the new GDT
1:	mov $KERNEL_DS, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov $TSS_SEL, %ax
	ltr %ax                     # the CPU now takes SS0:ESP0 from our TSS
	call setup_idt
	jmp interrupt_defaults      # lib.S: default handlers, PICs with all IRQs masked

# setup_idt: point every vector at its stub (8-byte 32-bit interrupt gates: IF is cleared).
setup_idt:
	mov $idt, %edi
	mov $isr_stubs, %esi
	xor %ecx, %ecx
1:	mov %esi, %eax
	mov %ax, (%edi)             # offset 15:0
	movw $KERNEL_CS, 2(%edi)    # code segment of the handler
	movb $0, 4(%edi)
	movb $0x8E, 5(%edi)         # P = 1, DPL = 0, type 0xE = 32-bit interrupt gate
	shr $16, %eax
	mov %ax, 6(%edi)            # offset 31:16
	add $8, %edi
	add $ISR_STUB_SIZE, %esi
	inc %ecx
	cmp $256, %ecx
	jne 1b

	movb $0xEE, idt + VEC_BP * 8 + 5       # DPL 3: ring 3 may execute int3 ...
	movb $0xEE, idt + VEC_SYSCALL * 8 + 5  # ... and int $0x80
	lidt idt_desc
	ret

# ---------------------------------------------------------------------------------------
# Interrupt entry: the stubs (isr_stubs in lib.S) push an error code (the CPU's or a dummy)
# and the vector, then jump here.
# ---------------------------------------------------------------------------------------
	.globl isr_common
isr_common:
	push %ds
	push %es
	pusha
	mov $KERNEL_DS, %ax         # coming from ring 3, DS/ES hold the user selectors
	mov %ax, %ds
	mov %ax, %es
	mov %esp, %edi              # edi = the frame (F_* offsets in macros.inc)
	cld
	call isr_dispatch
	popa
	pop %es
	pop %ds
	add $8, %esp                # drop vector and error code
	iret

# isr_dispatch: edi = frame. Record the delivery in exc_rec[vector], then run the handler.
isr_dispatch:
	mov F_VEC(%edi), %eax
	mov %eax, last_vector
	mov %eax, %edx
	shl $REC_SHIFT, %edx        # * REC_SIZE
	add $exc_rec, %edx          # edx = &exc_rec[vector]
	incl REC_COUNT(%edx)
	mov F_ERR(%edi), %ecx
	mov %ecx, REC_ERR(%edx)
	mov F_IP(%edi), %ecx
	mov %ecx, REC_RIP(%edx)
	mov F_CS(%edi), %ecx
	mov %ecx, REC_CS(%edx)
	mov F_FLAGS(%edi), %ecx
	mov %ecx, REC_RFLAGS(%edx)
	mov F_SP(%edi), %ecx        # SS:ESP are only there if the CPU switched stacks
	mov %ecx, REC_RSP(%edx)
	mov F_SS(%edi), %ecx
	mov %ecx, REC_SS(%edx)
	lea F_IP(%edi), %ecx        # where the CPU stored EIP: tells which stack it used
	mov %ecx, REC_FRAME(%edx)
	cmp $VEC_PF, %eax
	jne 1f
	mov %cr2, %ecx              # the faulting linear address
	mov %ecx, REC_CR2(%edx)
1:	cmp $32, %eax
	jae 2f
	incl exceptions_taken
	cmpl $EXCEPTION_LIMIT, exceptions_taken
	ja isr_storm
2:	mov vec_handler(, %eax, 8), %ecx
	test %ecx, %ecx
	jz isr_default
	jmp *%ecx                   # handler(edi = frame), returns to isr_common

# isr_default: an exception raised by a TRY instruction resumes after it; anything else is
# reported and ends the VM with exit code 1.
	.globl isr_default
isr_default:
	cmpl $32, F_VEC(%edi)
	jae isr_unexpected
	mov F_IP(%edi), %eax
	mov $__ex_table_start, %ecx
1:	cmp $__ex_table_end, %ecx
	jae isr_unexpected
	cmp (%ecx), %eax
	je 2f
	add $8, %ecx
	jmp 1b
2:	mov 4(%ecx), %eax
	mov %eax, F_IP(%edi)        # continue after the faulting instruction
	ret

# pf_fixup: put back the page-table entry a test cleared (pf_fix_ptr / pf_fix_val) and
# return: the CPU retries the faulting instruction.
	.globl pf_fixup
pf_fixup:
	mov pf_fix_ptr, %eax
	test %eax, %eax
	jz isr_default
	mov pf_fix_val, %ecx
	mov %ecx, (%eax)
	movl $0, pf_fix_ptr
	ret

# timer_irq: IRQ 0 handler. Counts ticks (and those that interrupted ring 3), then EOI.
	.globl timer_irq
timer_irq:
	incl ticks
	testb $3, F_CS(%edi)
	jz 1f
	incl ticks_cpl3
1:	mov $0, %al
	jmp pic_eoi

# ---------------------------------------------------------------------------------------
# Ring 3 and escapes
# ---------------------------------------------------------------------------------------

# run_user: edi = ring-3 entry point, esi = EFLAGS to run with. The user code comes back
# with `mov $value, %edi; int $0x80`, and run_user returns eax = value.
	.globl run_user
run_user:
	mov %edi, %edx
	mov $enter_user, %edi
	jmp run_guarded             # enter_user(esi = EFLAGS, edx = entry point)

enter_user:
	mov $USER_DS, %ax           # iret to ring 3 would null DS/ES if they kept DPL-0 selectors
	mov %ax, %ds
	mov %ax, %es
	pushl $USER_DS              # SS
	pushl $user_stack_top       # ESP
	push %esi                   # EFLAGS
	pushl $USER_CS              # CS: RPL 3 makes iret switch to ring 3
	push %edx                   # EIP
	iret

# run_guarded: edi = function to call at ring 0 (esi, edx: its arguments). Returns its eax,
# or the value an exception handler passes to escape.
	.globl run_guarded
run_guarded:
	push %ebx
	push %ebp
	push %esi
	push %edi
	mov %esp, escape_sp
	call *%edi
escape_return:
	pop %edi
	pop %esi
	pop %ebp
	pop %ebx
	ret

# escape: jump here from an exception handler with eax = value: drop the interrupt frame
# and return from run_user / run_guarded (isr_common already reloaded DS/ES).
	.globl escape
escape:
	mov escape_sp, %esp
	jmp escape_return

# ---------------------------------------------------------------------------------------
# Printing and the CHECK_* macros
# ---------------------------------------------------------------------------------------

# puthex: print eax as 0x... (no leading zeros).
	.globl puthex
puthex:
	SAVE cx
	PUTS "0x"
	mov $1, %ecx
	call puthex_digits
	RESTORE cx
	ret

# check_masked: the stack holds the return address, name, mask, want, got (CHECK_BITS).
	.globl check_masked
check_masked:
	SAVE ax, bx, cx, dx, si
	mov 36(%esp), %eax          # got
	and 28(%esp), %eax          # & mask
	mov 32(%esp), %edx          # want
	mov 24(%esp), %esi          # name
	cmp %edx, %eax
	sete %cl
	mov $0, %ch
	call check_report
	RESTORE si, dx, cx, bx, ax
	ret $16

# check_range: the stack holds the return address, name, hi, lo, got (CHECK_RANGE).
	.globl check_range
check_range:
	SAVE ax, bx, cx, dx, si
	mov 36(%esp), %eax          # got
	mov 32(%esp), %edx          # lo
	mov 28(%esp), %ebx          # hi
	mov 24(%esp), %esi          # name
	cmp %ebx, %eax
	setbe %ch                   # got <= hi
	cmp %edx, %eax
	setae %cl                   # got >= lo
	and %ch, %cl
	mov $1, %ch
	call check_report
	RESTORE si, dx, cx, bx, ax
	ret $16

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
	.data
	.balign 16
gdt:
	.quad 0                     # 0x00: null
	.quad 0x00CF9A000000FFFF    # 0x08 KERNEL_CS: 32-bit code (D = 1), base 0, limit 4 GiB, DPL 0
	.quad 0x00CF92000000FFFF    # 0x10 KERNEL_DS: data, writable, DPL 0
	.quad 0x00CFFA000000FFFF    # 0x18 USER_CS: 32-bit code, DPL 3
	.quad 0x00CFF2000000FFFF    # 0x20 USER_DS: data, writable, DPL 3
gdt_tss:                        # 0x28 TSS_SEL: base filled in by setup_cpu
	.word TSS32_SIZE - 1        # limit
	.word 0                     # base 15:0
	.byte 0                     # base 23:16
	.byte 0x89                  # present, DPL 0, type 9 = available 32-bit TSS
	.byte 0                     # limit 19:16, flags
	.byte 0                     # base 31:24
gdt_end:
	.balign 4
	.word 0
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.balign 4
	.word 0
idt_desc:
	.word 256 * 8 - 1
	.long idt

# The 32-bit TSS: for an interrupt that arrives in ring 3 the CPU loads SS0:ESP0 from here.
# (The guests never switch tasks, so the register save area stays unused.) The I/O map base
# points past the limit: no I/O bitmap, ring 3 (IOPL 0) gets #GP for every IN/OUT.
	.balign 16
	.globl tss
tss:
	.long 0                     # previous task link
	.long tss_stack_top         # ESP0
	.long KERNEL_DS             # SS0
	.skip 102 - 12              # ESP1/SS1 .. LDT selector, trap flag: unused
	.word TSS32_SIZE            # I/O map base

	.bss
	.balign 4096
	.globl idt
idt:            .skip 256 * 8

	.balign 16
stack:          .skip 16384     # the kernel stack main() runs on
	.globl stack_top
stack_top:
	.globl tss_stack_top
tss_stack:      .skip 8192      # TSS.ESP0: interrupts and exceptions from ring 3
tss_stack_top:

	.balign 4
	.globl entry_esi, entry_esp, entry_eflags, entry_cs, entry_ds, entry_es, entry_ss
entry_esi:      .skip 4
entry_esp:      .skip 4
entry_eflags:   .skip 4
entry_cs:       .skip 4
entry_ds:       .skip 4
entry_es:       .skip 4
entry_ss:       .skip 4
