# shim.S - run a pyvmm guest under QEMU, to check the guest itself against real x86 semantics.
#
# QEMU boots this shim as a Multiboot kernel (32-bit protected mode, paging off). The shim
# rebuilds what pyvmm gives a guest at entry (docs/platform.md) and jumps to it:
#   - the guest image (guest.bin, the guest's PT_LOAD bytes) copied to 1 MiB, .bss zeroed;
#   - the zero page at 0x3000: cmd_line_ptr = 0x4000 and the three-entry e820 map;
#   - the command line (Multiboot's, which QEMU prefixes with the kernel file name);
#   - the boot GDT at 0x2000 (0x10 code, 0x18 data), an IDT with limit 0;
#   - for 64-bit guests: long mode with a 2 MiB-page identity map of 0..4 GiB at 0x9000.
# Assembled by run.sh with --defsym GUEST64=0/1, GUEST_ENTRY=e_entry, GUEST_MEMSZ=p_memsz.

	.code32
	.text
	.balign 4
multiboot_header:
	.long 0x1BADB002                # magic
	.long 0                         # flags: nothing requested (QEMU loads our ELF segments)
	.long -0x1BADB002               # checksum

	.globl _shim
_shim:
	cli
	mov $0x90000, %esp
	# Save what we need from the Multiboot info (QEMU keeps it in low memory, which the
	# pyvmm layout below overwrites).
	mov 8(%ebx), %eax               # mem_upper: KiB of RAM above 1 MiB
	shl $10, %eax
	mov %eax, ram_above_1m
	mov $cmdline_copy, %edi
	movb $0, (%edi)
	testl $4, (%ebx)                # flags bit 2: a command line is present
	jz 2f
	mov 16(%ebx), %esi
1:	lodsb
	stosb
	test %al, %al
	jnz 1b

2:	mov $0x2000, %edi               # clear 0x2000..0xF000: GDT, zero page, command line, tables
	xor %eax, %eax
	mov $(0xF000 - 0x2000) / 4, %ecx
	rep stosl
	mov $cmdline_copy, %esi
	mov $0x4000, %edi
	mov $1024, %ecx
	rep movsb
	movl $0x4000, 0x3000 + 0x228    # boot_params.cmd_line_ptr
	movb $3, 0x3000 + 0x1E8         # boot_params.e820_entries
	movl $0, 0x32D0                 # e820[0]: RAM 0 .. 0x9FC00
	movl $0x9FC00, 0x32D8
	movl $1, 0x32E0
	movl $0x9FC00, 0x32E4           # e820[1]: reserved 0x9FC00 .. 1 MiB
	movl $0x60400, 0x32EC
	movl $2, 0x32F4
	movl $0x100000, 0x32F8          # e820[2]: RAM 1 MiB .. end
	mov ram_above_1m, %eax
	mov %eax, 0x3300
	movl $1, 0x3308

	mov $guest_image, %esi          # the guest's PT_LOAD segment, then its .bss
	mov $0x100000, %edi
	mov $guest_image_end - guest_image, %ecx
	rep movsb
	mov $0x100000 + GUEST_MEMSZ, %ecx
	sub %edi, %ecx
	xor %eax, %eax
	rep stosb

	movl $0x0000FFFF, 0x2010        # boot GDT: 0x10 code
.if GUEST64
	movl $0x00AF9A00, 0x2014        #   64-bit (L = 1)
.else
	movl $0x00CF9A00, 0x2014        #   32-bit (D = 1)
.endif
	movl $0x0000FFFF, 0x2018        # 0x18 data
	movl $0x00CF9200, 0x201C
	lgdt boot_gdtr
	lidt null_idtr

.if GUEST64
	movl $0xA003, 0x9000            # PML4[0] -> PDPT at 0xA000
	mov $0xA000, %edi
	mov $0xB003, %eax
	mov $4, %ecx
3:	mov %eax, (%edi)                # PDPT[0..3] -> PDs at 0xB000..0xE000
	add $0x1000, %eax
	add $8, %edi
	loop 3b
	mov $0xB000, %edi
	mov $0x83, %eax                 # 2 MiB pages: present, writable, PS
	mov $2048, %ecx
4:	mov %eax, (%edi)
	add $0x200000, %eax
	add $8, %edi
	loop 4b
	mov $0x20, %eax
	mov %eax, %cr4                  # PAE
	mov $0x9000, %eax
	mov %eax, %cr3
	mov $0xC0000080, %ecx
	rdmsr
	or $0x100, %eax                 # EFER.LME
	wrmsr
	mov $0x80000011, %eax
	mov %eax, %cr0                  # PG | ET | PE: long mode becomes active
.endif
	mov $0x18, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov $0x8000, %esp
	mov $0x3000, %esi
	xor %eax, %eax
	xor %ebx, %ebx
	xor %ecx, %ecx
	xor %edx, %edx
	xor %edi, %edi
	xor %ebp, %ebp
	pushl $2
	popf                            # RFLAGS = 0x2
	ljmp $0x10, $GUEST_ENTRY

	.balign 8
boot_gdtr:      .word 31
	        .long 0x2000
null_idtr:      .word 0
	        .long 0
ram_above_1m:   .long 0
cmdline_copy:   .skip 1024
	.balign 16
guest_image:
	.incbin "guest.bin"
guest_image_end:
