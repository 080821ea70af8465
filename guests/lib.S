# lib.S - routines every guest uses, written once for both widths.
#
# This file is assembled twice: `as --32 --defsym BITS=32` gives build/obj/lib32.o and
# `as --64 --defsym BITS=64` gives build/obj/lib64.o. It only uses instructions that do the
# same thing in 32-bit protected mode and in 64-bit long mode: port I/O, 32-bit registers,
# absolute addresses below 4 GiB, and SAVE/RESTORE (macros.inc) for push/pop.
#
# Calling convention (both widths): arguments in eax / ecx / esi as documented; every routine
# preserves all registers it does not return a value in.

	.include "macros.inc"

	.text

# start_kernel: _start (common32.S / common64.S) jumps here once it has a stack.
	.globl start_kernel
start_kernel:
	call serial_init
	call main                   # every guest defines main
	jmp poweroff                # main returned: we are done

# ---------------------------------------------------------------------------------------
# Serial console: COM1, a 16550A UART. We poll the line status register instead of using
# the UART interrupt (IRQ 4), so printing works before any IDT exists.
# ---------------------------------------------------------------------------------------

# serial_init: 115200 baud, 8 data bits, no parity, 1 stop bit, FIFOs on, UART interrupts off.
	.globl serial_init
serial_init:
	SAVE ax, dx
	mov $COM1 + 1, %dx
	xor %al, %al
	out %al, %dx                # IER = 0: no UART interrupts
	mov $COM1 + 3, %dx
	mov $0x80, %al
	out %al, %dx                # LCR.DLAB = 1: ports +0/+1 become the baud divisor latch
	mov $COM1 + 0, %dx
	mov $1, %al
	out %al, %dx                # divisor low = 1 (115200 baud)
	mov $COM1 + 1, %dx
	xor %al, %al
	out %al, %dx                # divisor high = 0
	mov $COM1 + 3, %dx
	mov $0x03, %al
	out %al, %dx                # LCR = 8N1, DLAB = 0
	mov $COM1 + 2, %dx
	mov $0xC7, %al
	out %al, %dx                # FCR: enable and clear both FIFOs
	mov $COM1 + 4, %dx
	mov $0x03, %al
	out %al, %dx                # MCR: DTR | RTS (OUT2 off: the UART never raises IRQ 4)
	RESTORE dx, ax
	ret

# putc: send the byte in al. Waits until LSR.THRE says the transmitter can take a byte;
# gives up waiting after a while (garbled output is more useful than a hung guest).
	.globl putc
putc:
	SAVE ax, cx, dx
	mov %al, %ah
	mov $COM1_LSR, %dx
	mov $100000, %ecx
1:	in %dx, %al
	test $LSR_THRE, %al
	jnz 2f
	dec %ecx
	jnz 1b
2:	mov $COM1, %dx
	mov %ah, %al
	out %al, %dx
	RESTORE dx, cx, ax
	ret

# puts: print the NUL-terminated string at esi.
	.globl puts
puts:
	SAVE ax, si
1:	mov (%esi), %al
	test %al, %al
	jz 2f
	call putc
	inc %esi
	jmp 1b
2:	RESTORE si, ax
	ret

	.globl newline
newline:
	SAVE ax
	mov $'\n', %al
	call putc
	RESTORE ax
	ret

# puthex_digits: print eax in hexadecimal, at least ecx digits (1..8), no "0x" prefix.
# (puthex in common32.S / common64.S adds the prefix and handles 64-bit values.)
	.globl puthex_digits
puthex_digits:
	SAVE ax, bx, cx, dx
	mov %eax, %edx
	mov $8, %ebx                # digits still to look at
.Lhex_next:
	rol $4, %edx                # bring the most significant remaining nibble to the bottom
	mov %edx, %eax
	and $0xF, %eax
	jnz .Lhex_print             # a non-zero digit is always printed,
	cmp %ecx, %ebx              # a leading zero only within the minimum width
	ja .Lhex_skip
.Lhex_print:
	mov %ebx, %ecx              # once a digit is printed, print all the following ones
	add $'0', %al
	cmp $'9', %al
	jbe 1f
	add $'a' - '0' - 10, %al
1:	call putc
.Lhex_skip:
	dec %ebx
	jnz .Lhex_next
	RESTORE dx, cx, bx, ax
	ret

# putdec: print eax as an unsigned decimal number.
	.globl putdec
putdec:
	SAVE ax, bx, cx, dx
	mov $10, %ebx
	xor %ecx, %ecx              # number of digits pushed
