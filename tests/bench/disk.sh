#!/bin/sh
# Usage: tests/bench/disk.sh [OUT.md]
# The "Disk I/O" section of docs/BENCHMARKS.md (tests/bench/run.sh calls
# it; alone, after `make` and `make fixture`, it prints the section or
# writes it to OUT.md). In the emulated test host, on one raw image in
# its tmpfs, Debian's fio runs six jobs (fio-jobs.sh):
#   host    on the image file itself;
#   vm-run  in a guest, on /dev/vda backed by the image (-d IMG);
#   QEMU    in a guest with the same kernel, initramfs and command line,
#           virtio-blk-pci backed by the image.
# They take turns, DISK_ROUNDS times (default 3); the table has the
# median and range of the rounds. A VMM whose guest gives no number for a
# job in a round gets a warning with its console on stderr, and "n/a" in
# the table if no round has one (the test host dying halfway gives fewer
# rounds, with warnings); without any host numbers the section fails
# (exit 1). The whole console is kept in target/bench/disk-console.log.
# FIO_SECONDS (default 5) sets each job's length. About 8 minutes with the
# defaults.
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-}
secs=${FIO_SECONDS:-5}
rounds=${DISK_ROUNDS:-3}
size=256   # MiB
mem=512M
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP

"$root/tests/guest/build.sh" "$root/target/guest"
"$root/tests/bench/fio-payload.sh" "$root/target/bench"
echo "bench: disk I/O with fio in the emulated test host (about 8 minutes, more if QEMU fails)" >&2

# The scenario, in the test host (busybox). Each part's console is framed
# by DISK-BEGIN/DISK-END lines, its fio lines prefixed with "name:round".
# vm-run and QEMU see the same disk the same way: raw, buffered on the
# host (vm-run's preadv/pwritev; QEMU's cache=writeback, aio=threads, its
# defaults, spelled out), a PCI function with MSI-X on a conventional PCI
# bus reached through 0xCF8 (-M pc), virtio 1.x only (disable-legacy=on).
# A part that takes more than 150 s (about 50 s is usual) is stopped.
# Rounds start at $first: if the test host dies (guests sometimes take it
# down, QEMU's more often), the next boot goes on with the next round.
scenario() { # FIRST_ROUND
	echo "secs=$secs size=$size mem=$mem first=$1 rounds=$rounds"
	cat <<'SCENARIO'
img=/tmp/bench.img
dd if=/dev/zero of=$img bs=1M count=$size 2>/dev/null
cat /guest/initrd.gz /bench/fio.cpio.gz > /tmp/initrd-fio.gz
p="console=ttyS0 quiet run=\"sh /bench/fio-jobs.sh /dev/vda 1 $secs\""
part() { # NAME COMMAND...: runs COMMAND with a time limit, frames its output
	name=$1:$r; shift
	echo "DISK-BEGIN $name"; t0=$(date +%s)
	{
		timeout 150 "$@" 2>&1; rc=$?; t=$(($(date +%s) - t0))
		[ $t -lt 150 ] || echo "DISK-TIMEOUT $name: stopped after $t s"
		echo "DISK-END $name rc=$rc secs=$t"
	} | sed "s/^FIO/$name FIO/"
}
r=$first
while [ $r -le $rounds ]; do
	part host sh /bench/fio-jobs.sh $img 0 $secs
	part vm-run vm-run -c 2 -m $mem -d $img -b /guest/bzImage -i /tmp/initrd-fio.gz -a "$p"
	part QEMU qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 2 -m $mem \
		-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
		-kernel /guest/bzImage -initrd /tmp/initrd-fio.gz -append "$p" \
		-drive file=$img,format=raw,if=none,id=d0,cache=writeback,aio=threads \
		-device virtio-blk-pci,drive=d0,disable-legacy=on
	r=$((r + 1))
done
SCENARIO
}
# boot_host FIRST_ROUND: boots the test host, its console in $tmp/console.
# A test host that hangs (it has, running QEMU's guests) says nothing for
# minutes, while each part prints within 150 s: run-host.sh stops one
# silent for 240 s (waiting for another user's test host is not silence).
boot_host() {
	scenario "$1" > "$tmp/scenario.sh"
	"$root/tests/harness/run-host.sh" -q -s 240 -x "$root/target/bench/bench.cpio.gz" \
		-b "$bin" -t $((120 + (rounds - $1 + 1) * 450)) "$tmp/scenario.sh" \
		< /dev/null > "$tmp/console"
}
in_hosts "disk I/O" DISK
cp "$tmp/log" "$root/target/bench/disk-console.log"

