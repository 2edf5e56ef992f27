/*
 * An El Torito boot image (no emulation) for tests/cdrom.rs: the BIOS
 * loads it at 0x7c00 from vm-run's CD-ROM. It says so and which drive
 * the BIOS booted (0xe0 for the first CD), reads the ISO's primary
 * volume descriptor (sector 16) through int 0x13's extended read on that
 * drive, checks its "CD001", and powers off (S5 to the PM1 control
 * register at port 0x604, as vm-run's FADT says). SeaBIOS's serial
 * console carries what int 0x10 prints to vm-run's stdout.
 */
	.code16
	.text
	.globl _start
_start:
	ljmp	$0, $go
go:	cli
	xor	%ax, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	$0x7c00, %sp
	sti
	mov	%dl, drive
	mov	$booted, %si
	call	puts
	mov	drive, %al
	call	hex
	mov	$crlf, %si
	call	puts
	mov	$dap, %si
	mov	drive, %dl
	mov	$0x42, %ah
	int	$0x13
	jc	bad
	cmpl	$0x30304443, 0x9001	/* "CD00" at offset 1 */
	jne	bad
	cmpb	$'1', 0x9005
	jne	bad
	mov	$pvd, %si
	call	puts
	jmp	off
bad:	mov	$fail, %si
	call	puts
/* SeaBIOS's serial console holds back the last characters until the next
 * one or a timer tick: two ticks (IRQ 0, 18.2 Hz) let them out. */
off:	sti
	hlt
	hlt
	mov	$0x604, %dx
	mov	$(5 << 10 | 1 << 13), %ax
	out	%ax, %dx
1:	hlt
	jmp	1b

puts:	lodsb
	test	%al, %al
	jz	1f
	mov	$0x0e, %ah
	xor	%bx, %bx
	int	$0x10
	jmp	puts
1:	ret

hex:	push	%ax
	shr	$4, %al
	call	nibble
	pop	%ax
nibble:	and	$0x0f, %al
	add	$'0', %al
	cmp	$'9', %al
	jbe	1f
	add	$7, %al
1:	mov	$0x0e, %ah
	xor	%bx, %bx
	int	$0x10
	ret

	.balign	4
dap:	.byte	16, 0
	.word	1		/* one 2048-byte sector */
	.word	0x9000, 0	/* to 0000:9000 */
	.quad	16		/* the primary volume descriptor */
drive:	.byte	0
booted:	.asciz	"CDBOOT-OK drive "
crlf:	.asciz	"\r\n"
pvd:	.asciz	"CD-PVD-OK\r\n"
fail:	.asciz	"CD-READ-FAILED\r\n"
