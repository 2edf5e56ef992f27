#!/bin/sh
# Usage: tests/bench/qcow2.sh [OUT.md]
# The "qcow2 images" section of docs/BENCHMARKS.md (tests/bench/run.sh
# calls it; alone, after `make` and `make fixture`, it prints the section
# or writes it to OUT.md). Two parts, each against a reference measured in
# the same run:
#  1. on this machine, in /dev/shm, with hyperfine: `vm-img create` of an
#     empty 10 GiB qcow2 against `qemu-img create`, and `vm-img convert`
#     against `qemu-img convert` of a sparse 10 GiB image holding 256 MiB
#     of random data (raw to qcow2, raw to raw, qcow2 to raw), the outputs
#     checked equal with `qemu-img compare`; QCOW2_IMG_RUNS (default 3)
#     runs of each convert.
#  2. in the emulated test host, Debian's fio (fio-jobs.sh) in a guest on:
#       vm-run-raw    vm-run on a raw image;
#       vm-run-qcow2  vm-run on a qcow2 overlay of a raw base, made by
#                     `vm-img create -b base.raw`;
#       QEMU-qcow2    QEMU's qcow2 driver on such an overlay.
#     Each qcow2 guest gets a fresh overlay, so that its writes allocate
#     clusters (and copy them from the base) as a new overlay's do; each is
#     checked with `qemu-img check` afterwards. They take turns,
#     QCOW2_ROUNDS times (default 3); the table has the median and range of
#     the rounds. A part whose guest gives fewer than six numbers (it
#     stalled or reset, or its last console lines were lost) is tried once
#     more in its round; beyond that, missing numbers, a test host that
#     dies and the console (target/bench/qcow2-console.log) are handled as
#     in disk.sh.
# FIO_SECONDS (default 5) sets each job's length. About 11 to 13 minutes
# with the defaults, more when a guest or the test host hangs.
# QCOW2_BEFORE=DIR, a folder holding another build's vm-run (an older
# one, say), adds a fourth part to each round, "vm-run-qcow2-before": that
# vm-run on a fresh overlay, and a column for it, so that a change is
# measured against what it changes in the same run (about 3 minutes more).
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-}
secs=${FIO_SECONDS:-5}
rounds=${QCOW2_ROUNDS:-3}
runs=${QCOW2_IMG_RUNS:-3}
size=256   # MiB, the guests' images
mem=512M
[ -x "$bin/vm-img" ] && [ -x "$bin/vm-run" ] || { echo "qcow2.sh: build first (make)" >&2; exit 1; }
before=${QCOW2_BEFORE:-}
[ -z "$before" ] || [ -x "$before/vm-run" ] || { echo "qcow2.sh: no vm-run in $before" >&2; exit 1; }
tmp=$(mktemp -d); img=$(mktemp -d -p /dev/shm)
trap 'rm -rf "$tmp" "$img"' EXIT; trap 'exit 1' INT TERM HUP
for pair in hyperfine:hyperfine qemu-img:qemu-utils; do
	command -v "${pair%%:*}" >/dev/null || {
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pair#*:}" >/dev/null
	}
done

"$root/tests/guest/build.sh" "$root/target/guest"
"$root/tests/bench/fio-payload.sh" "$root/target/bench"

