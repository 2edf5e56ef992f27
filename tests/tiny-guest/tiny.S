/*
 * The tiny guest: no Linux, just enough to exercise a VMM's fast path.
 * Booted through PVH (32-bit protected mode, EBX -> hvm_start_info), it
 * writes "tiny: " and its command line to COM1, then ends itself:
 * a command line starting with "poweroff" writes S5 to the ACPI PM1
 * control register (port 0x604, as vm-run's FADT says); one starting
 * with "echo" first echoes what COM1 receives, up to a '.'; anything
 * else resets at once through the i8042 (0xfe to port 0x64), and should
 * that be ignored, triple-faults. Port 0xf4 ends QEMU when it is given
 * -device isa-debug-exit; QEMU's microvm has no i8042.
 */
	.section .note.pvh, "a"
	.balign 4
	.long 4			/* name size */
	.long 4			/* descriptor size */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long _start

	.text
	.code32
	.globl _start
_start:
	mov	$0x90000, %esp		/* PVH gives no stack: take one below the EBDA */
	mov	$0x3f8, %dx
	mov	$banner, %esi
	call	puts
	mov	0x18(%ebx), %esi	/* hvm_start_info.cmdline_paddr */
	test	%esi, %esi
	jz	1f
	push	%esi
	call	puts
	pop	%esi
1:	mov	$'\n', %al
	out	%al, %dx

	cmpl	$0x6f686365, (%esi)	/* "echo" */
	jne	2f
echo:	add	$5, %dx			/* line status register */
3:	in	%dx, %al
	test	$1, %al			/* data ready */
	jz	3b
	sub	$5, %dx
	in	%dx, %al
	out	%al, %dx
	cmp	$'.', %al
	jne	echo
	jmp	reset

2:	cmpl	$0x65776f70, (%esi)	/* "powe" */
	jne	reset
	mov	$0x604, %dx
	mov	$0x3401, %ax		/* SLP_TYP=5 << 10 | SLP_EN | SCI_EN */
	out	%ax, %dx

reset:
	mov	$0xfe, %al
	out	%al, $0xf4		/* QEMU's isa-debug-exit, for benchmarks */
	out	%al, $0x64
	lidt	null_idt
	int3
	hlt

/* Writes the NUL-terminated string at ESI to port DX. */
puts:
	lodsb
	test	%al, %al
	jz	2f
	out	%al, %dx
	jmp	puts
2:	ret

	.section .rodata
banner:	.asciz "tiny: "
	.balign 8
null_idt:
	.word 0
	.long 0
