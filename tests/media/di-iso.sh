#!/bin/sh
# Usage: di-iso.sh OUTDIR RECIPEDIR (called by build.sh)
# OUTDIR/di.iso: Debian's installer (kernel and initrd.gz of the text
# netboot image in debian-installer-12-netboot-amd64) on an isolinux CD:
# El Torito no-emulation boot and no MBR, so it boots only from a CD-ROM.
set -eu
out=$1 recipe=$2
pkg=debian-installer-12-netboot-amd64
img=./usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64
mkdir -p "$out/debs"
# 133 MB: downloaded once, kept until OUTDIR/debs is removed.
deb=$(ls -t "$out/debs/${pkg}_"*.deb 2>/dev/null | head -n1)
if [ -z "$deb" ]; then
    # Sandbox user root: _apt cannot write into a root-owned directory.
    (cd "$out/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    deb=$(ls -t "$out/debs/${pkg}_"*.deb | head -n1)
fi
work=$(mktemp -d "$out/di-iso.XXXXXX")
trap 'rm -rf "$work"' EXIT; trap 'exit 1' INT TERM HUP
mkdir -p "$work/iso/isolinux" "$work/iso/install"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" "$img/linux" "$img/initrd.gz"
mv "$work/$img/linux" "$work/iso/install/vmlinuz"
mv "$work/$img/initrd.gz" "$work/iso/install/initrd.gz"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$work/iso/isolinux/"
cp "$recipe/isolinux.cfg" "$work/iso/isolinux/"
xorriso -as mkisofs -quiet -o "$work/di.iso" -V VMTEST_DI -R -J \
    -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
    "$work/iso" > "$work/log" 2>&1 ||
    { tail -n 30 "$work/log" >&2; echo "di-iso.sh: xorriso failed" >&2; exit 1; }
mv "$work/di.iso" "$out/di.iso"
