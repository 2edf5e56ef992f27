#!/bin/sh
# make bench: measures vm-run against QEMU (Debian's) in the same run and
# writes docs/BENCHMARKS.md (or the file named).
#  1. start-up on this machine's /dev/kvm with the tiny PVH guest;
#  2. Linux boot inside the emulated test host, same kernel, initramfs and
#     command line for both;
#  3. disk I/O with fio: the host on the image file, a guest of vm-run and
#     a guest of QEMU (virtio-blk-pci) on that same file, in one test host;
#  4. binary sizes.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/docs/BENCHMARKS.md}
bin=$root/target/x86_64-unknown-linux-musl/release
tiny=$root/target/tiny-guest/tiny.elf
mkdir -p "${tiny%/*}"
cc -c "$root/tests/tiny-guest/tiny.S" -o "${tiny%.elf}.o"
ld -m elf_x86_64 -n --no-warn-rwx-segments -T "$root/tests/tiny-guest/tiny.ld" "${tiny%.elf}.o" -o "$tiny"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "bench: start-up on this machine's /dev/kvm" >&2
"$bin/vm-bench" -n 20 -k "tiny: bench" \
	"vm-run=$bin/vm-run -m 128M -b $tiny -a bench" \
	"QEMU microvm=qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities \
	-m 128M -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-device isa-debug-exit,iobase=0xf4,iosize=1 -kernel $tiny -append bench" > "$tmp/startup"

echo "bench: Linux boot in the emulated test host (a few minutes)" >&2
cmdline='console=ttyS0 quiet'
# A run that hangs is killed after 2 minutes and shows as the maximum
# (the test host has hung a few times in KVM; see the notes of issue 3).
cat > "$tmp/scenario.sh" <<SCENARIO
vm-bench -n 10 -k VMTEST-INIT-OK \
	"vm-run=timeout -s KILL 120 vm-run -c 2 -m 256M -b /guest/bzImage -i /guest/initrd.gz -a '$cmdline'" \
	"QEMU microvm=timeout -s KILL 120 qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -smp 2 -m 256M \
	-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-kernel /guest/bzImage -initrd /guest/initrd.gz -append '$cmdline'" > /tmp/boot.md
echo BOOT-TABLE-BEGIN; cat /tmp/boot.md; echo BOOT-TABLE-END
SCENARIO
"$root/tests/harness/run-host.sh" -q -b "$bin" -t 1800 "$tmp/scenario.sh" > "$tmp/host.log"
sed -n '/^BOOT-TABLE-BEGIN/,/^BOOT-TABLE-END/p' "$tmp/host.log" | tr -d '\r' |
	grep '^|' > "$tmp/boot" || { cat "$tmp/host.log" >&2; exit 1; }

echo "bench: disk I/O with fio in the emulated test host (about 5 minutes)" >&2
"$root/tests/bench/fio-payload.sh" "$root/target/bench"
cat > "$tmp/disk.sh" <<'SCENARIO'
dd if=/dev/zero of=/tmp/bench.img bs=1M count=256 2>/dev/null
sh /bench/fio-jobs.sh /tmp/bench.img 0 | sed 's/^FIO/FIO-host/'
cat /guest/initrd.gz /bench/fio.cpio.gz > /tmp/initrd-fio.gz
p='console=ttyS0 quiet run="sh /bench/fio-jobs.sh /dev/vda 1"'
vm-run -c 2 -m 1G -d /tmp/bench.img -b /guest/bzImage -i /tmp/initrd-fio.gz -a "$p" |
	sed 's/^FIO/FIO-vmrun/'
qemu-system-x86_64 -M q35 -enable-kvm -cpu host -smp 2 -m 1G -nodefaults -no-user-config \
	-nographic -serial stdio -monitor none -no-reboot -kernel /guest/bzImage \
	-initrd /tmp/initrd-fio.gz -append "$p" -drive file=/tmp/bench.img,format=raw,if=none,id=d0 \
	-device virtio-blk-pci,drive=d0 | sed 's/^FIO/FIO-qemu/'
SCENARIO
"$root/tests/harness/run-host.sh" -q -x "$root/target/bench/bench.cpio.gz" -b "$bin" -t 1800 \
	"$tmp/disk.sh" > "$tmp/disk.log"
tr -d '\r' < "$tmp/disk.log" | grep '^FIO-' > "$tmp/fio" || { cat "$tmp/disk.log" >&2; exit 1; }
! grep '^FIO-ERROR' "$tmp/fio" >&2 || exit 1
# One row a job: host, vm-run, QEMU, and the ratios (IOPS for 4k jobs,
# MB/s for 1M jobs, read or write as the job does).
awk '
	{ who = substr($1, 5); job = $2
	  v = (job ~ /1m$/) ? (($3 > 0 ? $3 : $5) / 1024) : ($4 > 0 ? $4 : $6)
	  val[who, job] = v; if (!(job in seen)) { seen[job] = 1; order[n++] = job } }
	END {
	  print "| job | host | vm-run | QEMU | vm-run / host | vm-run / QEMU |"
	  print "|---|---|---|---|---|---|"
	  for (i = 0; i < n; i++) { j = order[i]
	    unit = (j ~ /1m$/) ? " MB/s" : " IOPS"
	    h = val["host", j]; m = val["vmrun", j]; q = val["qemu", j]
	    printf "| %s | %.0f%s | %.0f%s | %.0f%s | %.3f | %.2f |\n", j, h, unit, m, unit, q, unit, \
	      (h > 0 ? m / h : 0), (q > 0 ? m / q : 0) }
	}' "$tmp/fio" > "$tmp/disk"

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
cat <<DISK

## Disk I/O (virtio-blk) inside the test host

fio $(fio --version) (Debian's), io_uring, 5 s a job after 1 s of ramp, on a
256 MiB raw image in the test host's tmpfs: **host** is fio on that file
(buffered: tmpfs has no O_DIRECT, and its page cache is what both VMMs
read and write); **vm-run** and **QEMU** are fio on /dev/vda with
O_DIRECT inside a guest (same kernel and initramfs, \`-c 2 -m 1G\`), QEMU
as \`-M q35\` with \`virtio-blk-pci\` and its default cache and AIO settings.
4k jobs in IOPS, 1 MiB jobs (queue depth 4) in MB/s. The guests run
under kvm-amd on an emulated CPU, where every exit costs microseconds:
the ratios to the host say little about bare metal, the ratios between
the VMMs say more.

DISK
cat "$tmp/disk"
cat <<TAIL

## Binary sizes (static, stripped)

| binary | bytes |
|---|---|
TAIL
for t in vm-run vm-ctl vm-img vm-net vm-send vm-receive; do
	echo "| $t | $(stat -c %s "$bin/$t") |"
done
} > "$out"
echo "bench: wrote $out" >&2
