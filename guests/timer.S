# timer.S - periodic timer interrupts: PIT channel 0 at 100 Hz -> 8259A IRQ 0 -> vector 0x20.
#
# The guest sleeps in `sti; hlt` until it has counted 50 ticks, then prints
# "timer: 50 ticks" and how far the TSC advanced meanwhile, checks the numbers and powers off
# (exit code 1 through isa-debug-exit if a check failed).
#
# What it proves about the VMM: its PIT model fires periodically at the programmed rate, its
# PIC model delivers IRQ 0 at the vector set by ICW2 and honours EOI (otherwise IRQ 0 would
# be in service forever and only one tick would arrive), and HLT with IF = 1 blocks the
# vCPU until an interrupt instead of returning at once or never.

	.include "macros.inc"

PIT_DIVISOR_100HZ = 11932           # 1193182 Hz / 11932 = 100.0 Hz
TICKS_WANTED = 50
MAX_HLT_RETURNS = 1000

	.text
	.globl main
main:
	call setup_cpu
	SET_HANDLER VEC_TIMER, timer_tick
	mov $PIT_DIVISOR_100HZ, %eax
	call pit_periodic

	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	mov %rax, %r12                  # TSC at the start
	xor %r13d, %r13d                # number of times HLT returned
	mov $0xFFFE, %eax
	call pic_set_mask               # unmask IRQ 0

	PUTS "timer: waiting for 50 ticks at 100 Hz\n"
1:	sti                             # STI's shadow covers HLT: no tick can sneak in between
	hlt                             # sleep until the next interrupt
	cli
	inc %r13
	cmpq $TICKS_WANTED, ticks(%rip)
	jae 2f
	cmp $MAX_HLT_RETURNS, %r13      # HLT keeps returning without ticks: give up, the checks
	jb 1b                           # below will say what went wrong
2:

	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	sub %r12, %rax
	mov %rax, %r14                  # TSC delta

	PUTS "timer: "
	mov ticks(%rip), %eax
	call putdec
	PUTS " ticks\n"
	PUTS "timer: rdtsc delta "
	mov %r14, %rax
	call puthex
	call newline

	CHECK_EQ "timer_ticks", ticks(%rip), $TICKS_WANTED
	# Every HLT return must be due to a tick: more returns than ticks would mean HLT
	# returned without an interrupt.
	CHECK_RANGE "timer_hlt_returns_le_ticks", %r13, $1, $TICKS_WANTED
	movabs $0x7FFFFFFFFFFFFFFF, %rcx
	CHECK_RANGE "timer_rdtsc_delta_positive", %r14, $1, %rcx
	mov $guest_name, %esi
	jmp checks_finish

# timer_tick: count the tick (timer_irq sends the EOI); at TICKS_WANTED mask IRQ 0 so that
# the count stays exactly TICKS_WANTED however slowly the rest of the guest runs.
timer_tick:
	call timer_irq
	cmpq $TICKS_WANTED, ticks(%rip)
	jb 1f
	mov $0xFFFF, %eax
	call pic_set_mask
1:	ret

	.section .rodata
guest_name:     .asciz "timer"