# FIO lines to "who round job value": IOPS for 4k jobs, MB/s (10^6 bytes)
# for 1 MiB jobs, of reads or writes as the job does; failed jobs are left
# out.
awk '$2 == "FIO" && NF == 8 && $4 == 0 && $1 ~ /^[A-Za-z-]+:[0-9]+$/ {
	v = ($3 ~ /1m$/) ? ($5 + $7) * 1024 / 1e6 : $6 + $8
	split($1, w, ":"); if (v > 0) print w[1], w[2], $3, v }' "$tmp/log" > "$tmp/values"
jobs="randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 read-1m write-1m"
warn_missing "disk I/O" DISK host vm-run QEMU
grep -q '^host ' "$tmp/values" || {
	echo "bench: disk I/O: no host numbers at all, nothing to compare with; the console:" >&2
	cat "$tmp/log" >&2
	exit 1
}

fiov=$(fio --version)
qemuv=$(qemu-system-x86_64 --version | head -n1 | awk '{print $4}')
kver=$(cat "$root/target/guest/kernel-version")
got() { awk -v w="$1" '$1 == w { r[$2] = 1 } END { for (i in r) n++; print n + 0 }' "$tmp/values"; }
{
cat <<TEXT
## Disk I/O (virtio-blk) inside the emulated test host

Debian's $fiov with libaio, one job at a time, ${secs} s each after 1 s of
ramp, on a ${size} MiB raw image in the test host's tmpfs. The three take
turns, $rounds rounds; the table gives median [min–max] of the rounds.

- **host**: fio on the image file, buffered: tmpfs has no O_DIRECT in
  this kernel, and its page cache is what both VMMs read and write
  (neither opens the image with O_DIRECT). Buffered libaio does the I/O
  within io_submit: the page cache's speed at any depth.
- **vm-run**: fio on /dev/vda with O_DIRECT in a guest, \`vm-run -c 2
  -m $mem -d bench.img\`: a queue of 256 per vCPU (VIRTIO_BLK_F_MQ), each
  with its own MSI-X vector and its own I/O thread doing preadv/pwritev
  on guest memory.
- **QEMU** $qemuv: the same guest (kernel $kver, initramfs, command
  line) with \`-M pc -enable-kvm -cpu host -smp 2 -m $mem\`,
  \`-drive file=bench.img,format=raw,if=none,cache=writeback,aio=threads\`
  (QEMU's defaults) and \`-device virtio-blk-pci,disable-legacy=on\`:
  as with vm-run, a virtio 1.x PCI function with MSI-X on a conventional
  PCI bus (configuration through 0xCF8); QEMU gives it a queue per vCPU
  too and does the I/O in a thread pool. Each fio job is one process on
  one vCPU, so it uses one of the queues in either VMM.

4k jobs in IOPS, 1 MiB jobs (queue depth 4) in MB/s. Both guests run
under kvm-amd on an emulated CPU, where every exit costs microseconds, so
the ratios to the host say little about bare metal; the ratios between
the VMMs say more. In this test host a guest sometimes hangs or resets
during fio, or the test host's kernel crashes under it (a page fault
loop on the way out of KVM_RUN), with either VMM. Such a round is left out, with a warning,
and the test host boots again for the rest.
Rounds with numbers in this run, of $rounds: host $(got host), vm-run $(got vm-run),
QEMU $(got QEMU).

TEXT
awk -v jobs="$jobs" "$fio_table_awk"'
	END {
	  print "| fio job, median [min–max] | host | vm-run | QEMU | vm-run / host | vm-run / QEMU |"
	  print "|---|---|---|---|---|---|"
	  c = split(jobs, js, " ")
	  for (i = 1; i <= c; i++) { j = js[i]; h = "host" SUBSEP j; m = "vm-run" SUBSEP j; q = "QEMU" SUBSEP j
	    stats(h); stats(m); stats(q)
	    printf "| %s | %s | %s | %s | %s | %s |\n", name[j], show(h), show(m), show(q), ratio(m, h), ratio(m, q) }
	}' "$tmp/values"
} > "$tmp/section"
if [ -n "$out" ]; then cp "$tmp/section" "$out"; else cat "$tmp/section"; fi
