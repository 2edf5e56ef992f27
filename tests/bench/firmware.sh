#!/bin/sh
# Firmware boot on this machine's /dev/kvm, as tests/bench/run.sh's
# section (or alone: `make`, then tests/bench/firmware.sh [OUT]): Debian's
# SeaBIOS loads the boot sector of tests/firmware/boot.S from a raw disk,
# under vm-run (no -b) and under QEMU -M pc (same BIOS file, same disk as
# virtio-blk), alternating. The boot sector's first line is the mark;
# it then resets, which ends vm-run (75); QEMU reads vm-run's ACPI layout
# wrong and goes on, so its run is ended after 20 s and its exit, CPU
# and RSS figures mean nothing here.
#
# Then, with the media of `make media` (target/media; skipped when they
# are missing or FIRMWARE_HOST=0), Linux through SeaBIOS in the emulated
# test host, vm-run against QEMU -M pc with KVM (-cpu host, the same
# Debian SeaBIOS file, 2 vCPUs, 1 GiB, the disk as virtio-blk, the CD as
# virtio-scsi), FIRMWARE_HOST_ROUNDS rounds (default 2) of four boots
# (two with FIRMWARE_DI=0, which leaves out di.iso; FIRMWARE_POWEROFF_SECS,
# default 180, is how long a VMM may take to exit after poweroff;
# FIRMWARE_ANALYZE=1 types systemd-analyze at the prompt first, its
# split of the boot and slowest units on stderr, the exit times then
# later by that much),
# one guest at a time, a test-host boot per round (the lock held for
# all), the VMMs' order swapped each round: debian.raw from start to
# GRUB's menu (the boot loader's first line on the serial console), to
# root's prompt and, after `poweroff` is typed, to the VMM's exit; di.iso
# to isolinux's "Loading /install/vmlinuz" and to the installer's first
# question (then killed). Every wait has a limit; a boot that misses it,
# whose VMM ends early or whose test host dies under it (issue 19.15:
# run-host.sh -s, silence detection) is shown as such, beside the median
# of the boots that finished. The consoles are kept in
# target/bench/firmware-host-N.log, the host's own kernel messages
# (printk level 8) among them.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/dev/stdout}
bin=$root/target/x86_64-unknown-linux-musl/release
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cc "-DACTION='r'" -c "$root/tests/firmware/boot.S" -o "$tmp/boot.o"
ld -m elf_x86_64 -Ttext 0x7c00 --oformat binary -e _start "$tmp/boot.o" -o "$tmp/boot.bin"
truncate -s 1M "$tmp/boot.bin"
runs=${FIRMWARE_ROUNDS:-5}
echo "bench: SeaBIOS to a boot sector, vm-run and QEMU -M pc ($runs rounds)" >&2
"$bin/vm-bench" -n "$runs" -k "firmware: boot sector" \
	"vm-run=timeout -s KILL 20 $bin/vm-run -m 64M -d $tmp/boot.bin" \
	"QEMU pc=timeout -s KILL 20 qemu-system-x86_64 -M pc -enable-kvm -cpu host,-arch-capabilities \
	-m 64M -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-bios /usr/share/seabios/bios-256k.bin -drive file=$tmp/boot.bin,format=raw,if=virtio" > "$tmp/table"
