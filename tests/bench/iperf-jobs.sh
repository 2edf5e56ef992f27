#!/bin/sh
# Usage: iperf-jobs.sh SERVER SECS   (in a guest of tests/bench/net.sh)
# Waits for the host's iperf3 server, then TCP guest to host and host to
# guest (-R), SECS each, one stream; prints "NET tx|rx MBIT/S" per job.
server=$1 secs=$2
ip link set eth0 up
ip addr add 10.10.0.2/24 dev eth0
for i in $(seq 30); do ping -c 1 -W 1 "$server" >/dev/null 2>&1 && break; done
for dir in tx rx; do
	opt=; [ $dir = rx ] && opt=-R
	v=$(iperf3 -c "$server" -t "$secs" -f m $opt 2>&1 | awk '/receiver/ { print $7 }')
	echo "NET $dir ${v:-0}"
done
