# Sourced by the benchmarks (". "$(dirname "$0")/lib.sh""): where the
# binaries are, the tiny guest, and the little arithmetic they share.
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/x86_64-unknown-linux-musl/release
tiny=$root/target/tiny-guest/tiny.elf

# Builds the tiny PVH guest from its source every time: it takes
# milliseconds, and a stale one would measure something else.
tiny_guest() {
	mkdir -p "${tiny%/*}"
	cc -c "$root/tests/tiny-guest/tiny.S" -o "${tiny%.elf}.o"
	ld -m elf_x86_64 -n --no-warn-rwx-segments -T "$root/tests/tiny-guest/tiny.ld" \
		"${tiny%.elf}.o" -o "$tiny"
}
# The same guest for Cloud Hypervisor (CLOUD_HYPERVISOR=path adds it to
# the start-up and density benchmarks): it restarts a guest that resets,
# so this one powers off through its ACPI shutdown port first.
tiny_guest_ch() {
	cc -DS5_PORT=0x600 -c "$root/tests/tiny-guest/tiny.S" -o "${tiny%.elf}-ch.o"
	ld -m elf_x86_64 -n --no-warn-rwx-segments -T "$root/tests/tiny-guest/tiny.ld" \
		"${tiny%.elf}-ch.o" -o "${tiny%.elf}-ch.elf"
}
ch_args() { # MEM ARGS: its command line for the tiny guest
	echo "--kernel ${tiny%.elf}-ch.elf --cmdline $2 --memory size=$1M --cpus boot=1 --serial tty --console off"
}
# FIRECRACKER=path/to/firecracker adds it to the start-up and density
# benchmarks (built from its sources by hand; make bench does not fetch
# it). fc_config MEM ARGS writes its configuration for the tiny guest to
# stdout: no API socket, no devices but its serial console.
fc_config() {
	printf '{"boot-source": {"kernel_image_path": "%s", "boot_args": "%s"},\n' "$tiny" "$2"
	printf ' "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": %s}}\n' "$1"
}
now() { date +%s%N; }
# Milliseconds from $1 to $2 (nanosecond stamps of now).
ms() { echo $(( ($2 - $1) / 1000000 )); }
mib() { echo $(( $1 / 1048576 )); }
# The median of the numbers on stdin, and their range.
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "%s ms [%s–%s]", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }'; }
# QEMU's QMP: SOCKET COMMAND ARGS-JSON WANT: one command after the
# handshake, repeated until its answer contains WANT (if not empty).
qmp() {
	python3 - "$@" <<'PY'
import json, socket, sys, time
path, cmd, args, want = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
for _ in range(1000):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError:
        time.sleep(0.005)
f = s.makefile("rw")
f.readline()
def call(c, a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r
call("qmp_capabilities", {})
while True:
    r = call(cmd, args)
    if not want or want in json.dumps(r):
        break
    time.sleep(0.002)
PY
}

# in_hosts NAME MARK: the rounds of a test-host benchmark (disk.sh,
# qcow2.sh), booting the test host again when one dies under a round:
# calls the script's boot_host FIRST_ROUND (its console in
# $tmp/console, its status that of run-host.sh) until a boot runs to the
# end, each next one from the round after the last one its console began
# ("MARK-BEGIN WHO:ROUND" lines), at most $rounds boots. The consoles of
# all boots go to $tmp/log; warnings, named NAME, to stderr.
in_hosts() {
	first=1 boot=0; : > "$tmp/log"
	while [ $first -le $rounds ] && [ $boot -lt $rounds ]; do
		boot=$((boot + 1))
		echo "=== test host boot $boot, from round $first" >> "$tmp/log"
		if boot_host $first; then
			tr -d '\r' < "$tmp/console" >> "$tmp/log"
			break
		fi
		tr -d '\r' < "$tmp/console" >> "$tmp/log"
		last=$(tr -d '\r' < "$tmp/console" | sed -n "s/^$2-BEGIN [A-Za-z0-9-]*:\([0-9]*\)\$/\1/p" | tail -n 1)
		echo "bench: warning: $1: the test host stopped (timeout or crash) in round" \
			"${last:-(none)}; its last lines:" >&2
		tr -d '\r' < "$tmp/console" | tail -n 4 | sed 's/^/    /' >&2
		[ -n "$last" ] || break
		first=$((last + 1))
		[ $first -gt $rounds ] || echo "bench: $1: booting it again for round $first" >&2
	done
}

# warn_missing NAME MARK WHO...: a warning on stderr for each WHO and
# round of $rounds without a number for each of $jobs in $tmp/values
# ("who round job value" lines; disk.sh, qcow2.sh, net.sh), with that part's console from $tmp/log
# (its last attempt's, between "MARK-BEGIN WHO:ROUND" and "MARK-END
# WHO:ROUND ...") or why there is none.
warn_missing() {
	name=$1 mark=$2; shift 2
	for who in "$@"; do
		r=1
		while [ "$r" -le "$rounds" ]; do
			missing=
			for j in $jobs; do
				grep -q "^$who $r $j " "$tmp/values" || missing="$missing $j"
			done
			if [ -n "$missing" ]; then
				echo "bench: warning: $name: no $who numbers in round $r for:$missing" \
					"(n/a in the table unless another round has them)" >&2
				if ! grep -q "^$mark-BEGIN $who:$r\$" "$tmp/log"; then
					echo "    (never started: the test host stopped before)" >&2
				else
					awk -v b="$mark-BEGIN $who:$r" -v e="$mark-END $who:$r " '\
						$0 == b { on = 1; c = 0 } on && /^=== test host boot/ { on = 0 }
						on { l[++c] = $0 } on && index($0, e) == 1 { on = 0 }
						END { for (i = 1; i <= c; i++) print l[i] }' "$tmp/log" |
						grep -v '^[[:space:]]*$' | tail -n 30 | sed 's/^/    /' >&2
					grep -q "^$mark-END $who:$r " "$tmp/log" ||
						echo "    (no end: the test host stopped here)" >&2
				fi
			fi
			r=$((r + 1))
		done
	done
}

# The awk of the fio tables (disk.sh, qcow2.sh), to put before a
# table's own END: reads "who round job value" lines (for who SUBSEP
# job, k); stats(k) sets med[k] and range[k], show(k) gives "median
# [min–max]" (or "n/a"), ratio(a, b) the medians' ratio, and name[job]
# the row's title.
fio_table_awk='
	{ k = $1 SUBSEP $3; v[k, ++n[k]] = $4 }
	# med[k]: the median of the values of k; range[k]: "min–max".
	function stats(k,   i, j, t, a, c) {
	  c = n[k]; if (!c) return
	  for (i = 1; i <= c; i++) a[i] = v[k, i] + 0
	  for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	  med[k] = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
	  range[k] = num(a[1]) "–" num(a[c])
	}
	function num(x) { return sprintf(x < 100 ? "%.1f" : "%.0f", x) }
	function show(k) { return !(k in med) ? "n/a" : n[k] > 1 ? num(med[k]) " [" range[k] "]" : num(med[k]) }
	function ratio(a, b) {
	  if (!(a in med) || !(b in med)) return "n/a"
	  return sprintf(med[a] / med[b] < 0.1 ? "%.3fx" : "%.2fx", med[a] / med[b])
	}
	BEGIN {
	  name["randread-4k-qd1"] = "4k random read, QD 1, IOPS"; name["randread-4k-qd32"] = "4k random read, QD 32, IOPS"
	  name["randwrite-4k-qd1"] = "4k random write, QD 1, IOPS"; name["randwrite-4k-qd32"] = "4k random write, QD 32, IOPS"
	  name["read-1m"] = "1 MiB sequential read, MB/s"; name["write-1m"] = "1 MiB sequential write, MB/s"
	}
'
