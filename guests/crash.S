# crash.S - a guest that triple faults on purpose.
#
# It loads an IDT with limit 0 and executes UD2. #UD cannot be delivered (its gate lies
# beyond the IDT limit), which raises #GP; #GP cannot be delivered either, which makes a
# double fault (#DF); #DF cannot be delivered: triple fault. A real PC resets (shutdown
# cycle); pyvmm must stop the VM, report the triple fault and exit with status 1
# (docs/platform.md, "Interrupts and exceptions").
#
# Output: "crash: about to triple fault" and nothing after it. If the guest is still running
# after UD2 it prints a FAIL line and exits with isa-debug-exit code 1 (exit status 3).

	.include "macros.inc"

	.text
	.globl main
main:
	PUTS "crash: about to triple fault\n"
	lidt null_idt(%rip)
	ud2
	mov $.Lsurvived, %esi
	jmp fail_exit

	.section .rodata
	.balign 8
	.word 0, 0, 0
null_idt:
	.word 0                         # limit 0: not even vector 0 fits
	.quad 0                         # base
.Lsurvived:
	.asciz "crash: UD2 with an empty IDT did not triple fault"
