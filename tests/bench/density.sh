#!/bin/sh
# Density: N (50) idle tiny guests at once (-a wait: halted until the
# power button or a console byte), until each has printed its line; then
# each process's PSS from /proc/PID/smaps_rollup, and for one of them the
# mappings that hold its private memory. The same for QEMU microvm unless
# NO_QEMU is set, for an older vm-run with OLD=path, and for Firecracker
# with FIRECRACKER=path and Cloud Hypervisor with CLOUD_HYPERVISOR=path
# (lib.sh). Also the time
# from the first start until all have printed (polled every 20 ms). The
# VMMs take turns, ROUNDS times (3); the table gives medians over the
# rounds (PSS: of each round's median guest). Writes Markdown to $1
# (stdout).
# usage: density.sh [out] [count] [rounds]
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-/dev/stdout}
n=${2:-50}
rounds=${3:-3}
tiny_guest
tmp=$(mktemp -d)
pids=
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	wait 2>/dev/null || :
	rm -rf "$tmp"
}
trap cleanup EXIT

# Starts $n copies of the command, waits until each has printed, and
# appends "name<TAB>ms total-KiB median-KiB min max private-KiB" to
# $tmp/rows.
measure() {
	name=$1; shift
	pids=
	t0=$(date +%s%N)
	i=0
	while [ $i -lt $n ]; do
		# stdin: a FIFO nobody writes, open and silent (a byte would
		# reset the guest).
		"$@" <&3 > "$tmp/$i.out" 2>&1 &
		pids="$pids $!"
		i=$((i + 1))
	done
	tries=0
	until [ "$(grep -l 'tiny: wait' "$tmp"/*.out 2>/dev/null | wc -l)" -eq $n ]; do
		tries=$((tries + 1))
		if [ $tries -gt 3000 ]; then
			echo "density: $name: not all $n guests printed in 60 s" >&2
			exit 1
		fi
		sleep 0.02
	done
	t1=$(date +%s%N)
	for p in $pids; do
		awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup"
	done | sort -n > "$tmp/pss"
	first=${pids# }; first=${first%% *}
	awk '/^(Private_Clean|Private_Dirty):/ {s += $2} END {print s}' "/proc/$first/smaps_rollup" > "$tmp/priv"
	awk -v name="$name" -v priv="$(cat "$tmp/priv")" -v ms=$(((t1 - t0) / 1000000)) '
		{ v[NR] = $1; s += $1 }
		END { printf "%s\t%d %d %d %d %d %d\n", name, ms, s, v[int((NR + 1) / 2)], v[1], v[NR], priv }' \
		"$tmp/pss" >> "$tmp/rows"
	# The mappings of one process, largest private first.
	awk '
		/^[0-9a-f]+-[0-9a-f]+ / { h = ($6 == "" ? "[anon]" : $6) " " $2 }
		/^Size:/ { m = h " " $2 " KiB" }
		/^Private_(Clean|Dirty):/ { p[m] += $2 }
		END { for (k in p) if (p[k] > 0) printf "%8d KiB  %s\n", p[k], k }' "/proc/$first/smaps" |
		sort -rn | head -12 > "$tmp/$name.maps"
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	wait 2>/dev/null || :
	pids=
	rm -f "$tmp"/*.out
}

mkfifo "$tmp/quiet"
exec 3<>"$tmp/quiet"
: > "$tmp/rows"
fc_config 128 wait > "$tmp/fc.json"
[ -z "${CLOUD_HYPERVISOR:-}" ] || tiny_guest_ch
load0=$(uptime)
r=0
while [ $r -lt "$rounds" ]; do
	measure vm-run "$bin/vm-run" -m 128M -b "$tiny" -a wait
	if [ -n "${OLD:-}" ]; then
		measure "vm-run (old)" "$OLD" -m 128M -b "$tiny" -a wait
	fi
	if [ -n "${FIRECRACKER:-}" ]; then
		measure Firecracker "$FIRECRACKER" --no-api --level Error --config-file "$tmp/fc.json"
	fi
	if [ -n "${CLOUD_HYPERVISOR:-}" ]; then
		# shellcheck disable=SC2046 # words of its command line
		measure "Cloud Hypervisor" "$CLOUD_HYPERVISOR" $(ch_args 128 wait)
	fi
	if [ -z "${NO_QEMU:-}" ]; then
		measure QEMU qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities \
			-m 128M -nodefaults -no-user-config -nographic -serial stdio -monitor none \
			-no-reboot -kernel "$tiny" -append wait
	fi
	r=$((r + 1))
done
load1=$(uptime)
{
	echo "## Density"
	echo
	echo "\`tests/bench/density.sh\`: $n tiny guests at once with \`-m 128M -a wait\`"
	echo "(halted, interrupts on, until the power button or a console byte),"
	echo "until each has printed its line; then each process's PSS"
	echo "(\`/proc/PID/smaps_rollup\`). The VMMs take turns, $rounds rounds;"
	echo "medians [ranges] over the rounds (PSS: each round's median guest)."
	echo "Load average ${load0##*average: }, after ${load1##*average: }."
	echo
	echo "| $n idle guests, $rounds rounds | all printed after | total PSS | PSS a guest | private memory of one |"
	echo "|---|---|---|---|---|"
	# One row a VMM, in the order they ran.
	awk -F '\t' '
		!($1 in seen) { seen[$1] = 1; order[++k] = $1 }
		{ split($2, f, " "); n[$1]++; i = n[$1]
		  ms[$1, i] = f[1]; tot[$1, i] = f[2]; med[$1, i] = f[3]; priv[$1, i] = f[6] }
		function m(a, who, what,   i, j, t, c) {
			c = n[who]
			for (i = 1; i <= c; i++) v[i] = a[who, i]
			for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
			lo = v[1]; hi = v[c]
			return v[int((c + 1) / 2)]
		}
		END { for (x = 1; x <= k; x++) { w = order[x]
			a = m(ms, w); printf "| %s | %d ms [%d–%d]", w, a, lo, hi
			a = m(tot, w); printf " | %.1f MiB [%.1f–%.1f]", a / 1024, lo / 1024, hi / 1024
			a = m(med, w); printf " | %d KiB [%d–%d]", a, lo, hi
			a = m(priv, w); printf " | %d KiB |\n", a } }' "$tmp/rows"
	for f in "$tmp"/*.maps; do
		echo
		echo "Private memory of one $(basename "$f" .maps) by mapping (KiB, mapping, permissions, size):"
		echo
		sed 's/^/    /' "$f"
	done
} > "$out"
