#!/bin/sh
# Usage: tests/bench/net.sh [OUT.md]
# The "Network" section of docs/BENCHMARKS.md (tests/bench/run.sh calls
# it; alone, after `make` and `make fixture`, it prints the section or
# writes it to OUT.md). In the emulated test host, Debian's iperf3
# (iperf-jobs.sh) measures one TCP stream guest to host and host to guest,
# through a tap that vm-net opens, for:
#   vm-run      vm-run on the tap (VM_NET_FDS: virtio-net, vm-run's
#               device thread);
#   QEMU        virtio-net-pci on the same kind of tap, vhost=off;
#   QEMU-vhost  the same with vhost=on (the kernel's vhost-net).
# They take turns, NET_ROUNDS times (default 3); the table has the median
# and range of the rounds. A VMM whose guest gives no number for a
# direction in a round gets a warning with its console on stderr, and
# "n/a" in the table if no round has one; a test host that dies halfway
# (nested KVM under TCG sometimes takes it down, or run-host.sh stops it
# on a soft lockup, its own or a guest's) is booted again for the parts
# after the one it died in. Without any number at all the section fails
# (exit 1).
# The whole console is kept in target/bench/net-console.log.
# NET_SECONDS (default 5) per direction. About 4 minutes with the defaults.
# NET_CONSOLE=FILE skips the measuring and makes the section from a
# console kept before (with the NET_ROUNDS and NET_SECONDS of its run).
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-}
secs=${NET_SECONDS:-5}
rounds=${NET_ROUNDS:-3}
mem=512M
limit=$((120 + 2 * secs))   # seconds for one part; about 20 + 2 * secs is usual
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP

"$root/tests/guest/build.sh" "$root/target/guest"
"$root/tests/bench/iperf-payload.sh" "$root/target/bench"
echo "bench: network with iperf3 in the emulated test host (about 4 minutes, more if it crashes)" >&2