1:	xor %edx, %edx
	div %ebx                    # edx:eax / 10: the remainder is the next digit (least significant first)
	add $'0', %dl
	SAVE dx
	inc %ecx
	test %eax, %eax
	jnz 1b
2:	RESTORE ax                  # pop the digits back most significant first
	call putc
	dec %ecx
	jnz 2b
	RESTORE dx, cx, bx, ax
	ret

# ---------------------------------------------------------------------------------------
# Ending the VM
# ---------------------------------------------------------------------------------------

# poweroff: ACPI S5 through PM1a_CNT (QEMU's port 0x604): a 16-bit write of SLP_EN | SLP_TYP=S5.
# pyvmm stops the VM with exit status 0. Never returns.
	.globl poweroff
poweroff:
	mov $PORT_PM1A_CNT, %dx
	mov $PM1_SLP_EN_S5, %ax
	out %ax, %dx
	mov $10000000, %ecx         # pyvmm stops at once; other machines may take a moment
1:	pause
	dec %ecx
	jnz 1b
	mov $.Lmsg_poweroff, %esi   # still running: the power-off did not work
	jmp fail_exit

# fail_exit: print "FAIL: <string at esi>" and stop through isa-debug-exit with code 1
# (pyvmm exits with status (1 << 1) | 1 = 3). Never returns.
	.globl fail_exit
fail_exit:
	PUTS "FAIL: "
	call puts
	call newline
	mov $1, %al
	# fall through

# debug_exit: write al to isa-debug-exit. If that did not stop the VM, `cli; hlt` will:
# pyvmm treats HLT with interrupts disabled as a dead guest (exit status 1).
	.globl debug_exit
debug_exit:
	mov $PORT_DEBUG_EXIT, %dx
	out %al, %dx
1:	cli
	hlt
	jmp 1b

# ---------------------------------------------------------------------------------------
# Check bookkeeping. The CHECK_* macros call check_masked / check_range (common32.S /
# common64.S), which compare the values and call check_report.
# ---------------------------------------------------------------------------------------

# check_report: cl = 1 if the check passed, esi = its name, AX = the value got, DX = the value
# wanted (or the lowest one allowed); if ch = 1, BX = the highest one allowed. AX, BX, DX are
# native-width registers (rax or eax ...). Prints "ok <name>" or
# "FAIL <name>: got <AX> want <DX>" (or "want <DX>..<BX>").
	.globl check_report
check_report:
	test %cl, %cl
	jz 1f
	jmp check_pass
1:	call check_fail_begin
	call puthex
	call check_fail_want
	SAVE ax
	COPYREG dx, ax
	call puthex
	test %ch, %ch
	jz 2f
	PUTS ".."
	COPYREG bx, ax
	call puthex
2:	RESTORE ax
	jmp newline

# check_pass: esi = check name. Prints "ok <name>".
	.globl check_pass
check_pass:
	PUTS "ok "
	call puts
	call newline
	incl checks_passed
	ret

# check_fail_begin: esi = check name. Prints "FAIL <name>: got " (the caller prints the rest).
	.globl check_fail_begin
check_fail_begin:
	PUTS "FAIL "
	call puts
	PUTS ": got "
	incl checks_failed
	ret

	.globl check_fail_want
check_fail_want:
	PUTS " want "
	ret

# checks_finish: esi = guest name. Prints "<guest>: N checks passed", then powers off if
# every check passed; otherwise prints "FAIL: <guest>: M checks failed" and exits with code 1.
	.globl checks_finish
checks_finish:
	call puts
	PUTS ": "
	mov checks_passed, %eax
	call putdec
	PUTS " checks passed\n"
	cmpl $0, checks_failed
	je poweroff
	PUTS "FAIL: "
	call puts
	PUTS ": "
	mov checks_failed, %eax
	call putdec
	PUTS " checks failed\n"
	mov $1, %al
	jmp debug_exit

# ---------------------------------------------------------------------------------------
# Interrupt entry, the part that is the same in both widths (common32.S / common64.S hold
# isr_common, which saves the registers, and the IDT setup).
# ---------------------------------------------------------------------------------------

# One 16-byte stub per vector. It makes every interrupt frame look the same: the CPU pushes
# an error code only for some exceptions, so the others push a dummy 0; then the vector.
	.balign 16
	.globl isr_stubs
isr_stubs:
vec = 0
.rept 256
	.balign ISR_STUB_SIZE
.if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	# the CPU pushed an error code for this exception
.else
	push $0
