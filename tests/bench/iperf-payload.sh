#!/bin/sh
# Usage: tests/bench/iperf-payload.sh OUTDIR
# Debian's iperf3 with every library it links, for the network benchmark:
#   OUTDIR/iperf.cpio.gz        iperf3, its libraries and
#                               /bench/iperf-jobs.sh, for the guest
#   OUTDIR/iperf-bench.cpio.gz  the same for the test host, plus
#                               iperf.cpio.gz under /bench
# Cached: rebuilt when this script, the jobs or the binary change.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
command -v iperf3 >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
}
iperf=$(command -v iperf3)
sum=$(cat "$0" "$here/iperf-jobs.sh" "$iperf" | sha256sum | cut -d' ' -f1)
[ -f "$out/iperf-bench.cpio.gz" ] && [ "$(cat "$out/iperf.stamp" 2>/dev/null)" = "$sum" ] && exit 0
tmp=$(mktemp -d "$out/tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP
r=$tmp/iperf
for f in "$iperf" $(ldd "$iperf" | grep -o '/[^ ]*'); do
    mkdir -p "$r${f%/*}"; cp -L "$f" "$r$f"
done
mkdir -p "$r/bench"
cp "$here/iperf-jobs.sh" "$r/bench/"
(cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$out/iperf.cpio.gz"
cp "$out/iperf.cpio.gz" "$r/bench/"
(cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$out/iperf-bench.cpio.gz"
echo "$sum" > "$out/iperf.stamp"