# Part 1: vm-img against qemu-img on this machine. src.raw: 10 GiB, holes
# but for 64 MiB of random data at each of four offsets (the last at the
# end). src.qcow2: the same in qcow2, made by qemu-img, as the input of
# the qcow2-to-raw conversions.
echo "bench: qcow2: vm-img against qemu-img, 10 GiB images, on this machine (about a minute)" >&2
vmimg=$bin/vm-img
(
cd "$img"
truncate -s 10G src.raw
for o in 0 3000 6500 10176; do
	dd if=/dev/urandom of=src.raw bs=1M count=64 seek=$o conv=notrunc status=none
done
qemu-img convert -O qcow2 src.raw src.qcow2
# hf NAME RUNS OUT CMD1 CMD2: hyperfine, each command's output (v.OUT for
# vm-img, q.OUT for qemu-img) removed before each of its runs and kept
# after the last; NAME.csv, vm-img's line first.
hf() {
	name=$1 n=$2 o=$3; shift 3
	hyperfine -N -w 1 -r "$n" --prepare "rm -f v.$o" --prepare "rm -f q.$o" \
		--export-csv "$tmp/$name.csv" "$@"
}
hf create 20 qcow2 "$vmimg create -s 10G v.qcow2" "qemu-img create -q -f qcow2 q.qcow2 10G"
# Strict: the same size, and nothing allocated in either.
qemu-img compare -q -s v.qcow2 q.qcow2 && qemu-img check -q v.qcow2 && echo "same create" > "$tmp/same.create"
echo "$(du -k v.qcow2 | cut -f1) $(du -k q.qcow2 | cut -f1)" > "$tmp/kib.create"
vsize() { qemu-img info -f "$1" --output=json "$2" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }
# convert NAME OUTFMT INPUT: vm-img's output must hold what qemu-img's and
# the source hold, at the same size.
conv() {
	hf "$1" "$runs" "$2" "$vmimg convert -O $2 $3 v.$2" "qemu-img convert -O $2 $3 q.$2"
	same=yes
	qemu-img compare -q -f "$2" -F "$2" "v.$2" "q.$2" || same=no
	qemu-img compare -q -f "$2" -F raw "v.$2" src.raw || same=no
	[ "$(vsize "$2" "v.$2")" = "$(vsize "$2" "q.$2")" ] || same=no
	[ "$2" != qcow2 ] || qemu-img check -q v.qcow2 || same=no
	[ $same = no ] || echo "same $1" > "$tmp/same.$1"
	echo "$(du -k "v.$2" | cut -f1) $(du -k "q.$2" | cut -f1)" > "$tmp/kib.$1"
	rm -f "v.$2" "q.$2"
}
conv raw2qcow2 qcow2 src.raw
conv raw2raw raw src.raw
conv qcow22raw raw src.qcow2
) > "$tmp/hyperfine.log" 2>&1 || { cat "$tmp/hyperfine.log" >&2; exit 1; }
mkdir -p "$root/target/bench"
cp "$tmp/hyperfine.log" "$root/target/bench/qcow2-img.log"
rm -rf "$img"/*

# Part 2, the scenario in the test host (busybox): as in disk.sh, parts
# framed by QCOW2-BEGIN/QCOW2-END, fio lines prefixed with "name:round",
# 150 s at most a part, rounds from $first on. Both VMMs see the images
# the same way: buffered on the host (vm-run's preadv/pwritev, through
# imago for qcow2; QEMU's cache=writeback, aio=threads), virtio-blk on PCI
# (-M pc), virtio 1.x.
# base.raw and raw.img are written in full (tmpfs pages, as in disk.sh);
# the overlay is new for each qcow2 guest.
echo "bench: qcow2: fio on raw and qcow2 in the emulated test host (about 10 minutes, more if a guest or the test host hangs)" >&2
scenario() { # FIRST_ROUND
	echo "secs=$secs size=$size mem=$mem first=$1 rounds=$rounds before=${before:+1}"
	cat <<'SCENARIO'
cd /tmp
dd if=/dev/zero of=raw.img bs=1M count=$size 2>/dev/null
dd if=/dev/zero of=base.raw bs=1M count=$size 2>/dev/null
cat /guest/initrd.gz /bench/fio.cpio.gz > /tmp/initrd-fio.gz
p="console=ttyS0 quiet run=\"sh /bench/fio-jobs.sh /dev/vda 1 $secs\""
part() { # NAME COMMAND...: runs COMMAND with a time limit, frames its output
	name=$1:$r; shift
	echo "QCOW2-BEGIN $name"; t0=$(date +%s)
	{
		timeout 150 "$@" 2>&1; rc=$?; t=$(($(date +%s) - t0))
		[ $t -lt 150 ] || echo "QCOW2-TIMEOUT $name: stopped after $t s"
		echo "QCOW2-END $name rc=$rc secs=$t"
	} | sed "s/^FIO/$name FIO/" | tee part.out
}
overlay() { rm -f ov.qcow2; vm-img create -b base.raw ov.qcow2 || echo "QCOW2-MSG vm-img create failed"; }
checked() { # NAME: qemu-img check of the overlay the guest of NAME wrote
	qemu-img check -q ov.qcow2 > check.out 2>&1; rc=$?
	tail -n 3 check.out | sed 's/^/QCOW2-MSG /'
	echo "QCOW2-CHECK $1:$r rc=$rc kib=$(du -k ov.qcow2 | cut -f1)"
}
# try NAME COMMAND...: the part, on a new overlay if NAME is a qcow2 one,
# and once more if its guest gave fewer than six fio lines (it stalled or
# reset: with -no-reboot, QEMU then ends with status 0 and says nothing).
try() {
	for attempt in 1 2; do
		case $1 in *qcow2*) overlay ;; esac
		part "$@"
		case $1 in *qcow2*) checked $1 ;; esac
		[ "$(grep -c "^$1:$r FIO " part.out)" -lt 6 ] || break
		[ $attempt = 2 ] || echo "QCOW2-RETRY $1:$r"
	done
}
r=$first
while [ $r -le $rounds ]; do
	try vm-run-raw vm-run -c 2 -m $mem -d raw.img -b /guest/bzImage -i /tmp/initrd-fio.gz -a "$p"
	try vm-run-qcow2 vm-run -c 2 -m $mem -d ov.qcow2 -b /guest/bzImage -i /tmp/initrd-fio.gz -a "$p"
	[ -z "$before" ] ||
		try vm-run-qcow2-before /bench/before/vm-run -c 2 -m $mem -d ov.qcow2 -b /guest/bzImage -i /tmp/initrd-fio.gz -a "$p"
	try QEMU-qcow2 qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 2 -m $mem \
		-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
		-kernel /guest/bzImage -initrd /tmp/initrd-fio.gz -append "$p" \
		-drive file=ov.qcow2,format=qcow2,if=none,id=d0,cache=writeback,aio=threads \
		-device virtio-blk-pci,drive=d0,disable-legacy=on
	r=$((r + 1))
done
SCENARIO
}
# boot_host FIRST_ROUND: as in disk.sh.
extra=$root/target/bench/bench.cpio.gz per=480
if [ -n "$before" ]; then
	per=640
	# The other vm-run as /bench/before/vm-run, in a second archive after
	# the benchmark's (the kernel unpacks concatenated archives in order).
	mkdir -p "$tmp/b/bench/before"
	cp "$before/vm-run" "$tmp/b/bench/before/"
	(cd "$tmp/b" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$tmp/before.cpio.gz"
	cat "$extra" "$tmp/before.cpio.gz" > "$tmp/extra.cpio.gz"
	extra=$tmp/extra.cpio.gz
fi
boot_host() {
	scenario "$1" > "$tmp/scenario.sh"
	"$root/tests/harness/run-host.sh" -q -s 240 -x "$extra" \
		-b "$bin" -t $((120 + (rounds - $1 + 1) * per)) "$tmp/scenario.sh" \
		< /dev/null > "$tmp/console"
}
in_hosts qcow2 QCOW2
cp "$tmp/log" "$root/target/bench/qcow2-console.log"

# FIO lines to "who round job value", as in disk.sh; a kernel message the
# console put in the middle of a line ("... 518 129[   51.68] reboot: ...",
# seen with QEMU) is cut off first.
awk '{ sub(/\[ *[0-9]+\.[0-9]+\] .*$/, "") }
	$2 == "FIO" && NF == 8 && $4 == 0 && $1 ~ /^[A-Za-z0-9-]+:[0-9]+$/ {
	v = ($3 ~ /1m$/) ? ($5 + $7) * 1024 / 1e6 : $6 + $8
	# A part tried again: the later number of a job stands.
	split($1, w, ":"); if (v > 0) { k = w[1] " " w[2] " " $3; if (!(k in val)) ord[++n] = k; val[k] = v } }
	END { for (i = 1; i <= n; i++) print ord[i], val[ord[i]] }' "$tmp/log" > "$tmp/values"
jobs="randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 read-1m write-1m"
warn_missing "qcow2" QCOW2 vm-run-raw vm-run-qcow2 QEMU-qcow2 ${before:+vm-run-qcow2-before}
# Parts tried again, with the first attempt's console.
grep '^QCOW2-RETRY ' "$tmp/log" | while read -r _ name; do
	echo "bench: warning: qcow2: $name gave no full set of numbers; tried again. Its console:" >&2
	awk -v b="QCOW2-BEGIN $name" -v e="QCOW2-END $name " '\
		$0 == b { on = 1 } on && /^=== test host boot/ { exit }
		on { print } on && index($0, e) == 1 { exit }' "$tmp/log" |
		tail -n 12 | sed 's/^/    /' >&2
done
# An overlay that qemu-img does not find clean after its guest ended.
grep '^QCOW2-CHECK ' "$tmp/log" | grep -v ' rc=0 ' | while read -r _ who rest; do
	echo "bench: warning: qcow2: qemu-img check of the overlay after $who: $rest" \
		"(0 clean, 2 corrupt, 3 leaks)" >&2
done
grep -q '^vm-run-raw ' "$tmp/values" || {
	echo "bench: qcow2: no numbers on the raw image at all, nothing to compare with; the console:" >&2
	cat "$tmp/log" >&2
	exit 1
}

fiov=$(fio --version)
qemuv=$(qemu-system-x86_64 --version | head -n1 | awk '{print $4}')
qimgv=$(qemu-img --version | head -n1 | awk '{print $3}')
got() { awk -v w="$1" '$1 == w { r[$2] = 1 } END { for (i in r) n++; print n + 0 }' "$tmp/values"; }
checks=$(grep -c '^QCOW2-CHECK .* rc=0 ' "$tmp/log" || :)
retries=$(grep -c '^QCOW2-RETRY ' "$tmp/log" || :)
allchecks=$(grep -c '^QCOW2-CHECK ' "$tmp/log" || :)
{
cat <<TEXT
## qcow2 images

### vm-img against qemu-img on this machine

A 10 GiB image in /dev/shm (tmpfs), sparse but for 64 MiB of random
data at each of four offsets (256 MiB in all), the qcow2 input made from
it by qemu-img $qimgv. hyperfine, after one warm-up run: 20 runs of
create, $runs of each convert (outputs removed before each run), median
[min–max]. \`qemu-img compare\` checks vm-img's outputs against
qemu-img's and against the source, and \`qemu-img check\` its qcow2
("same data"); "KiB used" is what the outputs take in tmpfs, vm-img's /
qemu-img's. 64 KiB clusters for both.

| 10 GiB image, median [min–max] | vm-img | qemu-img | vm-img / qemu-img | same data | KiB used |
|---|---|---|---|---|---|
TEXT
for t in create:"\`create -s 10G x.qcow2\` (empty)" raw2qcow2:"\`convert -O qcow2\`, raw in" \
	raw2raw:"\`convert -O raw\`, raw in" qcow22raw:"\`convert -O raw\`, qcow2 in"; do
	n=${t%%:*}
	same=NO; [ ! -f "$tmp/same.$n" ] || same=yes
	# command,mean,stddev,median,user,system,min,max (seconds)
	awk -F, -v what="${t#*:}" -v same=$same -v kib="$(sed 's| | / |' "$tmp/kib.$n")" '
		function t(s) { return s < 1 ? sprintf("%.1f ms", s * 1000) : sprintf("%.2f s", s) }
		NR == 2 { vm = $4; vr = t($4) " [" t($7) "–" t($8) "]" }
		NR == 3 { q = $4; qr = t($4) " [" t($7) "–" t($8) "]" }
		END { printf "| %s | %s | %s | %.2fx | %s | %s |\n", what, vr, qr, vm / q, same, kib }' "$tmp/$n.csv"
done
cat <<TEXT

### Guest I/O on raw and qcow2 inside the emulated test host

Debian's $fiov, the six jobs of the disk section (libaio, O_DIRECT in
the guest, ${secs} s each after 1 s of ramp), on /dev/vda of a ${size} MiB
image in the test host's tmpfs, \`-c 2 -m $mem\` guests:

- **vm-run raw**: \`vm-run -d raw.img\`, a raw image (preadv/pwritev);
- **vm-run qcow2**: \`vm-run -d ov.qcow2\`, an overlay made by \`vm-img
  create -b base.raw ov.qcow2\` on a raw base (all zeroes, written in
  full), read and written through imago;
- **QEMU qcow2** $qemuv: QEMU's qcow2 driver on such an overlay,
  \`-M pc\`, \`-drive file=ov.qcow2,format=qcow2,cache=writeback,aio=threads\`,
  \`-device virtio-blk-pci,disable-legacy=on\`, as in the disk section.

Each qcow2 guest gets a new overlay: its first write to a 64 KiB cluster
allocates it and copies the rest of the cluster from the base, as on any
new overlay. The jobs run in the order of the table, so the sequential
ones find the part of the image that the random writes allocated in the
overlay and the rest still in the base.
The three take turns, $rounds rounds; median [min–max] of the rounds.
4k jobs in IOPS, 1 MiB jobs (queue depth 4) in MB/s. As in the disk
section, a guest in this test host sometimes stalls (RCU stalls) or
resets during fio, or the test host hangs, with either VMM; and a
guest's last console lines are sometimes lost at its power-off. A part
whose guest gives fewer than six numbers is tried once more in its
round (parts tried again in this run: $retries); a round still without
numbers is left out, with a warning, and a test host that dies boots
again for the rest. Rounds with numbers in this run, of $rounds: vm-run
raw $(got vm-run-raw), vm-run qcow2 $(got vm-run-qcow2), QEMU qcow2 $(got QEMU-qcow2)${before:+, vm-run qcow2 before $(got vm-run-qcow2-before)}.
Overlays clean by \`qemu-img check\` after their guest: $checks of $allchecks.
TEXT
[ -z "$before" ] || cat <<TEXT
The last two columns: **vm-run qcow2 before**, the same as vm-run qcow2 with
another build of vm-run (QCOW2_BEFORE), a fourth part in each round
after vm-run qcow2, and the ratio of the two.
TEXT
echo
awk -v jobs="$jobs" -v before="${before:+1}" "$fio_table_awk"'
	END {
	  printf "| fio job, median [min–max] | vm-run raw | vm-run qcow2 | QEMU qcow2 | qcow2 / raw | vm-run qcow2 / QEMU qcow2 |%s\n", before ? " vm-run qcow2 before | qcow2 / before |" : ""
	  printf "|---|---|---|---|---|---|%s\n", before ? "---|---|" : ""
	  c = split(jobs, js, " ")
	  for (i = 1; i <= c; i++) { j = js[i]; r = "vm-run-raw" SUBSEP j; m = "vm-run-qcow2" SUBSEP j; q = "QEMU-qcow2" SUBSEP j
	    b = "vm-run-qcow2-before" SUBSEP j
	    stats(r); stats(m); stats(q); stats(b)
	    printf "| %s | %s | %s | %s | %s | %s |", name[j], show(r), show(m), show(q), ratio(m, r), ratio(m, q)
	    if (before) printf " %s | %s |", show(b), ratio(m, b)
	    printf "\n" }
	  # The targets of the qcow2 issue, from the medians.
	  seq = ""; iops = ""; sn = 0; sm = 0; in_ = 0; im = 0
	  for (i = 1; i <= c; i++) { j = js[i]; r = "vm-run-raw" SUBSEP j; m = "vm-run-qcow2" SUBSEP j; q = "QEMU-qcow2" SUBSEP j
	    if (j ~ /1m$/) { if ((r in med) && (m in med)) { sn++; if (med[m] >= 0.85 * med[r]) sm++ } }
	    else if ((q in med) && (m in med)) { in_++; if (med[m] >= med[q]) im++ } }
	  printf "\nTargets, from the medians: qcow2 within 15%% of raw for sequential I/O\n"
	  printf "(qcow2 / raw at least 0.85): %s; at least QEMU'"'"'s qcow2 IOPS (vm-run\n", sn ? sm " of " sn " jobs" : "not measured"
	  printf "qcow2 / QEMU qcow2 at least 1 in the 4k jobs): %s.\n", in_ ? im " of " in_ " jobs" : "not measured"
	}' "$tmp/values"
} > "$tmp/section"
if [ -n "$out" ]; then cp "$tmp/section" "$out"; else cat "$tmp/section"; fi
