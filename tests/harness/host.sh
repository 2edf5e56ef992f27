#!/bin/sh
# Usage: tests/harness/host.sh [OUTDIR [FIXTURE]]
#   (defaults target/testhost and target/guest; WITH_QEMU=1 also builds qemu.cpio.gz;
#   TESTHOST_KERNEL=bookworm|backports picks the host's own kernel, hostkernel.sh)
# Builds the emulated test host (see /work/shared/notes/kvm-on-this-machine.md):
#   OUTDIR/vmlinuz       the host's kernel: Debian's cloud kernel (hostkernel.sh)
#   OUTDIR/host.cpio.gz  busybox, kvm-amd & co, /guest/{bzImage,bzImage-generic,vmlinux,initrd.gz}, /init
#   OUTDIR/qemu.cpio.gz  qemu-system-x86_64, qemu-img, qemu-io, their libraries
#                        and QEMU's firmware, to append
# Both archives are cached, keyed on this script and what goes into them.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/testhost}; fix=${2:-$root/target/guest}
"$root/tests/guest/build.sh" "$fix"
mkdir -p "$out"
# 6.1, the guests' kernel: bookworm-backports' 6.12 panicked in every
# boot of tests/harness/soak.sh (tests/README.md).
variant=${TESTHOST_KERNEL:-bookworm}
kdir=$out/kernel-$variant
"$root/tests/harness/hostkernel.sh" "$variant" "$kdir" "$fix"
tmp=$(mktemp -d "$out/tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP
me=$root/tests/harness/host.sh

sum=$(cat "$me" "$root/tests/harness/kvmhold.c" "$fix/bzImage" "$fix/bzImage-generic" "$fix/vmlinux" "$fix/initrd.gz" "$kdir/vmlinuz" "$kdir"/mods/* | sha256sum)
if [ ! -f "$out/host.cpio.gz" ] || [ "$(cat "$out/host.stamp" 2>/dev/null)" != "$sum" ]; then
    r=$tmp/host
    mkdir -p "$r/bin/vm" "$r/dev" "$r/proc" "$r/sys" "$r/tmp" "$r/root" "$r/etc" "$r/guest" "$r/lib"
    dpkg-deb -x "$(ls -t "$fix"/debs/busybox-static_*.deb | head -n1)" "$tmp/bb"
    cp "$tmp/bb/bin/busybox" "$r/bin/"
    cc -static -O2 -o "$r/bin/kvmhold" "$root/tests/harness/kvmhold.c"
    for a in $("$r/bin/busybox" --list-full); do
        mkdir -p "$r/${a%/*}"; [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
    done
    cp -r "$kdir/mods" "$r/lib/modules"
    cp "$fix/bzImage" "$fix/bzImage-generic" "$fix/vmlinux" "$fix/initrd.gz" "$r/guest/"
    cat > "$r/init" <<'EOF'
#!/bin/sh
# Test host /init. No set -e: PID 1 must reach TESTHOST-DONE and poweroff.
export PATH=/bin/vm:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
ip link set lo up
[ -c /dev/kvm ] || { echo TESTHOST-NO-KVM; poweroff -f; }
# One VM open for good, so that guests coming and going never patch the
# scheduler's code (tests/harness/kvmhold.c).
kvmhold &
# A heartbeat on the second serial port, apart from the console: a host
# whose beat stops is dead (both CPUs stuck in the emulation's faults,
# tests/README.md), and run-host.sh says so within a minute instead of
# waiting out its -s on the console.
[ -c /dev/ttyS1 ] && (while :; do echo; sleep 5; done > /dev/ttyS1) &
echo "TESTHOST-KERNEL $(uname -r)"
echo TESTHOST-READY
rc=0
if [ -f /scenario.sh ]; then
    # Own session with the console as controlling tty, so ^C and the
    # interactive demo behave; the subshell keeps setsid from forking away.
    (cd /tmp && exec setsid cttyhack sh /scenario.sh)
    rc=$?
fi
echo "TESTHOST-DONE rc=$rc"
poweroff -f
EOF
    chmod 755 "$r/init"
    (cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip > "$out/host.cpio.gz"
    cp "$kdir/vmlinuz" "$out/vmlinuz"
    echo "$sum" > "$out/host.stamp"
fi

[ "${WITH_QEMU:-}" = 1 ] || exit 0
command -v qemu-system-x86_64 >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
}
q=$(command -v qemu-system-x86_64)
# qemu-img and qemu-io too: the qcow2 tests check and make images with
# them inside the host.
command -v qemu-img >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
}
qi=$(command -v qemu-img); qio=$(command -v qemu-io)
sum=$(cat "$me" "$q" "$qi" "$qio" | sha256sum)
[ -f "$out/qemu.cpio.gz" ] && [ "$(cat "$out/qemu.stamp" 2>/dev/null)" = "$sum" ] && exit 0
r=$tmp/qemu
# QEMU finds firmware relative to its binary (/usr/bin/../share/qemu, ../share/seabios,
# ../lib/ipxe/qemu). This set is what -M microvm, pc and q35 open with -nodefaults
# and -kernel, plus pvh.bin (ELF vmlinux) and the virtio-net option ROM.
for f in "$q" "$qi" "$qio" $(ldd "$q" "$qi" "$qio" | grep -o '/[^ :]*' | sort -u) \
    /usr/share/qemu/bios-microvm.bin /usr/share/qemu/linuxboot_dma.bin \
    /usr/share/qemu/kvmvapic.bin /usr/share/qemu/pvh.bin \
    /usr/share/seabios/bios-256k.bin /usr/share/seabios/vgabios-stdvga.bin \
    /usr/lib/ipxe/qemu/efi-virtio.rom; do
    mkdir -p "$r${f%/*}"; cp -L "$f" "$r$f"
done
(cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip > "$out/qemu.cpio.gz"
echo "$sum" > "$out/qemu.stamp"