host_section() {
	media=$root/target/media
	if [ "${FIRMWARE_HOST:-1}" = 0 ] || [ ! -f "$media/debian.raw" ] || [ ! -f "$media/di.iso" ]; then
		echo "bench: no target/media (make media) or FIRMWARE_HOST=0: Linux through SeaBIOS not measured" >&2
		return 0
	fi
	hr=${FIRMWARE_HOST_ROUNDS:-2}
	echo "bench: Linux through SeaBIOS in the test host, vm-run and QEMU -M pc ($hr rounds, a test-host boot each, about $((hr * 10)) minutes)" >&2
	# debian.raw up to its last MiB of data, extended again in the host:
	# the kernel's initramfs unpacker fails on a 2 GiB file
	# (tests/firmware_linux.rs does the same).
	mib=$(( ($(stat -c %s "$media/debian.raw") + 1048575) / 1048576 ))
	while [ "$mib" -gt 0 ] && [ -z "$(dd if="$media/debian.raw" bs=1M skip=$((mib - 1)) count=1 2>/dev/null | tr -d '\0' | head -c 1)" ]; do
		mib=$((mib - 1))
	done
	mkdir -p "$tmp/m/media"
	head -c $((mib * 1048576)) "$media/debian.raw" > "$tmp/m/media/debian.raw"
	ln -s "$media/di.iso" "$tmp/m/media/di.iso"
	(cd "$tmp/m" && find . -mindepth 1 | cpio -o -L -H newc -R 0:0 --quiet) | gzip -1 > "$tmp/media.cpio.gz"
	rm -rf "$tmp/m"
	cat > "$tmp/scenario.sh" <<'SCENARIO'
exec 2>&1
# The host's own kernel messages (KVM's among them) on its console.
echo 8 > /proc/sys/kernel/printk
truncate -s 2147483648 /media/debian.raw
export TMPDIR=/tmp
up() { cut -d' ' -f1 /proc/uptime; }
start() {
	con=/tmp/$1.con; rm -f /tmp/in; mkfifo /tmp/in; : > $con; shift
	t0=$(up)
	timeout -s KILL 1200 "$@" < /tmp/in > $con 2> /tmp/err & pid=$!
	exec 3> /tmp/in
}
# Whether the VMM still runs (an ended one not yet reaped is a zombie,
# which kill -0 would still find).
alive() { [ -r /proc/$pid/stat ] && [ "$(cut -d' ' -f3 /proc/$pid/stat)" != Z ]; }
# at PATTERN SECS: the seconds from start to PATTERN on the console;
# "timeout" if SECS went by first, "exit" if the VMM ended.
at() {
	i=0
	while ! grep -aqF -- "$1" $con; do
		alive || { echo exit; return; }
		i=$((i + 1)); [ $i -le $(($2 * 5)) ] || { echo timeout; return; }
		# A line now and then: run-host.sh -s takes a silent console
		# for a dead host.
		[ $((i % 150)) -ne 0 ] || echo "waiting for $1 at $((i / 5)) s, console $(wc -c < $con) bytes" >&2
		sleep 0.2
	done
	awk -v a="$(up)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }'
}
ended() {
	i=0
	while alive; do
		i=$((i + 1)); [ $i -le $(($1 * 5)) ] || { kill -9 $pid; wait $pid; exec 3>&-; echo timeout; return; }
		sleep 0.2
	done
	wait $pid; exec 3>&-
	awk -v a="$(up)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }'
}
stop() { kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; exec 3>&-; }
num() { case $1 in [0-9]*) return 0 ;; esac; return 1; }
# The CPU seconds (user+system) of each of the VMM's threads so far, by
# name: where the host's time went, vCPUs against the VMM's own threads.
# (busybox's timeout execs the command: $pid is the VMM.)
threads() {
	for t in /proc/$pid/task/*; do
		echo "$(tr ' ' _ < $t/comm) $(cut -d' ' -f14,15 $t/stat 2>/dev/null)"
	done | awk -v w="$1" '{ c[$1] += ($2 + $3) / 100 } END { s = "FWTHREADS " w; for (k in c) s = s " " k "=" c[k]; print s }'
}
qemu="qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 2 -m 1G -nodefaults -no-user-config \
	-vga none -display none -monitor none -serial stdio -no-reboot -bios /usr/share/seabios/bios-256k.bin"
deb() {
	echo "FWBENCH-BEGIN $1 debian"
	case $1 in
	vm-run) start deb vm-run -c 2 -m 1G -d /media/debian.raw ;;
	qemu) start deb $qemu -drive file=/media/debian.raw,format=raw,if=virtio ;;
	esac
	m=$(at 'Debian 12 (vm-tools test medium)' 120); p=$(at 'root@vmtest:~#' 480)
	threads "$1 debian"
	if num "$p" && [ "$ANALYZE" = 1 ]; then
		# The guest's own split of its boot; the typed line is echoed, so
		# the end mark is what the shell computes, not what was typed.
		printf 'systemd-analyze; systemd-analyze blame | head -n 12; echo SA-$((6 * 7))\n' >&3
		at 'SA-42' 60 > /dev/null
		grep -a 'Startup finished' $con | tr -d '\r' | sed "s/^/FWANALYZE $1 /"
		sed -n '/systemd-analyze blame/,/SA-42/p' $con | tr -d '\r' | grep -av 'SA-' | sed "s/^/FWBLAME $1 /"
	fi
	if num "$p"; then printf 'poweroff\n' >&3; e=$(ended $POWEROFF); else stop; e=-; fi
	echo "FWBENCH $1 debian $m $p $e"
	num "$e" || { tail -c 3000 $con | tr -d '\033'; echo; tail -n 5 /tmp/err; }
}
di() {
	echo "FWBENCH-BEGIN $1 di"
	case $1 in
	vm-run) start di vm-run -c 2 -m 1G -r /media/di.iso -B cdrom ;;
	qemu) start di $qemu -device virtio-scsi-pci \
		-drive file=/media/di.iso,if=none,id=cd,media=cdrom,readonly=on -device scsi-cd,drive=cd,bootindex=1 ;;
	esac
	l=$(at 'Loading /install/vmlinuz' 120); q=$(at 'Select a language' 480)
	threads "$1 di"
	stop
	echo "FWBENCH $1 di $l $q"
	num "$q" || { tail -c 3000 $con | tr -d '\033'; echo; tail -n 5 /tmp/err; }
}
for v in $ORDER; do deb $v; done
[ "$DI" = 0 ] || for v in $ORDER; do di $v; done
# The shell leads the console's session: when it ends, what the serial
# port has not sent yet is thrown away (a last FWBENCH line was lost so).
sleep 1
SCENARIO
	mkdir -p "$root/target/bench"
	: > "$tmp/results"; : > "$tmp/deaths"
	# One test-host boot a round, so that a host that dies (issue 19.15)
	# costs one round, not the series; the lock is held from the first
	# to the last, as soak.sh does.
	exec 9>/tmp/vm-testhost.lock
	flock 9
	export TESTHOST_LOCK_HELD=1
	for r in $(seq "$hr"); do
		if [ $((r % 2)) = 1 ]; then order="vm-run qemu"; else order="qemu vm-run"; fi
		{ echo "ORDER='$order' DI='${FIRMWARE_DI:-1}' POWEROFF='${FIRMWARE_POWEROFF_SECS:-180}' ANALYZE='${FIRMWARE_ANALYZE:-0}'"; cat "$tmp/scenario.sh"; } > "$tmp/scenario-$r.sh"
		log=$root/target/bench/firmware-host-$r.log
		st=0
		"$root/tests/harness/run-host.sh" -q -b "$bin" -s 300 -t 2400 -x "$tmp/media.cpio.gz" \
			"$tmp/scenario-$r.sh" > "$log" 2>&1 || st=$?
		# Each boot's line; a boot begun and never reported is the one
		# the host died under.
		awk -v r="$r" '
			/^FWBENCH-BEGIN / { open = $2 " " $3; next }
			/^FWBENCH / { print r, $0; open = ""; next }
			END { if (open != "") { split(open, o, " "); print r, "FWBENCH", o[1], o[2], "died", "died", "died" } }' "$log" |
			tr -d '\r' >> "$tmp/results"
		if [ $st -ne 0 ]; then
			{
				echo "Round $r: the test host died (run-host.sh status $st) during $(grep -a '^FWBENCH-BEGIN' "$log" | tail -n 1 | cut -d' ' -f2,3 | tr -d '\r' || echo 'its start'); the end of its console:"
				echo
				echo '```'
				tail -n 25 "$log" | tr -d '\r' | sed 's/\x1b[[c?0-9;]*[A-Za-z]//g' | grep -av '^FWBENCH'
				echo '```'
				echo
			} >> "$tmp/deaths"
		fi
	done
	flock -u 9
	[ "${FIRMWARE_ANALYZE:-0}" = 0 ] || for r in $(seq "$hr"); do
		grep -a '^FWANALYZE\|^FWBLAME' "$root/target/bench/firmware-host-$r.log" | tr -d '\r' | sed "s/^/round $r: /" >&2
	done
	cat <<HOST

## Linux through SeaBIOS inside the emulated test host

Debian 12 through GRUB from \`debian.raw\` and Debian's installer from
\`di.iso\` (\`make media\`, tests/README.md), under vm-run (no \`-b\`) and
under QEMU $(qemu-system-x86_64 --version | sed -n 's/.*version \([^ ]*\).*/\1/p' | head -n1) \`-M pc -enable-kvm -cpu host\` with the same SeaBIOS file,
both with 2 vCPUs and 1 GiB, the disk on virtio-blk, the CD on
virtio-scsi, one guest at a time in the test host (kvm-amd under TCG:
compare the columns with each other only), a test-host boot per round,
the VMMs' order swapped each round. Seconds from the VMM's start; the
boot loader's first line is GRUB's menu and isolinux's
\`Loading /install/vmlinuz\` (both print to the serial line themselves).
A boot that did not get there says how it ended instead: \`timeout\`
(120 s to the boot loader, 480 s to the prompt or question, ${FIRMWARE_POWEROFF_SECS:-180} s from
\`poweroff\` to the exit), \`exit\` (the VMM ended first) or \`died\`
(the test host died under it); medians are of the boots that got there,
with how many did.
\`tests/bench/firmware.sh\`, $hr rounds, $(uptime | sed 's/.*load/load/').

HOST
	if ! grep -q FWBENCH "$tmp/results"; then
		echo "No boot finished."
	else
		awk '
		{ k = $3 " " $4; n[k]++
			for (i = 5; i <= NF; i++) v[k, i, n[k]] = $i }
		function isnum(x) { return x ~ /^[0-9.]+$/ }
		function med(k, i,    a, j, m, t, c) {
			c = 0
			for (j = 1; j <= n[k]; j++) if (isnum(v[k, i, j])) a[++c] = v[k, i, j] + 0
			got[k, i] = c
			if (c == 0) return "-"
			for (j = 1; j <= c; j++) for (m = j + 1; m <= c; m++) if (a[m] < a[j]) { t = a[j]; a[j] = a[m]; a[m] = t }
			return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
		}
		function cell(k, i,    j, s, m) {
			m = med(k, i); s = ""
			for (j = 1; j <= n[k]; j++) s = s (j > 1 ? ", " : "") (v[k, i, j] == "-" ? "not reached" : v[k, i, j])
			if (got[k, i] == 0) return "none (" s ")"
			if (got[k, i] < n[k]) return m " (" got[k, i] " of " n[k] ": " s ")"
			return m " (" s ")"
		}
		function row(what, g, i,    a, b) {
			a = med("vm-run " g, i); b = med("qemu " g, i)
			printf "| %s | %s | %s | %s |\n", what, cell("vm-run " g, i), cell("qemu " g, i),
				(a != "-" && b != "-" && b > 0) ? sprintf("%.2fx", a / b) : "n/a"
		}
		END {
			print "| seconds from start, median (each round) | vm-run | QEMU pc | vm-run / QEMU |"
			print "|---|---|---|---|"
			row("debian.raw: GRUB menu", "debian", 5)
			row("debian.raw: root prompt", "debian", 6)
			row("debian.raw: `poweroff` typed, VMM exited", "debian", 7)
			if (n["vm-run di"] + n["qemu di"] > 0) {
				row("di.iso: isolinux loads the kernel", "di", 5)
				row("di.iso: the installer asks its first question", "di", 6)
			}
		}' "$tmp/results"
	fi
	if [ -s "$tmp/deaths" ]; then
		echo
		cat "$tmp/deaths"
	fi
	echo
	echo "The test hosts' consoles: target/bench/firmware-host-N.log."
}

{
cat <<HEAD
## Firmware boot on this machine's /dev/kvm

Debian's SeaBIOS ($(dpkg-query -W -f '${Version}' seabios 2>/dev/null || echo '?')) to the first line of a boot sector
(\`tests/firmware/boot.S\`) on a raw virtio disk: vm-run with no \`-b\`
against QEMU \`-M pc\` with the same BIOS file. This machine's KVM is
PVM-backed and emulates much of real mode, so both spend seconds in the
BIOS; only the first row compares them (QEMU's run is ended after 20 s).
\`tests/bench/firmware.sh\`, $runs rounds, $(uptime | sed 's/.*load/load/').

HEAD
cat "$tmp/table"
host_section
} > "$out"
