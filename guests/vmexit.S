# vmexit.S - VM-exit microbenchmarks, named as kvm-unit-tests' x86/vmexit.c.
#
# Command line: "test=NAME iters=N". Runs N iterations of one exiting instruction and
# powers off; with iters=0 it only boots and powers off, so a benchmark can subtract
# the boot. Tests:
#   cpuid       CPUID leaf 0                          (exit 10, CPUID)
#   vmcall      VMCALL xen_version(XENVER_version)    (exit 18, VMCALL)
#   inl_pio     inl from port 0x80 (no device there)  (exit 30, I/O instruction)
#   outl_pio    outl to port 0x80                     (exit 30)
#   rdmsr       RDMSR IA32_KERNEL_GS_BASE             (exit 31, RDMSR)
#   wrmsr       WRMSR IA32_KERNEL_GS_BASE             (exit 32, WRMSR)
#   mov_to_cr3  mov %rax, %cr3 with the current CR3   (exit 28, control-register access)
#   invlpg_touch  INVLPG a page, then load from it: one translation fill per iteration
#               (EPT: the CPU's two-dimensional walk, no exit; shadow paging: the INVLPG
#               exit and a #PF exit whose handler fills the shadow entry). Pages cycle
#               over 512 x 4 KiB from 16 MiB (the guest needs at least 18 MiB of RAM).
# The loop counter lives in r12, which no exit handler touches.

	.include "macros.inc"

IA32_KERNEL_GS_BASE = 0xC0000102
POST_PORT = 0x80
XEN_VERSION = 17
TOUCH_BASE = 0x1000000

	.text
	.globl main
main:
	mov $.Lkey_iters, %esi
	call cmdline_find
	xor %eax, %eax
	test %esi, %esi
	jz 1f
	call parse_dec
1:	mov %eax, %r12d                 # r12 = iterations
	mov $.Lkey_test, %esi
	call cmdline_find
	test %esi, %esi
	jz .Lusage
	mov $tests, %ebx
.Lnext_test:
	mov (%rbx), %edi                # the test's name
	test %edi, %edi
	jz .Lusage
	call word_is
	je .Lrun
	add $16, %ebx
	jmp .Lnext_test
.Lrun:
	test %r12, %r12
	jz 2f
	call *8(%rbx)
2:	PUTS "vmexit: done\n"
	ret                             # _start powers off
.Lusage:
	mov $.Lmsg_usage, %esi
	jmp fail_exit

# word_is: is the command-line word at esi (ended by a space or NUL) the string at edi?
# ZF=1 if so. Preserves esi, edi.
word_is:
	SAVE si, di, ax
1:	mov (%edi), %al
	test %al, %al
	jz 2f
	cmp (%esi), %al
	jne 3f
	inc %esi
	inc %edi
	jmp 1b
2:	cmpb $' ', (%esi)               # the name ended: so must the word
	je 3f
	cmpb $0, (%esi)
3:	RESTORE ax, di, si
	ret

t_cpuid:
1:	xor %eax, %eax
	cpuid
	dec %r12
	jnz 1b
	ret

t_vmcall:
1:	mov $XEN_VERSION, %eax
	xor %edi, %edi
	vmcall
	dec %r12
	jnz 1b
	ret

t_inl_pio:
1:	in $POST_PORT, %eax
	dec %r12
	jnz 1b
	ret

t_outl_pio:
1:	out %eax, $POST_PORT
	dec %r12
	jnz 1b
	ret

t_rdmsr:
	mov $IA32_KERNEL_GS_BASE, %ecx
1:	rdmsr
	dec %r12
	jnz 1b
	ret

t_wrmsr:
	mov $IA32_KERNEL_GS_BASE, %ecx
	xor %eax, %eax
	xor %edx, %edx
1:	wrmsr
	dec %r12
	jnz 1b
	ret

t_mov_to_cr3:
	mov %cr3, %rax
1:	mov %rax, %cr3
	dec %r12
	jnz 1b
	ret

t_invlpg_touch:
	xor %ecx, %ecx
1:	mov %ecx, %eax
	and $511, %eax
	shl $12, %eax
	add $TOUCH_BASE, %rax
	invlpg (%rax)
	mov (%rax), %rdx
	inc %ecx
	dec %r12
	jnz 1b
	ret

	.section .rodata
	.balign 8
tests:
	.quad .Ln_cpuid, t_cpuid
	.quad .Ln_vmcall, t_vmcall
	.quad .Ln_inl_pio, t_inl_pio
	.quad .Ln_outl_pio, t_outl_pio
	.quad .Ln_rdmsr, t_rdmsr
	.quad .Ln_wrmsr, t_wrmsr
	.quad .Ln_mov_to_cr3, t_mov_to_cr3
	.quad .Ln_invlpg_touch, t_invlpg_touch
	.quad 0, 0
.Ln_cpuid:      .asciz "cpuid"
.Ln_invlpg_touch: .asciz "invlpg_touch"
.Ln_vmcall:     .asciz "vmcall"
.Ln_inl_pio:    .asciz "inl_pio"
.Ln_outl_pio:   .asciz "outl_pio"
.Ln_rdmsr:      .asciz "rdmsr"
.Ln_wrmsr:      .asciz "wrmsr"
.Ln_mov_to_cr3: .asciz "mov_to_cr3"
.Lkey_iters:    .asciz "iters="
.Lkey_test:     .asciz "test="
.Lmsg_usage:    .asciz "vmexit: give test=cpuid|vmcall|inl_pio|outl_pio|rdmsr|wrmsr|mov_to_cr3 iters=N"
