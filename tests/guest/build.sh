#!/bin/sh
# Usage: tests/guest/build.sh OUTDIR
# Builds the Linux guest fixture from Debian packages only:
#   OUTDIR/bzImage    Debian's cloud kernel (what linux-image-cloud-amd64 depends on)
#   OUTDIR/vmlinux    the same kernel as an ELF image, for PVH boot
#   OUTDIR/bzImage-generic  Debian's generic kernel of the same version
#   OUTDIR/initrd.gz  busybox-static + tests/guest/init + the kernel's virtio modules
#   OUTDIR/hostmods/  kvm/kvm-amd/tun/bridge/... for the emulated test host (host.sh)
#   OUTDIR/kernel-version, OUTDIR/config
# Cached: does nothing if the stamp matches this script and init. rm -rf OUTDIR
# to pick up a newer kernel. Debs are kept in OUTDIR/debs.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
sum=$(cat "$here/build.sh" "$here/init" | sha256sum | cut -d' ' -f1)
if [ -f "$out/bzImage" ] && [ -f "$out/initrd.gz" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$sum" ]; then
    exit 0
fi

# CI starts from a bare Debian: fetch what is missing, refreshing apt lists once.
updated=
need() { # need CMD PACKAGE
    command -v "$1" >/dev/null && return
    [ -n "$updated" ] || { apt-get update -qq; updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need cpio cpio

# vmlinux BZIMAGE: the ELF kernel inside a bzImage (its PVH note included),
# as the kernel's scripts/extract-vmlinux finds it: the payload named by the
# setup header, decompressed by whichever tool its magic names.
vmlinux() {
    sects=$(od -An -tu1 -j497 -N1 "$1"); [ "$sects" -ne 0 ] || sects=4
    setup=$(( (sects + 1) * 512 ))
    off=$(od -An -tu4 -j584 -N4 "$1"); len=$(od -An -tu4 -j588 -N4 "$1")
    magic=$(tail -c +$((setup + off + 1)) "$1" | head -c 4 | od -An -tx1 | tr -d ' ')
    case $magic in
    02214c18) need lz4 lz4; dec="lz4 -dc" ;;
    28b52ffd) need zstd zstd; dec="zstd -dc" ;;
    fd377a58) need xz xz-utils; dec="xz -dc" ;;
    1f8b*) dec="gzip -dc" ;;
    *) echo "$0: unknown kernel compression $magic" >&2; return 1 ;;
    esac
    # The payload ends with the decompressed size, which the tools call
    # trailing garbage: their complaint and status are expected.
    tail -c +$((setup + off + 1)) "$1" | head -c "$len" | $dec 2>/dev/null || :
}
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || { apt-get update -qq; updated=1; }
pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\).*/\1/p' | head -n1)
[ -n "$pkg" ] || { echo "$0: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }

mkdir -p "$out/debs"
# Sandbox user root: _apt cannot write into a root-owned cache dir.
(cd "$out/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static >/dev/null)
tmp=$(mktemp -d "$out/tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP
x=$tmp/x
for p in busybox-static "$pkg"; do dpkg-deb -x "$(ls -t "$out/debs/${p}_"*.deb | head -n1)" "$x"; done
kver=${pkg#linux-image-}
bb=$x/bin/busybox
cp "$x/boot/vmlinuz-$kver" "$out/bzImage"
vmlinux "$out/bzImage" > "$out/vmlinux"
[ "$(head -c 4 "$out/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
    { echo "$0: no ELF kernel inside $out/bzImage" >&2; exit 1; }
cp "$x/boot/config-$kver" "$out/config"
echo "$kver" > "$out/kernel-version"
# Debian's generic kernel of the same version, for what the cloud one is
# built without (CONFIG_VMGENID: tests/snapshot.rs's "reseed"). Only its
# bzImage: the initramfs has the cloud kernel's modules, so a guest of
# this one has no virtio devices.
gver=${kver%-cloud-amd64}-amd64
(cd "$out/debs" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$gver" >/dev/null)
dpkg-deb --fsys-tarfile "$(ls -t "$out/debs/linux-image-${gver}_"*.deb | head -n1)" |
    tar -xO "./boot/vmlinuz-$gver" > "$out/bzImage-generic"

# The deb has no modules.dep (its postinst runs depmod); busybox's depmod makes one.
mdir=$x/lib/modules/$kver
"$bb" depmod -b "$x" "$kver"
# mods DEST NAME...: copy NAMEs and their deps flat into DEST, decompressed, and
# list them in load order in DEST/order. Names missing or built in are skipped.
mods() {
    dest=$1; shift; mkdir -p "$dest"; seen=" "; : > "$dest/order"
    for n in "$@"; do
        p=$(grep -E "(^|/)$n\.ko(\.xz)?:" "$mdir/modules.dep" | cut -d: -f1)
        [ -z "$p" ] || add "$dest" "$p"
    done
}
add() { # depth first, so dependencies come before their users
    case $seen in *" $2 "*) return ;; esac
    seen="$seen$2 "
    for d in $(grep "^$2:" "$mdir/modules.dep" | cut -d: -f2); do add "$1" "$d"; done
    cp "$mdir/$2" "$1/"
    case $2 in *.xz) need xz xz-utils; xz -df "$1/${2##*/}" ;; esac  # busybox insmod cannot read .xz
    b=${2##*/}; echo "${b%%.ko*}" >> "$1/order"
}
virtio="virtio_pci virtio_mmio virtio_blk virtio_net virtio-rng virtio_console vmw_vsock_virtio_transport"
rm -rf "$out/hostmods"
mods "$out/hostmods" irqbypass kvm kvm-amd tun bridge veth vhost_net vhost_vsock loop $virtio
echo "build.sh: kernel $kver, $(grep -E '^CONFIG_VIRTIO_PCI=' "$out/config")"

# Guest initramfs. Applet links are made here so /init's #!/bin/sh resolves.
r=$tmp/root
mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/tmp" "$r/root" "$r/etc"
cp "$bb" "$r/bin/busybox"
for a in $("$bb" --list-full); do
    mkdir -p "$r/${a%/*}"; [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
done
mods "$r/lib/modules" $virtio button evdev
cp "$here/init" "$r/init"; chmod 755 "$r/init"
(cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$out/initrd.gz"
echo "$sum" > "$out/stamp"
