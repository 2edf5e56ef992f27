#!/bin/sh
# Usage: tests/bench/net.sh [OUT.md]
# The "Network" section for docs/BENCHMARKS.md: after `make` and
# `make fixture`, it prints the section or writes it to OUT.md. NOT YET
# called from tests/bench/run.sh: its one run so far died with the test
# host's kernel (a known crash of nested KVM under TCG, see the disk
# section), and unlike disk.sh it does not boot the host again.
# In one boot of the emulated test host, Debian's iperf3 (iperf-jobs.sh) measures one TCP stream guest to host and host
# to guest, through a tap that vm-net opens, for:
#   vm-run         -n on the tap (virtio-net, vm-run's device thread);
#   QEMU           virtio-net-pci on the same kind of tap, vhost=off;
#   QEMU vhost     the same with vhost=on (the kernel's vhost-net).
# They take turns, NET_ROUNDS times (default 3); the table has the median
# and range. NET_SECONDS (default 5) per direction. About 4 minutes.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-}
bin=$root/target/x86_64-unknown-linux-musl/release
secs=${NET_SECONDS:-5}
rounds=${NET_ROUNDS:-3}
mem=512M
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP

"$root/tests/guest/build.sh" "$root/target/guest"
"$root/tests/bench/iperf-payload.sh" "$root/target/bench"
echo "bench: network with iperf3 in the emulated test host (about 4 minutes)" >&2

# Each guest gets a tap from vm-net (bt0, up, 10.10.0.1/24 on the host
# side; the guest takes 10.10.0.2). Both VMMs get the same guest, PCI
# function with MSI-X, virtio 1.x only, two vCPUs.
{
echo "secs=$secs rounds=$rounds mem=$mem"
cat <<'SCENARIO'
cat /guest/initrd.gz /bench/iperf.cpio.gz > /tmp/initrd-iperf.gz
iperf3 -s -D
p="console=ttyS0 quiet run=\"sh /bench/iperf-jobs.sh 10.10.0.1 $secs\""
part() { # NAME COMMAND...: in a tap's vm-net, with a time limit
	name=$1:$r; shift
	echo "NET-BEGIN $name"
	timeout 120 vm-net -i bt0 sh -c 'ip addr add 10.10.0.1/24 dev bt0 && exec "$@"' sh "$@" 2>&1 |
		sed "s/^NET/$name NET/"
	echo "NET-END $name"
}
cat > /tmp/qemu.sh <<QEMU
exec qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp 2 -m $mem \\
	-nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \\
	-kernel /guest/bzImage -initrd /tmp/initrd-iperf.gz -append '$p' \\
	-netdev tap,id=n0,fd=\$VM_NET_FDS,vhost=\$1 \\
	-device virtio-net-pci,netdev=n0,disable-legacy=on
QEMU
r=1
while [ $r -le $rounds ]; do
	part vm-run vm-run -c 2 -m $mem -b /guest/bzImage -i /tmp/initrd-iperf.gz -a "$p"
	part QEMU sh /tmp/qemu.sh off
	part QEMU-vhost sh /tmp/qemu.sh on
	r=$((r + 1))
done
SCENARIO
} > "$tmp/scenario.sh"
"$root/tests/harness/run-host.sh" -q -x "$root/target/bench/iperf-bench.cpio.gz" \
	-b "$bin" -t $((180 + rounds * 240)) "$tmp/scenario.sh" < /dev/null > "$tmp/console" || :
tr -d '\r' < "$tmp/console" > "$root/target/bench/net-console.log"

# "who round dir Mbit/s"
awk '$2 == "NET" && NF == 4 && $4 > 0 { split($1, w, ":"); print w[1], w[2], $3, $4 }' \
	"$root/target/bench/net-console.log" > "$tmp/values"
grep -q '^vm-run ' "$tmp/values" || {
	echo "bench: network: no vm-run numbers; the console:" >&2
	cat "$root/target/bench/net-console.log" >&2
	exit 1
}
iperfv=$(iperf3 --version | head -n1 | awk '{print $2}')
qemuv=$(qemu-system-x86_64 --version | head -n1 | awk '{print $4}')
{
cat <<TEXT
## Network (virtio-net) inside the emulated test host

Debian's iperf3 $iperfv, one TCP stream for ${secs} s guest to host (tx)
and host to guest (rx), the server on the test host, through a tap that
vm-net opens (\`IFF_VNET_HDR\`). Same guest for all (\`-c 2 -m $mem\`,
Debian's virtio_net, checksum and TSO offloads and mergeable buffers
negotiated); QEMU $qemuv is \`-M pc -enable-kvm -cpu host\` with
\`-netdev tap,fd=N,vhost=off|on -device virtio-net-pci,disable-legacy=on\`.
$rounds rounds, taking turns; median [min–max] in Gbit/s.

TEXT
awk '
	{ k = $1 SUBSEP $3; v[k, ++n[k]] = $4 / 1000 }
	function stats(k,   i, j, t, a, c) {
	  c = n[k]; if (!c) return
	  for (i = 1; i <= c; i++) a[i] = v[k, i] + 0
	  for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	  med[k] = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
	  range[k] = sprintf("%.2f–%.2f", a[1], a[c])
	}
	function show(k) { return !(k in med) ? "n/a" : sprintf("%.2f [%s]", med[k], range[k]) }
	function ratio(a, b) { return (!(a in med) || !(b in med) || med[b] == 0) ? "n/a" : sprintf("%.2f", med[a] / med[b]) }
	END {
	  for (k in n) stats(k)
	  print "| direction | vm-run | QEMU | QEMU vhost=on | vm-run / QEMU | vm-run / vhost |"
	  print "|---|---|---|---|---|---|"
	  split("tx rx", d, " ")
	  for (i = 1; i <= 2; i++) {
	    a = "vm-run" SUBSEP d[i]; q = "QEMU" SUBSEP d[i]; h = "QEMU-vhost" SUBSEP d[i]
	    print "| " d[i] " | " show(a) " | " show(q) " | " show(h) " | " ratio(a, q) " | " ratio(a, h) " |"
	  }
	}' "$tmp/values"
} > "$tmp/section"
if [ -n "$out" ]; then cp "$tmp/section" "$out"; else cat "$tmp/section"; fi
