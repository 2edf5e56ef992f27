#!/bin/sh
# Usage: tests/bench/boot.sh [OUT.md]
# The table of "Linux boot inside the emulated test host" in
# docs/BENCHMARKS.md (tests/bench/run.sh calls it; alone, after `make` and
# `make fixture`, it prints the table or writes it to OUT.md). Debian's
# cloud kernel and the busybox initramfs (target/guest), -c 2 -m 256M,
# `console=ttyS0 quiet`, vm-run against QEMU -M microvm,rtc=on in the same
# test host, BOOT_RUNS (default 10) alternating boots each; time to the
# init's first line (VMTEST-INIT-OK) and to exit after `poweroff -f`.
# BOOT_OLD="LABEL=DIR ..." adds each DIR/vm-run as "vm-run (LABEL)", to
# compare builds; BOOT_CMDLINE replaces the kernel command line (e.g.
# without quiet, for a guest that prints its whole log).
# One more boot of vm-run -v gives its own account (start-up steps, exit
# table) on stderr.
#
# BOOT_TRACE=1 adds, in the same test host, one boot of each VMM under
# the host's kvm:kvm_exit, kvm_pio, kvm_mmio, kvm_msr and
# kvm_userspace_exit tracepoints: their exits summarised by reason, port,
# MMIO page and MSR on stderr (with vm-run -v's own table). BOOT_DIAG=1
# adds that and one more boot of each with `printk.time=1
# initcall_debug`, untraced, whose dmesg the guest prints: their slowest
# initcalls and timelines on stderr. BOOT_STAMP=N adds N boots of each
# with the kernel's whole log on an early console (earlyprintk=ttyS0
# ignore_loglevel), each line stamped by the host's clock as it arrives
# (tests/bench/stamp.c): the guest's printk times are not comparable
# across VMMs before kvmclock runs (docs/BENCHMARKS.md), the host's are;
# the steps whose wall time differs most between the two, per-line
# medians of the complete boots, on stderr. BOOT_RUNS=0 leaves out the
# tables.
# With target/media/debian.raw (make media) a second table, unless
# BOOT_GENERIC=0: Debian's generic kernel with its own initramfs (both from
# debian.raw's /boot, made there by initramfs-tools), which finds its root
# on a virtio disk (an ext4 image of the fixture's busybox root; the
# kernel's init= is its /init); QEMU is then microvm with pcie=on, as that
# initramfs has virtio_pci and not virtio_mmio.
# The whole console goes to target/bench/boot-console.log.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-}
bin=$root/target/x86_64-unknown-linux-musl/release
runs=${BOOT_RUNS:-10}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP

"$root/tests/guest/build.sh" "$root/target/guest"
mkdir -p "$tmp/bin" "$root/target/bench"
cp "$bin/vm-run" "$bin/vm-bench" "$tmp/bin/"
[ -z "${BOOT_STAMP:-}" ] || cc -O2 -static -o "$tmp/bin/stamp" "$root/tests/bench/stamp.c"
old=
for o in ${BOOT_OLD:-}; do
	label=${o%%=*}
	cp "${o#*=}/vm-run" "$tmp/bin/vm-run-$label"
	# As written into the scenario, where eval reads it.
	old="$old \"\\\"vm-run ($label)=timeout -s KILL 120 vm-run-$label \$common\\\"\""
