#!/bin/sh
# make bench: measures vm-run against QEMU (Debian's) in the same run and
# writes docs/BENCHMARKS.md (or the file named): this run's tables first,
# then the file as it was, under "# Before the run of DATE", so that the
# analyses and older figures written into it stay.
#  1. start-up on this machine's /dev/kvm with the tiny PVH guest;
#  2. Linux boot inside the emulated test host, same kernel, initramfs and
#     command line for both (tests/bench/boot.sh, which runs alone too);
#  3. disk I/O with fio (tests/bench/disk.sh, which runs alone too): the
#     host on the image file, a guest of vm-run and a guest of QEMU
#     (virtio-blk-pci) on that same file, in the test host;
#  4. qcow2 (tests/bench/qcow2.sh, alone too): vm-img create/convert
#     against qemu-img on this machine; fio in guests of vm-run on raw and
#     on a qcow2 overlay and of QEMU on the same kind of overlay;
#  5. snapshots (tests/bench/snapshot.sh, alone too): vm-send/vm-receive
#     against QEMU's migrate exec: on this machine's /dev/kvm, and clones
#     mapped from a checkpoint file (tests/bench/clones.sh, alone too);
#  6. firmware: SeaBIOS to a boot sector, vm-run and QEMU -M pc
#     (tests/bench/firmware.sh, alone too), on this machine's /dev/kvm;
#  7. start-up and exit against the floor (tests/bench/startup.sh), and
#     density: 50 idle guests' PSS (tests/bench/density.sh), both alone too;
#  8. binary sizes.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/docs/BENCHMARKS.md}
bin=$root/target/x86_64-unknown-linux-musl/release
tiny=$root/target/tiny-guest/tiny.elf
mkdir -p "${tiny%/*}"
cc -c "$root/tests/tiny-guest/tiny.S" -o "${tiny%.elf}.o"
ld -m elf_x86_64 -n --no-warn-rwx-segments -T "$root/tests/tiny-guest/tiny.ld" "${tiny%.elf}.o" -o "$tiny"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
[ ! -f "$out" ] || cp "$out" "$tmp/before"

echo "bench: start-up on this machine's /dev/kvm" >&2
"$bin/vm-bench" -n 20 -k "tiny: bench" \
	"vm-run=$bin/vm-run -m 128M -b $tiny -a bench" \
	"QEMU microvm=qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities \
	-m 128M -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-device isa-debug-exit,iobase=0xf4,iosize=1 -kernel $tiny -append bench" > "$tmp/startup"

cmdline='console=ttyS0 quiet'   # as in tests/bench/boot.sh
"$root/tests/bench/boot.sh" "$tmp/boot"
"$root/tests/bench/disk.sh" "$tmp/disk"
"$root/tests/bench/qcow2.sh" "$tmp/qcow2"
"$root/tests/bench/net.sh" "$tmp/net"
"$root/tests/bench/snapshot.sh" "$tmp/snapshot"
"$root/tests/bench/clones.sh" "$tmp/clones"
"$root/tests/bench/firmware.sh" "$tmp/firmware"
"$root/tests/bench/startup.sh" "$tmp/startup-exit"
"$root/tests/bench/density.sh" "$tmp/density"

{
cat <<HEAD
# Benchmarks

Written by \`make bench\` on $(date -u +%Y-%m-%d) ($(nproc) cores,
$(uname -r)). Every comparison is measured in the same run, alternating
between the VMMs; only the ratios mean something across machines.

## Start-up on this machine's /dev/kvm

The tiny PVH guest (\`tests/tiny-guest\`) prints one line and resets;
QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') \`-M microvm\` runs the same ELF (ending through
isa-debug-exit, as microvm has no i8042). Time to the guest's line,
to exit, CPU time and peak RSS of the VMM process.

HEAD
cat "$tmp/startup"
cat <<MID

## Linux boot inside the emulated test host

Debian's cloud kernel and the busybox initramfs, \`-c 2 -m 256M\`,
command line \`$cmdline\`, under kvm-amd in the test host (QEMU TCG):
time to the init's first line (\`VMTEST-INIT-OK\`) and to exit after
\`poweroff -f\`. QEMU is \`-M microvm,rtc=on\` (without an RTC its
kernel waits seconds for one; vm-run's FADT says there is none).

MID
cat "$tmp/boot"
echo
cat "$tmp/disk"
echo
cat "$tmp/qcow2"
echo
cat "$tmp/net"
echo
cat "$tmp/snapshot"
echo
cat "$tmp/clones"
echo
cat "$tmp/firmware"
echo
cat "$tmp/startup-exit"
echo
cat "$tmp/density"
cat <<TAIL

## Binary sizes (static, stripped)

| binary | bytes |
|---|---|
TAIL
for t in vm-run vm-ctl vm-img vm-net vm-send vm-receive; do
	echo "| $t | $(stat -c %s "$bin/$t") |"
done
if [ -s "$tmp/before" ]; then
	echo
	sed "1s/^# Benchmarks\$/# Before the run of $(date -u +%Y-%m-%d)/" "$tmp/before"
fi
} > "$out"
echo "bench: wrote $out" >&2