# The scenario, in the test host (busybox). Each part runs in a tap of its
# own from vm-net (bt0, up, 10.10.0.1/24 on the host side; the guest's
# iperf-jobs.sh takes 10.10.0.2), against a fresh iperf3 server, and its
# console is framed by NET-BEGIN/NET-END lines, its NET lines prefixed
# with "name:round". Both VMMs get the same guest (kernel, initramfs and
# command line), a PCI function with MSI-X, virtio 1.x only, two vCPUs.
# After each part, the tap's counters (NET-TAP; tx is toward the guest).
# A part that takes more than $limit s is stopped. The first round is
# $first, from its part $from (1 vm-run, 2 QEMU, 3 QEMU-vhost): if the
# test host dies, the next boot goes on with the part after the one it
# died in.
scenario() { # FIRST_ROUND FIRST_PART
	echo "secs=$secs mem=$mem first=$1 from=$2 rounds=$rounds limit=$limit"
	cat <<'SCENARIO'
cat /guest/initrd.gz /bench/iperf.cpio.gz > /tmp/initrd-iperf.gz
p="console=ttyS0 quiet run=\"sh /bench/iperf-jobs.sh 10.10.0.1 $secs\""
cat > /tmp/qemu.sh <<QEMU
exec qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 2 -m $mem \\
	-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \\
	-kernel /guest/bzImage -initrd /tmp/initrd-iperf.gz -append '$p' \\
	-netdev tap,id=n0,fd=\$VM_NET_FDS,vhost=\$1 \\
	-device virtio-net-pci,netdev=n0,disable-legacy=on
QEMU
part() { # INDEX NAME COMMAND...: runs COMMAND in a tap's vm-net with a time limit
	[ $r -gt $first ] || [ $1 -ge $from ] || return 0
	name=$2:$r; shift 2
	echo "NET-BEGIN $name"; t0=$(date +%s)
	rm -f /tmp/iperf3.pid
	iperf3 -s -D -I /tmp/iperf3.pid || echo "NET-ERROR no iperf3 server on the test host"
	{
		timeout $((limit + 10)) vm-net -i bt0 sh -c 'ip addr add 10.10.0.1/24 dev bt0 || exit 1
			l=$1; shift; timeout $l "$@"; rc=$?
			s=/sys/class/net/bt0/statistics
			echo "NET-TAP" $(for c in tx_packets tx_dropped rx_packets rx_dropped; do
				echo "$c=$(cat $s/$c)"; done)
			exit $rc' sh $limit "$@" 2>&1
		rc=$?; t=$(($(date +%s) - t0))
		[ $t -lt $limit ] || echo "NET-TIMEOUT $name: stopped after $t s"
		echo "NET-END $name rc=$rc secs=$t"
	} | sed "s/^NET /$name NET /"
	[ -f /tmp/iperf3.pid ] && kill "$(cat /tmp/iperf3.pid)" 2>/dev/null
	sleep 1
}
r=$first
while [ $r -le $rounds ]; do
	part 1 vm-run vm-run -c 2 -m $mem -b /guest/bzImage -i /tmp/initrd-iperf.gz -a "$p"
	part 2 QEMU sh /tmp/qemu.sh off
	part 3 QEMU-vhost sh /tmp/qemu.sh on
	r=$((r + 1))
done
SCENARIO
}
# boot_host FIRST_ROUND FIRST_PART: boots the test host, its console in
# $tmp/console. A test host that hangs says nothing for minutes, while
# each part prints within $limit s: run-host.sh stops one silent for
# 240 s (waiting for another user's test host is not silence).
boot_host() {
	scenario "$1" "$2" > "$tmp/scenario.sh"
	"$root/tests/harness/run-host.sh" -q -s 240 -x "$root/target/bench/iperf-bench.cpio.gz" \
		-b "$bin" -t $((120 + (rounds - $1 + 1) * 3 * limit)) "$tmp/scenario.sh" \
		< /dev/null > "$tmp/console"
}
# measure: every part of every round, booting the test host again as
# needed (at most rounds + 1 boots); the consoles of all boots in $tmp/log.
measure() {
	first=1 from=1 boot=0; : > "$tmp/log"
	while [ $first -le $rounds ] && [ $boot -le $rounds ]; do
		boot=$((boot + 1))
		echo "=== test host boot $boot, from round $first part $from" >> "$tmp/log"
		if boot_host $first $from; then
			tr -d '\r' < "$tmp/console" >> "$tmp/log"
			break
		fi
		tr -d '\r' < "$tmp/console" >> "$tmp/log"
		# The part it stopped in: the next boot goes on after it (that
		# part gets a warning below); one that stopped before its first
		# part is tried again.
		last=$(tr -d '\r' < "$tmp/console" | sed -n 's/^NET-BEGIN \([A-Za-z-]*:[0-9]*\)$/\1/p' | tail -n 1)
		echo "bench: warning: network: the test host stopped (timeout or crash) in" \
			"${last:-no part}; its last lines:" >&2
		tr -d '\r' < "$tmp/console" | grep -v '^[[:space:]]*$' | tail -n 4 | sed 's/^/    /' >&2
		if [ -n "$last" ]; then
			case ${last%:*} in vm-run) i=1 ;; QEMU) i=2 ;; *) i=3 ;; esac
			first=${last#*:} from=$((i + 1))
			[ $from -le 3 ] || first=$((first + 1)) from=1
		fi
		[ $first -gt $rounds ] ||
			echo "bench: network: booting it again for round $first, part $from" >&2
	done
}
if [ -n "${NET_CONSOLE:-}" ]; then
	cp "$NET_CONSOLE" "$tmp/log"
else
	measure
	cp "$tmp/log" "$root/target/bench/net-console.log"
fi

# "who round dir Mbit/s"; failed jobs (0) are left out.
awk '$2 == "NET" && NF == 4 && $1 ~ /^[A-Za-z-]+:[0-9]+$/ && ($3 == "tx" || $3 == "rx") && $4 > 0 {
	split($1, w, ":"); print w[1], w[2], $3, $4 }' "$tmp/log" > "$tmp/values"
jobs="tx rx"
warn_missing network NET vm-run QEMU QEMU-vhost
# What went wrong in the guests (NET-ERROR lines: no NIC, no ping, an
# iperf3 that failed or had to be stopped; a stalled stream still gives
# its number).
awk '/^NET-BEGIN / { who = $2 } /^NET-ERROR / { print "bench: warning: network: " who ": " substr($0, 11) }' \
	"$tmp/log" >&2
[ -s "$tmp/values" ] || {
	echo "bench: network: no numbers at all; the console:" >&2
	cat "$tmp/log" >&2
	exit 1
}

