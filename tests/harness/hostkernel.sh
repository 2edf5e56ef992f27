#!/bin/sh
# Usage: tests/harness/hostkernel.sh VARIANT OUTDIR [FIXTURE]
# The emulated test host's own kernel and modules (not the guests': those
# are the fixture's, tests/guest/build.sh):
#   OUTDIR/vmlinuz   Debian's cloud kernel
#   OUTDIR/mods/     kvm/kvm-amd/tun/bridge/... and their dependencies,
#                    decompressed, flat, with their load order in mods/order
#   OUTDIR/version   the kernel's release
# VARIANT:
#   backports  linux-image-cloud-amd64 of bookworm-backports (6.12 when
#              written), fetched with a temporary apt configuration under
#              OUTDIR/apt: the machine's own apt sources are not changed
#   bookworm   the fixture's kernel (FIXTURE, default target/guest): the
#              same 6.1 kernel as the guests
# Cached: does nothing if OUTDIR/stamp matches this script and VARIANT.
# rm -rf OUTDIR to pick up a newer kernel.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 backports|bookworm OUTDIR [FIXTURE]" >&2; exit 2; }
variant=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
fix=${3:-$root/target/guest}
sum=$( (cat "$0"; echo "$variant") | sha256sum | cut -d' ' -f1)
if [ -f "$out/vmlinuz" ] && [ -f "$out/mods/order" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$sum" ]; then
    exit 0
fi
rm -f "$out/stamp"
tmp=$(mktemp -d "$out/tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP
mkdir -p "$out/debs"
case $variant in
backports)
    # A sources list of its own, lists and cache under OUTDIR/apt; the
    # machine's /etc/apt is only read for its keyring.
    a=$out/apt
    mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
        "http://deb.debian.org/debian bookworm-backports main" > "$a/sources.list"
    set -- -o "Dir::Etc::SourceList=$a/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o APT::Sandbox::User=root
    apt-get "$@" update -qq
    pkg=$(apt-cache "$@" depends linux-image-cloud-amd64 |
        sed -n 's/^ *Depends: \(linux-image-[^ ]*\).*/\1/p' | head -n1)
    [ -n "$pkg" ] || { echo "$0: cannot resolve linux-image-cloud-amd64 in bookworm-backports" >&2; exit 1; }
    (cd "$out/debs" && apt-get "$@" download -q "$pkg" >/dev/null)
    ;;
bookworm)
    "$root/tests/guest/build.sh" "$fix"
    pkg=linux-image-$(cat "$fix/kernel-version")
    cp "$(ls -t "$fix/debs/${pkg}_"*.deb | head -n1)" "$out/debs/"
    ;;
*) echo "$0: unknown kernel variant $variant (backports or bookworm)" >&2; exit 2 ;;
esac
kver=${pkg#linux-image-}
x=$tmp/x
dpkg-deb -x "$(ls -t "$out/debs/${pkg}_"*.deb | head -n1)" "$x"
# busybox (the fixture's, as in the host) makes the modules.dep the deb
# lacks (its postinst runs depmod), and decompresses .ko.xz: busybox
# insmod in the host reads only plain modules.
"$root/tests/guest/build.sh" "$fix"
dpkg-deb -x "$(ls -t "$fix"/debs/busybox-static_*.deb | head -n1)" "$tmp/bb"
bb=$tmp/bb/bin/busybox
mdir=$x/lib/modules/$kver
"$bb" depmod -b "$x" "$kver"
rm -rf "$out/mods"; mkdir -p "$out/mods"; : > "$out/mods/order"; seen=" "
add() { # depth first, so dependencies come before their users
    case $seen in *" $1 "*) return ;; esac
    seen="$seen$1 "
    for d in $(grep "^$1:" "$mdir/modules.dep" | cut -d: -f2); do add "$d"; done
    b=${1##*/}
    case $b in
    *.xz) "$bb" xz -dc "$mdir/$1" > "$out/mods/${b%.xz}" ;;
    *) cp "$mdir/$1" "$out/mods/" ;;
    esac
    echo "${b%%.ko*}" >> "$out/mods/order"
}
# Names missing or built in are skipped.
for n in irqbypass kvm kvm-amd tun bridge veth vhost_net vhost_vsock loop \
    virtio_pci virtio_mmio virtio_blk virtio_net virtio-rng virtio_console vmw_vsock_virtio_transport; do
    p=$(grep -E "(^|/)$n\.ko(\.xz)?:" "$mdir/modules.dep" | cut -d: -f1)
    [ -z "$p" ] || add "$p"
done
grep -qx kvm-amd "$out/mods/order" || { echo "$0: no kvm-amd module in $pkg" >&2; exit 1; }
cp "$x/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" > "$out/version"
echo "$sum" > "$out/stamp"
echo "hostkernel.sh: $variant kernel $kver, $(wc -l < "$out/mods/order") modules" >&2
