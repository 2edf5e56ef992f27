#!/bin/sh
# Usage: grub-iso.sh OUTDIR RECIPEDIR (called by build.sh)
# OUTDIR/grub.iso: grub-mkrescue's hybrid image (El Torito for a CD, an
# MBR for a disk) with a serial-console menu whose one entry boots the
# guest fixture (FIXTURE: Debian's cloud kernel and the busybox initramfs
# of tests/guest) to its marker line, then powers off.
set -eu
out=$1 recipe=$2
for f in bzImage initrd.gz; do
    [ -f "$FIXTURE/$f" ] || { echo "grub-iso.sh: $FIXTURE/$f: missing (make fixture)" >&2; exit 66; }
done
work=$(mktemp -d "$out/grub-iso.XXXXXX")
trap 'rm -rf "$work"' EXIT; trap 'exit 1' INT TERM HUP
mkdir -p "$work/iso/boot/grub"
cp "$FIXTURE/bzImage" "$work/iso/boot/vmlinuz"
cp "$FIXTURE/initrd.gz" "$work/iso/boot/initrd.gz"
cp "$recipe/grub.cfg" "$work/iso/boot/grub/grub.cfg"
# No translations, fonts or themes: the menu is text on a serial line.
grub-mkrescue --locales= --fonts= --themes= -o "$work/grub.iso" "$work/iso" > "$work/log" 2>&1 ||
    { tail -n 30 "$work/log" >&2; echo "grub-iso.sh: grub-mkrescue failed" >&2; exit 1; }
mv "$work/grub.iso" "$out/grub.iso"
