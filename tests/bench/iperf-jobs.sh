#!/bin/sh
# Usage: iperf-jobs.sh SERVER SECS   (in a guest of tests/bench/net.sh)
# Gives the guest's NIC (its one interface besides lo; no DHCP here)
# 10.10.0.2/24, waits for the host's iperf3 server to answer pings, then
# runs one TCP stream guest to host (tx) and host to guest (rx, -R), SECS
# each. Prints iperf3's summary lines ("iperf3 tx: ..."), "NET tx|rx
# MBIT/S" per job (0 if it failed), NET-ERROR lines for what went wrong,
# and at the end the NIC's counters and TCP's (NET-GUEST, NET-TCP) and
# what the kernel said about the NIC (NET-DMESG).
server=$1 secs=$2
dev=$(ls /sys/class/net | grep -vx lo | head -n 1)
if [ -z "$dev" ]; then
	echo "NET-ERROR no network interface (is virtio_net loaded?)"
	echo "NET tx 0"; echo "NET rx 0"
	exit 1
fi
ip link set "$dev" up
ip addr add 10.10.0.2/24 dev "$dev"
ok=
for i in $(seq 30); do ping -c 1 -W 1 "$server" >/dev/null 2>&1 && { ok=1; break; }; done
[ -n "$ok" ] || echo "NET-ERROR $server does not answer pings on $dev ($(cat /sys/class/net/$dev/address))"
for dir in tx rx; do
	opt=; [ $dir = rx ] && opt=-R
	timeout $((secs + 30)) iperf3 -c "$server" -t "$secs" -f m --connect-timeout 5000 $opt \
		> /tmp/iperf.$dir 2>&1 || echo "NET-ERROR iperf3 $dir: status $?"
	grep -E 'sender|receiver|error' /tmp/iperf.$dir | sed "s/^/iperf3 $dir: /"
	v=$(awk '/receiver/ { for (i = 2; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }' /tmp/iperf.$dir)
	echo "NET $dir ${v:-0}"
done
s=/sys/class/net/$dev/statistics
echo "NET-GUEST $dev" $(for c in rx_packets rx_dropped rx_length_errors rx_frame_errors tx_packets tx_dropped; do
	echo "$c=$(cat $s/$c)"; done)
echo "NET-TCP" $(awk '/^Tcp:/ && !h { for (i = 2; i <= NF; i++) k[i] = $i; h = 1; next }
	/^Tcp:/ { for (i = 2; i <= NF; i++) if (k[i] ~ /^(RetransSegs|InErrs|InCsumErrors|OutRsts)$/) print k[i] "=" $i }' /proc/net/snmp)
dmesg | grep -iE "$dev|virtio" | grep -v "Unhandled WRMSR" | tail -n 5 | sed 's/^/NET-DMESG /'