done
cmdline=${BOOT_CMDLINE:-console=ttyS0 quiet}
media=$root/target/media
gen=$root/target/bench/generic
extra=
if [ "$runs" -gt 0 ] && [ "${BOOT_GENERIC:-1}" != 0 ] && [ -f "$media/debian.raw" ]; then
	# Cached until debian.raw or the fixture changes.
	if [ ! -f "$gen/root.img" ] || [ "$media/debian.raw" -nt "$gen/root.img" ] ||
		[ "$root/target/guest/initrd.gz" -nt "$gen/root.img" ]; then
		rm -rf "$gen"; mkdir -p "$gen/mnt" "$gen/root"
		start=$(partx -g -o START -n 1 "$media/debian.raw" | tr -d ' ')
		mount -o loop,ro,offset=$((start * 512)) "$media/debian.raw" "$gen/mnt"
		st=0
		k=$(ls "$gen"/mnt/boot/vmlinuz-* | tail -n 1)
		cp "$k" "$gen/vmlinuz" && echo "${k##*/vmlinuz-}" > "$gen/version" &&
			cp "$(ls "$gen"/mnt/boot/initrd.img-* | tail -n 1)" "$gen/initrd.img" || st=$?
		umount "$gen/mnt"
		[ $st = 0 ] || exit $st
		(cd "$gen/root" && gzip -dc "$root/target/guest/initrd.gz" | cpio -id --quiet)
		mkfs.ext4 -q -d "$gen/root" "$gen/root.img.new" 64M > /dev/null
		rm -rf "$gen/root" "$gen/mnt"; mv "$gen/root.img.new" "$gen/root.img"
	fi
	(cd "$gen/.." && printf '%s\n' generic generic/vmlinuz generic/initrd.img generic/root.img |
		cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$tmp/generic.cpio.gz"
	extra="-x $tmp/generic.cpio.gz"
fi
gline='console=ttyS0 quiet root=/dev/vda ro init=/init'
gqemu="qemu-system-x86_64 -M microvm,rtc=on,pcie=on -enable-kvm -cpu host -smp 2 -m 512M \
	-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-kernel /generic/vmlinuz -initrd /generic/initrd.img \
	-drive id=r,file=/generic/root.img,format=raw,if=none -device virtio-blk-pci,drive=r"
qemu="qemu-system-x86_64 -M microvm,rtc=on -enable-kvm -cpu host -smp 2 -m 256M \
	-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-kernel /guest/bzImage -initrd /guest/initrd.gz"

[ -z "${BOOT_DIAG:-}" ] || BOOT_TRACE=1
diag="$cmdline printk.time=1 initcall_debug log_buf_len=4M run=dmesg"
stampline="console=ttyS0 earlyprintk=ttyS0 ignore_loglevel printk.time=1"
echo "bench: Linux boot in the emulated test host ($runs boots each${BOOT_TRACE:+, traced}${BOOT_DIAG:+, dmesg})" >&2
{
echo "common=\"-c 2 -m 256M -b /guest/bzImage -i /guest/initrd.gz -a '$cmdline'\""
if [ "$runs" -gt 0 ]; then
	# A run that hangs is killed after 2 minutes and shows as the maximum
	# (the test host has hung a few times in KVM; see the notes of issue 3).
	cat <<SCENARIO
eval vm-bench -n $runs -k VMTEST-INIT-OK \
	"\"vm-run=timeout -s KILL 120 vm-run \$common\"" $old \
	"\"QEMU microvm=timeout -s KILL 120 $qemu -append '$cmdline'\"" > /tmp/boot.md
echo BOOT-TABLE-BEGIN; cat /tmp/boot.md; echo BOOT-TABLE-END
# vm-run's own account of one more boot (-v: start-up steps, exits).
eval timeout -s KILL 120 vm-run -v \$common 2>&1 >/dev/null | sed 's/^/BOOT-V /'
SCENARIO
	[ -z "$extra" ] || cat <<SCENARIO
vm-bench -n $runs -k VMTEST-INIT-OK \
	"vm-run=timeout -s KILL 120 vm-run -c 2 -m 512M -b /generic/vmlinuz -i /generic/initrd.img -d /generic/root.img -a '$gline'" \
	"QEMU microvm=timeout -s KILL 120 $gqemu -append '$gline'" > /tmp/generic.md
echo GENERIC-TABLE-BEGIN; cat /tmp/generic.md; echo GENERIC-TABLE-END
SCENARIO
fi
[ -z "${BOOT_TRACE:-}" ] || cat <<SCENARIO
mount -t debugfs none /sys/kernel/debug 2>/dev/null
t=/sys/kernel/tracing
mount -t tracefs none \$t 2>/dev/null
echo 131072 > \$t/buffer_size_kb
events="kvm_exit kvm_pio kvm_mmio kvm_msr kvm_userspace_exit"
# trace NAME COMMAND...: a boot to init and poweroff under the
# tracepoints, its exits summarised.
trace() {
	name=\$1; shift
	echo > \$t/trace
	for e in \$events; do echo 1 > \$t/events/kvm/\$e/enable; done
	echo 1 > \$t/tracing_on
	timeout -s KILL 120 "\$@" > /tmp/console 2>&1
	echo 0 > \$t/tracing_on
	for e in \$events; do echo 0 > \$t/events/kvm/\$e/enable; done
	echo "DIAG-EXITS \$name"
	sed 's/^/console| /' /tmp/console
	awk '/kvm_exit:/ { for (i = 1; i <= NF; i++) if (\$i == "reason") { n["exit " \$(i + 1)]++; break } }
		/kvm_pio:/ { for (i = 1; i <= NF; i++) if (\$i == "at") { n[\$(i - 1) " " \$(i + 1)]++; break } }
		/kvm_mmio:/ { for (i = 1; i <= NF; i++) if (\$i == "gpa") { g = \$(i + 1)
			n["mmio " \$(i - 3) " " substr(g, 1, length(g) - 3) "xxx"]++; break } }
		/kvm_msr:/ { for (i = 1; i <= NF; i++) if (\$i ~ /^msr_(read|write)\$/) { n[\$i " " \$(i + 1)]++; break } }
		/kvm_userspace_exit:/ { for (i = 1; i <= NF; i++) if (\$i == "reason") { n["userspace " \$(i + 1)]++; break } }
		END { for (k in n) print n[k], k }' \$t/trace | sort -rn | head -n 40
	echo "DIAG-END \$name"
}
trace vm-run vm-run -v -c 2 -m 256M -b /guest/bzImage -i /guest/initrd.gz -a '$cmdline'
trace QEMU $qemu -append '$cmdline'
SCENARIO
# A boot, untraced, that prints the guest's dmesg (whose printing would
# count as exits in a traced one).
[ -z "${BOOT_DIAG:-}" ] || cat <<SCENARIO
echo "DIAG-BEGIN vm-run"
timeout -s KILL 120 vm-run -c 2 -m 256M -b /guest/bzImage -i /guest/initrd.gz -a '$diag' 2>&1 | sed 's/^/console| /'
echo "DIAG-DONE vm-run"
echo "DIAG-BEGIN QEMU"
timeout -s KILL 120 $qemu -append '$diag' 2>&1 | sed 's/^/console| /'
echo "DIAG-DONE QEMU"
SCENARIO
[ -z "${BOOT_STAMP:-}" ] || cat <<SCENARIO
for r in \$(seq $BOOT_STAMP); do
	echo "STAMP-BEGIN vm-run \$r"
	timeout -s KILL 120 vm-run -c 2 -m 256M -b /guest/bzImage -i /guest/initrd.gz -a '$stampline' 2>&1 | stamp | sed 's/^/stamp| /'
	echo STAMP-END
	echo "STAMP-BEGIN QEMU \$r"
	timeout -s KILL 120 $qemu -append '$stampline' 2>&1 | stamp | sed 's/^/stamp| /'
	echo STAMP-END
done
SCENARIO
} > "$tmp/scenario.sh"
"$root/tests/harness/run-host.sh" -q -b "$tmp/bin" -t 1800 $extra "$tmp/scenario.sh" > "$tmp/host.log" || :
log=$root/target/bench/boot-console.log
tr -d '\r' < "$tmp/host.log" > "$log"
if [ -n "${BOOT_TRACE:-}" ]; then
	for who in vm-run QEMU; do
		echo "== $who: exits (count, kind)"
		sed -n "/^DIAG-EXITS $who\$/,/^DIAG-END $who\$/p" "$log" | sed '1d;$d' | grep -v '^console| ' || :
		echo "== $who: console of the traced boot (vm-run -v's table)"
		sed -n "/^DIAG-EXITS $who\$/,/^DIAG-END $who\$/p" "$log" | sed -n 's/^console| //p' | grep -v '^\[' || :
	done >&2
fi
if [ -n "${BOOT_DIAG:-}" ]; then
	for who in vm-run QEMU; do
		echo "== $who: slowest initcalls (usecs)"
		sed -n "/^DIAG-BEGIN $who\$/,/^DIAG-DONE $who\$/p" "$log" |
			sed -n 's/.*initcall \([^ ]*\) returned .* after \([0-9]*\) usecs.*/\2 \1/p' |
			sort -rn | head -n 25
		echo "== $who: timeline (not initcall lines)"
		sed -n "/^DIAG-BEGIN $who\$/,/^DIAG-DONE $who\$/p" "$log" |
			grep '^console| \[' | grep -v 'initcall\|calling ' | sed 's/^console| //'
	done >&2
fi
# stamp_report LOG: each kernel log line (numbers masked) at the median
# host time it arrived over each VMM's complete boots; then the steps,
# from one line both boots printed to the next, whose wall time differs
# most between vm-run and QEMU.
stamp_report() {
	awk '
	/^STAMP-BEGIN / { who = $2; n = 0; delete seen; next }
	/^STAMP-END/ {
		# A boot cut short (a crash, the test host) is left out.
		if (who != "" && n > 100) {
			good[who]++
			for (m in seen) { c[who, m]++; v[who, m, c[who, m]] = seen[m] }
		}
		who = ""; next
	}
	who != "" && /^stamp\| / {
		t = $2; msg = $0
		sub(/^stamp\| *[0-9.]+ */, "", msg); sub(/^\[ *[0-9.]+\] */, "", msg)
		gsub(/0x[0-9a-f]+|[0-9]+/, "#", msg)
		if (!(msg in seen)) seen[msg] = t
		n++
	}
	END {
		for (k in c) {
			split(k, p, SUBSEP); w = p[1]; m = p[2]
			if (c[k] != good[w]) continue
			for (i = 1; i <= c[k]; i++) a[i] = v[w, m, i]
			for (i = 1; i <= c[k]; i++) for (j = i + 1; j <= c[k]; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
			med[w, m] = c[k] % 2 ? a[(c[k] + 1) / 2] : (a[c[k] / 2] + a[c[k] / 2 + 1]) / 2
			has[w, m] = 1
		}
		printf "complete boots: vm-run %d, QEMU %d\n", good["vm-run"], good["QEMU"] > "/dev/stderr"
		for (k in has) {
			split(k, p, SUBSEP)
			if (p[1] == "vm-run" && (("QEMU", p[2]) in has))
				printf "%.1f\t%.1f\t%s\n", med["vm-run", p[2]], med["QEMU", p[2]], p[2]
		}
	}' "$1" | sort -n | awk -F '\t' '
	NR > 1 { printf "%.0f\t%.0f\t%.0f\t%s -> %s\n", ($1 - a) - ($2 - b), $1 - a, $2 - b, substr(m, 1, 50), substr($3, 1, 50) }
	{ a = $1; b = $2; m = $3; last = $0 }
	END { split(last, l, "\t"); printf "last line both printed: vm-run %.0f ms, QEMU %.0f ms: %s\n", l[1], l[2], l[3] > "/dev/stderr" }' |
		sort -t "$(printf '\t')" -k1,1 -rn | head -n 12
}
if [ -n "${BOOT_STAMP:-}" ]; then
	echo "== steps by wall time (host clock), ms: vm-run minus QEMU, vm-run, QEMU, from -> to" >&2
	stamp_report "$log" >&2
fi
[ "$runs" -gt 0 ] || exit 0
sed -n 's/^BOOT-V //p' "$log" >&2
sed -n '/^BOOT-TABLE-BEGIN/,/^BOOT-TABLE-END/p' "$log" | grep '^|' > "$tmp/boot" ||
	{ cat "$tmp/host.log" >&2; exit 1; }
if [ -n "$extra" ]; then
	{
		echo
		echo "Debian's generic kernel ($(cat "$gen/version")) with its own"
		echo "initramfs (initramfs-tools, from debian.raw), the root on a virtio disk:"
		echo "\`-c 2 -m 512M\`, \`$gline\`; QEMU \`-M microvm,rtc=on,pcie=on\`"
		echo "with virtio-blk-pci (that initramfs has no virtio_mmio)."
		echo
		sed -n '/^GENERIC-TABLE-BEGIN/,/^GENERIC-TABLE-END/p' "$log" | grep '^|' ||
			echo "(no table: the test host's console is in target/bench/boot-console.log)"
	} >> "$tmp/boot"
fi
if [ -n "$out" ]; then cp "$tmp/boot" "$out"; else cat "$tmp/boot"; fi
