# hello.S - the smallest guest: print a greeting and the kernel command line, power off.
#
# The same source builds two guests: build/hello.elf (ELFCLASS64, entered in long mode) and
# build/hello32.elf (ELFCLASS32, entered in 32-bit protected mode with paging off). It only
# uses routines of lib.S and the PUTS macro, which exist in both widths.
#
# What it proves about the VMM: the ELF loader put the kernel at 1 MiB and jumped to e_entry
# in the right CPU mode, RSI/ESI points at the zero page, boot_params.cmd_line_ptr (0x228)
# points at the command line, UART output (port I/O exits) reaches the console, and the ACPI
# power-off port stops the VM with status 0.

	.include "macros.inc"

	.text
	.globl main
main:
	PUTS "Hello from the pyvmm hello guest!\n"
	PUTS "command line: "
	call cmdline                # esi = boot_params->cmd_line_ptr
	call puts
	call newline
	ret                         # _start powers the VM off
