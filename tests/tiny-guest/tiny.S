/*
 * The tiny guest: no Linux, just enough to exercise a VMM's fast path.
 * Booted through PVH (32-bit protected mode, EBX -> hvm_start_info), it
 * writes "tiny: " and its command line to COM1, then ends itself:
 * a command line starting with "poweroff" writes S5 to the ACPI PM1
 * control register (port 0x604, as vm-run's FADT says); one starting
 * with "echo" first echoes what COM1 receives, up to a '.'; anything
 * one starting with "dirty" writes memory for ever, for live migration:
 * in rounds over 1024 pages from 2 MiB up, each page gets the round's
 * number after it was checked to hold the last round's ("BAD" on COM1 and
 * a halt if not), a '.' every 8 rounds; one starting with "wait"
 * sleeps with interrupts on (PIC, no timer) until the ACPI power button
 * (SCI, IRQ 9), which powers off, or a byte on COM1 (IRQ 4), which
 * resets, as a service manager's guest would; one starting with "hang"
 * halts with interrupts off, deaf to the power button; anything
 * else resets at once through the i8042 (0xfe to port 0x64), and should
 * that be ignored, triple-faults. Port 0xf4 ends QEMU when it is given
 * -device isa-debug-exit; QEMU's microvm has no i8042.
 */
#define DIRTY_START 0x200000
#define DIRTY_END (DIRTY_START + 1024 * 4096)
#define IDT_ENTRIES 0x30

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

2:	cmpl	$0x74726964, (%esi)	/* "dirt" */
	je	dirty
	cmpl	$0x74696177, (%esi)	/* "wait" */
	je	wait
	cmpl	$0x676e6168, (%esi)	/* "hang" */
	je	hang
	cmpl	$0x65776f70, (%esi)	/* "powe" */
	jne	reset
poweroff:
	mov	$0x604, %dx
	mov	$0x3401, %ax		/* SLP_TYP=5 << 10 | SLP_EN | SCI_EN */
	out	%ax, %dx

reset:
#ifdef S5_PORT
	/* Built so for Cloud Hypervisor (tests/bench/lib.sh), which restarts
	 * a guest that resets: S5 to its ACPI shutdown port ends it. */
	mov	$0x34, %al
	mov	$S5_PORT, %dx
	out	%al, %dx
#endif
	mov	$0xfe, %al
	out	%al, $0xf4		/* QEMU's isa-debug-exit, for benchmarks */
	out	%al, $0x64
	lidt	null_idt
	int3
	hlt

dirty:	mov	$1, %ebp		/* this round */
	xor	%edi, %edi		/* the last one: fresh memory is zero */
4:	mov	$DIRTY_START, %ebx
5:	cmp	%edi, (%ebx)
	jne	bad
	mov	%ebp, (%ebx)
	add	$4096, %ebx
	cmp	$DIRTY_END, %ebx
	jb	5b
	mov	%ebp, %edi
	inc	%ebp
	test	$7, %edi
	jnz	6f
	mov	$'.', %al
	out	%al, %dx
6:	mov	$20000, %ecx		/* a breath between rounds */
7:	loop	7b
	jmp	4b
/*
 * Every vector is one gate to `irq` (exceptions reset): a CPU fault here
 * is a bug, and a guest that reboots on one shows it. The PICs move to
 * vectors 0x20-0x2f with only IRQ 4 (COM1), the cascade and IRQ 9 (SCI)
 * unmasked, so no timer ever wakes the vCPU.
 */
wait:	mov	%cs, %ax
	mov	$idt, %edi
	xor	%ecx, %ecx
9:	mov	$reset, %ebx
	cmp	$0x20, %ecx
	jb	10f
	mov	$irq, %ebx
10:	mov	%bx, (%edi)		/* offset 15:0 */
	mov	%ax, 2(%edi)		/* selector: ours, whatever PVH gave */
	movw	$0x8e00, 4(%edi)	/* present, 32-bit interrupt gate */
	shr	$16, %ebx
	mov	%bx, 6(%edi)		/* offset 31:16 */
	add	$8, %edi
	inc	%ecx
	cmp	$IDT_ENTRIES, %ecx
	jb	9b
	lidt	idt_desc
	mov	$0x11, %al		/* ICW1: edge, cascade, ICW4 follows */
	out	%al, $0x20
	out	%al, $0xa0
	mov	$0x20, %al		/* ICW2: vector bases */
	out	%al, $0x21
	mov	$0x28, %al
	out	%al, $0xa1
	mov	$4, %al			/* ICW3: slave on IRQ 2 */
	out	%al, $0x21
	mov	$2, %al
	out	%al, $0xa1
	mov	$1, %al			/* ICW4: 8086 mode */
	out	%al, $0x21
	out	%al, $0xa1
	mov	$0xeb, %al		/* IRQ 2 and 4 */
	out	%al, $0x21
	mov	$0xfd, %al		/* IRQ 9 */
	out	%al, $0xa1
	mov	$0x3f9, %dx		/* COM1 IER: received data */
	mov	$1, %al
	out	%al, %dx
	add	$3, %dx			/* MCR: OUT2 gates the UART's IRQ on a PC */
	mov	$8, %al
	out	%al, %dx
	mov	$0x602, %dx		/* PM1 enable: PWRBTN_EN */
	mov	$0x100, %ax
	out	%ax, %dx
	sti
11:	hlt
	jmp	11b

irq:	mov	$0x600, %dx		/* PM1 status */
	in	%dx, %ax
	test	$0x100, %ax		/* PWRBTN_STS */
	jnz	poweroff
	mov	$0x3fd, %dx		/* COM1 LSR */
	in	%dx, %al
	test	$1, %al
	jnz	reset
	mov	$0x20, %al		/* neither (spurious): EOI to both PICs */
	out	%al, $0xa0
	out	%al, $0x20
	iret

hang:	cli
12:	hlt
	jmp	12b

bad:	mov	$badmsg, %esi
	call	puts
8:	hlt
	jmp	8b

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
badmsg:	.asciz "BAD\n"
	.balign 8
null_idt:
	.word 0
	.long 0
idt_desc:
	.word IDT_ENTRIES * 8 - 1
	.long idt

	/* Written at run time: the one loaded segment is writable. */
	.text
	.balign 8
idt:	.fill IDT_ENTRIES, 8, 0
