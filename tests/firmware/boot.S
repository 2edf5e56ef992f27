/*
 * A boot sector for vm-run's firmware tests: the BIOS loads it at
 * 0x7c00 in real mode. It prints through BIOS int 0x10 (teletype), which
 * SeaBIOS's serial console mirrors to COM1, so seeing its words on
 * vm-run's console proves etc/sercon-port. It reads fw_cfg's signature
 * and the PCI host bridge's vendor ID with `rep insb` (string port I/O,
 * one access per element), and tries to write into the BIOS ROM below
 * 4 GiB, which must not change. Then it looks for the ACPI
 * RSDP in the F segment (the table-loader's ALLOCATE in the FSEG zone),
 * follows it to the XSDT and prints the signature of each table it
 * lists, and ends the run: with ACTION below 'r' it writes S5 to the
 * ACPI PM1 control register (port 0x604, as vm-run's FADT says), with
 * 'r' it resets through the i8042, above 'r' ('x') it echoes its console.
 * (What only a failure prints is short: the sector is full.)
 *
 * Big real mode is not needed: the tables are read with int 0x15's
 * AH=0x87 block move, which copies from anywhere in the first 4 GiB.
 */
	.code16
	.text
	.globl _start
_start:
	cli
	xor	%ax, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	$0x7c00, %sp
	sti
	mov	$hello, %si
	call	puts
	cld
	mov	$0x510, %dx			/* fw_cfg selector: the signature */
	xor	%ax, %ax
	out	%ax, %dx
	inc	%dx				/* its data port */
	mov	$sig, %di
	mov	$4, %cx
	rep insb
	mov	$fwcfg, %si
	call	puts
	/* Two bytes of PCI 00:00.0's vendor ID by `rep insb` on 0xcfc:
	 * element by element, both are its low byte; as one access, the
	 * second would be its high byte. */
	mov	$0xcf8, %dx
	mov	$0x80000000, %eax
	out	%eax, %dx
	mov	$0xcfc, %dx
	mov	$buf, %di
	mov	$2, %cx
	rep insb
	mov	$insb1, %si
	mov	buf, %ax
	cmp	%ah, %al
	je	1f
	mov	$insb2, %si
1:	call	puts

	/* Copy 64 bytes of this sector over the ROM, then read them back. */
	mov	$0x7c00, %eax
	mov	$ROM, %ebx
	call	move
	mov	$ROM, %eax
	mov	$tbl, %ebx
	call	move
	mov	tbl, %eax
	cmp	0x7c00, %eax
	mov	$romkept, %si
	jne	1f
	mov	$romwritten, %si
1:	call	puts

	/* Scan 0xf0000-0xfffff for "RSD PTR " on 16-byte boundaries. */
	mov	$0xf000, %ax
	mov	%ax, %es
	xor	%di, %di
scan:	cmpl	$0x20445352, %es:(%di)		/* "RSD " */
	jne	next
	cmpl	$0x20525450, %es:4(%di)		/* "PTR " */
	je	found
next:	add	$16, %di
	jnz	scan
	jmp	end				/* no RSDP: the test sees none */

found:	mov	$rsdp, %si
	call	puts
	mov	%es:24(%di), %eax		/* XSDT address, low half */
	xor	%bx, %bx
	mov	%bx, %es
	mov	$buf, %ebx
	call	move				/* 64 bytes of the XSDT */
	mov	$buf, %si
	call	putsig
	/* Entries from offset 36, 8 bytes each, up to the table's length. */
	mov	buf+4, %cx			/* length */
	sub	$36, %cx
	shr	$3, %cx
	mov	$buf+36, %bx
entry:	jcxz	end
	push	%cx
	push	%bx
	mov	(%bx), %eax
	mov	$tbl, %ebx
	call	move
	mov	$tbl, %si
	call	putsig
	pop	%bx
	pop	%cx
	add	$8, %bx
	dec	%cx
	jmp	entry

end:	mov	$newline, %si
	call	puts
	call	settle
	cmpb	$'r', action
	je	reset
	ja	echo
	mov	$0x604, %dx
	mov	$(5 << 10 | 1 << 13), %ax	/* SLP_TYP=5 (S5), SLP_EN */
	out	%ax, %dx
	jmp	hang
reset:	mov	$0xfe, %al
	out	%al, $0x64
hang:	cli
	hlt
	jmp	hang

/* With ACTION above 'r': echo what COM1 receives, polling it as the tiny
 * guest does, for ever: a guest to send and receive while it runs in
 * real mode over the BIOS's memory. */
echo:	cli				/* SeaBIOS's timer tick would read COM1 too */
	mov	$0x3fd, %dx			/* COM1's line status */
1:	in	%dx, %al
	test	$1, %al				/* data ready */
	jz	1b
	mov	$0x3f8, %dx
	in	%dx, %al
	out	%al, %dx
	jmp	echo

/* SeaBIOS's serial console holds back the last character until the
 * next one or a timer tick: two ticks (IRQ 0, 18.2 Hz) let it out. */
settle:	sti
	hlt
	hlt
	ret

/* Prints the NUL-terminated string at %si through int 0x10. */
puts:	lodsb
	test	%al, %al
	jz	1f
	mov	$0x0e, %ah
	xor	%bx, %bx
	int	$0x10
	jmp	puts
1:	ret

/* Prints the 4-byte signature at %si and a space. */
putsig:	mov	$4, %cx
1:	lodsb
	mov	$0x0e, %ah
	xor	%bx, %bx
	push	%cx
	int	$0x10
	pop	%cx
	loop	1b
	mov	$' ', %al
	mov	$0x0e, %ah
	int	$0x10
	ret

/* Copies 64 bytes from physical %eax to physical %ebx with int 0x15
 * AH=0x87 and a GDT of six descriptors at %es:%si (%es is 0). */
move:	mov	%ax, gdt+16+2			/* source base 0-15 */
	shr	$16, %eax
	mov	%al, gdt+16+4			/* source base 16-23 */
	mov	%ah, gdt+16+7			/* source base 24-31 */
	mov	%bx, gdt+24+2			/* destination base */
	shr	$16, %ebx
	mov	%bl, gdt+24+4
	mov	%bh, gdt+24+7
	mov	$gdt, %si
	mov	$32, %cx			/* words */
	mov	$0x87, %ah
	int	$0x15
	ret

	.balign 8
gdt:	.quad 0, 0
	.word 0xffff, 0			/* source */
	.byte 0, 0x93, 0, 0
	.word 0xffff, 0			/* destination */
	.byte 0, 0x93, 0, 0
	.quad 0, 0

hello:	.asciz "firmware: boot sector\r\n"
fwcfg:	.ascii "fw_cfg "
sig:	.asciz "????\r\n"
insb1:	.asciz "insb: each\r\n"
insb2:	.asciz "insb?\r\n"
romkept: .asciz "rom: kept\r\n"
romwritten: .asciz "rom!\r\n"
rsdp:	.asciz "RSDP "
newline: .asciz "\r\n"
action:	.byte ACTION

	.org 510
	.byte 0x55, 0xaa

/* 256 bytes below 4 GiB: inside any BIOS image. */
ROM = 0xffffff00
buf = 0x600
tbl = 0x700