.endif
	push $vec
	jmp isr_common
vec = vec + 1
.endr

# interrupt_defaults: the handlers every guest starts with; both PICs initialised with all
# IRQs masked (IRQ 0..15 at vectors 0x20..0x2F). setup_cpu ends here.
	.globl interrupt_defaults
interrupt_defaults:
	SET_HANDLER VEC_BP, isr_return            # int3 is a trap: just continue after it
	SET_HANDLER VEC_PF, pf_fixup
	SET_HANDLER VEC_SYSCALL, isr_syscall_exit
	SET_HANDLER IRQ_BASE+7, isr_return        # spurious IRQ 7 (a PIC artefact): no EOI
	SET_HANDLER IRQ_BASE+15, isr_spurious_slave
	mov $0xFFFF, %eax
	jmp pic_init

# isr_unexpected: frame in rdi/edi. Nobody expected this interrupt: a bug in the guest or
# in the VMM. Report it and end the VM with exit code 1.
	.globl isr_unexpected, isr_storm
isr_unexpected:
	PUTS "FAIL: unexpected interrupt: vector "
	jmp 1f
# isr_storm: more than EXCEPTION_LIMIT exceptions. None of the guests takes nearly that
# many, so an exception is being retried forever (for instance because the saved RIP of a
# fault is wrong and the handler "fixes" the wrong instruction). Stop instead of looping.
isr_storm:
	PUTS "FAIL: exception storm (more than 1000 exceptions), the last: vector "
1:	LOAD_FRAME F_VEC
	call puthex
	PUTS " error "
	LOAD_FRAME F_ERR
	call puthex
	PUTS " at "
	LOAD_FRAME F_CS
	call puthex
	PUTS ":"
	LOAD_FRAME F_IP
	call puthex
	PUTS " cr2 "
.if BITS == 64
	mov %cr2, %rax
.else
	mov %cr2, %eax
.endif
	call puthex
	call newline
	mov $1, %al
	jmp debug_exit

# isr_return: a handler with nothing to do.
	.globl isr_return
isr_return:
	ret

# A spurious IRQ 15 is not in service at the slave, but the master did deliver IRQ 2.
isr_spurious_slave:
	mov $2, %al
	jmp pic_eoi

# isr_syscall_exit: the `int $0x80` handler. The ring-3 code is done: run_user returns the
# value it left in edi.
isr_syscall_exit:
	LOAD_FRAME F_DI
	jmp escape

# isr_escape: an exception handler (frame in edi/rdi) that abandons the interrupted code:
# run_guarded / run_user (common32.S / common64.S) return the vector number.
	.globl isr_escape
isr_escape:
	mov F_VEC(%edi), %eax
	jmp escape

# ---------------------------------------------------------------------------------------
# 8259A interrupt controllers and the 8254 timer
# ---------------------------------------------------------------------------------------

# pic_init: initialise both PICs with ICW1..ICW4: IRQ 0-7 -> vectors 0x20-0x27, IRQ 8-15 ->
# 0x28-0x2F (the BIOS default, 0x08-0x0F, would collide with CPU exceptions), slave on IRQ 2.
# ax = interrupt mask (al: master, ah: slave; a set bit masks the IRQ).
	.globl pic_init
pic_init:
	SAVE ax
	mov $0x11, %al
	out %al, $PIC1_CMD          # ICW1: edge triggered, cascade mode, ICW4 follows
	out %al, $PIC2_CMD
	mov $IRQ_BASE, %al
	out %al, $PIC1_DATA         # ICW2: master vector base
	mov $IRQ_BASE + 8, %al
	out %al, $PIC2_DATA         # ICW2: slave vector base
	mov $0x04, %al
	out %al, $PIC1_DATA         # ICW3 (master): a slave hangs on IRQ 2 (bit mask)
	mov $0x02, %al
	out %al, $PIC2_DATA         # ICW3 (slave): my cascade identity is 2
	mov $0x01, %al
	out %al, $PIC1_DATA         # ICW4: 8086 mode, normal (not automatic) EOI
	out %al, $PIC2_DATA
	RESTORE ax
	# fall through: the mask (OCW1) is written last

# pic_set_mask: ax = interrupt mask (al: master IMR, ah: slave IMR).
	.globl pic_set_mask
pic_set_mask:
	SAVE ax
	out %al, $PIC1_DATA
	mov %ah, %al
	out %al, $PIC2_DATA
	RESTORE ax
	ret

