#!/bin/sh
# Installs, from Debian's packages, what the tests, the demo and the
# benchmarks need, when it is missing: QEMU (the emulated test host, and
# the reference VMM, qemu-img for the image interop tests; Debian's
# qemu-system-x86 removes a newer qemu-utils, so both come from Debian), busybox (both initramfs), cpio, mandoc, assembler and
# linker for the tiny guest, util-linux's unshare/setpriv/nsenter, systemd-analyze,
# systemd-nspawn and debootstrap (the systemd tests' Debian system),
# containerd and runc (tests/containerd.rs), socat (tests/hosts.rs' TCP);
# slurmctld, slurmd, the Slurm clients and munge (tests/slurm.rs);
# GRUB, xorriso, mtools, isolinux and sfdisk for the boot media of
# tests/media/build.sh.
set -eu
need=
for pair in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils busybox:busybox-static cpio:cpio \
	mandoc:mandoc ld:binutils cc:gcc unshare:util-linux setpriv:util-linux \
	xz:xz-utils zstd:zstd hyperfine:hyperfine nsenter:util-linux xorriso:xorriso \
	systemd-nspawn:systemd-container debootstrap:debootstrap grub-mkrescue:grub-common \
	mformat:mtools sfdisk:fdisk mkfs.ext4:e2fsprogs \
	containerd:containerd runc:runc socat:socat readelf:binutils \
	slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || need="$need ${pair#*:}"
done
[ -e /usr/share/seabios/bios-256k.bin ] || need="$need seabios"
[ -e /usr/lib/grub/i386-pc/boot.img ] || need="$need grub-pc-bin"
[ -e /usr/lib/ISOLINUX/isolinux.bin ] || need="$need isolinux"
[ -e /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need="$need syslinux-common"
# systemd-analyze checks docs/vm@.service; ip runs vm-net's tests.
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
[ -z "$need" ] && exit 0
echo "setup: installing$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $need >/dev/null
