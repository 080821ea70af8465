/* pvhead.S - entry, Xen ELF notes, hypercall page and upcall entry of the PV guests.
 *
 * Built by gcc (the C preprocessor reads the constants from Xen's public headers).
 * pyvmm's PV boot (docs/pv-boot.md) enters _start in 64-bit mode at CPL 0 on its
 * identity map, RSI = start_info, RSP = the bootstrap stack, interrupts off.
 */
#include <xen/elfnote.h>

/* One Xen note: name "Xen", type, descriptor (elfnote.h; ELF note format). */
#define ELFNOTE(type, desc...)            \
	.pushsection .note.Xen, "a";      \
	.balign 4;                        \
	.long 2f - 1f;                    \
	.long 4f - 3f;                    \
	.long type;                       \
1:	.asciz "Xen";                     \
2:	.balign 4;                        \
3:	desc;                             \
4:	.balign 4;                        \
	.popsection

#ifndef PV_GUEST_OS
#define PV_GUEST_OS "pyvmm-pv"          /* the Makefile names each guest */
#endif
ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz PV_GUEST_OS)
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
ELFNOTE(XEN_ELFNOTE_VIRT_BASE, .quad 0)
ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET, .quad 0)
ELFNOTE(XEN_ELFNOTE_ENTRY, .quad _start)
ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page)

	.text
	.globl _start
_start:
	lea stack_top(%rip), %rsp
	mov %rsi, %rdi                  /* pv_main(start_info_t *) */
	call pv_main
1:	hlt                             /* pv_main powers off; never here */
	jmp 1b

/* The IDT entry of the upcall vector: save the caller-saved registers, run the C
 * handler, return with iretq (the CPU aligned RSP and pushed SS, RSP, RFLAGS, CS, RIP). */
	.globl upcall_entry
upcall_entry:
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	cld
	call do_upcall
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	iretq

/* Filled by the VMM at boot: 128 stubs of 32 bytes, stub n does hypercall n. */
	.balign 4096
	.globl hypercall_page
hypercall_page:
	.fill 4096, 1, 0xcc

	.section .note.GNU-stack, "", @progbits   /* no executable stack wanted */

	.bss
	.balign 4096
stack:
	.skip 16384
stack_top:
