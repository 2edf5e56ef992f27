#!/bin/sh
# Usage: debian-raw.sh OUTDIR RECIPEDIR (called by build.sh)
# OUTDIR/debian.raw: Debian 12 made by debootstrap (minbase, systemd, udev,
# the generic kernel, D-Bus for logind, iproute2 and ping, networkd on DHCP) on a 2 GiB sparse disk: an MBR with one bootable
# ext4 partition from 1 MiB, GRUB's boot.img in the MBR and core.img in
# the gap before the partition. No loop device and no mount: the file
# system is made from a directory (mkfs.ext4 -d) at the partition's
# offset, and GRUB is written with dd, so this runs wherever debootstrap
# can chroot.
set -eu
out=$1 recipe=$2
size_mib=2048 start=2048      # disk size; partition start in sectors (1 MiB)
mirror=${MIRROR:-}
if [ -z "$mirror" ]; then
    # The mirror apt uses, so that a machine behind a local mirror or proxy
    # gets the same packages as its apt-get.
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -m1 '/debian/*$' || :)
    [ -n "$mirror" ] || mirror=$(sed -n 's/^deb  *\(\[[^]]*\]  *\)\{0,1\}\([^ ]*\/debian\/*\) .*/\2/p' \
        /etc/apt/sources.list 2>/dev/null | head -n1)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

work=$(mktemp -d "$out/debian-raw.XXXXXX")
root=$work/root
cleanup() {
    for m in proc sys; do
        ! mountpoint -q "$root/$m" 2>/dev/null || umount "$root/$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT; trap 'exit 1' INT TERM HUP
log() { # log STEP CMD...: run CMD quietly; on failure show its output
    step=$1; shift
    "$@" > "$work/log" 2>&1 || { tail -n 30 "$work/log" >&2; echo "debian-raw.sh: $step failed" >&2; exit 1; }
}

mkdir -p "$out/debs/debootstrap"
# Recommends stay out (firmware, apparmor): only what boots to a login,
# and what the tests ask of it: D-Bus, without which systemd-logind does
# not start and so nothing powers off on the ACPI power button (vm-ctl
# stop); ip and ping for a NIC.
# Two stages, so that the initramfs is configured before the kernel's
# package makes it: made once, with only what boots a VM (MODULES=list),
# it is 7 MB, which loads faster through the BIOS and unpacks faster
# under TCG than MODULES=most's. Neither file is a package's conffile.
log debootstrap debootstrap --foreign --variant=minbase --include=systemd-sysv,udev,linux-image-amd64,dbus,iproute2,iputils-ping \
    --cache-dir="$out/debs/debootstrap" bookworm "$root" "$mirror"
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
echo MODULES=list > "$root/etc/initramfs-tools/conf.d/vmtest"
cp "$recipe/initramfs-modules" "$root/usr/share/initramfs-tools/modules.d/vmtest"
log "debootstrap --second-stage" env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$root" /debootstrap/debootstrap --second-stage

uuid=$(cat /proc/sys/kernel/random/uuid)
echo vmtest > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvmtest\n' > "$root/etc/hosts"
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$uuid" > "$root/etc/fstab"
chroot "$root" passwd -q -d root
# Root logged in on the serial console: a test waits for the prompt and
# types its commands (poweroff, reboot), with no password to send.
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cp "$recipe/autologin.conf" "$root/etc/systemd/system/serial-getty@ttyS0.service.d/"
# Any NIC configured by systemd-networkd with DHCP (vm-run answers it).
# Enabled by hand rather than with systemctl enable, which would enable
# systemd-networkd-wait-online too: nothing here waits for the network.
mkdir -p "$root/etc/systemd/network" "$root/etc/systemd/system/multi-user.target.wants" \
    "$root/etc/systemd/system/sockets.target.wants"
cp "$recipe/dhcp.network" "$root/etc/systemd/network/"
ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/"
ln -sf /lib/systemd/system/systemd-networkd.socket "$root/etc/systemd/system/sockets.target.wants/"
kver=$(ls "$root/usr/lib/modules")
[ "$(echo "$kver" | wc -w)" -eq 1 ] || { echo "debian-raw.sh: expected one kernel, got: $kver" >&2; exit 1; }
grep -v -e '^#' -e '^ *$' "$recipe/prune-modules" | while read -r d; do
    case $d in ''|/*|*..*) echo "debian-raw.sh: prune-modules: bad path '$d'" >&2; exit 1 ;; esac
    rm -rf "$root/usr/lib/modules/$kver/kernel/$d"
done
chroot "$root" depmod -a "$kver"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
# GRUB's modules where normal.mod looks for them; core.img holds only what
# finds and reads this partition.
mkdir -p "$root/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"
sed "s/@UUID@/$uuid/g" "$recipe/grub.cfg" > "$root/boot/grub/grub.cfg"
printf 'search.fs_uuid %s root\nset prefix=($root)/boot/grub\n' "$uuid" > "$work/early.cfg"
grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub \
    biosdisk part_msdos ext2 search_fs_uuid
core=$(stat -c %s "$work/core.img")
[ "$core" -le $(( (start - 1) * 512 )) ] ||
    { echo "debian-raw.sh: core.img ($core bytes) does not fit before sector $start" >&2; exit 1; }

disk=$work/disk
truncate -s "${size_mib}M" "$disk"
echo "start=$start, type=83, bootable" | log sfdisk sfdisk -q "$disk"
# metadata_csum_seed and orphan_file are not in GRUB 2.06's ext2 driver.
log mkfs.ext4 mkfs.ext4 -q -F -b 4096 -L vmtest -U "$uuid" -O ^metadata_csum_seed,^orphan_file \
    -E "offset=$((start * 512)),nodiscard,lazy_itable_init=1,lazy_journal_init=1" -d "$root" "$disk" $(( (size_mib * 1048576 - start * 512) / 4096 ))
# boot.img up to the disk signature and partition table; it loads sector 1
# (its default), whose first sector's block list loads the rest from 2.
dd if=/usr/lib/grub/i386-pc/boot.img of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none
mv "$disk" "$out/debian.raw"