iperfv=$(iperf3 --version | head -n1 | awk '{print $2}')
qemuv=$(qemu-system-x86_64 --version | head -n1 | awk '{print $4}')
kver=$(cat "$root/target/guest/kernel-version")
got() { awk -v w="$1" '$1 == w { r[$2] = 1 } END { for (i in r) n++; print n + 0 }' "$tmp/values"; }
# "who round what count" of the parts with numbers: TCP's retransmitted
# segments (of the sender, as iperf3 reports them) and the frames the
# guest's virtio_net dropped.
awk '/^NET-BEGIN / { split($2, w, ":"); who = w[1]; r = w[2]; next }
	/^iperf3 (tx|rx): .* sender$/ && $(NF - 1) ~ /^[0-9]+$/ { print who, r, "retr-" substr($2, 1, 2), $(NF - 1) }
	/^NET-GUEST / { for (i = 3; i <= NF; i++) if ($i ~ /^rx_dropped=/) { sub(/.*=/, "", $i); print who, r, "dropped", $i } }' \
	"$tmp/log" | awk 'NR == FNR { ok[$1 " " $2] = 1; next } ($1 " " $2) in ok' "$tmp/values" - > "$tmp/extra"
{
cat <<TEXT
## Network (virtio-net) inside the emulated test host

Debian's iperf3 $iperfv, one TCP stream for ${secs} s guest to host and
${secs} s host to guest (\`-R\`), the server on the test host, the client
in a guest. Each guest gets a tap of its own from \`vm-net -i bt0\`
(\`IFF_VNET_HDR\`; 10.10.0.1/24 on the host's side, 10.10.0.2 set by
hand in the guest, no DHCP), nothing else on it. The same guest for all:
Debian's kernel $kver and the busybox initramfs with iperf3 and its
libraries, two vCPUs, $mem; Debian's virtio_net negotiates checksum and
TSO offloads, mergeable receive buffers and indirect descriptors with each.

- **vm-run**: \`vm-net -i bt0 vm-run -c 2 -m $mem\`, the NIC from
  \`VM_NET_FDS\`: a virtio-net PCI function with MSI-X, one receive and
  one transmit queue of 256, served by one device thread that moves
  frames between tap and guest memory with readv/writev.
- **QEMU** $qemuv: \`-M pc -enable-kvm -cpu host -smp 2 -m $mem\`,
  \`-netdev tap,fd=N,vhost=off -device virtio-net-pci,disable-legacy=on\`
  (virtio 1.x, MSI-X, the same queue sizes): QEMU's main loop does the
  tap I/O in user space.
- **QEMU vhost=on**: the same with \`vhost=on\`: the vhost-net worker
  of the test host's kernel (the same $kver, vhost_net loaded), a
  kernel thread, moves the frames, woken by ioeventfd and interrupting
  through irqfd, never leaving the kernel.

They take turns, $rounds rounds; median [min–max] of the rounds in Gbit/s.
Throughput under TCG varies a lot from round to round (and with whatever
else this machine runs): read the ranges along with the medians.
Rounds with numbers in this run, of $rounds:
vm-run $(got vm-run), QEMU $(got QEMU), QEMU vhost=on $(got QEMU-vhost).

TEXT
awk '
	FILENAME == ARGV[1] { k = $1 SUBSEP $3; v[k, ++n[k]] = $4 / 1000; next }
	{ k = $1 SUBSEP $3; v[k, ++n[k]] = $4 }
	# med[k]: the median of the values of k; lo[k], hi[k]: the range.
	function stats(k,   i, j, t, a, c) {
	  c = n[k]; if (!c) return
	  for (i = 1; i <= c; i++) a[i] = v[k, i] + 0
	  for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	  med[k] = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
	  lo[k] = a[1]; hi[k] = a[c]
	}
	function num(x) { return sprintf(x < 0.1 ? "%.3f" : "%.2f", x) }
	function show(k) { return !(k in med) ? "n/a" : n[k] > 1 ? num(med[k]) " [" num(lo[k]) "–" num(hi[k]) "]" : num(med[k]) }
	function count(k) { return !(k in med) ? "n/a" : n[k] > 1 ? sprintf("%d [%d–%d]", med[k], lo[k], hi[k]) : sprintf("%d", med[k]) }
	function ratio(a, b) {
	  if (!(a in med) || !(b in med) || med[b] == 0) return "n/a"
	  return sprintf(med[a] / med[b] < 0.1 ? "%.3fx" : "%.2fx", med[a] / med[b])
	}
	# How vm-run (a) stands against b in direction d, in words.
	function against(a, b, d) {
	  if (!(a in med) || !(b in med)) return "no numbers " d
	  return ratio(a, b) " " d (lo[a] <= hi[b] && lo[b] <= hi[a] ? " (the ranges overlap)" : "")
	}
	END {
	  split("vm-run QEMU QEMU-vhost", who, " ")
	  name["tx"] = "guest → host"; name["rx"] = "host → guest"
	  print "| iperf3, one TCP stream, Gbit/s | vm-run | QEMU | QEMU vhost=on | vm-run / QEMU | vm-run / vhost |"
	  print "|---|---|---|---|---|---|"
	  split("tx rx", d, " ")
	  for (i = 1; i <= 2; i++) {
	    a = "vm-run" SUBSEP d[i]; q = "QEMU" SUBSEP d[i]; h = "QEMU-vhost" SUBSEP d[i]
	    stats(a); stats(q); stats(h)
	    printf "| %s | %s | %s | %s | %s | %s |\n", name[d[i]], show(a), show(q), show(h), ratio(a, q), ratio(a, h)
	  }
	  print ""
	  print "In the same runs, per run (median [min–max]): the segments TCP"
	  print "retransmitted (the sender'"'"'s count, from iperf3) and the frames the"
	  print "guest'"'"'s virtio_net dropped (its `rx_dropped`)."
	  print ""
	  print "| per run | vm-run | QEMU | QEMU vhost=on |"
	  print "|---|---|---|---|"
	  split("retr-tx retr-rx dropped", x, " ")
	  what["retr-tx"] = "TCP retransmissions, guest → host"; what["retr-rx"] = "TCP retransmissions, host → guest"
	  what["dropped"] = "frames dropped by the guest'"'"'s driver"
	  for (i = 1; i <= 3; i++) {
	    line = "| " what[x[i]]
	    for (j = 1; j <= 3; j++) { k = who[j] SUBSEP x[i]; stats(k); line = line " | " count(k) }
	    print line " |"
	  }
	  print ""
	  t = "vm-run" SUBSEP "tx"; r = "vm-run" SUBSEP "rx"
	  ok = (t in med) && (r in med) && ("QEMU" SUBSEP "tx" in med) && ("QEMU" SUBSEP "rx" in med)
	  met = ok && med[t] >= med["QEMU" SUBSEP "tx"] && med[r] >= med["QEMU" SUBSEP "rx"]
	  print "**The target**, at least QEMU without vhost: vm-run is at"
	  printf "%s and\n%s\n", \
	    against(t, "QEMU" SUBSEP "tx", name["tx"]), against(r, "QEMU" SUBSEP "rx", name["rx"])
	  printf "of QEMU'"'"'s medians in this run: %s.\n", !ok ? "not measured" : met ? "met" : \
	    (med[t] >= med["QEMU" SUBSEP "tx"] || med[r] >= med["QEMU" SUBSEP "rx"]) ? "met in one direction only" : "not met"
	  printf "**vhost-net**: vm-run is at %s and\n%s of QEMU with vhost=on.\n", \
	    against(t, "QEMU-vhost" SUBSEP "tx", name["tx"]), against(r, "QEMU-vhost" SUBSEP "rx", name["rx"])
	  dv = "vm-run" SUBSEP "dropped"; dq = "QEMU" SUBSEP "dropped"
	  if ((dv in med) && med[dv] > 0 && (dq in med) && med[dq] == 0) {
	    print ""
	    print "vm-run'"'"'s guest drops a few received frames in each run (as"
	    print "`rx_length_errors`) where QEMU'"'"'s drops none, and TCP resends up to"
	    print "45 segments for each 64 KiB frame lost. The cause is in vm-run'"'"'s"
	    print "receive path: a frame that spans several mergeable buffers goes to"
	    print "the used ring one buffer at a time (each `add_used` moves the used"
	    print "index), and `num_buffers` is written into its header only after"
	    print "that, so the driver, polling on the other vCPU, can find a frame"
	    print "whose buffers or count are not there yet, and drops it (virtio 1.x,"
	    print "5.1.6.4: the device must use the buffers of one packet together)."
	    print "A build that writes `num_buffers` first and moves the used index"
	    print "once per frame dropped none in the same test (TCP resent at most"
	    print "one segment a run, as with QEMU)."
	  }
	}' "$tmp/values" "$tmp/extra"
cat <<'TEXT'

Why vhost-net can be ahead: vm-run, like QEMU without vhost, moves frames
in user space. The guest's kick (an ioeventfd) wakes vm-run's device
thread from poll(2); the thread copies frames between the tap and guest
memory with readv/writev on the guest's buffers (no copy of its own),
then raises the interrupt through an irqfd. Each batch costs system calls
and switches between the test host's kernel and a user-space thread.
vhost-net does the same copies in a kernel thread of the test host, woken
by the same ioeventfd, and never returns to user space. Under nested TCG
every one of those transitions is emulated instruction by instruction,
which is where vhost-net saves. What limits all three here, though, is
the emulated CPU itself: with TSO and mergeable buffers most frames are
64 KiB, each byte is copied by emulated instructions (iperf3 to the
guest's socket, guest memory to the tap or back, the test host's socket
to iperf3), and the test host's two emulated CPUs carry the guest's two
vCPUs, the device thread or vhost worker and the iperf3 server. Per-frame
savings weigh less against that than on hardware, where vhost-net's lead
over user-space virtio-net is large: these ratios say little about it.
TEXT
} > "$tmp/section"
if [ -n "$out" ]; then cp "$tmp/section" "$out"; else cat "$tmp/section"; fi