# pic_eoi: al = IRQ number (0..15). Sends a non-specific EOI (OCW2 0x20) to the PIC(s) that
# delivered it, so the PIC clears the in-service bit and lets equal/lower priority IRQs in.
	.globl pic_eoi
pic_eoi:
	SAVE ax
	cmp $8, %al
	mov $0x20, %al
	jb 1f
	out %al, $PIC2_CMD
1:	out %al, $PIC1_CMD
	RESTORE ax
	ret

# pit_periodic: program PIT channel 0 as a rate generator (mode 2) with divisor eax:
# IRQ 0 fires at 1193182 / divisor Hz.
	.globl pit_periodic
pit_periodic:
	SAVE ax, dx
	mov %eax, %edx
	mov $0x34, %al              # channel 0, access lobyte then hibyte, mode 2, binary
	out %al, $PIT_CMD
	mov %dl, %al
	out %al, $PIT_CH0
	mov %dh, %al
	out %al, $PIT_CH0
	RESTORE dx, ax
	ret

# ---------------------------------------------------------------------------------------
# Command line (boot_params.cmd_line_ptr)
# ---------------------------------------------------------------------------------------

# cmdline: returns esi = the command line (an empty string if there is none).
	.globl cmdline
cmdline:
	mov boot_params, %esi
	mov BP_CMD_LINE_PTR(%esi), %esi
	test %esi, %esi
	jnz 1f
	mov $.Lempty, %esi
1:	ret

# cmdline_find: esi = key such as "iters=". Looks for a space-separated word of the command
# line that starts with the key; returns esi = the text after the key, or esi = 0.
	.globl cmdline_find
cmdline_find:
	SAVE ax, bx, di
	mov %esi, %ebx
	call cmdline
.Lword:
	cmpb $' ', (%esi)           # skip spaces between words
	jne 1f
	inc %esi
	jmp .Lword
1:	cmpb $0, (%esi)
	je .Lnot_found
	mov %ebx, %edi              # compare the word with the key
2:	mov (%edi), %al
	test %al, %al
	jz .Lfound                  # the whole key matched
	cmp (%esi), %al
	jne .Lnext_word
	inc %esi
	inc %edi
	jmp 2b
.Lnext_word:
	cmpb $0, (%esi)
	je .Lnot_found
	cmpb $' ', (%esi)
	je .Lword
	inc %esi
	jmp .Lnext_word
.Lnot_found:
	xor %esi, %esi
.Lfound:
	RESTORE di, bx, ax
	ret

# parse_dec: parse the unsigned decimal number at esi. Returns eax = its value (modulo 2^32),
# esi = the first character after it.
	.globl parse_dec
parse_dec:
	SAVE cx, dx
	xor %eax, %eax
1:	movzbl (%esi), %ecx
	sub $'0', %ecx
	cmp $9, %ecx
	ja 2f
	imul $10, %eax, %eax
	add %ecx, %eax
	inc %esi
	jmp 1b
2:	RESTORE dx, cx
	ret

	.section .rodata
.Lmsg_poweroff:
	.asciz "power-off through port 0x604 did not stop the VM"
.Lempty:
	.asciz ""

# Variables ring 3 reads live in the .user section (U/S pages in the 64-bit guests).
	.section .user.data, "aw"
	.balign 8
	.globl ticks, ticks_cpl3
ticks:          .quad 0         # IRQ 0 count (timer_irq)
ticks_cpl3:     .quad 0         # ... of which interrupted ring 3

	.section .user.bss, "aw", @nobits
	.balign 4096
	.globl user_stack_top
user_stack:     .skip 4096      # the stack run_user gives ring 3
user_stack_top:

	.bss
	.balign 16
	.globl exc_rec, vec_handler
exc_rec:        .skip 256 * REC_SIZE    # what the last delivery of each vector looked like
vec_handler:    .skip 256 * 8   # SET_HANDLER: function per vector, 0 = isr_default
	.globl boot_params, checks_passed, checks_failed
boot_params:    .skip 8         # the zero page address found in RSI/ESI at entry
checks_passed:  .skip 4
checks_failed:  .skip 4
	.globl last_vector, exceptions_taken, pf_fix_ptr, pf_fix_val, escape_sp
last_vector:    .skip 8         # the vector delivered last
exceptions_taken: .skip 8       # deliveries of vectors 0..31
pf_fix_ptr:     .skip 8         # pf_fixup: the page-table entry to put back ...
pf_fix_val:     .skip 8         # ... and its value
escape_sp:      .skip 8         # run_guarded: the stack pointer escape returns to
